//! Which products to hide when measuring "not in the catalogue": a seeded fraction of the
//! distinct labels, the same for `eval --holdout-products` and `index calibrate`, so a threshold
//! calibrated on an index is measured on the products `eval` hides with the same seed.

use std::collections::HashSet;

use anyhow::bail;
use rand::SeedableRng;
use rand::seq::SliceRandom;

/// A seeded `fraction` (in (0, 1)) of the distinct `labels`: at least one product, and at least
/// one left.
pub fn held_out_products(labels: &[i64], fraction: f64, seed: u64) -> anyhow::Result<HashSet<i64>> {
    if !(fraction > 0.0 && fraction < 1.0) {
        bail!("--holdout-products must be in (0, 1), got {fraction}");
    }
    let mut products: Vec<i64> = labels.to_vec();
    products.sort_unstable();
    products.dedup();
    if products.len() < 2 {
        bail!(
            "--holdout-products needs at least two products in the catalogue, found {}",
            products.len()
        );
    }
    products.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let n = ((products.len() as f64 * fraction).round() as usize).clamp(1, products.len() - 1);
    Ok(products[..n].iter().copied().collect())
}
