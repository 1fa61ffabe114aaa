//! A network lab on one Linux machine, where the **kernel** makes the
//! faults, for programs in any language.
//!
//! A [`Lab`] is N hosts: each a network namespace with its own address in
//! one /22 of 198.18.0.0/15 (the range reserved for test labs) and a veth
//! link to one bridge. A process started on a host ([`Lab::command`],
//! [`Lab::spawn`]) sees only that host's interfaces and reaches the others
//! by address. Faults use the kit's one vocabulary: [`Lab::partition`],
//! [`Lab::cut`] (one way), [`Lab::heal`], [`Lab::drop_all`] and
//! [`Lab::drop_link`] are nftables rules on the receiver's input;
//! [`Lab::bandwidth`] is a `tbf` qdisc; [`Lab::flap`] takes a link down
//! and up; [`Lab::pause`], [`Lab::resume`] and [`Lab::kill`] signal the
//! host's process group; [`Lab::clock_offset`] starts processes under
//! libfaketime. Every fault reports what it did through [`Lab::counters`].
//!
//! Nothing is left behind on any path, SIGKILL of the owner included: the
//! lab's namespaces have no names and its processes live in a PID namespace
//! whose init exits when the owner does (see `lab.rs`). Its hosts share a
//! `/dev/shm` of the lab's own, which goes with it.
//!
//! Needs Linux (elsewhere [`Lab::new`] is [`NetError::Unsupported`]), root (or CAP_SYS_ADMIN and CAP_NET_ADMIN), and `ip`, `tc`
//! (iproute2), `nft` (nftables), `nsenter` and `unshare` (util-linux). The
//! kernel has no delay here (no netem): delays stay with the in-process
//! appliers of the fault model.

mod counters;
mod error;
mod faketime;
mod faults;
mod lab;
mod namespace;
mod process;
mod rules;
mod subnet;

pub use counters::{Counters, LinkDrops};
pub use error::NetError;
pub use faketime::{libfaketime, libfaketime_candidates, remove_faketime_names};
pub use lab::Lab;
pub use subnet::{MAX_HOSTS, Subnet};
