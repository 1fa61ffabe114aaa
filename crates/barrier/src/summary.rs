//! What a barrier controller saw: barriers passed and failed, per node.

use multinode_wire::Label;

/// One node's record, for the launcher's and the CLI's summaries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeRecord {
    /// Barriers this node passed.
    pub passed: u32,
    /// The first barrier that failed or timed out while this node was a
    /// member, and why.
    pub first_failure: Option<(Label, String)>,
}

/// What a controller saw over its life.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Barriers that every member passed.
    pub passed: u64,
    /// Barriers that failed or timed out.
    pub failed: u64,
    /// Per node, indexed by node id.
    pub nodes: Vec<NodeRecord>,
}
