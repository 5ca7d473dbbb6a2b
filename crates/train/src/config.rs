//! The training configuration: one YAML file per phase, read into these structs.
//!
//! The `dataset:` section keeps the original solution's keys (`product10k.train_valid_root`,
//! `train_prefix`, `train_list`, `val_prefix`, `val_list`; `dev_set.eval_root`, `gallery`,
//! `queries`; `seed`, `num_of_classes`, `input_size`, `batch_size`, `augmentations`,
//! `augmentations_valid`, `num_workers`) so its configs port over; `model:`, `head:`, `optim:`
//! and `eval:` hold the rest. Every struct denies unknown keys, so a typo is an error naming the
//! key and the file instead of a silently ignored setting. Defaults live here, in one place.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// A whole phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub dataset: DatasetConfig,
    pub model: ModelConfig,
    #[serde(default)]
    pub head: HeadConfig,
    pub optim: OptimConfig,
    #[serde(default)]
    pub eval: EvalConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    pub product10k: Product10kConfig,
    pub dev_set: Option<DevSetConfig>,
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    /// Classifier width; must cover the distinct training labels (`null`: exactly those).
    /// Not used by `xbm` heads, which have no classifier.
    pub num_of_classes: Option<usize>,
    pub input_size: usize,
    pub batch_size: usize,
    #[serde(default)]
    pub augmentations: Augmentation,
    /// `default` (Resize((s, s))) is the only evaluation transform.
    #[serde(default)]
    pub augmentations_valid: ValidTransform,
    #[serde(default = "defaults::workers")]
    pub num_workers: usize,
    /// Mined-pair lists (`image_path,label`) added to the training set, each with its own image
    /// root and label offset (SPEC "Data formats").
    #[serde(default)]
    pub mined_pairs: Vec<MinedPairsConfig>,
    /// How batches are drawn; `null` picks by head: `class_balanced` for `xbm` (pair losses need
    /// several images per class in a batch), `shuffled` for `arcface`.
    pub sampler: Option<SamplerKind>,
    /// Images of each class in a class-balanced batch (K); a batch holds
    /// `batch_size / images_per_class` classes (P): 16 × 2 for the recipe's batch of 32.
    #[serde(default = "defaults::images_per_class")]
    pub images_per_class: usize,
}

/// One mined-pair list in the training mix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinedPairsConfig {
    /// The CSV (`image_path,label`).
    pub csv: PathBuf,
    /// Folder that `image_path` is relative to (default: the CSV's folder).
    pub root: Option<PathBuf>,
    /// Added to every label so this list's classes never collide with the others'.
    #[serde(default = "defaults::label_offset")]
    pub label_offset: i64,
    /// Per-source normalisation (`null`: the model's).
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
}

impl MinedPairsConfig {
    /// The image root: `root`, else the CSV's folder.
    pub fn image_root(&self) -> PathBuf {
        self.root
            .clone()
            .unwrap_or_else(|| self.csv.parent().map(Path::to_path_buf).unwrap_or_default())
    }
}

/// Batch composition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// A seeded permutation of the training set per epoch.
    Shuffled,
    /// `batch_size / images_per_class` classes drawn ∝ their size, `images_per_class` images
    /// of each.
    ClassBalanced,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Product10kConfig {
    pub train_valid_root: PathBuf,
    #[serde(default)]
    pub train_prefix: String,
    pub train_list: String,
    #[serde(default)]
    pub val_prefix: String,
    /// Closed-set accuracy is measured on this list when given.
    pub val_list: Option<String>,
    /// Train on the val list too (the XBM phases' "Product10K train+test").
    #[serde(default)]
    pub add_val_to_train: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevSetConfig {
    pub eval_root: PathBuf,
    #[serde(default = "defaults::gallery")]
    pub gallery: String,
    #[serde(default = "defaults::queries")]
    pub queries: String,
}

/// Training-time augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Augmentation {
    /// Resize(s) → AutoAugment (ImageNet policy) → Resize((s, s)).
    #[default]
    Default,
    /// Resize(s) → RandAugment → Resize((s, s)).
    Randaugment,
    /// Resize((s, s)) only.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValidTransform {
    #[default]
    Default,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Registry name (`visual-search models`).
    pub name: String,
    /// Pretrained backbone weights (timm / OpenCLIP / efficientnet_pytorch names).
    pub weights: Option<PathBuf>,
    /// A checkpoint (or run folder) of an earlier phase to start from; the head is taken only
    /// where its shape matches.
    pub pretrain_model: Option<PathBuf>,
    /// Width of a linear neck after the backbone (`null`: none).
    pub embedding_dim: Option<usize>,
    #[serde(default)]
    pub gem: bool,
    /// Dropout on the embedding before the ArcFace head (XBM phases use none).
    #[serde(default = "defaults::dropout")]
    pub dropout: f64,
    /// Stochastic depth rate of the backbone.
    #[serde(default)]
    pub drop_path: f64,
    /// Keep batch-norm running statistics frozen (eval-mode BN) while fine-tuning.
    #[serde(default = "defaults::yes")]
    pub freeze_batchnorm: bool,
}

