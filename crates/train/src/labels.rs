//! Class indices for a classification head: dataset labels are arbitrary integers (Product10K
//! ids, mined-pair labels offset by 10,000), the head needs 0..C. The mapping is the sorted list
//! of distinct labels, stored with checkpoints so a later phase or a resumed run uses the same one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Sorted distinct labels and their image counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassIndex {
    pub labels: Vec<i64>,
    pub counts: Vec<usize>,
}

impl ClassIndex {
    pub fn from_labels(labels: impl IntoIterator<Item = i64>) -> Self {
        let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
        for l in labels {
            *counts.entry(l).or_default() += 1;
        }
        ClassIndex {
            labels: counts.keys().copied().collect(),
            counts: counts.values().copied().collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The head index of `label`, if it was seen in training.
    pub fn index_of(&self, label: i64) -> Option<usize> {
        self.labels.binary_search(&label).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_sparse_labels_to_dense_indices() {
        let c = ClassIndex::from_labels([10_004, 2, 2, 8, 10_004, 10_004]);
        assert_eq!(c.labels, vec![2, 8, 10_004]);
        assert_eq!(c.counts, vec![2, 1, 3]);
        assert_eq!(c.index_of(10_004), Some(2));
        assert_eq!(c.index_of(3), None);
    }
}
