//! Crash-safe checkpoints of a run: `runs/NAME/checkpoints/step-NNNNNNN/` holding the embedder
//! and head weights (no head in XBM phases), the three optimiser states, the XBM memory
//! (`xbm_memory.safetensors`) and `state.json` (step, epoch position, class index, validation
//! metrics), listed with sizes and checksums in `manifest.json` (`data::folder_manifest`). A
//! checkpoint is written into a hidden temporary folder and renamed into place, then
//! `runs/NAME/last` (a one-line file, itself replaced atomically) is pointed at it — a kill at
//! any moment leaves the previous checkpoint intact and referenced. A checkpoint damaged
//! afterwards is passed over by `--resume` and set aside (`resume_point`).
//! The best checkpoints by dev mAP (and the latest) are kept; `runs/NAME/best` links the best.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use visual_search_model::losses::xbm::MemorySnapshot;

use crate::error::TrainError;
use crate::fused_adamw::GradScale;
use crate::labels::ClassIndex;
use crate::train_model::TrainModel;
use visual_search_data::file_check::Depth;
use visual_search_data::folder_manifest;

/// Validation results of one checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ValidationMetrics {
    pub map_at_k: Option<f64>,
    pub recall_at_1: Option<f64>,
    pub map_at_r: Option<f64>,
    /// Closed-set top-1 accuracy of the head on the Product10K val list.
    pub val_accuracy: Option<f64>,
}

/// Everything besides tensors that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps done.
    pub step: usize,
    /// Epoch in progress (0-based).
    pub epoch: usize,
    /// Batches of this epoch already consumed.
    pub batches_in_epoch: usize,
    pub image_size: usize,
    pub model_name: String,
    /// Width of the linear neck, if the model has one.
    #[serde(default)]
    pub neck_dim: Option<usize>,
    #[serde(default)]
    pub gem: bool,
    pub classes: ClassIndex,
    /// What the run trains on, so `--resume` can refuse a list that changed since (absent in
    /// checkpoints written before it was recorded).
    #[serde(default)]
    pub train_list: Option<TrainListId>,
    pub metrics: Option<ValidationMetrics>,
    /// (step, dev mAP) of every validation so far, for early stopping.
    pub history: Vec<(usize, f64)>,
}

impl TrainState {
    /// Refuses to resume this run under a config that builds another model: a changed
    /// `model.name`, `model.embedding_dim` or `model.gem` would not load (or load into the
    /// wrong layers), and a changed `dataset.input_size` would train at one size while the
    /// checkpoints, and the model exported from them, declare the other.
    /// `model_name` is the registry's name for `config.model.name`.
    pub fn check_resumed_with(
        &self,
        config: &crate::config::TrainConfig,
        model_name: &str,
    ) -> Result<(), TrainError> {
        let m = &config.model;
        let differs = |key: &str, then: String, now: String| {
            Err(TrainError::Invalid(format!(
                "--resume: {key} is {now} in the config but this run was trained with {then}; \
                 a resumed run must build the same model — put it back, or start a new run with \
                 `model.pretrain_model:` set to this run's checkpoint"
            )))
        };
        if self.model_name != model_name {
            return differs(
                "model.name",
                self.model_name.clone(),
                model_name.to_string(),
            );
        }
        if self.image_size != config.dataset.input_size {
            return differs(
                "dataset.input_size",
                self.image_size.to_string(),
                config.dataset.input_size.to_string(),
            );
        }
        if self.neck_dim != m.embedding_dim {
            let show = |d: Option<usize>| d.map_or("none".to_string(), |d| d.to_string());
            return differs(
                "model.embedding_dim",
                show(self.neck_dim),
                show(m.embedding_dim),
            );
        }
        if self.gem != m.gem {
            return differs("model.gem", self.gem.to_string(), m.gem.to_string());
        }
        Ok(())
    }

