//! The index a running server searches, replaceable between requests: `index add`, `upsert`,
//! `delete` or `compact` on an on-disk index write a new version and swap its `current` file;
//! [`watch_folder`] notices and swaps the server's index too, without a restart. Each request
//! takes the index once ([`LiveIndex::get`]) and uses that one to the end, so a swap never
//! mixes two versions in one answer; the old version stays mapped until its last request ends.
//!
//! A new version is taken only when it was made by the same model with the same preprocessing
//! (the server's model embeds the queries); otherwise the server keeps the old one and logs
//! why (rebuilding with another model needs a restart).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use visual_search_retrieval::catalogue::Catalogue;
use visual_search_retrieval::index::Index;

/// The served index, its size on disk, and for an on-disk index the version of `current`
/// last handled (served, or refused as made by another model).
struct Served {
    index: Arc<dyn Catalogue>,
    bytes: u64,
    seen_version: Option<String>,
}

/// The index in use, swapped atomically.
pub struct LiveIndex {
    slot: RwLock<Served>,
}

impl LiveIndex {
    pub fn new(index: Box<dyn Catalogue>, bytes: u64) -> Self {
        LiveIndex {
            slot: RwLock::new(Served {
                index: Arc::from(index),
                bytes,
                seen_version: None,
            }),
        }
    }

    /// Records the on-disk version being served: what `current` named before it was opened
    /// (a write in between only costs one more reload).
    pub fn record_version(&self, version: Option<String>) {
        self.slot
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .seen_version = version;
    }

    /// The index now in use (hold it for the whole request).
    pub fn get(&self) -> Arc<dyn Catalogue> {
        self.slot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .index
            .clone()
    }

    /// Bytes of the index now in use.
    pub fn bytes(&self) -> u64 {
        self.slot.read().unwrap_or_else(|p| p.into_inner()).bytes
    }

    /// Asks the index in use for its size again (after a write to an engine changed in place).
    pub fn refresh_bytes(&self) {
        let index = self.get();
        let bytes = index.size_bytes();
        let mut slot = self.slot.write().unwrap_or_else(|p| p.into_inner());
        if Arc::ptr_eq(&slot.index, &index) {
            slot.bytes = bytes;
        }
    }

    fn seen_version(&self) -> Option<String> {
        self.slot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .seen_version
            .clone()
    }

    /// Serves the version that `dir/current` names, unless it is the one last handled: opens
    /// and verifies it (blocking) and swaps it in if the running model can query it (same
    /// model reference, width and preprocessing); otherwise says why and keeps the old one.
    /// Returns the rows of the version swapped in, `None` when there was none to take.
    pub fn reload_folder(&self, dir: &Path) -> Result<Option<usize>, String> {
        let now = current_version(dir);
        if now.is_none() || now == self.seen_version() {
            return Ok(None);
        }
        let index = Index::open(dir).map_err(|e| e.to_string())?;
        let version = index
            .version_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let (rows, bytes) = (index.rows(), index.size_bytes());
        let mut slot = self.slot.write().unwrap_or_else(|p| p.into_inner());
        let (old, new) = (slot.index.meta(), &index.meta);
        let same_model =
            old.model == new.model && old.dim == new.dim && old.preprocessing == new.preprocessing;
        slot.seen_version = version;
        if !same_model {
            return Err(format!(
                "{} was rebuilt with another model or preprocessing; restart the server to \
                 serve it",
                dir.display()
            ));
        }
        slot.index = Arc::new(index);
        slot.bytes = bytes;
        Ok(Some(rows))
    }
}

/// The version an on-disk index's `current` file names now.
pub fn current_version(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("current"))
        .ok()
        .map(|t| t.trim().to_string())
}

/// Every `every`, serves the version `dir/current` names if it is new
/// ([`LiveIndex::reload_folder`]). Runs until the server stops.
pub async fn watch_folder(live: Arc<LiveIndex>, dir: PathBuf, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let (live, dir) = (live.clone(), dir.clone());
        match tokio::task::spawn_blocking(move || live.reload_folder(&dir)).await {
            Ok(Ok(Some(rows))) => tracing::info!("serving a new index version ({rows} images)"),
            Ok(Ok(None)) => {}
            // A version replaced again while it was being opened: the next tick sees the newer.
            Ok(Err(why)) => tracing::warn!("new index version not served: {why}"),
            Err(e) => tracing::warn!("opening the new index version failed: {e}"),
        }
    }
}
