//! The challenge metric, mAP@k, and two companions, R@1 and mAP@R (SPEC "Metric").
//!
//! For a query with label y: `rel_i` = 1 when the i-th ranked gallery item has label y,
//! `GTP` = number of gallery items with label y (not capped at k), and
//! `AP@k = (1/GTP) * sum_{i<=k, rel_i} precision@i`; a query whose label is absent from the
//! gallery scores 0 and still counts in the mean. mAP@R is the same sum up to rank R = GTP,
//! divided by R (pytorch-metric-learning's definition); R@1 is the fraction of queries whose
//! first result is relevant. pytorch-metric-learning's `AccuracyCalculator` leaves queries
//! with no relevant gallery item out of its means instead; [`Metrics::evaluated_queries`] says
//! how many had one.

use std::collections::HashMap;

use crate::topk::TopK;

/// Scores of a ranking.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics {
    /// Mean AP@k over all queries (the challenge metric when k = 1000).
    pub map_at_k: f64,
    pub k: usize,
    /// Fraction of queries whose top-1 result has their label.
    pub recall_at_1: f64,
    /// Mean AP@R (R = GTP, ranking truncated at the ranked depth).
    pub map_at_r: f64,
    pub queries: usize,
    /// Queries whose label occurs in the gallery.
    pub evaluated_queries: usize,
}

/// AP@k of one ranked list of labels.
pub fn average_precision(ranked: impl Iterator<Item = bool>, gtp: usize, k: usize) -> f64 {
    if gtp == 0 {
        return 0.0;
    }
    let mut hits = 0usize;
    let mut sum = 0.0;
    for (i, relevant) in ranked.take(k).enumerate() {
        if relevant {
            hits += 1;
            sum += hits as f64 / (i + 1) as f64;
        }
    }
    sum / gtp as f64
}

/// Evaluates `ranking` (gallery row indices per query) at depth `k`.
pub fn evaluate(ranking: &TopK, query_labels: &[i64], gallery_labels: &[i64], k: usize) -> Metrics {
    assert_eq!(ranking.queries, query_labels.len(), "one label per query");
    let mut counts: HashMap<i64, usize> = HashMap::new();
    for &l in gallery_labels {
        *counts.entry(l).or_default() += 1;
    }
    let (mut map_k, mut r1, mut map_r, mut evaluated) = (0.0, 0.0, 0.0, 0);
    for (q, &label) in query_labels.iter().enumerate() {
        let gtp = counts.get(&label).copied().unwrap_or(0);
        if gtp > 0 {
            evaluated += 1;
        }
        let relevant = || {
            ranking
                .row(q)
                .iter()
                .map(|&g| gallery_labels[g as usize] == label)
        };
        map_k += average_precision(relevant(), gtp, k);
        map_r += average_precision(relevant(), gtp, gtp);
        r1 += relevant().next().unwrap_or(false) as u8 as f64;
    }
    let n = query_labels.len().max(1) as f64;
    Metrics {
        map_at_k: map_k / n,
        k,
        recall_at_1: r1 / n,
        map_at_r: map_r / n,
        queries: query_labels.len(),
        evaluated_queries: evaluated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_average_precision() {
        // Relevant at ranks 1 and 3, three relevant items in the gallery: (1 + 2/3) / 3.
        let ap = average_precision([true, false, true, false].into_iter(), 3, 1000);
        assert!((ap - (1.0 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        // Cut at k = 2: only the first hit counts, GTP still 3.
        assert!(
            (average_precision([true, false, true].into_iter(), 3, 2) - 1.0 / 3.0).abs() < 1e-12
        );
        assert_eq!(average_precision([false].into_iter(), 0, 10), 0.0);
    }
}
