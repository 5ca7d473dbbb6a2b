//! Cross-batch memory (XBM): a FIFO ring of the last `capacity` detached, L2-normalised
//! embeddings and their labels, kept on the training device so that the loss against it is one
//! matrix product. Storage is allocated once (capacity × dim × 4 bytes for the embeddings plus
//! capacity × 8 for the labels) and overwritten in place, so device memory does not grow.
//!
//! The reference implementation tested "full" by `targets[-1] != 0` (wrong whenever label 0
//! sits in the last slot or the last slot is never reached) and, on overflow, overwrote the
//! *last* `b` slots and restarted at 0 (so some slots were written twice and others kept stale
//! entries). Here a batch that runs past the end wraps to the front, `len` counts filled slots,
//! and slots `0..len` are always the filled ones — which also makes a snapshot exact.

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::contrastive::ContrastiveLoss;

/// The memory bank.
#[derive(Debug)]
pub struct CrossBatchMemory {
    feats: Option<Tensor<2>>,
    labels: Option<Tensor<1, Int>>,
    capacity: usize,
    dim: usize,
    /// Slot the next row goes to.
    next: usize,
    /// Filled slots (`0..len`).
    len: usize,
}

/// The memory's contents on the host, for checkpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct MemorySnapshot {
    pub capacity: usize,
    pub dim: usize,
    pub next: usize,
    /// Rows of slots `0..len`, `len × dim`.
    pub feats: Vec<f32>,
    pub labels: Vec<i64>,
}

/// Bytes a memory of this shape occupies on the device.
pub fn memory_bytes(capacity: usize, dim: usize) -> usize {
    capacity * dim * 4 + capacity * 8
}

