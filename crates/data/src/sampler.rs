//! Orders in which an epoch visits the samples.
//!
//! Orders are plain index vectors computed up front from `(seed, epoch)`, so an epoch is
//! reproducible and a resumed run can recompute exactly the order it was in.

use std::collections::HashMap;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `0..n` in order (evaluation, embedding).
pub fn sequential_order(n: usize) -> Vec<usize> {
    (0..n).collect()
}

/// A permutation of `0..n` that depends only on `seed` and `epoch`.
pub fn shuffled_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order = sequential_order(n);
    let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(seed, epoch));
    order.shuffle(&mut rng);
    order
}

/// Class-balanced batches for pair-based losses (SPEC "Sampler for XBM"), flattened: each of
/// `batches` batches holds `classes_per_batch` distinct classes × `per_class` images of each.
///
/// A class is chosen by drawing a uniformly random image and taking its class, so classes come
/// with probability proportional to their size; a class already in the batch is drawn again
/// (unless every class is already in it). Inside a class, images are drawn without replacement
/// when it has at least `per_class` of them, with replacement otherwise (a one-image class
/// yields the same image twice, augmented differently). Depends only on `(seed, epoch)`.
pub fn class_balanced_order(
    labels: &[i64],
    classes_per_batch: usize,
    per_class: usize,
    batches: usize,
    seed: u64,
    epoch: u64,
) -> Vec<usize> {
    let mut members: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, &l) in labels.iter().enumerate() {
        members.entry(l).or_default().push(i);
    }
    if labels.is_empty() || classes_per_batch == 0 || per_class == 0 {
        return Vec::new();
    }
    let distinct = members.len();
    let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(seed, epoch ^ 0xC1A5_5BA1));
    let mut order = Vec::with_capacity(batches * classes_per_batch * per_class);
    let mut chosen: Vec<i64> = Vec::with_capacity(classes_per_batch);
    for _ in 0..batches {
        chosen.clear();
        while chosen.len() < classes_per_batch {
            let class = labels[rng.random_range(0..labels.len())];
            if chosen.contains(&class) && chosen.len() < distinct {
                continue;
            }
            chosen.push(class);
            let images = &members[&class];
            if images.len() >= per_class {
                for k in rand::seq::index::sample(&mut rng, images.len(), per_class) {
                    order.push(images[k]);
                }
            } else {
                for _ in 0..per_class {
                    order.push(images[rng.random_range(0..images.len())]);
                }
            }
        }
    }
    order
}

/// Combines a seed with a counter into a well-spread 64-bit seed (SplitMix64 finaliser).
pub fn mix_seed(seed: u64, counter: u64) -> u64 {
    let mut z = seed ^ counter.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffles_are_seeded_permutations() {
        let a = shuffled_order(100, 42, 0);
        assert_eq!(a, shuffled_order(100, 42, 0));
        assert_ne!(a, shuffled_order(100, 42, 1));
        assert_ne!(a, shuffled_order(100, 43, 0));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, sequential_order(100));
    }

    #[test]
    fn class_balanced_batches_hold_p_classes_times_k_images() {
        // Class 0 has 600 images, classes 1..=40 have 10 each, class 99 has one.
        let mut labels = vec![0i64; 600];
        for c in 1..=40 {
            labels.extend(std::iter::repeat_n(c, 10));
        }
        labels.push(99);
        let order = class_balanced_order(&labels, 16, 2, 500, 7, 0);
        assert_eq!(order.len(), 500 * 32);
        assert_eq!(order, class_balanced_order(&labels, 16, 2, 500, 7, 0));
        assert_ne!(order, class_balanced_order(&labels, 16, 2, 500, 7, 1));
        let mut big_class_batches = 0;
        for batch in order.chunks(32) {
            let classes: Vec<i64> = batch.chunks(2).map(|p| labels[p[0]]).collect();
            for pair in batch.chunks(2) {
                assert_eq!(labels[pair[0]], labels[pair[1]]);
                if labels[pair[0]] != 99 {
                    assert_ne!(pair[0], pair[1], "drawn without replacement");
                }
            }
            let mut distinct = classes.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), 16, "{classes:?}");
            big_class_batches += usize::from(classes.contains(&0));
        }
        // Class 0 holds 60% of the images: it is in nearly every batch; the other 15 places
        // go to the 40 equal 10-image classes, so each is in about 15/40 of the batches.
        assert!(big_class_batches > 480, "{big_class_batches}");
        let class_1 = order
            .chunks(32)
            .filter(|b| b.iter().any(|&i| labels[i] == 1))
            .count();
        assert!((140..240).contains(&class_1), "{class_1}");
    }

    #[test]
    fn fewer_classes_than_a_batch_needs_repeat_classes() {
        let labels = [1i64, 1, 2, 2, 2];
        let order = class_balanced_order(&labels, 4, 2, 3, 1, 0);
        assert_eq!(order.len(), 3 * 8);
        for pair in order.chunks(2) {
            assert_eq!(labels[pair[0]], labels[pair[1]]);
        }
    }
}
