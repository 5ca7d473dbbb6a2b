//! Orders in which an epoch visits the samples.
//!
//! Orders are plain index vectors computed up front from `(seed, epoch)`, so an epoch is
//! reproducible and a resumed run can recompute exactly the order it was in.

use rand::SeedableRng;
use rand::seq::SliceRandom;
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
}
