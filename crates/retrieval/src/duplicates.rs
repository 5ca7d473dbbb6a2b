//! Near-duplicate groups in a catalogue: the same photo re-encoded, resized or cropped a little.
//!
//! Why: catalogues collect the same image under several rows (re-uploads, resized copies from
//! another feed); they crowd a result list with one picture and skew evaluation. Their
//! embeddings are almost identical, far closer than two different photos of one product.
//!
//! Exactly: every row's `k` nearest other rows by cosine (exact blocked top-k of the catalogue
//! against itself, [`crate::topk::top_k`], so memory stays `rows × k`); a candidate pair is two
//! rows whose cosine is at least `threshold`; the caller may verify candidates (`index dups`
//! compares the images' difference hashes, since two photos of one product can be as close in
//! embedding space as a photo and its copy); a group is a connected component of two or more
//! rows (union-find), listed by ascending row id, groups ordered by their first row. Rows that
//! have more than `k` near-duplicates are still grouped through the pairs among them.

use crate::error::RetrievalError;
use crate::matrix::MatrixView;
use crate::topk::top_k;

/// Default cosine threshold of `index dups` for candidates (BENCHMARKS.md "Near-duplicate
/// groups").
pub const DEFAULT_THRESHOLD: f32 = 0.9;

/// Pairs `(a, b)`, `a < b`, of rows of `catalogue` (unit rows) among each other's `k` nearest
/// with cosine at least `threshold`, sorted and without repeats.
pub fn candidate_pairs(catalogue: MatrixView<'_>, threshold: f32, k: usize) -> Vec<(u32, u32)> {
    let neighbours = top_k(catalogue, catalogue, k.saturating_add(1));
    let mut pairs = Vec::new();
    for r in 0..catalogue.rows {
        for (&n, &s) in neighbours.row(r).iter().zip(neighbours.row_scores(r)) {
            if n as usize != r && s >= threshold {
                pairs.push(((r as u32).min(n), (r as u32).max(n)));
            }
        }
    }
    pairs.sort_unstable();
    pairs.dedup();
    pairs
}

/// Connected components of two or more of `rows` rows joined by `pairs`, each by ascending
/// row, ordered by their first row.
pub fn groups_from_pairs(rows: usize, pairs: &[(u32, u32)]) -> Vec<Vec<u32>> {
    let mut parent: Vec<u32> = (0..rows as u32).collect();
    fn root(parent: &mut [u32], mut i: u32) -> u32 {
        while parent[i as usize] != i {
            parent[i as usize] = parent[parent[i as usize] as usize];
            i = parent[i as usize];
        }
        i
    }
    for &(a, b) in pairs {
        let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
        if ra != rb {
            parent[ra.max(rb) as usize] = ra.min(rb);
        }
    }
    let mut groups: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
    for r in 0..rows as u32 {
        let top = root(&mut parent, r);
        groups.entry(top).or_default().push(r);
    }
    groups.into_values().filter(|g| g.len() > 1).collect()
}

/// One row of the `index dups --out` CSV.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupMember {
    pub group: usize,
    pub id: u32,
    pub label: i64,
    pub path: String,
}

/// The columns of [`groups_csv`].
pub const GROUPS_CSV_HEADER: [&str; 4] = ["group", "id", "label", "path"];

/// `group,id,label,path` CSV of `members` (paths quoted as needed).
pub fn groups_csv(members: &[GroupMember]) -> Result<Vec<u8>, RetrievalError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let invalid = |e: csv::Error| RetrievalError::Invalid(format!("writing the groups: {e}"));
    w.write_record(GROUPS_CSV_HEADER).map_err(invalid)?;
    for m in members {
        w.write_record([
            m.group.to_string(),
            m.id.to_string(),
            m.label.to_string(),
            m.path.clone(),
        ])
        .map_err(invalid)?;
    }
    w.into_inner()
        .map_err(|e| RetrievalError::Invalid(format!("writing the groups: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_rows_form_groups_through_chains() {
        // Rows 0, 2 and 4 are near-copies of each other (0~2, 2~4), row 1 and row 3 stand alone.
        let c = 0.99f32;
        let s = (1.0 - c * c).sqrt();
        let data = [
            1.0,
            0.0,
            0.0, //
            0.0,
            1.0,
            0.0, //
            c,
            s,
            0.0, //
            0.0,
            0.0,
            1.0, //
            c * c - s * s,
            2.0 * c * s,
            0.0, //
        ];
        let view = MatrixView::f32(&data, 5, 3);
        let pairs = candidate_pairs(view, 0.97, 1);
        assert_eq!(pairs, vec![(0, 2), (2, 4)]);
        assert_eq!(groups_from_pairs(5, &pairs), vec![vec![0, 2, 4]]);
        assert!(candidate_pairs(view, 0.999, 3).is_empty());
    }
}
