//! From two embedding matrices to the submission ranking: sanitise and normalise, optional DBA
//! and α-QE ([`crate::rerank`]), then exact blocked top-k ([`crate::topk`]).

use std::time::{Duration, Instant};

use crate::matrix::MatrixView;
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
}

impl Default for RankOptions {
    fn default() -> Self {
        RankOptions {
            top_k: 1000,
            dba_k: None,
            qe_k: None,
            qe_alpha: 3.0,
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
    if let Some(k) = options.dba_k {
        let reference = gallery.clone();
        standardize(&reference, dim, &mut [&mut gallery, &mut queries]);
        sanitize_and_normalize(&mut queries, dim);
        sanitize_and_normalize(&mut gallery, dim);
        database_augmentation(&mut gallery, dim, k);
    }
    if let Some(k) = options.qe_k {
        query_expansion(&mut queries, &gallery, dim, k, options.qe_alpha);
    }
    let ranking = top_k(
        MatrixView::f32(&queries, queries.len() / dim, dim),
        MatrixView::f32(&gallery, gallery.len() / dim, dim),
        options.top_k,
    );
    (ranking, start.elapsed())
}
