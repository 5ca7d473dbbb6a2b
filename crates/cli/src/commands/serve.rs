//! `visual-search serve`: the HTTP search service over an index (see the serve crate).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use visual_search_retrieval::auto_box::AutoBox;

use anyhow::Context;
use visual_search_retrieval::postgres_index::is_postgres_url;
use visual_search_serve::back_office::WriteConfig;
use visual_search_serve::inference::{Embedder, InferenceQueue};
use visual_search_serve::live_index::{current_version, watch_folder};
use visual_search_serve::{AppState, ServeConfig, serve};

use visual_search_inference::InferenceModel;

use crate::args::model::DeviceArgs;
use crate::args::postgres::{PgArgs, open_catalogue};
use crate::index_model::{load_index_model, load_index_model_at};

/// Serves an index: `POST /search` (image as multipart field `image` or raw body; `k`,
/// `bbox=x,y,w,h`), `GET /images/{id}`, `GET /healthz`, `GET /metrics` and a web page at `/`.
/// Concurrent searches are batched through the model; when more than --queue wait, new ones
/// get 503.
#[derive(clap::Args)]
pub struct Args {
    /// The index: a folder (`visual-search index build`) or a `postgres://` URL.
    #[arg(long)]
    index: String,
    #[command(flatten)]
    pg: PgArgs,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    #[command(flatten)]
    device: DeviceArgs,
    /// Most searches embedded in one forward pass.
    #[arg(long, default_value_t = 8, value_parser = crate::args::at_least_one)]
    max_batch: usize,
    /// Most searches waiting for the model.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Largest request body, MB.
    #[arg(long, default_value_t = 20)]
    max_body_mb: usize,
    /// Largest total of request bodies held at once, MB (503 with Retry-After beyond it): bounds
    /// the server's memory for uploads whatever --max-connections is [minimum: --max-body-mb].
    #[arg(long, default_value_t = ServeConfig::default().max_body_memory >> 20)]
    max_body_memory_mb: usize,
    /// Largest decoded upload, megapixels (a 12-24 MP phone photo fits; bigger is refused, 400).
    #[arg(long, default_value_t = ServeConfig::default().max_pixels / 1_000_000)]
    max_megapixels: u64,
    /// Deadline of one search, seconds (504 after it; its queued model job is dropped).
    #[arg(long, default_value_t = ServeConfig::default().request_timeout.as_secs())]
    timeout_s: u64,
    /// Seconds a connection may take to send a request head, idle keep-alive included.
    #[arg(long, default_value_t = ServeConfig::default().header_timeout.as_secs())]
    header_timeout_s: u64,
    /// Seconds a request's body may take to arrive (408 and the connection closed after it):
    /// a client trickling a body cannot hold a connection longer.
    #[arg(long, default_value_t = ServeConfig::default().body_timeout.as_secs())]
    body_timeout_s: u64,
    /// Seconds in all a connection's answers may wait for its client to read them (the
    /// connection is closed after it): a client that never reads cannot hold a connection.
    #[arg(long, default_value_t = ServeConfig::default().send_timeout.as_secs())]
    send_timeout_s: u64,
    /// Most open connections; more are closed at once.
    #[arg(long, default_value_t = ServeConfig::default().max_connections)]
    max_connections: usize,
    /// On SIGINT/SIGTERM, seconds open requests get to finish.
    #[arg(long, default_value_t = ServeConfig::default().drain_timeout.as_secs())]
    drain_timeout_s: u64,
    /// Most uploads decoded at once [default: the number of cores].
    #[arg(long)]
    max_decodes: Option<usize>,
    /// Do not load the second copy of the model that `box=auto` embeds its windows with (at
    /// 0.7x the input side): saves its memory; `box=auto` then answers 400.
    #[arg(long)]
    no_auto_box: bool,
    /// Seconds between checks of an on-disk index for a new version (written by `index
    /// add/upsert/delete/compact`), which is then served without a restart; 0 turns it off.
    /// A PostgreSQL index is always live.
    #[arg(long, default_value_t = 2.0)]
    reload_every_s: f64,
    /// Turn on catalogue writes over HTTP (`POST /items`, `DELETE /items`, `POST
    /// /index/compact`), each needing `Authorization: Bearer <token>` with the token in this
    /// file (at least 16 characters; a file keeps it out of `ps` and shell history).
    #[arg(long)]
    write_token_file: Option<PathBuf>,
    /// Where photos added over HTTP are kept [default: `uploads/` in an on-disk index's
    /// folder; required for a PostgreSQL index].
    #[arg(long)]
    upload_dir: Option<PathBuf>,
    /// Load no model: serve only `POST /search/vector` (clients that embed on their own
    /// machines, benchmarks of the index); photo searches and uploads answer 400.
    #[arg(long)]
    vectors_only: bool,
}

/// The index's model, and the same model at the auto-box window side.
struct ModelEmbedder {
    model: InferenceModel,
    windows: Option<InferenceModel>,
}

impl Embedder for ModelEmbedder {
    fn embed(&mut self, pixels: Vec<f32>, n: usize) -> Result<Vec<f32>, String> {
        self.model.embed(pixels, n).map_err(|e| e.to_string())
    }

    fn dim(&self) -> usize {
        self.model.dim
    }

    fn embed_windows(&mut self, pixels: Vec<f32>, n: usize) -> Result<Option<Vec<f32>>, String> {
        self.windows
            .as_ref()
            .map(|m| m.embed(pixels, n).map_err(|e| e.to_string()))
            .transpose()
    }
}

