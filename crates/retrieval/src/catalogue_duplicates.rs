//! Near-duplicate groups of an index, whatever engine holds it: the pipeline behind `index
//! dups` and `GET /index/dups`. Reads every live vector through the [`Catalogue`] seam (in
//! chunks, so PostgreSQL answers bounded queries), takes candidate pairs from the exact top-k
//! of the catalogue against itself ([`crate::duplicates`]), keeps a pair only when the two
//! images' crop-tolerant difference hashes agree (two photos of one product can be as close in
//! embedding space as a photo and its copy; their pixels are not), and joins pairs into groups.
//! Ids have gaps after deletes, so the search runs over positions in the list of live ids.

use std::collections::HashMap;

use serde::Serialize;
use visual_search_data::image::difference_hash::crop_tolerant_hash;
use visual_search_data::image::{DecodeLimits, decode_rgb_file};

use crate::catalogue::Catalogue;
use crate::duplicates::{self, GroupMember};
use crate::error::RetrievalError;
use crate::matrix::MatrixView;

/// Default hash check of `index dups` (BENCHMARKS.md "Near-duplicate groups"): at most this
/// many of the 64 difference-hash bits may differ.
pub const DEFAULT_MAX_HASH_DISTANCE: u32 = 5;

/// How near-duplicates are told.
#[derive(Debug, Clone, Copy)]
pub struct DupSettings {
    /// Candidate pairs have a cosine at least this.
    pub threshold: f32,
    /// Neighbours looked at per image.
    pub k: usize,
    /// Hash bits that may differ; 64 keeps every candidate without reading the images.
    pub max_hash_distance: u32,
}

impl Default for DupSettings {
    fn default() -> Self {
        DupSettings {
            threshold: duplicates::DEFAULT_THRESHOLD,
            k: 10,
            max_hash_distance: DEFAULT_MAX_HASH_DISTANCE,
        }
    }
}

/// The groups found.
#[derive(Debug, Serialize)]
pub struct DupReport {
    /// Each group's images (`group` numbered from 1), by ascending id.
    pub groups: Vec<Vec<GroupMember>>,
    /// Images looked at.
    pub rows: usize,
    /// Candidate images that could not be read (`path: error`); their pairs are left out.
    pub unreadable: Vec<String>,
}

/// Finds the near-duplicate groups of `index`; `progress(done, total)` follows the hashing of
/// candidate images.
pub fn find_duplicate_groups(
    index: &dyn Catalogue,
    settings: &DupSettings,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<DupReport, RetrievalError> {
    if !(settings.threshold > 0.0 && settings.threshold <= 1.0) {
        return Err(RetrievalError::Invalid(format!(
            "the duplicate threshold must be in (0, 1], got {}",
            settings.threshold
        )));
    }
    let dim = index.meta().dim;
    let ids = index.ids()?;
    let rows = ids.len();
    let mut data = Vec::with_capacity(rows * dim);
    for chunk in ids.chunks(10_000) {
        data.extend(index.vectors(chunk)?);
    }
    let mut pairs = duplicates::candidate_pairs(
        MatrixView::f32(&data, rows, dim),
        settings.threshold,
        settings.k,
    );
    let mut unreadable = Vec::new();
    if settings.max_hash_distance < 64 {
        pairs = verify_by_hash(
            index,
            &ids,
            &pairs,
            settings.max_hash_distance,
            &mut unreadable,
            progress,
        )?;
    }
    let mut groups = Vec::new();
    for (g, positions) in duplicates::groups_from_pairs(rows, &pairs)
        .iter()
        .enumerate()
    {
        let mut members = Vec::with_capacity(positions.len());
        for &position in positions {
            let id = ids[position as usize];
            let item = index.item(id)?.ok_or_else(|| {
                RetrievalError::Invalid(format!("row {id} vanished from {}", index.location()))
            })?;
            members.push(GroupMember {
                group: g + 1,
                id: u32::try_from(id)
                    .map_err(|_| RetrievalError::Invalid(format!("row id {id} beyond u32")))?,
                label: item.label,
                path: item.path.display().to_string(),
            });
        }
        groups.push(members);
    }
    Ok(DupReport {
        groups,
        rows,
        unreadable,
    })
}

/// The candidate pairs (positions in `ids`) whose images' difference hashes differ in at most
/// `max_distance` bits; an image that cannot be read drops its pairs (listed in `unreadable`).
fn verify_by_hash(
    index: &dyn Catalogue,
    ids: &[u64],
    pairs: &[(u32, u32)],
    max_distance: u32,
    unreadable: &mut Vec<String>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<(u32, u32)>, RetrievalError> {
    let mut positions: Vec<u32> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
    positions.sort_unstable();
    positions.dedup();
    let mut hashes = HashMap::new();
    for (done, &position) in positions.iter().enumerate() {
        let id = ids[position as usize];
        let item = index.item(id)?.ok_or_else(|| {
            RetrievalError::Invalid(format!("row {id} vanished from {}", index.location()))
        })?;
        match decode_rgb_file(&item.path, &DecodeLimits::default()) {
            Ok(img) => {
                hashes.insert(position, crop_tolerant_hash(&img));
            }
            Err(e) => unreadable.push(format!("{}: {e}", item.path.display())),
        }
        progress(done + 1, positions.len());
    }
    Ok(pairs
        .iter()
        .copied()
        .filter(|(a, b)| match (hashes.get(a), hashes.get(b)) {
            (Some(ha), Some(hb)) => ha.distance(hb) <= max_distance,
            _ => false,
        })
        .collect())
}
