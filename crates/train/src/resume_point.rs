//! Where `train --resume` continues a run from: the checkpoint `runs/NAME/last` names — or,
//! when that one was damaged after it was written (a run folder copied in part, a file cut
//! short or changed: `data::folder_manifest`), the newest intact checkpoint before it. The
//! damaged ones are set aside as `checkpoints/damaged-step-N` (kept, never deleted) and
//! `last` / `best` pointed at intact ones, so the run is in order again before its next
//! checkpoint. Without a usable `last`, or without any intact checkpoint, resuming is an
//! error that says what the folder holds — it never silently restarts at step 0.

use std::path::{Path, PathBuf};

use crate::checkpoint::{ck_err, prune_checkpoints, read_state, write_pointer};
use crate::error::TrainError;
use visual_search_data::file_check::Depth;
use visual_search_data::folder_manifest;

/// Where `--resume` continues from, and the newer checkpoints it had to pass over.
#[derive(Debug, Clone, PartialEq)]
pub struct ResumePoint {
    pub dir: PathBuf,
    /// Checkpoints newer than `dir` found damaged, newest first.
    pub passed_over: Vec<DamagedCheckpoint>,
}

/// A checkpoint `--resume` passed over.
#[derive(Debug, Clone, PartialEq)]
pub struct DamagedCheckpoint {
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
    /// Where [`set_aside_passed_over`] moved it, once it has.
    pub set_aside: Option<PathBuf>,
}

impl DamagedCheckpoint {
    fn new(path: PathBuf, reason: String) -> Self {
        DamagedCheckpoint {
            path,
            reason,
            set_aside: None,
        }
    }
}

/// Why a checkpoint folder cannot be resumed from, if it cannot: no readable `state.json`, or
/// a file that differs from what its manifest recorded.
fn damage(dir: &Path) -> Option<String> {
    if !dir.join("state.json").is_file() {
        return Some("state.json is missing".to_string());
    }
    if let Err(e) = read_state(dir) {
        return Some(e.to_string());
    }
    folder_manifest::verify(dir, Depth::Contents).err()
}

/// Renames a damaged checkpoint of the run to `checkpoints/damaged-step-N`, out of what
/// resuming, pruning and `best` look at, without deleting it; returns where it went. A folder
/// outside `checkpoints/`, or one whose new name is taken, stays where it is.
fn set_aside_damaged(run_dir: &Path, dir: &Path) -> Option<PathBuf> {
    let name = dir.file_name()?.to_str()?;
    let checkpoints = run_dir.join("checkpoints");
    if dir.parent() != Some(checkpoints.as_path()) || !name.starts_with("step-") || !dir.is_dir() {
        return None;
    }
    let target = checkpoints.join(format!("damaged-{name}"));
    if target.exists() {
        return None;
    }
    std::fs::rename(dir, &target).ok()?;
    Some(target)
}

/// Puts a run back in order after [`resume_checkpoint`] passed over damaged checkpoints: sets
/// each aside (recording where it went in its `set_aside`), points `last` at the checkpoint
/// resumed from and `best` at the best intact one, so `export` of the run works before the
/// resumed run writes its next checkpoint.
pub fn set_aside_passed_over(
    run_dir: &Path,
    point: &mut ResumePoint,
    keep: usize,
) -> Result<(), TrainError> {
    if point.passed_over.is_empty() {
        return Ok(());
    }
    for damaged in &mut point.passed_over {
        damaged.set_aside = set_aside_damaged(run_dir, &damaged.path);
    }
    let relative = point.dir.strip_prefix(run_dir).unwrap_or(&point.dir);
    write_pointer(run_dir, "last", &relative.to_string_lossy())?;
    prune_checkpoints(run_dir, keep)?;
    Ok(())
}

/// The step-named checkpoint folders of a run with a readable state, newest first.
fn checkpoints_newest_first(run_dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut all: Vec<(usize, PathBuf)> = std::fs::read_dir(run_dir.join("checkpoints"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-"))
        })
        .filter_map(|p| read_state(&p).ok().map(|s| (s.step, p)))
        .collect();
    all.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
    all
}

