//! The `multinode-wire` integration tests: one binary, one module per concern.

mod golden;
mod hostile;
mod io;
mod props;
mod support;
