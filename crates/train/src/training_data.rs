//! What a phase trains and validates on, read from the config: the Product10K train list (plus
//! its val list with `add_val_to_train`, the XBM phases' "train+test"), mined-pair lists with
//! their label offsets, the dev set, and the training transform (per-source normalisation when
//! a mined list sets its own mean/std).
//!
//! Sources are concatenated; a label of one source that also appears in an earlier, different
//! source is an error (raise that list's `label_offset`), because silently merging two products
//! into one class would teach the model that they are the same thing.

use std::collections::HashSet;
use std::sync::Arc;

use visual_search_data::Sample;
use visual_search_data::augment::{AugmentPolicy, TrainTransform};
use visual_search_data::formats::dev_set::load_dev_set;
use visual_search_data::formats::mined_pairs::load_mined_pairs;
use visual_search_data::formats::product10k::load_product10k;
use visual_search_data::image::Normalization;
use visual_search_data::transform::{EvalTransform, PerRootTransform, SampleTransform};

use crate::config::{Augmentation, TrainConfig};
use crate::error::TrainError;

/// The sample lists of a phase.
pub struct Data {
    pub train: Arc<[Sample]>,
    pub val: Option<Arc<[Sample]>>,
    pub queries: Option<Arc<[Sample]>>,
    pub gallery: Option<Arc<[Sample]>>,
}

/// Reads every list the config names.
pub fn load_data(config: &TrainConfig) -> Result<Data, TrainError> {
    let p = &config.dataset.product10k;
    let mut train = load_product10k(&p.train_valid_root, &p.train_prefix, &p.train_list)?;
    let val = match &p.val_list {
        Some(list) => Some(load_product10k(&p.train_valid_root, &p.val_prefix, list)?),
        None => None,
    };
    if p.add_val_to_train {
        let Some(v) = &val else {
            return Err(TrainError::Invalid(
                "dataset.product10k.add_val_to_train needs dataset.product10k.val_list".into(),
            ));
        };
        train.extend(v.iter().cloned());
    }
    let mut seen: HashSet<i64> = train.iter().map(|s| s.label).collect();
    for m in &config.dataset.mined_pairs {
        let samples = load_mined_pairs(&m.csv, &m.image_root(), m.label_offset)?;
        let labels: HashSet<i64> = samples.iter().map(|s| s.label).collect();
        if let Some(l) = labels.iter().filter(|l| seen.contains(l)).min() {
            return Err(TrainError::Invalid(format!(
                "{}: label {l} (after label_offset {}) is also a label of an earlier training \
                 source; raise label_offset so the classes cannot collide",
                m.csv.display(),
                m.label_offset
            )));
        }
        seen.extend(labels);
        train.extend(samples);
    }
    if train.is_empty() {
        return Err(TrainError::Invalid(format!(
            "{} lists no images",
            p.train_valid_root.join(&p.train_list).display()
        )));
    }
    let (queries, gallery) = match &config.dataset.dev_set {
        Some(d) => {
            let dev = load_dev_set(&d.eval_root, &d.gallery, &d.queries)?;
            (Some(dev.queries.into()), Some(dev.gallery.into()))
        }
        None => (None, None),
    };
    Ok(Data {
        train: train.into(),
        val: val.map(Into::into),
        queries,
        gallery,
    })
}

fn augmenting_transform(config: &TrainConfig, norm: Normalization) -> Arc<dyn SampleTransform> {
    let size = config.dataset.input_size as u32;
    match config.dataset.augmentations {
        Augmentation::None => Arc::new(EvalTransform::new(size, norm)),
        Augmentation::Default => Arc::new(TrainTransform::new(
            AugmentPolicy::AutoAugmentImageNet,
            size,
            norm,
        )),
        Augmentation::Randaugment => Arc::new(TrainTransform::new(
            AugmentPolicy::RandAugment {
                ops: 2,
                magnitude: 9,
            },
            size,
            norm,
        )),
    }
}

/// The training transform: the configured augmentation, normalised with the model's statistics
/// or, for a mined list that sets its own, with those.
pub fn train_transform(config: &TrainConfig, norm: Normalization) -> Arc<dyn SampleTransform> {
    let default = augmenting_transform(config, norm);
    let routes: Vec<_> = config
        .dataset
        .mined_pairs
        .iter()
        .filter(|m| m.mean.is_some() || m.std.is_some())
        .map(|m| {
            let own = Normalization {
                mean: m.mean.unwrap_or(norm.mean),
                std: m.std.unwrap_or(norm.std),
            };
            (m.image_root(), augmenting_transform(config, own))
        })
        .collect();
    if routes.is_empty() {
        default
    } else {
        Arc::new(PerRootTransform::new(default, routes))
    }
}