/// The `head:` section: what turns features into a loss. `type: arcface` (the default when
/// `type` is left out) or `type: xbm`, each with its own keys only: an XBM key under an ArcFace
/// head (or the reverse) is an error naming it, not a setting silently ignored.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum HeadConfig {
    Arcface(ArcFaceHeadConfig),
    Xbm(XbmHeadConfig),
}

/// Sub-centre ArcFace with dynamic margins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArcFaceHeadConfig {
    #[serde(default = "defaults::s")]
    pub s: f64,
    #[serde(default = "defaults::m")]
    pub m: f64,
    #[serde(default = "defaults::m_min")]
    pub m_min: f64,
    /// Sub-centres per class.
    #[serde(default = "defaults::k")]
    pub k: usize,
}

/// Contrastive loss on the batch and a cross-batch memory; no classifier, so any number of
/// classes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XbmHeadConfig {
    /// Rows in the cross-batch memory. It costs `memory_size × dim × 4` bytes of device memory
    /// plus 8 per label (55,000 × 1024 → 225 MB).
    #[serde(default = "defaults::memory_size")]
    pub memory_size: usize,
    /// Weight of the loss against the memory.
    #[serde(default = "defaults::one_f")]
    pub weight: f64,
    /// Negatives count above this similarity.
    #[serde(default = "defaults::margin")]
    pub margin: f64,
    /// Optimiser steps before the memory is used (and filled).
    #[serde(default)]
    pub start_iteration: usize,
}

impl Default for ArcFaceHeadConfig {
    fn default() -> Self {
        ArcFaceHeadConfig {
            s: defaults::s(),
            m: defaults::m(),
            m_min: defaults::m_min(),
            k: defaults::k(),
        }
    }
}

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig::Arcface(ArcFaceHeadConfig::default())
    }
}

impl<'de> Deserialize<'de> for HeadConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(tag = "type", rename_all = "lowercase")]
        enum Tagged {
            Arcface(ArcFaceHeadConfig),
            Xbm(XbmHeadConfig),
        }
        let mut map = serde_yaml_ng::Mapping::deserialize(d)?;
        if !map.contains_key("type") {
            map.insert("type".into(), "arcface".into());
        }
        let tagged = Tagged::deserialize(serde_yaml_ng::Value::Mapping(map))
            .map_err(|e| serde::de::Error::custom(format!("head: {e}")))?;
        Ok(match tagged {
            Tagged::Arcface(a) => HeadConfig::Arcface(a),
            Tagged::Xbm(x) => HeadConfig::Xbm(x),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    pub lr_head: f64,
    /// Backbone learning rate = this × `lr_head`.
    #[serde(default = "defaults::backbone_factor")]
    pub backbone_lr_factor: f64,
    /// AdamW weight decay on tensors with ≥ 2 dimensions (biases and norms get none).
    #[serde(default = "defaults::weight_decay")]
    pub weight_decay: f64,
    pub warmup_steps: usize,
    pub epochs: usize,
    /// Stop after this many optimiser steps (a budget for quick runs).
    pub max_steps: Option<usize>,
    /// Clip the global gradient norm to this value (`null`: no clipping).
    #[serde(default = "defaults::grad_clip")]
    pub grad_clip: Option<f64>,
    #[serde(default = "defaults::one")]
    pub grad_accumulation: usize,
    #[serde(default)]
    pub precision: Precision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    #[serde(default = "defaults::validations")]
    pub validations_per_epoch: usize,
    /// Checkpoints kept by dev mAP (plus the latest).
    #[serde(default = "defaults::keep")]
    pub keep_best: usize,
    /// Stop after this many validations without an improvement of `min_delta`.
    pub early_stopping_patience: Option<usize>,
    #[serde(default)]
    pub early_stopping_min_delta: f64,
    #[serde(default = "defaults::top_k")]
    pub top_k: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            validations_per_epoch: defaults::validations(),
            keep_best: defaults::keep(),
            early_stopping_patience: None,
            early_stopping_min_delta: 0.0,
            top_k: defaults::top_k(),
        }
    }
}