/// What `--resume` continues from: the checkpoint `last` names — or, when that one is
/// damaged (a run folder copied in part, a file cut short or changed since it was written),
/// the newest intact one before it, with the damaged ones listed for the user. Without a
/// usable `last`, or without any intact checkpoint, an error says what the run folder holds —
/// resuming never silently restarts at step 0 over an existing run.
pub fn resume_checkpoint(run_dir: &Path) -> Result<ResumePoint, TrainError> {
    let last = run_dir.join("last");
    let text = match std::fs::read_to_string(&last) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let held: Vec<String> = std::fs::read_dir(run_dir)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .take(8)
                        .collect()
                })
                .unwrap_or_default();
            return Err(ck_err(
                run_dir,
                format!(
                    "nothing to resume: no `last` checkpoint pointer (the folder holds: {}). \
                     Start a new run with --config instead",
                    if held.is_empty() {
                        "nothing".to_string()
                    } else {
                        held.join(", ")
                    }
                ),
            ));
        }
        Err(e) => return Err(TrainError::io(&last, e)),
    };
    let name = text.trim();
    let dir = run_dir.join(name);
    let escapes = Path::new(name)
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)));
    if name.is_empty() || escapes {
        return Err(ck_err(
            &last,
            format!(
                "names {name:?}, which is not a checkpoint folder of this run; cannot resume \
                 (the run's files are left as they are)"
            ),
        ));
    }
    let Some(why) = damage(&dir) else {
        return Ok(ResumePoint {
            dir,
            passed_over: Vec::new(),
        });
    };
    let mut passed_over = vec![DamagedCheckpoint::new(dir.clone(), why)];
    for (_, candidate) in checkpoints_newest_first(run_dir) {
        if candidate == dir {
            continue;
        }
        match damage(&candidate) {
            None => {
                return Ok(ResumePoint {
                    dir: candidate,
                    passed_over,
                });
            }
            Some(why) => passed_over.push(DamagedCheckpoint::new(candidate, why)),
        }
    }
    let listed: Vec<String> = passed_over
        .iter()
        .map(|d| format!("{}: {}", d.path.display(), d.reason))
        .collect();
    Err(ck_err(
        &last,
        format!(
            "names {name:?}, which cannot be resumed from, and no other checkpoint of the run \
             is intact; cannot resume (the run's files are left as they are): {}",
            listed.join("; ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::{resume_checkpoint, set_aside_passed_over};
    use crate::checkpoint::{TrainState, resolve_checkpoint};
    use crate::labels::ClassIndex;

    fn write_checkpoint(run: &std::path::Path, step: usize) -> std::path::PathBuf {
        let ck = run.join(format!("checkpoints/step-{step:07}"));
        std::fs::create_dir_all(&ck).unwrap();
        let state = TrainState {
            step,
            epoch: 0,
            batches_in_epoch: step,
            image_size: 32,
            model_name: "tiny_resnet".into(),
            neck_dim: None,
            gem: false,
            classes: ClassIndex::from_labels([1, 2]),
            train_list: None,
            metrics: None,
            history: Vec::new(),
        };
        std::fs::write(ck.join("state.json"), serde_json::to_vec(&state).unwrap()).unwrap();
        std::fs::write(ck.join("embedder.bpk"), vec![3u8; 100]).unwrap();
        visual_search_data::folder_manifest::write_manifest(&ck).unwrap();
        ck
    }

    #[test]
    fn resume_without_a_usable_last_is_an_error_that_says_what_is_there() {
        let run = tempfile::tempdir().unwrap();
        std::fs::write(run.path().join("metrics.csv"), "step,loss\n1,2\n").unwrap();
        let err = resume_checkpoint(run.path()).unwrap_err().to_string();
        assert!(
            err.contains("no `last`") && err.contains("metrics.csv"),
            "{err}"
        );
        std::fs::write(run.path().join("last"), "checkpoints/step-0000040\n").unwrap();
        let err = resume_checkpoint(run.path()).unwrap_err().to_string();
        assert!(
            err.contains("step-0000040")
                && err.contains("state.json is missing")
                && err.contains("cannot resume"),
            "{err}"
        );
        std::fs::write(run.path().join("last"), "../elsewhere\n").unwrap();
        assert!(resume_checkpoint(run.path()).is_err());
        let ck = write_checkpoint(run.path(), 40);
        std::fs::write(run.path().join("last"), "checkpoints/step-0000040\n").unwrap();
        let point = resume_checkpoint(run.path()).unwrap();
        assert_eq!((point.dir, point.passed_over), (ck, Vec::new()));
        assert_eq!(
            std::fs::read_to_string(run.path().join("metrics.csv")).unwrap(),
            "step,loss\n1,2\n",
            "nothing is truncated"
        );
    }

    #[test]
    fn a_damaged_last_checkpoint_resumes_from_the_newest_intact_one() {
        let run = tempfile::tempdir().unwrap();
        let (oldest, older, newer, last) = (
            write_checkpoint(run.path(), 10),
            write_checkpoint(run.path(), 20),
            write_checkpoint(run.path(), 30),
            write_checkpoint(run.path(), 40),
        );
        std::fs::write(run.path().join("last"), "checkpoints/step-0000040\n").unwrap();
        std::fs::write(last.join("embedder.bpk"), vec![3u8; 60]).unwrap();
        std::fs::remove_file(newer.join("state.json")).unwrap();
        std::fs::write(older.join("embedder.bpk"), vec![4u8; 100]).unwrap();
        let mut point = resume_checkpoint(run.path()).unwrap();
        assert_eq!(point.dir, oldest);
        let passed: Vec<_> = point.passed_over.iter().map(|d| d.path.clone()).collect();
        assert_eq!(
            passed,
            vec![last.clone(), older.clone()],
            "{:?}",
            point.passed_over
        );
        assert!(
            point.passed_over[0]
                .reason
                .contains("embedder.bpk has 60 bytes, 100")
        );
        assert!(
            point.passed_over[1]
                .reason
                .contains("embedder.bpk has changed")
        );

        // Set aside (kept, renamed), `last` and `best` on the intact one at once.
        set_aside_passed_over(run.path(), &mut point, 3).unwrap();
        let moved: Vec<_> = point
            .passed_over
            .iter()
            .map(|d| d.set_aside.clone())
            .collect();
        let aside = |d: &std::path::Path| {
            d.with_file_name(format!(
                "damaged-{}",
                d.file_name().unwrap().to_str().unwrap()
            ))
        };
        assert_eq!(moved, vec![Some(aside(&last)), Some(aside(&older))]);
        assert!(aside(&last).join("embedder.bpk").is_file() && !last.exists());
        assert_eq!(
            std::fs::read_to_string(run.path().join("last"))
                .unwrap()
                .trim(),
            "checkpoints/step-0000010"
        );
        assert_eq!(
            resolve_checkpoint(run.path()).unwrap(),
            std::fs::canonicalize(&oldest).unwrap()
        );
        let again = resume_checkpoint(run.path()).unwrap();
        assert_eq!((again.dir, again.passed_over.len()), (oldest.clone(), 0));

        std::fs::write(oldest.join("embedder.bpk"), b"").unwrap();
        let err = resume_checkpoint(run.path()).unwrap_err().to_string();
        assert!(
            err.contains("no other checkpoint of the run is intact")
                && err.contains("step-0000010"),
            "{err}"
        );
    }
}
