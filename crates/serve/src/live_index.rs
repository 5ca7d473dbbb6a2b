//! The index a running server searches, replaceable between requests: `index add`, `upsert`,
//! `delete` or `compact` on an on-disk index write a new version and swap its `current` file;
//! [`watch_folder`] notices and swaps the server's index too, without a restart. Each request
//! takes the index once ([`LiveIndex::get`]) and uses that one to the end, so a swap never
//! mixes two versions in one answer; the old version stays mapped until its last request ends.
//!
//! A new version is taken only when it was made by the same model with the same preprocessing
//! (the server's model embeds the queries); otherwise the server keeps the old one and logs
//! why (rebuilding with another model needs a restart).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use visual_search_retrieval::catalogue::Catalogue;
use visual_search_retrieval::index::Index;

/// The served index and its size on disk.
struct Served {
    index: Arc<dyn Catalogue>,
    bytes: u64,
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
            }),
        }
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

    /// Swaps in `index` if the running model can query it (same model reference, width and
    /// preprocessing); otherwise says why and keeps the old one.
    pub fn replace(&self, index: Box<dyn Catalogue>) -> Result<(), String> {
        let bytes = index.size_bytes();
        let mut slot = self.slot.write().unwrap_or_else(|p| p.into_inner());
        let (old, new) = (slot.index.meta(), index.meta());
        if old.model != new.model || old.dim != new.dim || old.preprocessing != new.preprocessing {
            return Err(format!(
                "{} was rebuilt with another model or preprocessing; restart the server to \
                 serve it",
                index.location()
            ));
        }
        *slot = Served {
            index: Arc::from(index),
            bytes,
        };
        Ok(())
    }
}

/// The version an on-disk index's `current` file names now.
fn current_version(dir: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(dir.join("current"))
        .ok()
        .map(|t| t.trim().to_string())
}

/// Every `every`, reads `dir/current`; when it names a new version, opens and verifies it and
/// swaps it in. Runs until the server stops.
pub async fn watch_folder(live: Arc<LiveIndex>, dir: PathBuf, every: Duration) {
    let mut seen = current_version(&dir);
    loop {
        tokio::time::sleep(every).await;
        let now = current_version(&dir);
        if now.is_none() || now == seen {
            continue;
        }
        let opening = dir.clone();
        let opened = tokio::task::spawn_blocking(move || Index::open(&opening)).await;
        match opened {
            Ok(Ok(index)) => {
                let rows = index.rows();
                match live.replace(Box::new(index)) {
                    Ok(()) => tracing::info!(
                        "serving the new index version {} ({rows} images)",
                        now.as_deref().unwrap_or_default()
                    ),
                    Err(why) => tracing::warn!("{why}"),
                }
                seen = now;
            }
            // A version replaced again while it was being opened: the next tick sees the newer.
            Ok(Err(e)) => tracing::warn!("new index version not served yet: {e}"),
            Err(e) => tracing::warn!("opening the new index version failed: {e}"),
        }
    }
}
