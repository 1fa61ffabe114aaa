//! `multinode-filestore` integration tests.

mod store;
