//! The gossip transports' tests: one conformance suite run against both
//! transports, then what is particular to each.

mod conformance;
mod guard;
mod inproc;
mod recording;
mod support;
mod tcp;
