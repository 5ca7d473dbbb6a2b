//! Exact top-k by inner product (cosine on unit vectors), blocked so that the full
//! `queries x gallery` score matrix never exists.
//!
//! The gallery is walked in blocks of rows (converted to f32 once per block when stored as f16);
//! for each block, query chunks run in parallel: a GEMM (the `gemm` crate) writes a
//! `chunk x block` score tile, and each query's collector keeps candidates above its current
//! k-th best score. When a collector holds 2k candidates it is cut back to k with
//! `select_nth_unstable` — a partial sort; only the final k are fully sorted. Order is score
//! descending, ties broken by the lower gallery index (the gallery is scanned in index order,
//! so a later candidate equal to the k-th best loses the tie and is skipped by a strict `>`).
//!
//! With few queries (a service's one query, or the few its batcher gathered) the query chunks
//! cannot keep the threads busy, or would each convert the same f16 blocks, so the gallery is
//! split into one contiguous part per thread instead, each part keeps its own best k for every
//! query, and the parts' lists are merged by the same total order — the answer is identical to
//! one scan.

use std::cmp::Ordering;

use rayon::prelude::*;

use crate::few_query_scores::{self, FewQueries};
use crate::matrix::{MatrixView, Storage};

/// Gallery rows per block: 1024 rows of 512-d f32 (2 MiB) stay in cache while every query chunk
/// is multiplied with them.
const GALLERY_BLOCK: usize = 1024;
/// Queries per GEMM tile (at most; fewer when that keeps every thread busy). Large chunks reuse
/// each gallery block for many queries: 64 → 512 took 10k x 1M x 512 from 132 to ~155 GFLOP/s.
const QUERY_CHUNK: usize = 512;
/// Up to this many queries the gallery is split between the threads (each converts and scores
/// its own rows for every query) rather than the queries: a few queries split between threads
/// would make each thread convert every f16 block and run GEMMs too thin to pay for packing.
const SPLIT_GALLERY_UP_TO: usize = 64;

/// The best `k` gallery rows per query, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct TopK {
    pub queries: usize,
    /// `min(k, gallery rows)`.
    pub k: usize,
    /// `queries x k` gallery row indices.
    pub indices: Vec<u32>,
    /// `queries x k` scores.
    pub scores: Vec<f32>,
}

impl TopK {
    pub fn row(&self, q: usize) -> &[u32] {
        &self.indices[q * self.k..(q + 1) * self.k]
    }

    pub fn row_scores(&self, q: usize) -> &[f32] {
        &self.scores[q * self.k..(q + 1) * self.k]
    }
}

/// Ranking order: higher score first, then lower index. NaN ranks last.
fn better(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    let (sa, sb) = (
        if a.0.is_nan() { f32::NEG_INFINITY } else { a.0 },
        if b.0.is_nan() { f32::NEG_INFINITY } else { b.0 },
    );
    sb.partial_cmp(&sa)
        .unwrap_or(Ordering::Equal)
        .then(a.1.cmp(&b.1))
}

/// Keeps the best `k` of a stream of (score, index) pairs arriving in increasing index order.
#[derive(Debug, Clone)]
struct Collector {
    k: usize,
    threshold: f32,
    candidates: Vec<(f32, u32)>,
}

impl Collector {
    fn new(k: usize) -> Self {
        Collector {
            k,
            threshold: f32::NEG_INFINITY,
            candidates: Vec::with_capacity(2 * k),
        }
    }

    #[inline]
    fn push_block(&mut self, scores: &[f32], rows: BlockRows<'_>) {
        for (j, &s) in scores.iter().enumerate() {
            // While fewer than k are held, everything (even -inf / NaN) is a candidate.
            if s > self.threshold || self.candidates.len() < self.k {
                self.candidates.push((s, rows.index(j)));
                if self.candidates.len() >= 2 * self.k {
                    self.shrink();
                }
            }
        }
    }

    fn shrink(&mut self) {
        if self.candidates.len() > self.k {
            self.candidates.select_nth_unstable_by(self.k - 1, better);
            self.candidates.truncate(self.k);
        }
        if self.candidates.len() == self.k {
            let worst = self
                .candidates
                .iter()
                .copied()
                .max_by(better)
                .expect("k > 0");
            self.threshold = if worst.0.is_nan() {
                f32::NEG_INFINITY
            } else {
                worst.0
            };
        }
    }

    fn finish(mut self) -> Vec<(f32, u32)> {
        self.shrink();
        self.candidates.sort_unstable_by(better);
        self.candidates
    }
}