    /// Refuses to resume this run on a training list other than the one it started with. A
    /// checkpoint from before the list was recorded can only be checked for labels its head
    /// does not know; it then records `samples` as its list.
    pub fn check_resumed_list(
        &mut self,
        samples: &[visual_search_data::Sample],
    ) -> Result<(), TrainError> {
        let now = TrainListId::of(samples);
        if let Some(then) = &self.train_list {
            return then.check_resumed_with(&now);
        }
        if let Some(s) = samples
            .iter()
            .find(|s| self.classes.index_of(s.label).is_none())
        {
            return Err(TrainError::Invalid(format!(
                "--resume: {} has label {}, which the training list this run started with did \
                 not have; a resumed run must see the same list",
                s.path.display(),
                s.label
            )));
        }
        self.train_list = Some(now);
        Ok(())
    }
}

/// A training list as resuming sees it: its length and its labels in order (what the epoch
/// order and the class index are made from). Image paths are left out, so a run resumes with
/// its data moved to another folder or machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainListId {
    pub images: usize,
    pub labels_crc32: u32,
}

impl TrainListId {
    pub fn of(samples: &[visual_search_data::Sample]) -> Self {
        let mut hasher = crc32fast::Hasher::new();
        for s in samples {
            hasher.update(&s.label.to_le_bytes());
        }
        TrainListId {
            images: samples.len(),
            labels_crc32: hasher.finalize(),
        }
    }

    /// Refuses to resume a run that started on `self` with the list `now`.
    pub fn check_resumed_with(&self, now: &TrainListId) -> Result<(), TrainError> {
        if self == now {
            return Ok(());
        }
        let what = match self.images == now.images {
            true => format!("its {} labels are not the same", now.images),
            false => format!("{} images then, {} now", self.images, now.images),
        };
        Err(TrainError::Invalid(format!(
            "--resume: the training list is not the one this run started with ({what}); a \
             resumed run must see the same list — put the list back, or start a new run with \
             `model.pretrain_model:` set to this run's checkpoint to go on from its weights"
        )))
    }
}

/// The three optimisers of a run, and the gradient scale (clipping factor) they all apply.
pub struct Optimizers {
    pub backbone: ModuleOptimizer,
    pub neck: ModuleOptimizer,
    pub head: ModuleOptimizer,
    pub grad_scale: GradScale,
}

pub(crate) fn ck_err(path: &Path, message: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Writes a checkpoint for `state.step` and points `last` at it.
pub fn save_checkpoint(
    run_dir: &Path,
    model: &TrainModel,
    optimizers: &Optimizers,
    state: &TrainState,
    memory: Option<&MemorySnapshot>,
) -> Result<PathBuf, TrainError> {
    let dir = run_dir.join("checkpoints");
    std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
    let name = format!("step-{:07}", state.step);
    let final_dir = dir.join(&name);
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .tempdir_in(&dir)
        .map_err(|e| TrainError::io(&dir, e))?;
    let save_err = |what: &str, e: burn::store::RecordError| {
        ck_err(tmp.path(), format!("writing {what}: {e}"))
    };
    model
        .embedder
        .clone()
        .save_file(tmp.path().join("embedder.bpk"))
        .map_err(|e| save_err("embedder", e))?;
    if let Some(head) = &model.head {
        head.clone()
            .save_file(tmp.path().join("head.bpk"))
            .map_err(|e| save_err("head", e))?;
    }
    if let Some(memory) = memory {
        write_memory(&tmp.path().join(MEMORY_FILE), memory)?;
    }
    optimizers
        .backbone
        .save(tmp.path().join("optim_backbone.bpk"))
        .map_err(|e| save_err("optimizer", e))?;
    optimizers
        .neck
        .save(tmp.path().join("optim_neck.bpk"))
        .map_err(|e| save_err("optimizer", e))?;
    optimizers
        .head
        .save(tmp.path().join("optim_head.bpk"))
        .map_err(|e| save_err("optimizer", e))?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| ck_err(tmp.path(), e.to_string()))?;
    std::fs::write(tmp.path().join("state.json"), json)
        .map_err(|e| TrainError::io(tmp.path(), e))?;
    folder_manifest::write_manifest(tmp.path())?;
    for f in std::fs::read_dir(tmp.path()).map_err(|e| TrainError::io(tmp.path(), e))? {
        let f = f.map_err(|e| TrainError::io(tmp.path(), e))?;
        std::fs::File::open(f.path())
            .and_then(|h| h.sync_all())
            .map_err(|e| TrainError::io(&f.path(), e))?;
    }
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
    }
    let tmp_path = tmp.keep();
    std::fs::rename(&tmp_path, &final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
    write_pointer(run_dir, "last", &format!("checkpoints/{name}"))?;
    Ok(final_dir)
}

