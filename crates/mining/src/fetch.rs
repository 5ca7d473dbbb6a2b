//! Fetching many URLs politely and robustly: bounded concurrency, a timeout per request, retries
//! with exponential backoff on errors that may pass (network errors, timeouts, 408, 429, 5xx),
//! none on those that will not (404, 403, …), and a size limit checked against
//! `Content-Length` and again while the body streams in.
//!
//! [`fetch_all`] runs the requests on its own tokio runtime in a background thread, processes each
//! body on tokio's blocking pool (decoding and resizing are CPU work) and hands results to the
//! caller's thread over a bounded channel; a slow consumer therefore slows fetching down instead
//! of piling up bodies in memory.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;

use crate::error::{MiningError, Result};
use crate::redirect_policy::check_redirect;

/// How to fetch.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Limit for one request, connection to last byte.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one (capped at 30 s).
    pub backoff: Duration,
    /// Largest body accepted.
    pub max_bytes: u64,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            concurrency: 32,
            timeout: Duration::from_secs(30),
            retries: 3,
            backoff: Duration::from_millis(500),
            max_bytes: 32 << 20,
        }
    }
}

/// Why a URL could not be fetched.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FetchError {
    #[error("HTTP {0}")]
    Status(u16),
    #[error("larger than the {0}-byte limit")]
    TooLarge(u64),
    #[error("{0}")]
    Network(String),
    /// A redirect [`check_redirect`] refused (never retried).
    #[error("{0}")]
    Redirect(String),
}

impl FetchError {
    fn is_transient(&self) -> bool {
        match self {
            FetchError::Status(s) => *s == 408 || *s == 429 || *s >= 500,
            FetchError::TooLarge(_) | FetchError::Redirect(_) => false,
            FetchError::Network(_) => true,
        }
    }
}

/// An HTTP client with the config's limits.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    config: FetchConfig,
}

impl Fetcher {
    pub fn new(config: FetchConfig) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("visual-search/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::custom(
                |attempt| match check_redirect(attempt.previous(), attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(reason) => attempt.error(reason),
                },
            ))
            .build()
            .map_err(|e| MiningError::Http(e.to_string()))?;
        Ok(Fetcher { client, config })
    }

    /// The body of `url`, retrying transient failures.
    pub async fn get(&self, url: &str) -> std::result::Result<Vec<u8>, FetchError> {
        let mut attempt = 0;
        loop {
            match self.get_once(url).await {
                Ok(body) => return Ok(body),
                Err(e) if e.is_transient() && attempt < self.config.retries => {
                    let wait = self.config.backoff.saturating_mul(1 << attempt.min(16));
                    tokio::time::sleep(wait.min(Duration::from_secs(30))).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn get_once(&self, url: &str) -> std::result::Result<Vec<u8>, FetchError> {
        let network = |e: reqwest::Error| {
            if e.is_redirect() {
                FetchError::Redirect(describe(&e))
            } else {
                FetchError::Network(describe(&e))
            }
        };
        let response = self.client.get(url).send().await.map_err(network)?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status(status.as_u16()));
        }
        let max = self.config.max_bytes;
        if response.content_length().is_some_and(|n| n > max) {
            return Err(FetchError::TooLarge(max));
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(network)?;
            if body.len() as u64 + piece.len() as u64 > max {
                return Err(FetchError::TooLarge(max));
            }
            body.extend_from_slice(&piece);
        }
        Ok(body)
    }
}

/// reqwest's top-level message hides the cause ("error sending request"); add the chain.
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The outcome for one URL.
pub type Fetched<T> = (String, std::result::Result<T, String>);

/// Fetches every URL of `urls` and runs `process` on each body (on a blocking thread). Results
/// come out of the returned channel in completion order; it closes when all are done. Dropping
/// the receiver stops the fetching.
pub fn fetch_all<T, P>(
    urls: Vec<String>,
    config: FetchConfig,
    process: P,
) -> Result<crossbeam_channel::Receiver<Fetched<T>>>
where
    T: Send + 'static,
    P: Fn(&str, Vec<u8>) -> std::result::Result<T, String> + Send + Sync + 'static,
{
    let fetcher = Fetcher::new(config.clone())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| MiningError::Http(format!("cannot start the fetch runtime: {e}")))?;
    let (tx, rx) = crossbeam_channel::bounded::<Fetched<T>>(config.concurrency.max(1) * 2);
    let process = Arc::new(process);
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    std::thread::Builder::new()
        .name("fetch".into())
        .spawn(move || {
            runtime.block_on(async move {
                futures_util::stream::iter(urls)
                    .map(|url| {
                        let fetcher = fetcher.clone();
                        let process = Arc::clone(&process);
                        let tx = tx.clone();
                        let stopped = Arc::clone(&stopped);
                        async move {
                            if stopped.load(Ordering::Relaxed) {
                                return;
                            }
                            let body = fetcher.get(&url).await;
                            // Processing and the (possibly blocking) hand-over run off the
                            // async workers.
                            let _ = tokio::task::spawn_blocking(move || {
                                let result = match body {
                                    Ok(bytes) => process(&url, bytes),
                                    Err(e) => Err(e.to_string()),
                                };
                                if tx.send((url, result)).is_err() {
                                    stopped.store(true, Ordering::Relaxed);
                                }
                            })
                            .await;
                        }
                    })
                    .buffer_unordered(config.concurrency.max(1))
                    .collect::<()>()
                    .await;
            });
        })
        .map_err(|e| MiningError::Http(format!("cannot start the fetch thread: {e}")))?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::atomic::AtomicU64;

    /// A server on loopback that answers every request with a redirect to the next path.
    fn redirecting_server() -> (String, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let count = Arc::new(AtomicU64::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let _ = write!(
                    conn,
                    "HTTP/1.1 302 Found\r\nLocation: /hop/{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    n + 1
                );
            }
        });
        (base, count)
    }

    #[test]
    fn an_endless_redirect_chain_stops_at_the_cap_and_is_not_retried() {
        let (base, count) = redirecting_server();
        let fetcher = Fetcher::new(FetchConfig {
            retries: 3,
            backoff: Duration::from_millis(1),
            ..FetchConfig::default()
        })
        .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = runtime
            .block_on(fetcher.get(&format!("{base}/hop/0")))
            .unwrap_err();
        assert!(matches!(err, FetchError::Redirect(_)), "{err:?}");
        assert!(err.to_string().contains("redirects"), "{err}");
        let requests = count.load(Ordering::SeqCst);
        assert_eq!(requests as usize, crate::redirect_policy::MAX_REDIRECTS + 1);
    }
}
