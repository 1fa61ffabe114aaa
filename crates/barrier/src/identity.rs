//! Who this process is in a run: the controller's address and its node
//! index, from our launcher's environment or from an existing launcher's
//! (Open MPI, MPICH, Slurm, a Kubernetes Indexed Job).

use std::net::{SocketAddr, ToSocketAddrs};

use multinode_wire::NodeId;

use crate::BarrierError;

/// Environment variable: the controller's address (`host:port`).
pub const ENV_ADDR: &str = "MULTINODE_BARRIER_ADDR";
/// Environment variable: this process's node index, `0..MULTINODE_NODES`.
pub const ENV_INDEX: &str = "MULTINODE_NODE_INDEX";
/// Environment variable: how many nodes the launcher started.
pub const ENV_NODES: &str = "MULTINODE_NODES";

/// Where a node index is read from, first found wins: ours, then Open
/// MPI's, MPICH's (PMI), Slurm's, and a Kubernetes Indexed Job's.
pub const INDEX_VARS: [&str; 5] = [
    ENV_INDEX,
    "OMPI_COMM_WORLD_RANK",
    "PMI_RANK",
    "SLURM_PROCID",
    "JOB_COMPLETION_INDEX",
];

/// Where the node count is read from, first found wins (a Kubernetes Job
/// has no such variable: set `MULTINODE_NODES` in its manifest).
pub const NODES_VARS: [&str; 4] = [
    ENV_NODES,
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
    "SLURM_NTASKS",
];

/// This process's node index, from the first of [`INDEX_VARS`] that is set.
pub fn env_index() -> Result<NodeId, BarrierError> {
    index_from(|name| std::env::var(name).ok())
}

/// The node count, from the first of [`NODES_VARS`] that is set.
pub fn env_nodes() -> Result<Option<u32>, BarrierError> {
    nodes_from(|name| std::env::var(name).ok())
}

/// Reads the controller's address (`MULTINODE_BARRIER_ADDR`) and this
/// process's node index ([`env_index`]).
pub fn env_identity() -> Result<(SocketAddr, NodeId), BarrierError> {
    let addr = std::env::var(ENV_ADDR).map_err(|e| BarrierError::Env {
        name: ENV_ADDR,
        problem: e.to_string(),
    })?;
    let addr = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or(BarrierError::Env {
            name: ENV_ADDR,
            problem: format!("{addr:?} is not a socket address"),
        })?;
    Ok((addr, env_index()?))
}

fn index_from(get: impl Fn(&str) -> Option<String>) -> Result<NodeId, BarrierError> {
    for name in INDEX_VARS {
        if let Some(v) = get(name) {
            return v.trim().parse().map_err(|_| BarrierError::Env {
                name,
                problem: format!("{v:?} is not a node index"),
            });
        }
    }
    Err(BarrierError::Env {
        name: ENV_INDEX,
        problem: format!(
            "not set, and neither is any of {}",
            INDEX_VARS[1..].join(", ")
        ),
    })
}

fn nodes_from(get: impl Fn(&str) -> Option<String>) -> Result<Option<u32>, BarrierError> {
    for name in NODES_VARS {
        if let Some(v) = get(name) {
            return match v.trim().parse::<u32>() {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => Err(BarrierError::Env {
                    name,
                    problem: format!("{v:?} is not a node count"),
                }),
            };
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn each_launchers_rank_variable_is_an_index_and_ours_wins() {
        for var in INDEX_VARS {
            assert_eq!(index_from(env(&[(var, "3")])).unwrap(), NodeId(3), "{var}");
        }
        let both = [("SLURM_PROCID", "5"), (ENV_INDEX, "2")];
        assert_eq!(index_from(env(&both)).unwrap(), NodeId(2));
        let mpi = [("PMI_RANK", "4"), ("JOB_COMPLETION_INDEX", "9")];
        assert_eq!(index_from(env(&mpi)).unwrap(), NodeId(4));
        assert_eq!(
            nodes_from(env(&[("OMPI_COMM_WORLD_SIZE", "8")])).unwrap(),
            Some(8)
        );
        assert_eq!(nodes_from(env(&[])).unwrap(), None);
    }

    #[test]
    fn a_bad_or_missing_index_names_the_variable() {
        let e = index_from(env(&[("OMPI_COMM_WORLD_RANK", "x")])).unwrap_err();
        assert!(e.to_string().contains("OMPI_COMM_WORLD_RANK"), "{e}");
        let e = index_from(env(&[])).unwrap_err().to_string();
        assert!(
            e.contains("MULTINODE_NODE_INDEX") && e.contains("JOB_COMPLETION_INDEX"),
            "{e}"
        );
        assert!(nodes_from(env(&[("SLURM_NTASKS", "0")])).is_err());
    }
}