const MEMORY_FILE: &str = "xbm_memory.safetensors";

fn write_memory(path: &Path, m: &MemorySnapshot) -> Result<(), TrainError> {
    let len = m.labels.len();
    let feats: Vec<u8> = m.feats.iter().flat_map(|v| v.to_le_bytes()).collect();
    let labels: Vec<u8> = m.labels.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view_err = |e: safetensors::SafeTensorError| ck_err(path, e.to_string());
    let tensors = [
        (
            "feats",
            TensorView::new(Dtype::F32, vec![len, m.dim], &feats).map_err(view_err)?,
        ),
        (
            "labels",
            TensorView::new(Dtype::I64, vec![len], &labels).map_err(view_err)?,
        ),
    ];
    let meta = std::collections::HashMap::from([
        ("capacity".to_string(), m.capacity.to_string()),
        ("dim".to_string(), m.dim.to_string()),
        ("next".to_string(), m.next.to_string()),
    ]);
    safetensors::serialize_to_file(tensors, Some(meta), path)
        .map_err(|e| ck_err(path, format!("writing the XBM memory: {e}")))
}

/// The XBM memory saved in a checkpoint, if it has one.
pub fn read_memory(dir: &Path) -> Result<Option<MemorySnapshot>, TrainError> {
    let path = dir.join(MEMORY_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    let bad = |m: String| ck_err(&path, format!("damaged XBM memory: {m}"));
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let number = |k: &str| -> Result<usize, TrainError> {
        meta.get(k)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(format!("no `{k}` in its metadata")))
    };
    let tensor = |name: &str, dtype: Dtype| {
        let t = st.tensor(name).map_err(|e| bad(e.to_string()))?;
        if t.dtype() != dtype {
            return Err(bad(format!(
                "`{name}` is {:?}, expected {dtype:?}",
                t.dtype()
            )));
        }
        Ok(t.data().to_vec())
    };
    let feats = tensor("feats", Dtype::F32)?
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let labels = tensor("labels", Dtype::I64)?
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    Ok(Some(MemorySnapshot {
        capacity: number("capacity")?,
        dim: number("dim")?,
        next: number("next")?,
        feats,
        labels,
    }))
}

/// Atomically replaces `run_dir/file` with `content`.
pub(crate) fn write_pointer(run_dir: &Path, file: &str, content: &str) -> Result<(), TrainError> {
    let mut tmp = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(run_dir)
        .map_err(|e| TrainError::io(run_dir, e))?;
    std::io::Write::write_all(&mut tmp, format!("{content}\n").as_bytes())
        .map_err(|e| TrainError::io(run_dir, e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| TrainError::io(run_dir, e))?;
    tmp.persist(run_dir.join(file))
        .map_err(|e| TrainError::io(&run_dir.join(file), e.error))?;
    Ok(())
}

/// The checkpoint `run_dir/last` points at, if any.
pub fn last_checkpoint(run_dir: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(run_dir.join("last")).ok()?;
    let dir = run_dir.join(text.trim());
    dir.join("state.json").is_file().then_some(dir)
}

/// A checkpoint folder given directly, or a run folder (its `best`, else `last`), not read.
pub fn locate_checkpoint(path: &Path) -> Result<PathBuf, TrainError> {
    let best = path.join("best");
    if path.join("state.json").is_file() {
        Ok(path.to_path_buf())
    } else if best.join("state.json").is_file() {
        Ok(std::fs::canonicalize(&best).unwrap_or(best))
    } else {
        last_checkpoint(path)
            .ok_or_else(|| ck_err(path, "not a checkpoint folder nor a run folder with one"))
    }
}

/// [`locate_checkpoint`], checked against its manifest before weights are loaded from it: a
/// damaged checkpoint is an error naming the file, never weights loaded from a changed file.
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf, TrainError> {
    let dir = locate_checkpoint(path)?;
    folder_manifest::verify(&dir, Depth::Contents)
        .map_err(|why| ck_err(&dir, format!("damaged checkpoint: {why}")))?;
    Ok(dir)
}

/// Reads a checkpoint's state.
pub fn read_state(dir: &Path) -> Result<TrainState, TrainError> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| ck_err(&path, format!("damaged state: {e}")))
}

