//! Files a command writes at a path the user names (`--out`), or next to one (`rank`'s CSV
//! beside its `.npy`, `mine merge`'s labels beside its list): a file already there is replaced
//! only when it is what the command writes — an earlier run's output — or empty. A user's
//! notes, a dataset's `gallery.csv` or another tool's list under that name is refused before
//! any work starts, naming the file and what it should have been. Folder outputs (an index, an
//! exported model) keep their own rules of what is theirs and share [`foreign_entries`] and
//! [`some_names`] to say what else a folder holds.

use std::io::Read;
use std::path::Path;

use crate::error::{DataError, Result};

/// What a command's output file holds.
#[derive(Debug, Clone, Copy)]
pub enum OutputFormat<'a> {
    /// A NumPy `.npy` array.
    Npy,
    /// A safetensors file.
    Safetensors,
    /// A CSV whose first line is these column names.
    Csv(&'a [&'a str]),
}

impl OutputFormat<'_> {
    fn describe(&self) -> String {
        match self {
            OutputFormat::Npy => "a .npy array".to_string(),
            OutputFormat::Safetensors => "a safetensors file".to_string(),
            OutputFormat::Csv(header) => format!("a CSV with the header `{}`", header.join(",")),
        }
    }

    /// Whether a file of `size` bytes starting with `head` is of this format.
    fn matches(&self, head: &[u8], size: u64) -> bool {
        match self {
            OutputFormat::Npy => head.starts_with(b"\x93NUMPY"),
            OutputFormat::Safetensors => {
                head.len() > 8 && head[8] == b'{' && {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&head[..8]);
                    u64::from_le_bytes(n)
                        .checked_add(8)
                        .is_some_and(|end| end <= size)
                }
            }
            OutputFormat::Csv(header) => {
                let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                line == header.join(",").as_bytes()
            }
        }
    }
}

/// Refuses to replace `path` unless it is absent, empty or of `format` (an earlier output).
pub fn check_replaceable_output(path: &Path, format: OutputFormat<'_>) -> Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(DataError::io(path, e)),
    };
    if meta.is_dir() {
        return Err(DataError::Invalid {
            path: path.to_path_buf(),
            message: format!("is a folder; the output is {}", format.describe()),
        });
    }
    if meta.len() == 0 {
        return Ok(());
    }
    let mut head = Vec::with_capacity(4096);
    std::fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_end(&mut head))
        .map_err(|e| DataError::io(path, e))?;
    if format.matches(&head, meta.len()) {
        return Ok(());
    }
    Err(DataError::Invalid {
        path: path.to_path_buf(),
        message: format!(
            "exists and is not {} (what this command writes), so it was not written by an \
             earlier run; refusing to replace it — choose another output path or move the file",
            format.describe()
        ),
    })
}

/// The names in `dir` that `ours` does not recognise, sorted; `None` when `dir` does not exist.
pub fn foreign_entries(
    dir: &Path,
    ours: impl Fn(&str) -> bool,
) -> std::io::Result<Option<Vec<String>>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut foreign: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !ours(name))
        .collect();
    foreign.sort_unstable();
    Ok(Some(foreign))
}

/// The first five of `names` and how many more: what a refusal says a folder holds.
pub fn some_names(names: &[String]) -> String {
    let shown = names[..names.len().min(5)].join(", ");
    match names.len().saturating_sub(5) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

#[cfg(test)]
mod tests {
    use super::{OutputFormat, check_replaceable_output, foreign_entries, some_names};

    #[test]
    fn a_folders_foreign_entries_are_listed_sorted_and_named_five_at_most() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            foreign_entries(&dir.path().join("none"), |_| false).unwrap(),
            None
        );
        for name in ["g", "b", "current", "a", "f", "e", "d", "c"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let foreign = foreign_entries(dir.path(), |n| n == "current")
            .unwrap()
            .unwrap();
        assert_eq!(foreign, ["a", "b", "c", "d", "e", "f", "g"]);
        assert_eq!(some_names(&foreign), "a, b, c, d, e and 2 more");
        assert_eq!(some_names(&foreign[..2]), "a, b");
    }

    #[test]
    fn only_absent_empty_or_same_format_files_are_replaceable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let header = ["query_index", "rank", "gallery_index", "score"];
        let formats = [
            OutputFormat::Npy,
            OutputFormat::Safetensors,
            OutputFormat::Csv(&header),
        ];
        for format in formats {
            assert!(check_replaceable_output(&path, format).is_ok(), "absent");
        }
        std::fs::write(&path, b"").unwrap();
        for format in formats {
            assert!(check_replaceable_output(&path, format).is_ok(), "empty");
        }
        let mut safetensors = 2u64.to_le_bytes().to_vec();
        safetensors.extend(b"{}");
        let cases: [(&[u8], usize); 4] = [
            (b"\x93NUMPY\x01\x00", 0),
            (&safetensors, 1),
            (b"query_index,rank,gallery_index,score\r\n0,0,5,0.9\n", 2),
            (b"img_path,product_id\n", 3),
        ];
        for (bytes, fits) in cases {
            std::fs::write(&path, bytes).unwrap();
            for (i, format) in formats.into_iter().enumerate() {
                let result = check_replaceable_output(&path, format);
                assert_eq!(result.is_ok(), i == fits, "{bytes:?} as {format:?}");
                if let Err(e) = result {
                    assert!(e.to_string().contains("refusing to replace it"), "{e}");
                }
            }
        }
        // A safetensors header longer than the file is not one.
        let mut cut = 100u64.to_le_bytes().to_vec();
        cut.extend(b"{}");
        std::fs::write(&path, cut).unwrap();
        assert!(check_replaceable_output(&path, OutputFormat::Safetensors).is_err());
        let err = check_replaceable_output(dir.path(), OutputFormat::Npy).unwrap_err();
        assert!(err.to_string().contains("is a folder"), "{err}");
    }
}
