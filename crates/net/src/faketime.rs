//! libfaketime, which shifts the wall clock of the processes it is loaded
//! into: where it is installed, and the files it leaves behind.

use std::path::PathBuf;

/// Where libfaketime may be: `MULTINODE_LIBFAKETIME`, else where Debian (and
/// most distributions) put it.
pub fn libfaketime_candidates() -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os("MULTINODE_LIBFAKETIME") {
        return vec![PathBuf::from(p)];
    }
    let arch = std::env::consts::ARCH;
    [
        format!("/usr/lib/{arch}-linux-gnu/faketime/libfaketime.so.1"),
        "/usr/lib/faketime/libfaketime.so.1".to_owned(),
        "/usr/local/lib/faketime/libfaketime.so.1".to_owned(),
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect()
}

/// The first of [`libfaketime_candidates`] that exists.
pub fn libfaketime() -> Option<PathBuf> {
    libfaketime_candidates().into_iter().find(|p| p.exists())
}

/// Removes the two files libfaketime creates in `/dev/shm` for a process
/// it is loaded into without the `faketime` wrapper, named by that
/// process's pid in its own PID namespace (`faketime_shm_<pid>` and the
/// semaphore `sem.faketime_sem_<pid>`). libfaketime removes them at a clean
/// exit only: a process killed by SIGKILL leaves them, and a later process
/// under libfaketime given the same pid fails to start (`shm_open failed:
/// File exists`). Call it once process `pid` is dead. Should its pid be
/// another live process's by then, that one keeps what it has mapped and
/// loses only the names. Files already gone are not an error; the first
/// other failure is returned, after both removals were tried.
pub fn remove_faketime_names(pid: u32) -> std::io::Result<()> {
    let mut first = Ok(());
    for name in [
        format!("/dev/shm/faketime_shm_{pid}"),
        format!("/dev/shm/sem.faketime_sem_{pid}"),
    ] {
        match std::fs::remove_file(&name) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound && first.is_ok() => {
                first = Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot remove {name}: {e}"),
                ));
            }
            _ => {}
        }
    }
    first
}
