//! `multinode-filestore` integration tests.

mod damage;
mod store;
