//! k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
//! Encoding", CVPR 2017), computed without any `n x n` matrix.
//!
//! Why: two images of one product are usually each other's close neighbours, while a look-alike
//! of another product is close to the query but the query is not close to *it* among its own
//! neighbours. Comparing the sets of mutual neighbours (a Jaccard distance) therefore separates
//! them better than the cosine alone. A challenge team reports it as "always +0.02 mAP".
//!
//! Exactly as the authors' `re_ranking(probFea, galFea, k1, k2, lambda)`, over the `n = n_q +
//! n_g` unit rows of queries then gallery:
//! 1. `d(i, j) = max(2 - 2 x_i.x_j, 0)` (squared L2 of unit vectors), `od(i, j) = d(i, j) /
//!    max_j' d(i, j')` — the authors divide each column by its maximum and transpose, which on a
//!    symmetric matrix is this row-wise scaling. `N(i, k)`: the first `k + 1` rows of `i`'s
//!    ranking by `d` (itself included; ties to the lower index).
//! 2. `R(i, k) = { j in N(i, k) : i in N(j, k) }`. The expansion of `i` is `R(i, k1)` joined
//!    with every `R(c, h)`, `c in R(i, k1)`, `h = round_half_even(k1 / 2)`, that shares more than
//!    2/3 of its members with `R(i, k1)`. `V_i[j] = exp(-od(i, j)) / sum` over the expansion's
//!    members `j`, 0 elsewhere.
//! 3. Local query expansion: with `k2 > 1`, `V_i <- mean of V_r` over the first `k2` rows `r` of
//!    `i`'s ranking.
//! 4. For query `q` and gallery row `g`: `m = sum_j min(V_q[j], V_g[j])`, Jaccard distance `1 -
//!    m / (2 - m)`; final distance `(1 - λ) jaccard + λ od(q, g)`. The ranking is by final
//!    distance, ties to the lower gallery index; the reported score is `1 - distance`.
//!
//! Differences from the authors' code, on purpose: values are f32/f64 where theirs are stored in
//! float16 (which rounds `V` to 3 significant digits), and their `n x n` distance, rank and `V`
//! matrices are replaced by exact blocked top-k passes ([`crate::topk::top_k`]) and sparse rows:
//! the row maxima come from a top-1 against the negated rows, the neighbour lists from one top-
//! `(k1 + 1)`, and `V` keeps only its non-zeros (a few hundred per row). Every gallery row a query
//! shares no neighbour with has Jaccard distance 1, so its final order is the cosine order: the
//! exact top-k is found among the rows sharing a neighbour plus the plain top-k by cosine.
//! Memory is `O(n (k1 k2 + dim))`, never `n_q x n_g`.

use rayon::prelude::*;

use crate::matrix::MatrixView;
use crate::topk::{TopK, top_k};

/// The three parameters of k-reciprocal re-ranking.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KReciprocal {
    /// Neighbourhood size of the k-reciprocal sets (the paper: 20).
    pub k1: usize,
    /// Neighbours averaged in the local query expansion; 1 turns it off (the paper: 6).
    pub k2: usize,
    /// Weight of the original distance in the final one (the paper: 0.3).
    pub lambda: f32,
}

impl Default for KReciprocal {
    fn default() -> Self {
        KReciprocal {
            k1: 20,
            k2: 6,
            lambda: 0.3,
        }
    }
}