/// `~/x` → `$HOME/x`; anything else unchanged.
fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path.to_path_buf(),
    }
}

mod defaults {
    pub fn seed() -> u64 {
        42
    }
    pub fn workers() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
    pub fn gallery() -> String {
        "gallery.csv".into()
    }
    pub fn queries() -> String {
        "queries.csv".into()
    }
    pub fn dropout() -> f64 {
        0.2
    }
    pub fn yes() -> bool {
        true
    }
    pub fn s() -> f64 {
        30.0
    }
    pub fn m() -> f64 {
        0.45
    }
    pub fn m_min() -> f64 {
        0.05
    }
    pub fn k() -> usize {
        3
    }
    pub fn backbone_factor() -> f64 {
        0.01
    }
    pub fn weight_decay() -> f64 {
        0.1
    }
    pub fn grad_clip() -> Option<f64> {
        Some(5.0)
    }
    pub fn one() -> usize {
        1
    }
    pub fn validations() -> usize {
        4
    }
    pub fn keep() -> usize {
        3
    }
    pub fn top_k() -> usize {
        1000
    }
    pub fn images_per_class() -> usize {
        2
    }
    pub fn label_offset() -> i64 {
        10_000
    }
    pub fn memory_size() -> usize {
        55_000
    }
    pub fn one_f() -> f64 {
        1.0
    }
    pub fn margin() -> f64 {
        0.5
    }
}

