//! The conductor: what makes the faults that participants ask for with
//! conductor lines (`PARTITION 0,1 2`, `KILL 3`, ...), when a run enables
//! them, as Akka's TestConductor did for multi-JVM tests.

use multinode_wire::{Fault, Label, Reply};

/// Makes faults on a controller's behalf: the network lab, the launcher's
/// processes, or both. Called off the async runtime (it may run commands).
pub trait Conductor: Send + Sync + 'static {
    /// Makes `fault` happen and returns what the faults did so far as
    /// `key=value` words (`received=120 cut=14 dropped=0 pauses=1`), or why
    /// it could not.
    fn conduct(&self, fault: &Fault) -> Result<String, String>;
}

/// The reply to a conductor line: `OK <VERB> <counters>` or `ERR <reason>`.
pub(crate) fn reply(fault: &Fault, outcome: Result<String, String>) -> Reply {
    match outcome {
        Ok(report) => {
            let text = format!("{} {}", fault.verb(), report.trim());
            // A report that is not label-shaped still answers with its verb.
            Reply::Ok(
                Label::new(text)
                    .unwrap_or_else(|_| Label::new(fault.verb()).expect("a verb is a label")),
            )
        }
        Err(reason) => Reply::Err(reason.replace(['\n', '\r'], " ")),
    }
}
