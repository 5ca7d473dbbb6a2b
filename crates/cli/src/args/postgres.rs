//! Where an index lives: a folder (the embedded on-disk index) or a `postgres://` URL
//! (PostgreSQL + pgvector), and the flags that only matter for PostgreSQL.

use std::time::Duration;

use visual_search_retrieval::catalogue::Catalogue;
use visual_search_retrieval::index::Index;
use visual_search_retrieval::postgres_index::{PgIndex, PgOptions, is_postgres_url};

/// PostgreSQL settings (ignored for a folder index).
#[derive(clap::Args, Debug, Clone)]
pub struct PgArgs {
    /// Table of a PostgreSQL index (`<table>_meta` holds its metadata).
    #[arg(long, default_value = "visual_search_items")]
    pub table: String,
    /// HNSW search beam width: higher is slower and closer to exact.
    #[arg(long, default_value_t = 100)]
    pub ef_search: u32,
    /// Compare against every row (no HNSW): exact answers, linear time.
    #[arg(long)]
    pub exact: bool,
    /// Seconds to keep reconnecting to a PostgreSQL server that went away.
    #[arg(long, default_value_t = 60)]
    pub retry_for_s: u64,
}

impl PgArgs {
    pub fn options(&self, url: &str) -> PgOptions {
        PgOptions {
            ef_search: self.ef_search,
            retry_for: Duration::from_secs(self.retry_for_s),
            ..PgOptions::new(url, &self.table)
        }
    }
}

/// Opens the index at `location` (a folder or a `postgres://` URL).
pub fn open_catalogue(location: &str, pg: &PgArgs) -> anyhow::Result<Box<dyn Catalogue>> {
    if is_postgres_url(location) {
        let mut index = PgIndex::open(&pg.options(location))?;
        index.exact = pg.exact;
        Ok(Box::new(index))
    } else {
        Ok(Box::new(Index::open(std::path::Path::new(location))?))
    }
}
