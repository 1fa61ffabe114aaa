//! `multinode-mesh` integration tests.

mod conformance;
mod faults;
mod memory;
mod support;
mod tcp;
