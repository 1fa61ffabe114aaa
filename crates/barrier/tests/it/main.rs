//! `multinode-barrier` integration tests: real sockets, real processes.

mod clients;
mod conductor;
mod defects;
mod hostile;
mod processes;
mod support;
