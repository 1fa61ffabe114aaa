use std::io;
use std::time::Duration;

use multinode_wire::{Label, NodeId, WireError};

/// Why a barrier call or a launch did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BarrierError {
    /// The controller's deadline passed before every member arrived.
    #[error("barrier {label} timed out; missing node(s): {}", list(missing))]
    Timeout {
        /// The barrier.
        label: Label,
        /// The members that had not arrived.
        missing: Vec<NodeId>,
    },
    /// The barrier can never complete (a member disconnected or exited, or
    /// this request was refused), with the controller's cause.
    #[error("barrier {label} failed: {cause}")]
    Failed {
        /// The barrier.
        label: Label,
        /// Why, as the controller said it.
        cause: String,
    },
    /// The controller refused a request or the connection (`ERR` line).
    #[error("refused by the controller: {0}")]
    Refused(String),
    /// The controller closed the connection.
    #[error("the controller closed the connection")]
    Closed,
    /// No answer within the timeout given to a blocking call. The client is
    /// still usable.
    #[error("no answer from the controller within {0:?}")]
    LocalTimeout(Duration),
    /// The launcher's environment is missing or malformed.
    #[error("environment variable {name}: {problem}")]
    Env {
        /// The variable.
        name: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A line could not be written or parsed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The connection or a child process failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

fn list(ids: &[NodeId]) -> String {
    if ids.is_empty() {
        return "none listed".into();
    }
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
