//! "Is the product in the catalogue at all?" from the top-1 score: how well it separates
//! queries whose product the gallery holds from queries whose product it does not, and the
//! score threshold a service can answer "not in the catalogue" below.
//!
//! Why: users photograph products the catalogue does not have; the nearest item is then a
//! look-alike, and its score is the only signal the ranker has. `eval --holdout-products F`
//! hides a fraction of the gallery's products to make such queries from a labelled dev set.
//!
//! Exactly: AUROC is the probability that a random present query scores above a random absent
//! one, ties counting one half (the Mann–Whitney statistic, as scikit-learn's `roc_auc_score`).
//! The threshold for precision p is the lowest top-1 score `t` such that, of the queries scoring
//! `>= t`, at least a fraction p are present; recall is the fraction of present queries scoring
//! `>= t`.
//!
//! `index calibrate` stores such a threshold in the index ([`MatchThreshold`], in
//! `IndexMeta.match_threshold`); `search` and `POST /search` then report a match only when the
//! top hit scores at or above it. Calibrating against an index hides products by skipping their
//! rows in each query's results ([`top1_without`]), which for an exact index is the same as
//! removing them.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::error::RetrievalError;

/// AUROC of `scores` for the `present` flags; `None` without both kinds of query.
pub fn auroc(scores: &[f32], present: &[bool]) -> Option<f64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks (1-based), ties sharing their mean rank.
    let mut ranks = vec![0.0f64; scores.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        order[i..=j].iter().for_each(|&o| ranks[o] = mean);
        i = j + 1;
    }
    let positives = present.iter().filter(|&&p| p).count();
    let negatives = present.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let rank_sum: f64 = ranks
        .iter()
        .zip(present)
        .filter(|(_, p)| **p)
        .map(|(r, _)| r)
        .sum();
    let u = rank_sum - (positives * (positives + 1)) as f64 / 2.0;
    Some(u / (positives * negatives) as f64)
}

/// An accept threshold and what it gives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub score: f32,
    pub precision: f64,
    pub recall: f64,
}

/// The lowest threshold whose accepted queries are at least `precision` present; `None` when
/// no threshold reaches it.
pub fn threshold_for_precision(
    scores: &[f32],
    present: &[bool],
    precision: f64,
) -> Option<Threshold> {
    let total_present = present.iter().filter(|&&p| p).count();
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut accepted, mut hits, mut best) = (0usize, 0usize, None);
    let mut i = 0;
    while i < order.len() {
        // Every query with this score is accepted together.
        let s = scores[order[i]];
        while i < order.len() && scores[order[i]] == s {
            accepted += 1;
            hits += present[order[i]] as usize;
            i += 1;
        }
        let p = hits as f64 / accepted as f64;
        if p >= precision {
            best = Some(Threshold {
                score: s,
                precision: p,
                recall: hits as f64 / total_present.max(1) as f64,
            });
        }
    }
    best
}

/// What `index calibrate` measured and stores: the top-1 score from which the top hit counts as
/// the product, and how it separated present from absent queries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatchThreshold {
    /// Top-1 scores at or above this are a match.
    pub score: f32,
    /// The precision asked for on accepted queries.
    pub target_precision: f64,
    /// Precision and recall measured at `score`.
    pub precision: f64,
    pub recall: f64,
    /// AUROC of the top-1 score, present vs absent queries.
    pub auroc: f64,
    pub present_queries: usize,
    pub absent_queries: usize,
    /// Products hidden to make the absent queries.
    pub held_out_products: usize,
}

impl MatchThreshold {
    /// Whether a top hit scoring `score` is reported as the match.
    pub fn accepts(&self, score: f32) -> bool {
        score >= self.score
    }