impl CrossBatchMemory {
    /// An empty memory of `capacity` rows of `dim` floats on `device`.
    pub fn new(capacity: usize, dim: usize, device: &Device) -> Self {
        assert!(
            capacity > 0 && dim > 0,
            "memory needs a capacity and a width"
        );
        CrossBatchMemory {
            feats: Some(Tensor::zeros([capacity, dim], device)),
            labels: Some(Tensor::zeros([capacity], device)),
            capacity,
            dim,
            next: 0,
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len == self.capacity
    }

    /// The slot the next enqueued row will take.
    pub fn next_slot(&self) -> usize {
        self.next
    }

    fn write(&mut self, slot: usize, feats: Tensor<2>, labels: Tensor<1, Int>) {
        let rows = feats.dims()[0];
        let f = self
            .feats
            .take()
            .expect("memory tensors are always present");
        let l = self
            .labels
            .take()
            .expect("memory tensors are always present");
        self.feats = Some(f.slice_assign([slot..slot + rows, 0..self.dim], feats));
        self.labels = Some(l.slice_assign(slot..slot + rows, labels));
    }

    /// Adds a batch (`[b, dim]`, detached here) with its labels, oldest rows making way. A batch
    /// larger than the memory leaves only its last `capacity` rows.
    pub fn enqueue(&mut self, feats: Tensor<2>, labels: Tensor<1, Int>) {
        let [b, dim] = feats.dims();
        assert_eq!(dim, self.dim, "memory width");
        assert_eq!(labels.dims()[0], b, "one label per row");
        if b == 0 {
            return;
        }
        let feats = feats.detach();
        if b >= self.capacity {
            let keep = b - self.capacity..b;
            self.write(0, feats.slice(keep.clone()), labels.slice(keep));
            self.next = 0;
            self.len = self.capacity;
            return;
        }
        let first = b.min(self.capacity - self.next);
        self.write(
            self.next,
            feats.clone().slice(0..first),
            labels.clone().slice(0..first),
        );
        if first < b {
            self.write(0, feats.slice(first..b), labels.slice(first..b));
        }
        self.next = (self.next + b) % self.capacity;
        self.len = (self.len + b).min(self.capacity);
    }

    /// The filled rows and their labels (`None` while empty).
    pub fn contents(&self) -> Option<(Tensor<2>, Tensor<1, Int>)> {
        let (f, l) = (self.feats.as_ref()?, self.labels.as_ref()?);
        match self.len {
            0 => None,
            n if n == self.capacity => Some((f.clone(), l.clone())),
            n => Some((f.clone().slice(0..n), l.clone().slice(0..n))),
        }
    }

    /// Copies the filled rows to the host.
    pub fn snapshot(&self) -> MemorySnapshot {
        let (feats, labels) = match self.contents() {
            Some((f, l)) => (
                f.into_data().iter::<f32>().collect(),
                l.into_data().iter::<i64>().collect(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        MemorySnapshot {
            capacity: self.capacity,
            dim: self.dim,
            next: self.next,
            feats,
            labels,
        }
    }

    /// Rebuilds a memory from a snapshot; an inconsistent snapshot is an error.
    pub fn restore(snapshot: &MemorySnapshot, device: &Device) -> Result<Self, String> {
        let MemorySnapshot {
            capacity,
            dim,
            next,
            ..
        } = *snapshot;
        let len = snapshot.labels.len();
        if capacity == 0 || dim == 0 || len > capacity || snapshot.feats.len() != len * dim {
            return Err(format!(
                "memory snapshot is inconsistent: capacity {capacity}, dim {dim}, {len} labels, {} values",
                snapshot.feats.len()
            ));
        }
        if (len < capacity && next != len) || next >= capacity {
            return Err(format!(
                "memory snapshot is inconsistent: next slot {next} with {len} of {capacity} filled"
            ));
        }
        let mut memory = CrossBatchMemory::new(capacity, dim, device);
        if len > 0 {
            let f =
                Tensor::<2>::from_data(TensorData::new(snapshot.feats.clone(), [len, dim]), device);
            let l = Tensor::<1, Int>::from_data(
                TensorData::new(snapshot.labels.clone(), [len]),
                device,
            );
            memory.write(0, f, l);
        }
        memory.len = len;
        memory.next = next;
        Ok(memory)
    }
}

/// The loss of one XBM training step on L2-normalised embeddings `emb` (`[B, D]`, tracked)
/// with `labels`: `Contrastive(batch, batch)`, and once `use_memory` (the step has reached
/// `start_iteration`) the batch is enqueued first and `weight · Contrastive(batch, memory)` is
/// added — so the memory holds the batch's own detached copies, which the loss skips as
/// self-pairs. Before that the memory is neither used nor filled, as in the reference.
pub fn xbm_loss(
    loss: &ContrastiveLoss,
    memory: &mut CrossBatchMemory,
    emb: Tensor<2>,
    labels: Tensor<1, Int>,
    weight: f64,
    use_memory: bool,
) -> Tensor<1> {
    let batch = loss.forward(emb.clone(), labels.clone(), emb.clone(), labels.clone());
    if !use_memory {
        return batch;
    }
    memory.enqueue(emb.clone(), labels.clone());
    match memory.contents() {
        Some((feats, feat_labels)) => {
            batch
                + loss
                    .forward(emb, labels, feats, feat_labels)
                    .mul_scalar(weight)
        }
        None => batch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(values: &[f32], device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
        let n = values.len();
        let f = Tensor::<2>::from_data(
            TensorData::new(
                values.iter().flat_map(|&v| [v, -v]).collect::<Vec<_>>(),
                [n, 2],
            ),
            device,
        );
        // Label 0 on purpose: the reference's "is full" test broke on it.
        let l = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64; n], [n]), device);
        (f, l)
    }

    fn firsts(m: &CrossBatchMemory) -> Vec<f32> {
        m.snapshot().feats.chunks(2).map(|r| r[0]).collect()
    }

    #[test]
    fn fills_then_wraps_around_keeping_the_newest_rows() {
        let device = Device::default();
        let mut m = CrossBatchMemory::new(5, 2, &device);
        assert!(m.contents().is_none());
        let (f, l) = rows(&[1.0, 2.0], &device);
        m.enqueue(f, l);
        assert_eq!((m.len(), m.next_slot(), m.is_full()), (2, 2, false));
        assert_eq!(firsts(&m), vec![1.0, 2.0]);
        let (f, l) = rows(&[3.0, 4.0], &device);
        m.enqueue(f, l);
        // Runs past the end: 5 goes to slot 4, 6 and 7 wrap to slots 0 and 1.
        let (f, l) = rows(&[5.0, 6.0, 7.0], &device);
        m.enqueue(f, l);
        assert_eq!((m.len(), m.next_slot(), m.is_full()), (5, 2, true));
        assert_eq!(firsts(&m), vec![6.0, 7.0, 3.0, 4.0, 5.0]);
        // Exactly to the end, then the pointer is back at 0.
        let (f, l) = rows(&[8.0, 9.0, 10.0], &device);
        m.enqueue(f, l);
        assert_eq!(m.next_slot(), 0);
        assert_eq!(firsts(&m), vec![6.0, 7.0, 8.0, 9.0, 10.0]);
        // Larger than the memory: its last five rows, oldest first.
        let (f, l) = rows(&[11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0], &device);
        m.enqueue(f, l);
        assert_eq!((m.len(), m.next_slot()), (5, 0));
        assert_eq!(firsts(&m), vec![13.0, 14.0, 15.0, 16.0, 17.0]);
    }

    #[test]
    fn snapshots_restore_exactly_and_bad_ones_are_refused() {
        let device = Device::default();
        let mut m = CrossBatchMemory::new(4, 2, &device);
        let (f, l) = rows(&[1.0, 2.0, 3.0], &device);
        m.enqueue(f, l);
        let snap = m.snapshot();
        let mut r = CrossBatchMemory::restore(&snap, &device).unwrap();
        assert_eq!(r.snapshot(), snap);
        for mem in [&mut m, &mut r] {
            let (f, l) = rows(&[4.0, 5.0], &device);
            mem.enqueue(f, l);
        }
        assert_eq!(m.snapshot(), r.snapshot());
        assert_eq!(firsts(&r), vec![5.0, 2.0, 3.0, 4.0]);
        let mut bad = snap.clone();
        bad.next = 0;
        assert!(CrossBatchMemory::restore(&bad, &device).is_err());
        bad = snap;
        bad.feats.pop();
        assert!(CrossBatchMemory::restore(&bad, &device).is_err());
    }

    #[test]
    fn before_start_iteration_the_memory_is_neither_filled_nor_used() {
        let device = Device::default();
        let s = std::f32::consts::FRAC_1_SQRT_2;
        let emb = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 0.0, s, s, 0.0, 1.0], [3, 2]),
            &device,
        );
        let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64, 1, 2], [3]), &device);
        let loss = ContrastiveLoss::default();
        let mut memory = CrossBatchMemory::new(8, 2, &device);
        let batch_only = xbm_loss(&loss, &mut memory, emb.clone(), labels.clone(), 1.0, false)
            .into_scalar::<f32>();
        assert!(memory.is_empty());
        // Batch: the two class-1 rows are positives at cos 0.707 (twice); the class-2 row and
        // the 45° row are hard negatives (twice).
        let pair = 1.0 - s;
        assert!((batch_only - (2.0 * pair + 2.0 * s) / 3.0).abs() < 1e-6);
        let with_memory = xbm_loss(&loss, &mut memory, emb, labels, 0.5, true).into_scalar::<f32>();
        assert_eq!(memory.len(), 3);
        // The memory holds the same rows, so its term equals the batch term.
        assert!(
            (with_memory - 1.5 * batch_only).abs() < 1e-6,
            "{with_memory}"
        );
    }

    #[test]
    fn memory_cost_is_rows_times_width_times_four_plus_labels() {
        // The recipe's 55,000 × 1024: ~225 MB of embeddings.
        assert_eq!(memory_bytes(55_000, 1024), 225_280_000 + 440_000);
    }
}
