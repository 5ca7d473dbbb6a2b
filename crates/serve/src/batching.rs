//! Taking what waits in a queue as one batch: the model thread ([`crate::inference`]) and the
//! search thread ([`crate::search_batcher`]) both wait for a first job, then take every job
//! already queued behind it, up to their batch limit. Nothing is held back to wait for more:
//! a batch is what gathered while the previous one ran.

use std::sync::mpsc::Receiver;

/// The next batch: blocks for the first job, then takes up to `max - 1` more without waiting.
/// `None` once every sender is gone.
pub fn next_batch<T>(queue: &Receiver<T>, max: usize) -> Option<Vec<T>> {
    let mut batch = vec![queue.recv().ok()?];
    while batch.len() < max {
        match queue.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_batch_is_what_waits_up_to_the_limit() {
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..5 {
            tx.send(i).unwrap();
        }
        assert_eq!(super::next_batch(&rx, 3), Some(vec![0, 1, 2]));
        assert_eq!(super::next_batch(&rx, 3), Some(vec![3, 4]));
        drop(tx);
        assert_eq!(super::next_batch(&rx, 3), None);
    }
}
