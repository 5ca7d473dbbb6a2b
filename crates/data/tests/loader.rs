//! The parallel loader on a folder of real encoded images with broken entries mixed in.

use std::path::Path;
use std::sync::Arc;

use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use visual_search_data::formats::{Crop, Sample};
use visual_search_data::image::Normalization;
use visual_search_data::loader::{BatchLoader, LoaderConfig};
use visual_search_data::sampler::{sequential_order, shuffled_order};
use visual_search_data::shard::ShardSpec;
use visual_search_data::transform::EvalTransform;

/// 20 images (JPEG and PNG, various sizes), with sample 5 missing and sample 11 corrupt.
fn make_samples(dir: &Path) -> Vec<Sample> {
    (0..20)
        .map(|i| {
            let ext = if i % 2 == 0 { "jpg" } else { "png" };
            let path = dir.join(format!("{i:02}.{ext}"));
            match i {
                5 => {}
                11 => std::fs::write(&path, b"\xFF\xD8\xFF\xE0 not really a jpeg").unwrap(),
                _ => {
                    let img = RgbImage::from_fn(30 + i, 40 + 2 * i, |x, y| {
                        Rgb([(x * 7) as u8, (y * 3) as u8, i as u8 * 10])
                    });
                    let format = if ext == "jpg" {
                        ImageFormat::Jpeg
                    } else {
                        ImageFormat::Png
                    };
                    DynamicImage::ImageRgb8(img)
                        .save_with_format(&path, format)
                        .unwrap();
                }
            }
            Sample {
                path,
                label: i as i64 % 4,
                crop: Crop::None,
            }
        })
        .collect()
}

fn run(
    samples: &Arc<[Sample]>,
    order: Vec<usize>,
    workers: usize,
    ordered: bool,
) -> Vec<(usize, i64, Vec<u32>)> {
    let transform = Arc::new(EvalTransform::new(16, Normalization::CLIP));
    let config = LoaderConfig {
        batch_size: 6,
        num_workers: workers,
        prefetch_batches: 1,
        ordered,
        drop_last: false,
        seed: 7,
        position_offset: 0,
        share: None,
    };
    let mut loader = BatchLoader::new(samples.clone(), order, transform, &config);
    assert_eq!(loader.n_batches(), 4);
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for batch in loader.by_ref() {
        assert_eq!(
            batch.images.len(),
            batch.len() * 3 * 16 * 16,
            "no holes in a batch"
        );
        assert_eq!(batch.shape(), [batch.len(), 3, 16, 16]);
        for (k, (&i, &label)) in batch.sample_indices.iter().zip(&batch.labels).enumerate() {
            let pixels = &batch.images[k * 768..(k + 1) * 768];
            out.push((i, label, pixels.iter().map(|v| v.to_bits()).collect()));
        }
        skipped.extend(batch.skipped.iter().map(|s| s.sample_index));
    }
    skipped.sort();
    assert_eq!(skipped, vec![5, 11]);
    assert_eq!(loader.skipped_total(), 2);
    out
}

#[test]
fn bad_images_are_skipped_and_counted_and_order_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let samples: Arc<[Sample]> = make_samples(dir.path()).into();
    let inline = run(&samples, sequential_order(20), 0, true);
    assert_eq!(inline.len(), 18);
    assert_eq!(
        inline.iter().map(|r| r.0).collect::<Vec<_>>(),
        (0..20).filter(|&i| i != 5 && i != 11).collect::<Vec<_>>()
    );
    assert!(inline.iter().all(|(i, label, _)| *label == *i as i64 % 4));
    // Same batches, same bytes, whatever the number of workers.
    assert_eq!(run(&samples, sequential_order(20), 1, true), inline);
    assert_eq!(run(&samples, sequential_order(20), 3, true), inline);
    // Unordered delivery yields the same set.
    let mut unordered = run(&samples, sequential_order(20), 3, false);
    unordered.sort_by_key(|r| r.0);
    assert_eq!(unordered, inline);
}

#[test]
fn shuffled_epochs_visit_every_sample_once() {
    let dir = tempfile::tempdir().unwrap();
    let samples: Arc<[Sample]> = make_samples(dir.path()).into();
    let epoch0 = run(&samples, shuffled_order(20, 1, 0), 2, true);
    let epoch1 = run(&samples, shuffled_order(20, 1, 1), 2, true);
    let ids = |v: &Vec<(usize, i64, Vec<u32>)>| v.iter().map(|r| r.0).collect::<Vec<_>>();
    assert_ne!(ids(&epoch0), ids(&epoch1));
    let mut a = ids(&epoch0);
    a.sort();
    assert_eq!(
        a,
        (0..20).filter(|&i| i != 5 && i != 11).collect::<Vec<_>>()
    );
    assert_eq!(
        ids(&epoch0),
        ids(&run(&samples, shuffled_order(20, 1, 0), 2, true))
    );
}

#[test]
fn the_shares_of_a_batch_are_the_batch_with_the_same_augmentations() {
    use visual_search_data::augment::{AugmentPolicy, TrainTransform};
    let dir = tempfile::tempdir().unwrap();
    let samples: Arc<[Sample]> = make_samples(dir.path()).into();
    let transform = Arc::new(TrainTransform::new(
        AugmentPolicy::RandAugment {
            ops: 2,
            magnitude: 9,
        },
        16,
        Normalization::CLIP,
    ));
    let load = |share: Option<ShardSpec>| {
        let config = LoaderConfig {
            batch_size: 7,
            num_workers: 2,
            seed: 11,
            position_offset: 3,
            share,
            ..LoaderConfig::default()
        };
        BatchLoader::new(
            samples.clone(),
            shuffled_order(20, 5, 0),
            transform.clone(),
            &config,
        )
        .map(|b| {
            let mut labels = b.sample_indices.clone();
            labels.extend(b.skipped.iter().map(|s| s.sample_index));
            (b.index, b.sample_indices, b.images, labels.len())
        })
        .collect::<Vec<_>>()
    };
    let whole = load(None);
    let parts: Vec<_> = (0..3)
        .map(|i| load(Some(ShardSpec::new(i, 3).unwrap())))
        .collect();
    for (b, (index, ids, images, _)) in whole.iter().enumerate() {
        let mut joined_ids = Vec::new();
        let mut joined_images = Vec::new();
        for part in &parts {
            assert_eq!(part[b].0, *index);
            joined_ids.extend_from_slice(&part[b].1);
            joined_images.extend_from_slice(&part[b].2);
        }
        assert_eq!(&joined_ids, ids, "batch {b}");
        assert!(
            joined_images
                .iter()
                .map(|v| v.to_bits())
                .eq(images.iter().map(|v| v.to_bits())),
            "batch {b}: the shares were augmented otherwise"
        );
        // Each share is its contiguous part of the 7 (or last 6) positions.
        let sizes: Vec<usize> = parts.iter().map(|p| p[b].3).collect();
        assert_eq!(sizes.iter().sum::<usize>(), whole[b].3);
        assert!(
            sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
            "{sizes:?}"
        );
    }
}
