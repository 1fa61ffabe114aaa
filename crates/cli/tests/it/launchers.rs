//! Nodes started by launchers that exist: each takes its node id from the
//! launcher's rank variable and meets the others at `barrier serve`.

use std::process::Command;

use crate::{BIN, serve, text, wait_exit};

/// Three ranks of a real `mpirun` (Open MPI; `.ci/run` installs
/// `openmpi-bin`) join as nodes 0, 1 and 2 from `OMPI_COMM_WORLD_RANK`.
#[test]
fn mpirun_ranks_join_as_their_node_ids() {
    let (mut controller, addr) = serve(&["--nodes", "3", "--timeout", "20"]);
    let out = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "3"])
        .args(["-x", "MULTINODE_BARRIER_ADDR"])
        .args([BIN, "barrier", "pass", "one", "two"])
        .env("MULTINODE_BARRIER_ADDR", addr.to_string())
        .env_remove("MULTINODE_NODE_INDEX")
        .output()
        .unwrap_or_else(|e| panic!("mpirun is needed (Debian: apt-get install openmpi-bin): {e}"));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for rank in 0..3 {
        for label in ["one", "two"] {
            let line = format!("node {rank} of 3 passed {label}\n");
            assert!(stdout.contains(&line), "missing {line:?} in {stdout}");
        }
    }
    let status = wait_exit(&mut controller);
    assert!(status.success(), "barrier serve: {status}");
}

/// srun's, MPICH's and an Indexed Job's variables name the node the same
/// way (set here as those launchers set them; one process per rank).
#[test]
fn slurm_pmi_and_indexed_job_ranks_are_node_ids() {
    let (mut controller, addr) = serve(&["--nodes", "3", "--timeout", "20"]);
    let children: Vec<_> = [
        ("SLURM_PROCID", 0),
        ("PMI_RANK", 1),
        ("JOB_COMPLETION_INDEX", 2),
    ]
    .into_iter()
    .map(|(var, rank)| {
        Command::new(BIN)
            .args(["barrier", "pass", "start"])
            .env("MULTINODE_BARRIER_ADDR", addr.to_string())
            .env_remove("MULTINODE_NODE_INDEX")
            .env(var, rank.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    })
    .collect();
    for (rank, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(
            text(&out.stdout),
            format!("node {rank} of 3 passed start\n")
        );
    }
    assert!(wait_exit(&mut controller).success());
}
