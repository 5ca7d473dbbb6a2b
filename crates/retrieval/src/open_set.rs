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
}
