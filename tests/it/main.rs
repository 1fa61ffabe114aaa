//! Cross-crate integration tests: the crates together in one process, and
//! a real cluster of `multinode node` processes through the binary.

mod cluster;
mod in_process;
#[cfg(target_os = "linux")]
mod lab_cluster;
mod planted;
