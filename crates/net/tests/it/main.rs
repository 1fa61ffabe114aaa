//! The lab on the real kernel: namespaces, veth, a bridge, nftables and
//! signals. Needs root (CI runs as root); without it every test fails with
//! the lab's privilege error, never skips. Linux only.
#![cfg(target_os = "linux")]

mod faults;
mod hosts;
mod processes;