    /// The threshold keeping `target_precision` on accepted queries, from each query's top-1
    /// score and whether its product is present.
    pub fn calibrate(
        scores: &[f32],
        present: &[bool],
        target_precision: f64,
        held_out_products: usize,
    ) -> Result<MatchThreshold, RetrievalError> {
        let auroc = auroc(scores, present).ok_or_else(|| {
            RetrievalError::Invalid(
                "calibration needs queries whose product is in the catalogue and queries whose \
                 product is not (hide some products)"
                    .into(),
            )
        })?;
        let t = threshold_for_precision(scores, present, target_precision).ok_or_else(|| {
            RetrievalError::Invalid(format!(
                "no score threshold keeps {target_precision} precision on these queries \
                 (AUROC {auroc:.3})"
            ))
        })?;
        let present_queries = present.iter().filter(|&&p| p).count();
        Ok(MatchThreshold {
            score: t.score,
            target_precision,
            precision: t.precision,
            recall: t.recall,
            auroc,
            present_queries,
            absent_queries: present.len() - present_queries,
            held_out_products,
        })
    }
}

/// Each query's top-1 score once the products in `held_out` are hidden (its first hit whose
/// label is not held out; -1, the lowest cosine, when every hit is), and whether its product is
/// among `catalogue_labels` without them. `hits[q]` lists query q's `(label, score)` best first.
pub fn top1_without(
    hits: &[Vec<(i64, f32)>],
    query_labels: &[i64],
    held_out: &HashSet<i64>,
    catalogue_labels: &HashSet<i64>,
) -> (Vec<f32>, Vec<bool>) {
    let scores = hits
        .iter()
        .map(|found| {
            found
                .iter()
                .find(|(label, _)| !held_out.contains(label))
                .map_or(-1.0, |&(_, s)| s)
        })
        .collect();
    let present = query_labels
        .iter()
        .map(|l| catalogue_labels.contains(l) && !held_out.contains(l))
        .collect();
    (scores, present)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_counts_ordered_pairs_and_half_ties() {
        // Present 0.9, 0.5; absent 0.7, 0.5: pairs (0.9>0.7) 1, (0.9>0.5) 1, (0.5<0.7) 0,
        // (0.5=0.5) 0.5 → 2.5 / 4.
        let a = auroc(&[0.9, 0.7, 0.5, 0.5], &[true, false, true, false]).unwrap();
        assert!((a - 0.625).abs() < 1e-12, "{a}");
        assert_eq!(auroc(&[0.1, 0.2], &[true, true]), None);
    }

    #[test]
    fn the_lowest_threshold_that_keeps_the_precision() {
        let scores = [0.95, 0.9, 0.8, 0.7, 0.6];
        let present = [true, true, false, true, false];
        // >= 0.7: 3 of 4 present (0.75); >= 0.9: 2 of 2; >= 0.6: 3 of 5.
        let t = threshold_for_precision(&scores, &present, 0.75).unwrap();
        assert_eq!(t.score, 0.7);
        assert!((t.recall - 1.0).abs() < 1e-12);
        let t = threshold_for_precision(&scores, &present, 0.9).unwrap();
        assert_eq!((t.score, t.precision), (0.9, 1.0));
        assert!((t.recall - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn hidden_products_are_skipped_and_count_as_absent() {
        let hits = vec![
            vec![(7, 0.9), (1, 0.8)],
            vec![(2, 0.7), (1, 0.6)],
            vec![(7, 0.5)],
        ];
        let held: HashSet<i64> = [7].into();
        let catalogue: HashSet<i64> = [1, 2, 7].into();
        let (scores, present) = top1_without(&hits, &[1, 2, 7], &held, &catalogue);
        assert_eq!(scores, vec![0.8, 0.7, -1.0]);
        assert_eq!(present, vec![true, true, false]);
        let t = MatchThreshold::calibrate(&scores, &present, 0.9, 1).unwrap();
        assert_eq!((t.score, t.absent_queries, t.auroc), (0.7, 1, 1.0));
        assert!(t.accepts(0.7) && !t.accepts(0.69));
        assert!(MatchThreshold::calibrate(&scores, &[true; 3], 0.9, 0).is_err());
    }
}
