//! Temp files for atomic writes under one recognisable prefix (`.partial-`), so a run that was
//! killed mid-write (SIGKILL skips every destructor) can sweep its leftovers away on the next
//! start instead of leaving them in the user's folders.

use std::path::Path;

use crate::error::{MiningError, Result};

const PREFIX: &str = ".partial-";

/// A new temp file in `dir` (removed when dropped unless persisted).
pub fn create_partial(dir: &Path) -> Result<tempfile::NamedTempFile> {
    std::fs::create_dir_all(dir).map_err(|e| MiningError::io(dir, e))?;
    tempfile::Builder::new()
        .prefix(PREFIX)
        .tempfile_in(dir)
        .map_err(|e| MiningError::io(dir, e))
}

/// Writes `bytes` to `path` through a partial file and a rename.
pub fn write_via_partial(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = crate::pairs_table::parent_dir(path);
    let mut tmp = create_partial(dir)?;
    tmp.write_all(bytes).map_err(|e| MiningError::io(path, e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| MiningError::io(path, e))?;
    tmp.persist(path)
        .map_err(|e| MiningError::io(path, e.error))?;
    Ok(())
}

/// Removes leftover partial files directly in `dir`; returns how many.
pub fn remove_partials(dir: &Path) -> Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(MiningError::io(dir, e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| MiningError::io(dir, e))?;
        if entry.file_name().to_string_lossy().starts_with(PREFIX) && entry.path().is_file() {
            std::fs::remove_file(entry.path()).map_err(|e| MiningError::io(&entry.path(), e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_swept_and_finished_files_stay() {
        let dir = tempfile::tempdir().unwrap();
        write_via_partial(&dir.path().join("done.bin"), b"x").unwrap();
        let left = create_partial(dir.path()).unwrap();
        let (_, kept_path) = left.keep().unwrap();
        assert!(kept_path.exists());
        assert_eq!(remove_partials(dir.path()).unwrap(), 1);
        assert!(!kept_path.exists());
        assert!(dir.path().join("done.bin").exists());
    }
}