/// A sparse row of `V`: (column, weight), columns ascending.
type SparseRow = Vec<(u32, f32)>;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Ranks `gallery` for every query (both row-major, unit rows) by the k-reciprocal final
/// distance; keeps the best `top` per query.
pub fn k_reciprocal_rerank(
    queries: &[f32],
    gallery: &[f32],
    dim: usize,
    params: &KReciprocal,
    top: usize,
) -> TopK {
    let (nq, ng) = (queries.len() / dim, gallery.len() / dim);
    let n = nq + ng;
    let plain = top_k(
        MatrixView::f32(queries, nq, dim),
        MatrixView::f32(gallery, ng, dim),
        top,
    );
    if nq == 0 || ng == 0 || plain.k == 0 {
        return plain;
    }
    let all: Vec<f32> = queries.iter().chain(gallery).copied().collect();
    let row = |i: usize| &all[i * dim..(i + 1) * dim];
    let view = MatrixView::f32(&all, n, dim);

    // Step 1: neighbour lists and each row's largest distance.
    let depth = (params.k1 + 1).max(params.k2).min(n);
    let ranking = top_k(view, view, depth);
    let negated: Vec<f32> = all.iter().map(|v| -v).collect();
    let farthest = top_k(view, MatrixView::f32(&negated, n, dim), 1);
    let max_distance: Vec<f32> = farthest.scores.iter().map(|s| 2.0 + 2.0 * s).collect();
    let od = |i: usize, similarity: f32| {
        let d = (2.0 - 2.0 * similarity).max(0.0);
        if max_distance[i] > 0.0 {
            d / max_distance[i]
        } else {
            0.0
        }
    };
    let neighbours = |i: usize, k: usize| &ranking.row(i)[..(k + 1).min(depth)];
    let reciprocal = |i: usize, k: usize| -> Vec<u32> {
        neighbours(i, k)
            .iter()
            .copied()
            .filter(|&j| neighbours(j as usize, k).contains(&(i as u32)))
            .collect()
    };
    let half = (params.k1 as f64 / 2.0).round_ties_even() as usize;
    // R(c, h) of every row once: each row is a candidate in up to k1 other rows' expansions.
    let half_sets: Vec<Vec<u32>> = (0..n)
        .into_par_iter()
        .map(|i| reciprocal(i, half))
        .collect();

    // Step 2: the k-reciprocal expansion of every row, weighted.
    let v: Vec<SparseRow> = (0..n)
        .into_par_iter()
        .map(|i| {
            let core = reciprocal(i, params.k1);
            let mut expansion = core.clone();
            for &c in &core {
                let candidate = &half_sets[c as usize];
                let shared = candidate.iter().filter(|j| core.contains(j)).count();
                if shared as f64 > 2.0 / 3.0 * candidate.len() as f64 {
                    expansion.extend_from_slice(candidate);
                }
            }
            expansion.sort_unstable();
            expansion.dedup();
            let weights: Vec<f64> = expansion
                .iter()
                .map(|&j| (-od(i, dot(row(i), row(j as usize))) as f64).exp())
                .collect();
            let sum: f64 = weights.iter().sum();
            expansion
                .into_iter()
                .zip(weights)
                .map(|(j, w)| (j, (w / sum) as f32))
                .collect()
        })
        .collect();

    // Step 3: local query expansion.
    let v: Vec<SparseRow> = if params.k2 > 1 {
        (0..n)
            .into_par_iter()
            .map(|i| {
                let members = &ranking.row(i)[..params.k2.min(depth)];
                let mut entries: Vec<(u32, f32)> = members
                    .iter()
                    .flat_map(|&r| v[r as usize].iter().copied())
                    .collect();
                entries.sort_unstable_by_key(|e| e.0);
                let mut merged: SparseRow = Vec::with_capacity(entries.len());
                for (c, w) in entries {
                    match merged.last_mut() {
                        Some(last) if last.0 == c => last.1 += w,
                        _ => merged.push((c, w)),
                    }
                }
                let count = members.len() as f32;
                merged.iter_mut().for_each(|e| e.1 /= count);
                merged
            })
            .collect()
    } else {
        v
    };

    // Step 4: Jaccard distances through an inverted index of the gallery rows of V.
    let mut inverted: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n];
    for g in 0..ng {
        for &(c, w) in &v[nq + g] {
            inverted[c as usize].push((g as u32, w));
        }
    }
    let k = plain.k;
    let lambda = params.lambda;
    let rows: Vec<(Vec<u32>, Vec<f32>)> = (0..nq)
        .into_par_iter()
        .map_init(
            || (vec![0.0f32; ng], Vec::<u32>::new()),
            |(overlap, touched), q| {
                for &(c, wq) in &v[q] {
                    for &(g, wg) in &inverted[c as usize] {
                        if overlap[g as usize] == 0.0 {
                            touched.push(g);
                        }
                        overlap[g as usize] += wq.min(wg);
                    }
                }
                let mut candidates: Vec<(f32, u32)> = Vec::with_capacity(touched.len() + k);
                let mut score = |g: u32, similarity: f32, overlap: f32| {
                    let jaccard = 1.0 - overlap / (2.0 - overlap);
                    let distance = (1.0 - lambda) * jaccard + lambda * od(q, similarity);
                    candidates.push((distance, g));
                };
                // Rows sharing a neighbour with the query, then the plain top-k rows that do not
                // (their Jaccard distance is 1); -1 marks a row already scored.
                for &g in touched.iter() {
                    let s = dot(row(q), row(nq + g as usize));
                    score(g, s, overlap[g as usize]);
                    overlap[g as usize] = -1.0;
                }
                for (&g, &s) in plain.row(q).iter().zip(plain.row_scores(q)) {
                    if overlap[g as usize] == 0.0 {
                        score(g, s, 0.0);
                    }
                }
                for &g in touched.iter() {
                    overlap[g as usize] = 0.0;
                }
                touched.clear();
                candidates.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                candidates.truncate(k);
                candidates.into_iter().map(|(d, g)| (g, 1.0 - d)).unzip()
            },
        )
        .collect();
    let mut indices = Vec::with_capacity(nq * k);
    let mut scores = Vec::with_capacity(nq * k);
    for (i, s) in rows {
        indices.extend(i);
        scores.extend(s);
    }
    TopK {
        queries: nq,
        k,
        indices,
        scores,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(rows: &[[f32; 2]]) -> Vec<f32> {
        rows.iter()
            .flat_map(|r| {
                let n = (r[0] * r[0] + r[1] * r[1]).sqrt();
                [r[0] / n, r[1] / n]
            })
            .collect()
    }

    #[test]
    fn keeps_every_gallery_row_once_in_distance_order() {
        let q = unit(&[[1.0, 0.1], [0.0, 1.0]]);
        let g = unit(&[[1.0, 0.0], [0.9, 0.3], [0.1, 1.0], [-1.0, 0.2], [0.5, 0.5]]);
        let params = KReciprocal {
            k1: 2,
            k2: 2,
            lambda: 0.3,
        };
        let ranked = k_reciprocal_rerank(&q, &g, 2, &params, 10);
        assert_eq!(ranked.k, 5);
        for r in 0..2 {
            let mut ids = ranked.row(r).to_vec();
            ids.sort_unstable();
            assert_eq!(ids, vec![0, 1, 2, 3, 4]);
            let s = ranked.row_scores(r);
            assert!(s.windows(2).all(|w| w[0] >= w[1]), "{s:?}");
        }
        // The far-away row stays last for both queries.
        assert_eq!(ranked.row(0)[4], 3);
    }
}
