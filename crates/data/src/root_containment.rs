//! Keeping a list's images inside its root folder after symlinks are resolved.
//!
//! Row paths are checked lexically when a CSV is parsed (no `..`, not absolute; see
//! [`crate::csv_table::safe_relative_path`]), but a symlink inside the root can still point
//! anywhere: a downloaded dataset holding `photos/key.jpg -> ~/.ssh/id_ed25519` would make
//! `index build` record that file and `serve` hand it out at `/images/{id}`. So lists that feed an
//! index resolve every path and refuse one that lands outside the resolved root. A user who links
//! image folders on purpose (data on another disk) says so with `--follow-links`.

use std::path::Path;

use crate::{DataError, Result, Sample};

/// Refuses the first sample whose resolved path is outside the resolved `root`. Paths that do
/// not exist are left to the image loader, which counts them as unreadable.
pub fn check_inside_root(root: &Path, samples: &[Sample]) -> Result<()> {
    let root = if root.as_os_str().is_empty() {
        Path::new(".")
    } else {
        root
    };
    let resolved_root = root
        .canonicalize()
        .map_err(|e| DataError::io(root.to_path_buf(), e))?;
    for sample in samples {
        let Ok(resolved) = sample.path.canonicalize() else {
            continue;
        };
        if !resolved.starts_with(&resolved_root) {
            return Err(DataError::Invalid {
                path: sample.path.clone(),
                message: format!(
                    "resolves to {} through a symlink, outside the list's root {}; \
                     pass --follow-links if the link is yours",
                    resolved.display(),
                    resolved_root.display()
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn sample(path: PathBuf) -> Sample {
        Sample {
            path,
            label: 0,
            crop: crate::Crop::None,
        }
    }

    #[test]
    fn a_link_out_of_the_root_is_refused_and_one_inside_is_kept() {
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret.jpg");
        std::fs::write(&secret, b"x").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("a.jpg"), b"x").unwrap();
        std::os::unix::fs::symlink(root.path().join("a.jpg"), root.path().join("b.jpg")).unwrap();
        std::os::unix::fs::symlink(&secret, root.path().join("c.jpg")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("dir")).unwrap();

        let inside = ["a.jpg", "b.jpg", "missing.jpg"].map(|n| sample(root.path().join(n)));
        check_inside_root(root.path(), &inside).unwrap();
        for escape in ["c.jpg", "dir/secret.jpg"] {
            let err = check_inside_root(root.path(), &[sample(root.path().join(escape))])
                .unwrap_err()
                .to_string();
            assert!(err.contains("outside the list's root"), "{err}");
            assert!(err.contains(escape), "{err}");
        }
    }
}
