//! From two embedding matrices to the submission ranking, in this order: sanitise and normalise;
//! optional centring on the joint mean ([`crate::centring`]); optional DBA and α-QE
//! ([`crate::rerank`]); optional query blending ([`crate::query_blending`]); then either exact
//! blocked top-k ([`crate::topk`]) or k-reciprocal re-ranking ([`crate::k_reciprocal`]).
//! [`RankOptions::winner`] is the challenge 1st place's chain.

use std::time::{Duration, Instant};

use crate::centring::centre_on_joint_mean;
use crate::k_reciprocal::{KReciprocal, k_reciprocal_rerank};
use crate::matrix::MatrixView;
use crate::query_blending::{QueryBlending, blend_queries};
use crate::rerank::{database_augmentation, query_expansion, sanitize_and_normalize, standardize};
use crate::topk::{TopK, top_k};

/// Ranking choices (SPEC "Ranking").
#[derive(Debug, Clone, PartialEq)]
pub struct RankOptions {
    /// Results kept per query (the challenge: 1000).
    pub top_k: usize,
    /// Database-side augmentation with this many neighbours (the solution used 5).
    pub dba_k: Option<usize>,
    /// α-query expansion with this many neighbours.
    pub qe_k: Option<usize>,
    pub qe_alpha: f32,
    /// Subtract the joint query + gallery mean first.
    pub centre: bool,
    /// Blend queries with their close gallery neighbours (after DBA and α-QE).
    pub blending: Option<QueryBlending>,
    /// Rank by the k-reciprocal distance instead of the cosine.
    pub k_reciprocal: Option<KReciprocal>,
}

impl RankOptions {
    /// The challenge 1st place's chain: centring, DBA with 5 neighbours, two blending rounds.
    pub fn winner(top_k: usize) -> Self {
        RankOptions {
            top_k,
            dba_k: Some(5),
            centre: true,
            blending: Some(QueryBlending::winner()),
            ..RankOptions::default()
        }
    }
}

impl Default for RankOptions {
    fn default() -> Self {
        RankOptions {
            top_k: 1000,
            dba_k: None,
            qe_k: None,
            qe_alpha: 3.0,
            centre: false,
            blending: None,
            k_reciprocal: None,
        }
    }
}

/// Ranks the gallery for every query; returns the ranking and the time it took.
pub fn rank(
    mut queries: Vec<f32>,
    mut gallery: Vec<f32>,
    dim: usize,
    options: &RankOptions,
) -> (TopK, Duration) {
    let start = Instant::now();
    sanitize_and_normalize(&mut queries, dim);
    sanitize_and_normalize(&mut gallery, dim);
    if options.centre {
        centre_on_joint_mean(&mut queries, &mut gallery, dim);
    }
    // DBA with no neighbours is no DBA: nor its standardisation, which alone moves rankings.
    if let Some(k) = options.dba_k.filter(|&k| k > 0) {
        let reference = gallery.clone();
        standardize(&reference, dim, &mut [&mut gallery, &mut queries]);
        sanitize_and_normalize(&mut queries, dim);
        sanitize_and_normalize(&mut gallery, dim);
        database_augmentation(&mut gallery, dim, k);
    }
    if let Some(k) = options.qe_k {
        query_expansion(&mut queries, &gallery, dim, k, options.qe_alpha);
    }
    if let Some(blending) = &options.blending {
        blend_queries(&mut queries, &gallery, dim, blending);
    }
    let ranking = match &options.k_reciprocal {
        Some(params) => k_reciprocal_rerank(&queries, &gallery, dim, params, options.top_k),
        None => top_k(
            MatrixView::f32(&queries, queries.len() / dim, dim),
            MatrixView::f32(&gallery, gallery.len() / dim, dim),
            options.top_k,
        ),
    };
    (ranking, start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors whose per-dimension spread differs a lot, so that DBA's standardisation, if it
    /// ran, would change the ranking.
    fn skewed(rows: usize, dim: usize, seed: usize) -> Vec<f32> {
        (0..rows * dim)
            .map(|i| {
                let v = ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0 - 1.0;
                v * (1 + (i % dim) * 10) as f32 + if i % dim == 0 { 5.0 } else { 0.0 }
            })
            .collect()
    }

    #[test]
    fn dba_with_no_neighbours_changes_nothing() {
        let dim = 8;
        let (queries, gallery) = (skewed(6, dim, 1), skewed(40, dim, 2));
        let plain = RankOptions {
            top_k: 10,
            ..RankOptions::default()
        };
        let (expected, _) = rank(queries.clone(), gallery.clone(), dim, &plain);
        let none = RankOptions {
            dba_k: Some(0),
            ..plain.clone()
        };
        assert_eq!(
            rank(queries.clone(), gallery.clone(), dim, &none).0,
            expected
        );
        // The same data does move under DBA with neighbours (the test could fail).
        let one = RankOptions {
            dba_k: Some(1),
            ..plain
        };
        assert_ne!(rank(queries, gallery, dim, &one).0, expected);
    }
}
