//! `multinode-mesh` integration tests.

mod faults;
