//! A barrier controller's settings.

use std::time::Duration;

/// Settings of a barrier controller.
#[derive(Clone, Debug)]
pub struct Config {
    /// How many members every barrier waits for (node ids `0..nodes`).
    pub nodes: u32,
    /// How long a barrier may stay open after its first arrival.
    pub timeout: Duration,
    /// How long a disconnect waits for the process's exit status before it
    /// fails the pending barriers with a plain "disconnected" cause. Zero
    /// fails at once; the launcher sets a few milliseconds so the cause names
    /// the exit status or signal.
    pub disconnect_grace: Duration,
}

impl Config {
    /// A controller for `nodes` members with the default 30 s timeout.
    pub fn new(nodes: u32) -> Self {
        Self {
            nodes,
            timeout: Duration::from_secs(30),
            disconnect_grace: Duration::ZERO,
        }
    }
}
