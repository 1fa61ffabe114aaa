//! `multinode-barrier` integration tests: real sockets, real processes.

mod clients;
mod defects;
mod hostile;
mod processes;
mod support;