/// Loads a module's weights from a checkpoint file (strict: every tensor must fit).
pub fn load_module<M: Module>(module: M, file: &Path) -> Result<M, TrainError> {
    let record = ModuleRecord::load(file)
        .map_err(|e| ck_err(file, format!("cannot read (damaged or truncated?): {e}")))?;
    module
        .try_load_record(record)
        .map_err(|e| ck_err(file, format!("does not fit the model: {e}")))
}

/// Loads the optimiser states of a checkpoint.
pub fn load_optimizers(dir: &Path, optimizers: Optimizers) -> Result<Optimizers, TrainError> {
    let load = |o: ModuleOptimizer, f: &str| {
        let p = dir.join(f);
        o.load(&p)
            .map_err(|e| ck_err(&p, format!("cannot read optimizer state: {e}")))
    };
    Ok(Optimizers {
        backbone: load(optimizers.backbone, "optim_backbone.bpk")?,
        neck: load(optimizers.neck, "optim_neck.bpk")?,
        head: load(optimizers.head, "optim_head.bpk")?,
        grad_scale: optimizers.grad_scale,
    })
}

/// Keeps the `keep` best checkpoints by dev mAP (by step when there is no mAP) plus the one
/// `last` points at, deletes the others, and links `best`.
pub fn prune_checkpoints(run_dir: &Path, keep: usize) -> Result<Option<PathBuf>, TrainError> {
    let dir = run_dir.join("checkpoints");
    let last = last_checkpoint(run_dir);
    let mut all: Vec<(PathBuf, f64, usize)> = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| TrainError::io(&dir, e))? {
        let path = entry.map_err(|e| TrainError::io(&dir, e))?.path();
        // Only `step-N` folders: not a checkpoint being written (`.step-N.XXXX`) nor one set
        // aside as damaged; and a damaged one is neither ranked (it could become `best`) nor
        // deleted.
        let checkpoint = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("step-"));
        if !checkpoint || !path.is_dir() || folder_manifest::verify(&path, Depth::Size).is_err() {
            continue;
        }
        if let Ok(state) = read_state(&path) {
            let map = state
                .metrics
                .and_then(|m| m.map_at_k)
                .unwrap_or(f64::NEG_INFINITY);
            all.push((path, map, state.step));
        }
    }
    // Best first: higher mAP, then later step.
    all.sort_by(|a, b| {
        b.1.partial_cmp(&a.1)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(b.2.cmp(&a.2))
    });
    let best = all.first().map(|b| b.0.clone());
    for (i, (path, _, _)) in all.iter().enumerate() {
        if i >= keep.max(1) && Some(path) != last.as_ref() {
            std::fs::remove_dir_all(path).map_err(|e| TrainError::io(path, e))?;
        }
    }
    if let Some(best) = &best {
        let link = run_dir.join("best");
        let tmp = run_dir.join(".best.tmp");
        let _ = std::fs::remove_file(&tmp);
        let target =
            Path::new("checkpoints").join(best.file_name().expect("checkpoint folders have names"));
        std::os::unix::fs::symlink(&target, &tmp).map_err(|e| TrainError::io(&tmp, e))?;
        std::fs::rename(&tmp, &link).map_err(|e| TrainError::io(&link, e))?;
    }
    Ok(best)
}
