//! `multinode check-node`: the node contract checked against our node (the
//! reference implementation) and against a deliberately broken one.

use crate::{BIN, multinode, text};

#[test]
fn our_node_keeps_the_contract() {
    let out = multinode(&["check-node", "--", BIN, "node", "--round-ms", "50"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("check-node: 10 of 10 requirement(s) pass: PASS"),
        "{stdout}"
    );
}

/// A node in Python that answers every verb but keeps its state in memory
/// and talks to nobody: it fails exactly replication and durability, and
/// check-node names both.
const FORGETFUL: &str = r#"
import os, sys
data, clock = {}, 0
me = os.environ["MULTINODE_NODE_INDEX"]
print(f"READY {me} 127.0.0.1:1 entries=0", flush=True)
for line in sys.stdin:
    w = line.rstrip("\n").split(" ")
    if w == ["QUIT"]:
        sys.exit(0)
    elif w[0] in ("SET", "DEL") and len(w) == (3 if w[0] == "SET" else 2):
        clock += 1
        v = f"{clock}.0@{me}"
        data[w[1]] = (v, w[2] if w[0] == "SET" else None)
        print(f"OK {v}", flush=True)
    elif w[0] == "GET" and len(w) == 2:
        v = data.get(w[1])
        print("NONE" if v is None else (f"VALUE {v[0]} {v[1]}" if v[1] else f"GONE {v[0]}"), flush=True)
    elif w == ["DUMP"]:
        for k in sorted(data):
            v, x = data[k]
            print(f"LIVE {k} {v} {x}" if x else f"GONE {k} {v}")
        print(f"END {len(data)}", flush=True)
    else:
        print("ERR unknown line", flush=True)
"#;

#[test]
fn a_forgetful_node_fails_and_the_requirements_it_breaks_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("forgetful.py");
    std::fs::write(&script, FORGETFUL).unwrap();
    let out = multinode(&[
        "check-node",
        "--timeout",
        "2",
        "--",
        "python3",
        script.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let fails: Vec<&str> = stdout.lines().filter(|l| l.contains(" FAIL ")).collect();
    assert_eq!(fails.len(), 2, "{stdout}");
    assert!(
        fails[0].starts_with("a write reaches every other node"),
        "{stdout}"
    );
    assert!(
        fails[1].starts_with("an acknowledged write survives SIGKILL and a restart"),
        "{stdout}"
    );
    assert!(
        stdout.contains("check-node: 8 of 10 requirement(s) pass: FAIL"),
        "{stdout}"
    );
}

#[test]
fn the_python_example_node_keeps_the_contract() {
    let out = multinode(&[
        "check-node",
        "--",
        "python3",
        "examples/python-node/node.py",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("check-node: 10 of 10 requirement(s) pass: PASS"),
        "{stdout}"
    );
}
