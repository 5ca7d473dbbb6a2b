//! Writing files so a crash never leaves a half-written one: temp file in the same folder,
//! flushed, then renamed over the target. The one implementation in the workspace (retrieval's
//! `npy::write_atomically` maps its error).

use std::io::Write;
use std::path::Path;

use crate::error::{DataError, Result};

/// Random alphanumerics after a temp file's `.<file name>.` prefix.
const TEMP_SUFFIX_LEN: usize = 6;

/// Writes `bytes` to `path` atomically (temp file + rename). The temp file is
/// `.<file name>.XXXXXX` (six alphanumerics), so what a killed write leaves says what it was
/// writing, and a folder's owner can sweep exactly its own leftovers (an index sweeps
/// `.current.XXXXXX`).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .rand_bytes(TEMP_SUFFIX_LEN)
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(|e| DataError::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| DataError::io(path, e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| DataError::io(path, e))?;
    tmp.persist(path)
        .map_err(|e| DataError::io(path, e.error))?;
    Ok(())
}

/// Whether `file_name` is a temp file [`write_atomically`] made on its way to a file named
/// `target`: `.<target>.` and the random suffix, nothing else (a user's `.current.notes` is
/// not one), so a folder's owner can sweep what a killed write left.
pub fn is_temp_file_of(file_name: &str, target: &str) -> bool {
    file_name
        .strip_prefix('.')
        .and_then(|rest| rest.strip_prefix(target))
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|suffix| {
            suffix.len() == TEMP_SUFFIX_LEN && suffix.chars().all(|c| c.is_ascii_alphanumeric())
        })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_files_get_the_same_mode_as_plain_ones() {
        // A temp file is created 0600; the renamed result must follow the umask like any file.
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"x").unwrap();
        let atomic = dir.path().join("atomic");
        super::write_atomically(&atomic, b"x").unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&atomic), mode(&plain));
    }

    #[test]
    fn temp_files_are_told_from_a_users_files() {
        use super::is_temp_file_of;
        assert!(is_temp_file_of(".current.x7Yz0a", "current"));
        assert!(!is_temp_file_of(".current.notes", "current"));
        assert!(!is_temp_file_of(".current.x7Yz0ab", "current"));
        assert!(!is_temp_file_of(".current.x7Yz-a", "current"));
        assert!(!is_temp_file_of("current.x7Yz0a", "current"));
        assert!(!is_temp_file_of(".currently.x7Yz0a", "current"));
        assert!(!is_temp_file_of(".meta.json.x7Yz0a", "current"));
        assert!(is_temp_file_of(".meta.json.x7Yz0a", "meta.json"));
    }
}
