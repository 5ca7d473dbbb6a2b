//! Query blending, the 1st place's last post-processing step: pull each query towards the
//! gallery vectors that are already very close to it, in rounds.
//!
//! Why: a query photo that has a near-identical gallery photo is best searched *with* that photo
//! as well — its other images of the same product then come up too. Unlike α-query expansion
//! ([`crate::rerank::query_expansion`]), a neighbour only takes part when it is within a fixed
//! distance, so queries without a confident match are left alone.
//!
//! Exactly, for each round with weights `(w_q, w_1, …, w_n)`, every query `q` (unit length):
//! take its `n` nearest gallery vectors `g_1..g_n` (inner product, ties to the lower index; the
//! query as it stands after the previous round); `q <- normalize(w_q q + sum_i [|q - g_i| <
//! max_distance] w_i g_i)` where `|q - g_i| = sqrt(max(2 - 2 q.g_i, 0))` is the L2 distance of
//! unit vectors. All queries of a round use the gallery as it is (queries never see each other).
//! The 1st place's rounds ([`QueryBlending::winner`]): `(0.5, 0.5)` then `(0.4, 0.3, 0.3)`,
//! distance below 0.8.
//!
//! Memory: one exact top-n per round ([`crate::topk::top_k`], blocked), so `n_q x n` scores,
//! never `n_q x n_g`.

use crate::matrix::MatrixView;
use crate::rerank::sanitize_and_normalize;
use crate::topk::top_k;

/// Blending rounds and the distance gate.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QueryBlending {
    /// Per round: the query's own weight, then one weight per nearest gallery vector.
    pub rounds: Vec<Vec<f32>>,
    /// A neighbour takes part only when its L2 distance to the query is below this.
    pub max_distance: f32,
}

impl QueryBlending {
    /// The challenge's 1st place: `(0.5, 0.5)` then `(0.4, 0.3, 0.3)`, L2 distance < 0.8.
    pub fn winner() -> Self {
        QueryBlending {
            rounds: vec![vec![0.5, 0.5], vec![0.4, 0.3, 0.3]],
            max_distance: 0.8,
        }
    }

    /// Parses `0.5,0.5;0.4,0.3,0.3` (rounds separated by `;`, weights by `,`, query first).
    pub fn parse_rounds(text: &str) -> Result<Vec<Vec<f32>>, String> {
        text.split(';')
            .map(|round| {
                let weights = round
                    .split(',')
                    .map(|w| {
                        w.trim()
                            .parse::<f32>()
                            .ok()
                            .filter(|w| w.is_finite())
                            .ok_or_else(|| format!("`{w}` in `{text}` is not a finite number"))
                    })
                    .collect::<Result<Vec<f32>, String>>()?;
                if weights.len() < 2 {
                    return Err(format!(
                        "round `{round}` in `{text}` needs the query's weight and at least one \
                         neighbour's"
                    ));
                }
                Ok(weights)
            })
            .collect()
    }
}

/// One round for one unit query `row`: `neighbours` are (weight, similarity, unit vector) of
/// its nearest gallery vectors, best first. Returns whether any neighbour was inside the gate
/// (otherwise `row` is left as it is).
pub fn blend_round(
    row: &mut [f32],
    own: f32,
    neighbours: &[(f32, f32, &[f32])],
    max_distance: f32,
) -> bool {
    let close = |s: f32| (2.0 - 2.0 * s).max(0.0).sqrt() < max_distance;
    if !neighbours.iter().any(|&(_, s, _)| close(s)) {
        return false;
    }
    row.iter_mut().for_each(|v| *v *= own);
    for &(w, s, vector) in neighbours {
        if close(s) {
            row.iter_mut().zip(vector).for_each(|(d, v)| *d += w * v);
        }
    }
    let dim = row.len();
    sanitize_and_normalize(row, dim);
    true
}

/// The blending rounds over any source of neighbours: for each round, `nearest(queries, n)`
/// gives every query's `n` nearest gallery vectors as (similarity, unit vector), best first, and
/// each query is blended with them ([`blend_round`]). The array version below and the index
/// engines (`crate::index_post_processing`) differ only in that source.
pub fn blend_in_rounds<E>(
    queries: &mut [f32],
    dim: usize,
    blending: &QueryBlending,
    mut nearest: impl FnMut(&[f32], usize) -> Result<Vec<Vec<(f32, Vec<f32>)>>, E>,
) -> Result<(), E> {
    for weights in &blending.rounds {
        let Some((&own, neighbour_weights)) = weights.split_first() else {
            continue;
        };
        let found = nearest(queries, neighbour_weights.len())?;
        for (row, neighbours) in queries.chunks_exact_mut(dim).zip(&found) {
            let weighted: Vec<(f32, f32, &[f32])> = neighbours
                .iter()
                .zip(neighbour_weights)
                .map(|((s, v), &w)| (w, *s, v.as_slice()))
                .collect();
            blend_round(row, own, &weighted, blending.max_distance);
        }
    }
    Ok(())
}

/// Blends every query (row-major, unit rows) with its close gallery neighbours, round by round.
pub fn blend_queries(queries: &mut [f32], gallery: &[f32], dim: usize, blending: &QueryBlending) {
    let (nq, ng) = (queries.len() / dim, gallery.len() / dim);
    if nq == 0 || ng == 0 {
        return;
    }
    let row_of = |g: u32| gallery[g as usize * dim..(g as usize + 1) * dim].to_vec();
    let from_gallery = |queries: &[f32], n: usize| {
        let top = top_k(
            MatrixView::f32(queries, nq, dim),
            MatrixView::f32(gallery, ng, dim),
            n,
        );
        Ok::<_, std::convert::Infallible>(
            (0..nq)
                .map(|q| {
                    top.row(q)
                        .iter()
                        .zip(top.row_scores(q))
                        .map(|(&g, &s)| (s, row_of(g)))
                        .collect()
                })
                .collect(),
        )
    };
    let Ok(()) = blend_in_rounds(queries, dim, blending, from_gallery);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_neighbours_inside_the_gate_are_blended() {
        // Query 0 is close to gallery 0 (distance ~0.2); query 1 is far from everything.
        let mut q = vec![1.0, 0.0, 0.0, 1.0];
        let g = vec![0.98, 0.198_997_5, -1.0, 0.0];
        let blending = QueryBlending {
            rounds: vec![vec![0.5, 0.5]],
            max_distance: 0.8,
        };
        blend_queries(&mut q, &g, 2, &blending);
        let (x, y) = (0.5 + 0.5 * 0.98, 0.5 * 0.198_997_5f32);
        let n = (x * x + y * y).sqrt();
        assert!(
            (q[0] - x / n).abs() < 1e-6 && (q[1] - y / n).abs() < 1e-6,
            "{q:?}"
        );
        assert_eq!(&q[2..], &[0.0, 1.0]);
    }

    #[test]
    fn rounds_parse_query_weight_first() {
        assert_eq!(
            QueryBlending::parse_rounds("0.5,0.5;0.4,0.3,0.3").unwrap(),
            QueryBlending::winner().rounds
        );
        assert!(QueryBlending::parse_rounds("0.5").is_err());
        assert!(QueryBlending::parse_rounds("0.5,x").is_err());
    }
}