impl TrainConfig {
    /// Reads and checks a YAML config.
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses YAML text; `path` names the source in errors.
    /// Paths starting with `~/` are taken relative to `$HOME`; other relative paths are
    /// relative to the working directory.
    pub fn parse(text: &str, path: &Path) -> Result<Self, TrainError> {
        let mut config: TrainConfig =
            serde_yaml_ng::from_str(text).map_err(|e| TrainError::Config {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let p = &mut config.dataset.product10k;
        p.train_valid_root = expand_home(&p.train_valid_root);
        if let Some(d) = &mut config.dataset.dev_set {
            d.eval_root = expand_home(&d.eval_root);
        }
        config.model.weights = config.model.weights.as_deref().map(expand_home);
        config.model.pretrain_model = config.model.pretrain_model.as_deref().map(expand_home);
        for m in &mut config.dataset.mined_pairs {
            m.csv = expand_home(&m.csv);
            m.root = m.root.as_deref().map(expand_home);
        }
        config.check().map_err(|message| TrainError::Config {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// The batch sampler in effect (`dataset.sampler`, else the head's natural one).
    pub fn sampler(&self) -> SamplerKind {
        self.dataset.sampler.unwrap_or(match self.head {
            HeadConfig::Arcface(_) => SamplerKind::Shuffled,
            HeadConfig::Xbm(_) => SamplerKind::ClassBalanced,
        })
    }

    fn check(&self) -> Result<(), String> {
        let d = &self.dataset;
        let o = &self.optim;
        let bad = |key: &str, why: &str| Err(format!("`{key}` {why}"));
        if d.batch_size == 0 {
            return bad("dataset.batch_size", "must be at least 1");
        }
        if d.input_size < 16 {
            return bad("dataset.input_size", "must be at least 16");
        }
        if o.grad_accumulation == 0 {
            return bad("optim.grad_accumulation", "must be at least 1");
        }
        if o.epochs == 0 && o.max_steps.is_none() {
            return bad(
                "optim.epochs",
                "must be at least 1 (or set optim.max_steps)",
            );
        }
        if o.lr_head.is_nan() || o.lr_head <= 0.0 {
            return bad("optim.lr_head", "must be positive");
        }
        if !(0.0..1.0).contains(&self.model.dropout) {
            return bad("model.dropout", "must be in [0, 1)");
        }
        if let HeadConfig::Xbm(x) = &self.head
            && x.memory_size == 0
        {
            return bad("head.memory_size", "must be at least 1");
        }
        if self.sampler() == SamplerKind::ClassBalanced
            && (d.images_per_class == 0 || !d.batch_size.is_multiple_of(d.images_per_class))
        {
            return bad(
                "dataset.images_per_class",
                &format!(
                    "must divide dataset.batch_size ({}) for class-balanced batches",
                    d.batch_size
                ),
            );
        }
        if self.eval.validations_per_epoch == 0 {
            return bad("eval.validations_per_epoch", "must be at least 1");
        }
        self.check_ranges()
    }

    /// Upper bounds and signs of every numeric key: a value outside them would abort the
    /// process (a 100000-px input, a 10^12-row memory) or silently train nonsense (a negative
    /// learning rate factor).
    fn check_ranges(&self) -> Result<(), String> {
        fn int(key: &str, v: usize, lo: usize, hi: usize) -> Result<(), String> {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("`{key}` is {v}; it must be in {lo}..={hi}"))
            }
        }
        fn real(key: &str, v: f64, lo: f64, hi: f64) -> Result<(), String> {
            if v.is_finite() && (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!(
                    "`{key}` is {v}; it must be a number in [{lo}, {hi}]"
                ))
            }
        }
        let (d, m, o, e) = (&self.dataset, &self.model, &self.optim, &self.eval);
        int("dataset.input_size", d.input_size, 16, 1024)?;
        int("dataset.batch_size", d.batch_size, 1, 4096)?;
        int("dataset.num_workers", d.num_workers, 0, 256)?;
        int(
            "dataset.images_per_class",
            d.images_per_class,
            0,
            d.batch_size,
        )?;
        if let Some(n) = d.num_of_classes {
            int("dataset.num_of_classes", n, 1, 10_000_000)?;
        }
        if let Some(n) = m.embedding_dim {
            int("model.embedding_dim", n, 1, 16_384)?;
        }
        real("model.drop_path", m.drop_path, 0.0, 0.99)?;
        // No upper bound on the logit scale: a scale beyond f32's range is how the NaN-loss
        // path is exercised (the run then stops with a clear error and its last checkpoint).
        match &self.head {
            HeadConfig::Arcface(h) => {
                real("head.s", h.s, 1e-3, f64::MAX)?;
                real("head.m", h.m, 0.0, std::f64::consts::PI)?;
                real("head.m_min", h.m_min, 0.0, std::f64::consts::PI)?;
                int("head.k", h.k, 1, 64)?;
            }
            HeadConfig::Xbm(h) => {
                int("head.memory_size", h.memory_size, 1, 1_000_000)?;
                real("head.weight", h.weight, 0.0, 1000.0)?;
                real("head.margin", h.margin, -1.0, 1.0)?;
            }
        }
        real("optim.lr_head", o.lr_head, 0.0, 10.0)?;
        real("optim.backbone_lr_factor", o.backbone_lr_factor, 0.0, 100.0)?;
        real("optim.weight_decay", o.weight_decay, 0.0, 10.0)?;
        int("optim.warmup_steps", o.warmup_steps, 0, 10_000_000)?;
        int("optim.epochs", o.epochs, 0, 100_000)?;
        if let Some(n) = o.max_steps {
            int("optim.max_steps", n, 1, 100_000_000)?;
        }
        if let Some(c) = o.grad_clip {
            real("optim.grad_clip", c, 1e-6, 1e6)?;
        }
        int("optim.grad_accumulation", o.grad_accumulation, 1, 1024)?;
        int(
            "eval.validations_per_epoch",
            e.validations_per_epoch,
            1,
            1000,
        )?;
        int("eval.keep_best", e.keep_best, 0, 1000)?;
        real(
            "eval.early_stopping_min_delta",
            e.early_stopping_min_delta,
            -1.0,
            1.0,
        )?;
        int("eval.top_k", e.top_k, 1, 100_000)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "
dataset:
  product10k:
    train_valid_root: data
    train_list: train.csv
  input_size: 64
  batch_size: 8
model:
  name: tiny_convnext
optim:
  lr_head: 0.001
  warmup_steps: 10
  epochs: 1
";

    #[test]
    fn minimal_config_gets_the_recipe_defaults() {
        let c = TrainConfig::parse(MINIMAL, Path::new("x.yml")).unwrap();
        assert_eq!(c.head, HeadConfig::Arcface(ArcFaceHeadConfig::default()));
        let HeadConfig::Arcface(h) = &c.head else {
            unreachable!()
        };
        assert_eq!((h.s, h.m, h.m_min, h.k), (30.0, 0.45, 0.05, 3));
        assert_eq!(
            (
                c.optim.backbone_lr_factor,
                c.optim.weight_decay,
                c.optim.grad_clip
            ),
            (0.01, 0.1, Some(5.0))
        );
        assert_eq!(c.dataset.augmentations, Augmentation::Default);
        assert!(c.model.freeze_batchnorm);
    }

    #[test]
    fn unknown_keys_are_errors_naming_key_and_file() {
        let text = MINIMAL.replace("  epochs: 1", "  epochs: 1\n  learning_rate: 0.1");
        let err = TrainConfig::parse(&text, Path::new("phase.yml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("phase.yml") && err.contains("learning_rate"),
            "{err}"
        );
        let text = MINIMAL.replace("  batch_size: 8", "  batch_size: 0");
        let err = TrainConfig::parse(&text, Path::new("p.yml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("dataset.batch_size"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_errors_naming_the_key() {
        for (from, to, key) in [
            (
                "  input_size: 64",
                "  input_size: 100000",
                "dataset.input_size",
            ),
            (
                "  lr_head: 0.001",
                "  lr_head: 0.001\n  backbone_lr_factor: -100",
                "optim.backbone_lr_factor",
            ),
            ("  lr_head: 0.001", "  lr_head: .nan", "optim.lr_head"),
            (
                "  epochs: 1",
                "  epochs: 1\n  grad_clip: -1",
                "optim.grad_clip",
            ),
        ] {
            let text = MINIMAL.replace(from, to);
            let err = TrainConfig::parse(&text, Path::new("p.yml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains("p.yml"), "{to}: {err}");
        }
        let text = format!("{MINIMAL}head:\n  type: xbm\n  memory_size: 1000000000000\n");
        let err = TrainConfig::parse(&text, Path::new("p.yml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("head.memory_size"), "{err}");
    }

    #[test]
    fn xbm_heads_default_to_class_balanced_batches_that_must_divide() {
        let text = format!("{MINIMAL}head:\n  type: xbm\n  memory_size: 100\n");
        let c = TrainConfig::parse(&text, Path::new("x.yml")).unwrap();
        assert_eq!(c.sampler(), SamplerKind::ClassBalanced);
        let HeadConfig::Xbm(h) = &c.head else {
            panic!("{:?}", c.head)
        };
        assert_eq!((h.weight, h.margin, h.start_iteration), (1.0, 0.5, 0));
        let text = text.replace("  batch_size: 8", "  batch_size: 8\n  images_per_class: 3");
        let err = TrainConfig::parse(&text, Path::new("x.yml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("images_per_class"), "{err}");
        let c = TrainConfig::parse(MINIMAL, Path::new("x.yml")).unwrap();
        assert_eq!(c.sampler(), SamplerKind::Shuffled);
    }

    #[test]
    fn head_keys_belong_to_their_head_type() {
        let text = format!("{MINIMAL}head:\n  k: 2\n");
        let c = TrainConfig::parse(&text, Path::new("x.yml")).unwrap();
        assert!(matches!(
            c.head,
            HeadConfig::Arcface(ArcFaceHeadConfig { k: 2, .. })
        ));
        for (head, key) in [
            ("  type: arcface\n  memory_size: 10\n", "memory_size"),
            ("  type: xbm\n  k: 3\n", "`k`"),
            ("  type: cosface\n", "cosface"),
        ] {
            let text = format!("{MINIMAL}head:\n{head}");
            let err = TrainConfig::parse(&text, Path::new("x.yml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains("x.yml"), "{head}: {err}");
        }
        // The resolved config a run writes reads back the same.
        let text = format!("{MINIMAL}head:\n  type: xbm\n  memory_size: 64\n");
        let c = TrainConfig::parse(&text, Path::new("x.yml")).unwrap();
        let again = serde_yaml_ng::to_string(&c).unwrap();
        assert_eq!(TrainConfig::parse(&again, Path::new("y.yml")).unwrap(), c);
    }
}
