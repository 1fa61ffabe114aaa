//! Integration tests of multinode-lww: the replica's laws and the
//! reference defects, the simulator's convergence scenarios, the async node.

mod laws;
mod node;
mod sim;