/// Which gallery rows a block's columns are: a run from `start`, or listed (a filter's rows).
#[derive(Clone, Copy)]
pub(crate) enum BlockRows<'a> {
    Run(usize),
    Listed(&'a [u32]),
}

impl BlockRows<'_> {
    #[inline]
    pub(crate) fn index(self, j: usize) -> u32 {
        match self {
            BlockRows::Run(start) => (start + j) as u32,
            BlockRows::Listed(rows) => rows[j],
        }
    }
}

/// Scores `tile[i * cols + j] = queries[i] · gallery[j]` for row-major inputs.
fn gemm_tile(
    queries: &[f32],
    n_q: usize,
    gallery: &[f32],
    n_g: usize,
    dim: usize,
    tile: &mut [f32],
) {
    assert!(queries.len() >= n_q * dim && gallery.len() >= n_g * dim && tile.len() >= n_q * n_g);
    // SAFETY: the asserts above bound every access the strides below describe: lhs is n_q x dim
    // row-major, rhs (gallery transposed) is dim x n_g with element (d, j) at j*dim + d, and dst
    // is n_q x n_g row-major.
    unsafe {
        gemm::gemm(
            n_q,
            n_g,
            dim,
            tile.as_mut_ptr(),
            1,
            n_g as isize,
            false,
            queries.as_ptr(),
            1,
            dim as isize,
            gallery.as_ptr(),
            dim as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Exact top-`k` gallery rows for every query by inner product.
pub fn top_k(queries: MatrixView<'_>, gallery: MatrixView<'_>, k: usize) -> TopK {
    top_k_among(queries, gallery, None, k)
}

/// Exact top-`k` among the gallery rows `rows` (strictly increasing, each `< gallery.rows`)
/// for every query: a filtered search. Indices are gallery rows, ties go to the lower row, as
/// in [`top_k`]; the listed rows are gathered block by block, so the cost follows `rows.len()`.
pub fn top_k_rows(
    queries: MatrixView<'_>,
    gallery: MatrixView<'_>,
    rows: &[u32],
    k: usize,
) -> TopK {
    assert!(
        rows.windows(2).all(|w| w[0] < w[1])
            && rows.last().is_none_or(|&r| (r as usize) < gallery.rows),
        "filter rows must be increasing gallery rows"
    );
    top_k_among(queries, gallery, Some(rows), k)
}

fn top_k_among(
    queries: MatrixView<'_>,
    gallery: MatrixView<'_>,
    selected: Option<&[u32]>,
    k: usize,
) -> TopK {
    assert_eq!(
        queries.dim, gallery.dim,
        "queries and gallery have different widths"
    );
    let candidates = selected.map_or(gallery.rows, <[u32]>::len);
    let k = k.min(candidates);
    let mut query_scratch = Vec::new();
    let q_all = queries
        .rows_f32(0, queries.rows, &mut query_scratch)
        .to_vec();
    if k == 0 || queries.rows == 0 {
        return TopK {
            queries: queries.rows,
            k,
            indices: Vec::new(),
            scores: Vec::new(),
        };
    }
    let threads = rayon::current_num_threads();
    let blocks = candidates.div_ceil(GALLERY_BLOCK);
    // Few queries (what `serve` asks): the gallery is split into one contiguous part per thread
    // instead, each scanned for every query, and the parts' best are merged. The ranking order
    // is total (score, then row), so the merge is exact.
    let parts = if queries.rows <= SPLIT_GALLERY_UP_TO {
        threads.min(blocks).max(1)
    } else {
        1
    };
    let blocks_per_part = blocks.div_ceil(parts);
    let part_ranges: Vec<std::ops::Range<usize>> = (0..parts)
        .map(|p| {
            let start = (p * blocks_per_part * GALLERY_BLOCK).min(candidates);
            start..((p + 1) * blocks_per_part * GALLERY_BLOCK).min(candidates)
        })
        .collect();
    let scan = |range: &std::ops::Range<usize>| {
        scan_part(
            &q_all,
            queries.rows,
            gallery,
            selected,
            range.clone(),
            k,
            parts == 1,
        )
    };
    let found: Vec<Vec<(f32, u32)>> = if parts == 1 {
        scan(&part_ranges[0])
    } else {
        let per_part: Vec<Vec<Vec<(f32, u32)>>> = part_ranges.par_iter().map(scan).collect();
        (0..queries.rows)
            .map(|q| {
                let mut all: Vec<(f32, u32)> =
                    per_part.iter().flat_map(|p| p[q].iter().copied()).collect();
                all.sort_unstable_by(better);
                all.truncate(k);
                all
            })
            .collect()
    };
    let mut indices = Vec::with_capacity(queries.rows * k);
    let mut scores = Vec::with_capacity(queries.rows * k);
    for best in &found {
        for &(s, i) in best {
            scores.push(s);
            indices.push(i);
        }
    }
    TopK {
        queries: queries.rows,
        k,
        indices,
        scores,
    }
}

/// The best `k` (best first) for each of the `n_q` queries (`q_all`, row-major) among the
/// candidates at positions `range` (gallery rows, or positions in `selected`).
fn scan_part(
    q_all: &[f32],
    n_q_all: usize,
    gallery: MatrixView<'_>,
    selected: Option<&[u32]>,
    range: std::ops::Range<usize>,
    k: usize,
    split_queries: bool,
) -> Vec<Vec<(f32, u32)>> {
    let dim = gallery.dim;
    let mut collectors: Vec<Collector> = (0..n_q_all).map(|_| Collector::new(k)).collect();
    let chunk_rows = if split_queries {
        QUERY_CHUNK
            .min(n_q_all.div_ceil(rayon::current_num_threads()))
            .max(1)
    } else {
        n_q_all.max(1)
    };
    let mut gallery_scratch = Vec::new();
    // A few queries on one thread's part of the gallery: scored straight from the stored
    // rows when the CPU allows and it pays (`few_query_scores`), otherwise by the GEMM below.
    let rows_f16 = matches!(gallery.storage, Storage::F16(_));
    let few = if split_queries || !few_query_scores::pays_off(rows_f16, selected.is_some(), n_q_all)
    {
        None
    } else {
        FewQueries::new(q_all, n_q_all, dim)
    };
    let mut few_tile = Vec::new();
    for start in range.clone().step_by(GALLERY_BLOCK) {
        let end = (start + GALLERY_BLOCK).min(range.end);
        let n_g = end - start;
        let rows = match selected {
            None => BlockRows::Run(start),
            Some(listed) => BlockRows::Listed(&listed[start..end]),
        };
        if let Some(few) = &few {
            few_tile.resize(n_q_all * n_g, 0.0);
            few.scores(gallery.storage, rows, n_g, &mut few_tile);
            for (i, c) in collectors.iter_mut().enumerate() {
                c.push_block(&few_tile[i * n_g..(i + 1) * n_g], rows);
            }
            continue;
        }
        let block = match rows {
            BlockRows::Run(_) => gallery.rows_f32(start, end, &mut gallery_scratch),
            BlockRows::Listed(listed) => gallery.gather_f32(listed, &mut gallery_scratch),
        };
        collectors
            .par_chunks_mut(chunk_rows)
            .enumerate()
            .for_each_init(Vec::new, |tile, (chunk, group)| {
                let q0 = chunk * chunk_rows;
                let n_q = group.len();
                tile.resize(n_q * n_g, 0.0);
                gemm_tile(
                    &q_all[q0 * dim..(q0 + n_q) * dim],
                    n_q,
                    block,
                    n_g,
                    dim,
                    tile,
                );
                for (i, c) in group.iter_mut().enumerate() {
                    c.push_block(&tile[i * n_g..(i + 1) * n_g], rows);
                }
            });
    }
    collectors.into_iter().map(Collector::finish).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Reference: full scores, full stable sort.
    fn brute(q: &[f32], g: &[f32], dim: usize, k: usize) -> (Vec<u32>, Vec<f32>) {
        let (nq, ng) = (q.len() / dim, g.len() / dim);
        let mut idx = Vec::new();
        let mut sc = Vec::new();
        for i in 0..nq {
            let mut all: Vec<(f32, u32)> = (0..ng)
                .map(|j| {
                    (
                        (0..dim).map(|d| q[i * dim + d] * g[j * dim + d]).sum(),
                        j as u32,
                    )
                })
                .collect();
            all.sort_by(better);
            for (s, j) in all.into_iter().take(k.min(ng)) {
                idx.push(j);
                sc.push(s);
            }
        }
        (idx, sc)
    }

    /// Seeded values in quarter steps from -0.75 to 0.75 (exact in f16, and products and sums
    /// of a few are exact in f32, so any summation order gives the same scores).
    pub(crate) fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                // Coarse values so that ties happen.
                ((x % 7) as f32 - 3.0) * 0.25
            })
            .collect()
    }

    #[test]
    fn matches_brute_force_with_ties_and_blocks() {
        let dim = 5;
        let q = pseudo_random(70 * dim, 1);
        let g = pseudo_random(9000 * dim, 2); // more than two gallery blocks, many ties
        for k in [1, 10, 1000] {
            let got = top_k(
                MatrixView::f32(&q, 70, dim),
                MatrixView::f32(&g, 9000, dim),
                k,
            );
            let (idx, sc) = brute(&q, &g, dim, k);
            assert_eq!(got.indices, idx, "k = {k}");
            assert_eq!(got.scores, sc);
        }
    }

    #[test]
    fn a_few_queries_split_the_gallery_across_threads_and_match_brute_force() {
        let dim = 5;
        let g = pseudo_random(9000 * dim, 7);
        let rows: Vec<u32> = (0..9000u32).step_by(2).collect();
        let kept: Vec<f32> = rows
            .iter()
            .flat_map(|&r| g[r as usize * dim..(r as usize + 1) * dim].to_vec())
            .collect();
        let g16: Vec<half::f16> = g.iter().map(|v| half::f16::from_f32(*v)).collect();
        // Four threads whatever the machine has, so the gallery is split in parts.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        // One query, fewer than the threads, and a batch of several per thread.
        for n_q in [1, 3, 40] {
            let q = pseudo_random(n_q * dim, 8 + n_q as u32);
            for k in [1, 10, 1000] {
                let got = pool.install(|| {
                    top_k(
                        MatrixView::f32(&q, n_q, dim),
                        MatrixView::f32(&g, 9000, dim),
                        k,
                    )
                });
                let (idx, sc) = brute(&q, &g, dim, k);
                assert_eq!((got.indices, got.scores), (idx, sc), "{n_q} queries, k {k}");
                let got = pool.install(|| {
                    top_k_rows(
                        MatrixView::f32(&q, n_q, dim),
                        MatrixView::f32(&g, 9000, dim),
                        &rows,
                        k,
                    )
                });
                let (idx, sc) = brute(&q, &kept, dim, k);
                let mapped: Vec<u32> = idx.iter().map(|&i| rows[i as usize]).collect();
                assert_eq!((got.indices, got.scores), (mapped, sc), "filtered, k {k}");
                // f16 storage (quarter steps are exact in it): scored from the stored rows.
                let got = pool.install(|| {
                    top_k(
                        MatrixView::f32(&q, n_q, dim),
                        MatrixView::f16(&g16, 9000, dim),
                        k,
                    )
                });
                let (idx, sc) = brute(&q, &g, dim, k);
                assert_eq!((got.indices, got.scores), (idx, sc), "f16, k {k}");
            }
        }
    }

    #[test]
    fn filtered_rows_match_brute_force_over_those_rows() {
        let dim = 5;
        let q = pseudo_random(9 * dim, 5);
        let g = pseudo_random(5000 * dim, 6);
        // Every third row (more than one gather block), then a handful, then none.
        for rows in [
            (0..5000u32).step_by(3).collect::<Vec<_>>(),
            vec![4, 17, 4999],
            vec![],
        ] {
            let kept: Vec<f32> = rows
                .iter()
                .flat_map(|&r| g[r as usize * dim..(r as usize + 1) * dim].to_vec())
                .collect();
            for k in [1, 10, 2000] {
                let got = top_k_rows(
                    MatrixView::f32(&q, 9, dim),
                    MatrixView::f32(&g, 5000, dim),
                    &rows,
                    k,
                );
                let (idx, sc) = brute(&q, &kept, dim, k);
                let mapped: Vec<u32> = idx.iter().map(|&i| rows[i as usize]).collect();
                assert_eq!(got.indices, mapped, "{} rows, k = {k}", rows.len());
                assert_eq!(got.scores, sc);
            }
        }
    }

    #[test]
    fn k_larger_than_gallery_returns_everything_and_f16_matches() {
        let dim = 4;
        let q = pseudo_random(3 * dim, 3);
        let g = pseudo_random(11 * dim, 4);
        let got = top_k(
            MatrixView::f32(&q, 3, dim),
            MatrixView::f32(&g, 11, dim),
            1000,
        );
        assert_eq!(got.k, 11);
        for r in 0..3 {
            let mut row = got.row(r).to_vec();
            row.sort();
            assert_eq!(row, (0..11).collect::<Vec<u32>>());
        }
        // Quarter-step values are exact in f16, so f16 storage gives the same ranking.
        let g16: Vec<half::f16> = g.iter().map(|v| half::f16::from_f32(*v)).collect();
        let got16 = top_k(
            MatrixView::f32(&q, 3, dim),
            MatrixView::f16(&g16, 11, dim),
            1000,
        );
        assert_eq!(got16, got);
    }
}
