//! Runs a model's work on a thread of the compute pool (rayon's global pool, which every flex
//! kernel and the `gemm` crate split their work over).
//!
//! A parallel operation started from a thread outside the pool injects its job, wakes a
//! sleeping worker and puts the caller to sleep until the job is done: two futex wake-ups per
//! operation, hundreds of operations per forward pass. Started from a worker, the operation
//! runs on that worker and only wakes the others to share the work. A ViT-B/32 train step at
//! batch 32 on flex made 5,200 futex calls from outside the pool and 1,550 from inside; on a
//! 2-core VM, where each wake-up is a hypervisor exit, four alternated step timings went from
//! 4.31–6.12 img/s (spread by the VM's scheduling) to 5.35–5.57.
//!
//! Only flex's work moves: libtorch has its own threads, and the GPU backends may tie their
//! streams to the calling thread. The closure must not wait for other work on the pool (a
//! channel fed by a loader that runs on the pool, say): with one worker that would never
//! finish.

use burn::tensor::Device;

use crate::device::is_flex;

/// `f()` on a thread of the global rayon pool (here if this thread is one) when `device` is
/// flex; on this thread otherwise.
pub fn on_pool<R: Send>(device: &Device, f: impl FnOnce() -> R + Send) -> R {
    if is_flex(device) {
        rayon::scope(|_| f())
    } else {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_on_a_pool_thread_and_returns() {
        assert!(rayon::current_thread_index().is_none());
        let (index, sum) = on_pool(&Device::flex(), || {
            use rayon::prelude::*;
            (
                rayon::current_thread_index(),
                (0..1000u64).into_par_iter().sum::<u64>(),
            )
        });
        assert!(index.is_some());
        assert_eq!(sum, 499_500);
        // Another device's work stays on this thread (when another backend is compiled in).
        #[cfg(feature = "tch")]
        {
            let tch = crate::device::parse_device("tch").unwrap();
            assert!(on_pool(&tch, rayon::current_thread_index).is_none());
        }
    }
}
