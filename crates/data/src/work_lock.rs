//! One process at a time in a folder that a long job writes and resumes from (a training run,
//! a mining work folder): an exclusive advisory lock (`flock`) on a file inside it, held for
//! the job's life and released by the OS when the process ends, however it ends. A second job
//! started on the same folder — a `--resume` typed in a second terminal while the first still
//! runs — is refused at once instead of pruning the other's checkpoints or interleaving its
//! journal. (The search index takes a lock of its own only around each write, and waits.)
//!
//! A folder that several jobs may fill at once (one image folder shared by the downloads of
//! several categories) is held shared instead: each job's start-up sweep of what a killed job
//! left runs only when no other job holds the folder, so it never removes a live job's
//! half-written file. That lock is on the folder's own directory handle, so nothing is added
//! to a folder of the user's images.
//!
//! A folder of part files is held by its directory handle too ([`hold_folder`]): shared by
//! the workers of one job, alone by a whole run that removes its parts when it is done.
//!
//! Where the file system cannot lock (an NFS mount without its lock daemon), the job warns and
//! runs unguarded, as it did before these locks: a safety net must not stop the work.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use crate::error::{DataError, Result};

/// Held while a job writes its folder; dropping it releases the lock.
#[derive(Debug)]
pub struct WorkLock {
    _file: Option<File>,
}

/// The job runs without a lock where the file system cannot take one.
fn unguarded(path: &Path, e: &std::io::Error) -> WorkLock {
    tracing::warn!(
        "{}: cannot take a lock ({e}); running without protection against a second job here",
        path.display()
    );
    WorkLock { _file: None }
}

/// Locks `dir/file_name` for `job` (a phrase: "training", "mine features"), creating the file;
/// refuses when another process holds it.
pub fn lock_work_folder(dir: &Path, file_name: &str, job: &str) -> Result<WorkLock> {
    let path = dir.join(file_name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| DataError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(WorkLock { _file: Some(file) }),
        Err(TryLockError::WouldBlock) => Err(DataError::Invalid {
            path: dir.to_path_buf(),
            message: format!(
                "another process is running {job} in this folder (it holds {file_name}); \
                 wait for it to finish or stop it, then run this again"
            ),
        }),
        Err(TryLockError::Error(e)) => Ok(unguarded(&path, &e)),
    }
}

/// Holds the folder `dir` itself (its directory handle, so nothing is added to a folder of
/// the user's images) shared with other jobs of the same kind. When no other job holds it,
/// `alone` runs first, under an exclusive hold (sweeping leftovers that only a dead job could
/// have left); otherwise it is skipped, and a later lone start sweeps.
pub fn lock_shared_folder<E: From<DataError>>(
    dir: &Path,
    alone: impl FnOnce() -> std::result::Result<(), E>,
) -> std::result::Result<WorkLock, E> {
    let folder = File::open(dir).map_err(|e| DataError::io(dir, e))?;
    match folder.try_lock() {
        Ok(()) => alone()?,
        Err(TryLockError::WouldBlock) => {}
        Err(TryLockError::Error(e)) => {
            alone()?;
            return Ok(unguarded(dir, &e));
        }
    }
    // Converts an exclusive hold, or waits out another job's short exclusive one.
    folder.lock_shared().map_err(|e| DataError::io(dir, e))?;
    Ok(WorkLock {
        _file: Some(folder),
    })
}

/// How [`hold_folder`] holds a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// No other job may hold it (a whole run that removes what it wrote).
    Alone,
    /// Jobs of the same kind may share it (workers of one job), but not with one holding it
    /// alone.
    Shared,
}

/// Holds the folder `dir` itself (its directory handle: nothing is added to it) for `job`;
/// refuses when another process's hold conflicts.
pub fn hold_folder(dir: &Path, hold: Hold, job: &str) -> Result<WorkLock> {
    let folder = File::open(dir).map_err(|e| DataError::io(dir, e))?;
    let taken = match hold {
        Hold::Alone => folder.try_lock(),
        Hold::Shared => folder.try_lock_shared(),
    };
    match taken {
        Ok(()) => Ok(WorkLock {
            _file: Some(folder),
        }),
        Err(TryLockError::WouldBlock) => Err(DataError::Invalid {
            path: dir.to_path_buf(),
            message: format!(
                "another process is running {job} with this folder; wait for it to finish or \
                 stop it, then run this again"
            ),
        }),
        Err(TryLockError::Error(e)) => Ok(unguarded(dir, &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::{Hold, hold_folder, lock_shared_folder, lock_work_folder};
    use crate::error::DataError;

    #[test]
    fn a_folder_held_alone_is_refused_to_any_other_holder() {
        let dir = tempfile::tempdir().unwrap();
        let a = hold_folder(dir.path(), Hold::Shared, "embed").unwrap();
        let b = hold_folder(dir.path(), Hold::Shared, "embed").unwrap();
        let err = hold_folder(dir.path(), Hold::Alone, "embed").unwrap_err();
        assert!(
            err.to_string().contains("another process is running embed"),
            "{err}"
        );
        drop((a, b));
        let alone = hold_folder(dir.path(), Hold::Alone, "embed").unwrap();
        assert!(hold_folder(dir.path(), Hold::Shared, "embed").is_err());
        assert!(hold_folder(dir.path(), Hold::Alone, "embed").is_err());
        drop(alone);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no file added"
        );
    }

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_work_folder(dir.path(), ".lock", "training").unwrap();
        // A second open file description conflicts like a second process would.
        let err = lock_work_folder(dir.path(), ".lock", "training")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("another process is running training in this folder"),
            "{err}"
        );
        drop(first);
        lock_work_folder(dir.path(), ".lock", "training").unwrap();
    }

    #[test]
    fn only_a_lone_holder_of_a_shared_folder_sweeps() {
        let dir = tempfile::tempdir().unwrap();
        let mut swept = 0;
        let first = lock_shared_folder::<DataError>(dir.path(), || {
            swept += 1;
            Ok(())
        })
        .unwrap();
        let second = lock_shared_folder::<DataError>(dir.path(), || {
            swept += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(swept, 1, "the second job shares without sweeping");
        drop((first, second));
        let _third = lock_shared_folder::<DataError>(dir.path(), || {
            swept += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(swept, 2);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no file added"
        );
    }
}
