//! The sans-IO rule, checked: protocol logic reads no clock, opens no
//! socket or file, names no runtime and draws no OS randomness. Every call
//! takes the time and the bytes from its caller, so the same code runs in
//! real processes, in the simulators and in virtual-time tests.

use std::path::Path;

use anyhow::{Result, bail};

/// The files that hold protocol logic, from the workspace root. A file
/// that moves or is renamed must be listed again: a missing one fails.
pub(crate) const FILES: &[&str] = &[
    "crates/wire/src/auth.rs",
    "crates/wire/src/bounded.rs",
    "crates/wire/src/channel.rs",
    "crates/wire/src/clock.rs",
    "crates/wire/src/codec.rs",
    "crates/wire/src/fault.rs",
    "crates/wire/src/frame.rs",
    "crates/wire/src/hello.rs",
    "crates/wire/src/line.rs",
    "crates/wire/src/message.rs",
    "crates/barrier/src/conductor.rs",
    "crates/barrier/src/config.rs",
    "crates/barrier/src/core.rs",
    "crates/barrier/src/summary.rs",
    "crates/mesh/src/faults.rs",
    "crates/net/src/counters.rs",
    "crates/net/src/rules.rs",
    "crates/net/src/subnet.rs",
    "crates/gossip/src/backoff.rs",
    "crates/gossip/src/corrupt.rs",
    "crates/gossip/src/outbox.rs",
    "crates/lww/src/config.rs",
    "crates/lww/src/liveness.rs",
    "crates/lww/src/offsets.rs",
    "crates/lww/src/replica.rs",
    "crates/lww/src/replica/exchange.rs",
    "crates/lww/src/replica/resync.rs",
    "crates/lww/src/sim.rs",
    "crates/filestore/src/format.rs",
    "crates/filestore/src/log.rs",
    "crates/cli/src/control.rs",
    "crates/cli/src/history.rs",
    "crates/cli/src/reads.rs",
    "crates/cli/src/scenario.rs",
    "crates/cli/src/timeline.rs",
];

/// What such a file may not contain, and why.
const FORBIDDEN: &[(&str, &str)] = &[
    ("tokio::", "names the tokio runtime"),
    ("std::net", "names std::net (use core::net for addresses)"),
    ("std::fs", "touches the file system"),
    ("std::process", "starts or ends processes"),
    ("std::thread", "starts or parks threads"),
    ("Instant::now", "reads the monotonic clock"),
    ("SystemTime::now", "reads the wall clock"),
    ("getrandom", "draws OS randomness"),
    ("OsRng", "draws OS randomness"),
    ("thread_rng", "draws OS randomness"),
    ("rand::rng()", "draws OS randomness"),
];

/// Every violation in `text` (a file's source), as `line: reason`. Lines
/// that are only comments are skipped.
pub(crate) fn violations(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        for (pattern, why) in FORBIDDEN {
            if code.contains(pattern) {
                out.push(format!("line {}: {why} ({pattern})", i + 1));
            }
        }
    }
    out
}

/// Checks every listed file under `root`.
pub(crate) fn check(root: &Path) -> Result<()> {
    let mut bad = Vec::new();
    for file in FILES {
        let path = root.join(file);
        let Ok(text) = std::fs::read_to_string(&path) else {
            bad.push(format!(
                "{file}: missing (moved? list it again in xtask/src/sans_io.rs)"
            ));
            continue;
        };
        bad.extend(
            violations(&text)
                .into_iter()
                .map(|v| format!("{file}: {v}")),
        );
    }
    if !bad.is_empty() {
        bail!("sans-IO code does I/O:\n  {}", bad.join("\n  "));
    }
    eprintln!("==> sans-io: {} files hold no I/O", FILES.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_read_or_a_socket_is_caught_and_a_comment_is_not() {
        let planted = "use std::net::TcpStream;\n\
                       // Instant::now() in a comment is fine\n\
                       fn f() -> u64 { std::time::SystemTime::now(); 1 }\n";
        let found = violations(planted);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("line 1: names std::net"), "{found:?}");
        assert!(
            found[1].starts_with("line 3: reads the wall clock"),
            "{found:?}"
        );
        assert!(violations("use core::net::SocketAddr;\n").is_empty());
    }

    #[test]
    fn the_workspace_keeps_the_rule() {
        check(&crate::root()).unwrap();
    }
}