/// What to say when the token file can be read by other users of the machine (as libpq says
/// of a `.pgpass` looser than 0600): anyone who reads it can change the catalogue.
fn loose_token_file(file: &Path, mode: u32) -> Option<String> {
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} can be read by other users (mode {:o}); `chmod 600 {}` keeps the write token \
             to its owner",
            file.display(),
            mode & 0o777,
            file.display()
        )
    })
}

/// The write settings, when `--write-token-file` turns writes on.
fn write_config(args: &Args, folder: Option<&PathBuf>) -> anyhow::Result<Option<WriteConfig>> {
    let Some(file) = &args.write_token_file else {
        return Ok(None);
    };
    let token = std::fs::read_to_string(file)
        .with_context(|| format!("reading the write token from {}", file.display()))?
        .trim()
        .to_string();
    if let Some(warning) = std::fs::metadata(file)
        .ok()
        .and_then(|m| loose_token_file(file, m.permissions().mode()))
    {
        eprintln!("warning: {warning}");
    }
    if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        anyhow::bail!(
            "{}: the write token must be at least 16 characters without spaces",
            file.display()
        );
    }
    let upload_dir = match (&args.upload_dir, folder) {
        (Some(dir), _) => dir.clone(),
        (None, Some(index)) => index.join("uploads"),
        (None, None) => {
            anyhow::bail!("--upload-dir is needed to take photos over HTTP into a PostgreSQL index")
        }
    };
    Ok(Some(WriteConfig { token, upload_dir }))
}

/// `--reload-every-s` as an interval (`None`: off), refused when it is no number of seconds
/// (NaN, negative, infinite or too large to be a duration).
fn reload_interval(seconds: f64) -> anyhow::Result<Option<Duration>> {
    if seconds == 0.0 {
        return Ok(None);
    }
    match Duration::try_from_secs_f64(seconds.max(0.05)) {
        Ok(every) if seconds > 0.0 => Ok(Some(every)),
        _ => anyhow::bail!(
            "--reload-every-s must be 0 (off) or a positive number of seconds, got {seconds}"
        ),
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let reload_every = reload_interval(args.reload_every_s)?;
    let folder = (!is_postgres_url(&args.index)).then(|| PathBuf::from(&args.index));
    let writes = write_config(&args, folder.as_ref())?;
    // Read before opening: a version written in between is then reloaded, never missed.
    let version = folder.as_deref().and_then(current_version);
    let index = open_catalogue(&args.index, &args.pg)?;
    let loaded = match args.vectors_only {
        true => None,
        false => Some(load_index_model(index.meta(), &args.device)?),
    };
    let defaults = ServeConfig::default();
    let auto_box = AutoBox::default();
    let config = ServeConfig {
        max_body_bytes: args.max_body_mb.saturating_mul(1 << 20),
        max_body_memory: args.max_body_memory_mb.saturating_mul(1 << 20),
        max_pixels: args.max_megapixels.saturating_mul(1_000_000),
        request_timeout: Duration::from_secs(args.timeout_s),
        header_timeout: Duration::from_secs(args.header_timeout_s.max(1)),
        body_timeout: Duration::from_secs(args.body_timeout_s.max(1)),
        send_timeout: Duration::from_secs(args.send_timeout_s.max(1)),
        max_connections: args.max_connections.max(1),
        drain_timeout: Duration::from_secs(args.drain_timeout_s),
        max_concurrent_decodes: args
            .max_decodes
            .unwrap_or(defaults.max_concurrent_decodes)
            .max(1),
        auto_box: (!args.no_auto_box && loaded.is_some()).then_some(auto_box),
        writes,
        ..defaults
    };
    let windows = match args.no_auto_box || args.vectors_only {
        true => None,
        false => Some(
            load_index_model_at(
                index.meta(),
                &args.device,
                Some(auto_box.window_side(index.meta().preprocessing.size)),
            )
            .context("loading the model at the auto-box window side")?,
        ),
    };
    let queue = match loaded {
        Some(model) => InferenceQueue::start(
            Box::new(ModelEmbedder { model, windows }),
            args.max_batch,
            args.queue,
        ),
        None => InferenceQueue::without_model(),
    };
    let index_bytes = index.size_bytes();
    let state = Arc::new(
        AppState::new(index, index_bytes, queue, config).with_index_folder(folder.clone(), version),
    );
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.addr)
            .await
            .with_context(|| format!("listening on {}", args.addr))?;
        println!(
            "serving {} images on http://{}",
            state.index.get().rows(),
            listener.local_addr()?
        );
        if let Some(dir) = folder
            && let Some(every) = reload_every
        {
            tokio::spawn(watch_folder(state.index.clone(), dir, every));
        }
        use std::io::Write;
        std::io::stdout().flush()?;
        serve(listener, state).await.context("serving")
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::loose_token_file;

    #[test]
    fn a_reload_interval_must_be_a_number_of_seconds() {
        use std::time::Duration;
        assert_eq!(super::reload_interval(0.0).unwrap(), None);
        assert_eq!(
            super::reload_interval(2.0).unwrap(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            super::reload_interval(0.001).unwrap(),
            Some(Duration::from_millis(50))
        );
        for bad in [-1.0, f64::NAN, f64::INFINITY, 1e300] {
            let err = super::reload_interval(bad).unwrap_err().to_string();
            assert!(err.contains("--reload-every-s"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_token_file_others_can_read_is_named() {
        let file = Path::new("token");
        assert_eq!(loose_token_file(file, 0o100600), None);
        assert_eq!(loose_token_file(file, 0o100400), None);
        let warning = loose_token_file(file, 0o100644).unwrap();
        assert!(
            warning.contains("mode 644") && warning.contains("chmod 600 token"),
            "{warning}"
        );
        assert!(loose_token_file(file, 0o100640).is_some());
    }
}
