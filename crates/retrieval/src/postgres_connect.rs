//! Reaching PostgreSQL: where an index lives ([`PgOptions`]), connecting with retries while a
//! server restarts, telling a lost connection from a real error, and keeping passwords out of
//! every message. The search engine ([`crate::postgres_index`]), the loads
//! ([`crate::postgres_load`]) and the edits ([`crate::postgres_edit`]) all connect through here.

use std::time::{Duration, Instant};

use postgres::Client;

use crate::error::RetrievalError;
use crate::postgres_tls::PgConnector;

/// How a PostgreSQL index is reached and shaped.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://user@host:port/db`.
    pub url: String,
    /// Table name (`[a-z_][a-z0-9_]*`); `<table>_meta` holds the metadata.
    pub table: String,
    /// Rows per COPY transaction.
    pub batch_rows: usize,
    /// HNSW graph degree.
    pub m: u32,
    /// HNSW build beam width.
    pub ef_construction: u32,
    /// `maintenance_work_mem` of the HNSW build, MiB: the graph should fit in it (pgvector
    /// slows down a lot and warns once it does not), about rows × (4·dim + 8·m) bytes.
    pub hnsw_memory_mb: u32,
    /// `max_parallel_maintenance_workers` of the HNSW build (`None`: the server's setting).
    pub hnsw_workers: Option<u32>,
    /// HNSW search beam width (recall/latency trade-off).
    pub ef_search: u32,
    /// Keep reconnecting this long after a lost connection before giving up.
    pub retry_for: Duration,
    /// Connections kept for concurrent searches.
    pub pool: usize,
    /// Longest one search statement may run on the server (`statement_timeout`): a runaway
    /// exact scan of a huge table would otherwise outlive any HTTP deadline.
    pub search_timeout: Duration,
}

impl PgOptions {
    pub fn new(url: &str, table: &str) -> Self {
        PgOptions {
            url: url.to_string(),
            table: table.to_string(),
            batch_rows: 10_000,
            m: 16,
            ef_construction: 64,
            hnsw_memory_mb: 1024,
            hnsw_workers: None,
            ef_search: 100,
            retry_for: Duration::from_secs(60),
            pool: 4,
            search_timeout: Duration::from_secs(30),
        }
    }
}

/// True for the index locations this engine handles.
pub fn is_postgres_url(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

pub(crate) fn pg_err(context: &str, e: postgres::Error) -> RetrievalError {
    // The top-level message of a server error is terse ("db error"); add the server's text.
    let detail = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        });
    RetrievalError::Invalid(format!("PostgreSQL: {context}: {detail}"))
}

pub(crate) fn check_table(name: &str) -> Result<(), RetrievalError> {
    let ok = !name.is_empty()
        && name.len() <= 50
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(RetrievalError::Invalid(format!(
            "table name {name:?}: use lowercase letters, digits and _ (at most 50)"
        )))
    }
}

/// Errors that may pass by reconnecting: no server answer at all (refused, reset, closed), or
/// the server saying it is starting, shutting down or recovering (SQLSTATE class 57:
/// `cannot_connect_now`, `admin_shutdown`, `crash_shutdown`), a connection exception (08), or
/// too many connections (53300). A cancelled statement (57014, `query_canceled`: our own
/// `statement_timeout` or a user's cancel) is in class 57 too but is not transient: running
/// it again would only make the caller wait twice as long for the same answer.
pub(crate) fn is_transient(e: &postgres::Error) -> bool {
    match e.as_db_error() {
        None => true,
        Some(d) => {
            let code = d.code().code();
            (code.starts_with("57") && code != "57014") || code.starts_with("08") || code == "53300"
        }
    }
}

/// Connects, retrying connection failures for up to `retry_for` (the server may be restarting).
pub(crate) fn connect_retrying(opts: &PgOptions) -> Result<Client, RetrievalError> {
    let connector = PgConnector::from_url(&opts.url)?;
    let start = Instant::now();
    let mut wait = Duration::from_millis(200);
    loop {
        match connector.connect() {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() < opts.retry_for && is_transient(&e) => {
                tracing::warn!("PostgreSQL unreachable ({e}); retrying in {wait:?}");
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(pg_err(&format!("connecting to {}", redact(&opts.url)), e)),
        }
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &base[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &base[..s + 3], &creds[..c], &base[at..]),
                None => base.to_string(),
            }
        }
        _ => base.to_string(),
    };
    if let Some(q) = query {
        // `?password=…` (and any other secret-looking parameter) is hidden too.
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _))
                    if k.eq_ignore_ascii_case("password")
                        || k.to_ascii_lowercase().contains("secret") =>
                {
                    format!("{k}=***")
                }
                _ => p.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_cannot_inject() {
        assert!(check_table("visual_search_items").is_ok());
        assert!(check_table("items; DROP TABLE x").is_err());
        assert!(check_table("Items").is_err());
        assert!(check_table("").is_err());
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact("postgres://u@h/db?sslmode=require&password=hunter2"),
            "postgres://u@h/db?sslmode=require&password=***"
        );
        assert_eq!(
            redact("postgres://u:pw@h/db?password=x"),
            "postgres://u:***@h/db?password=***"
        );
        assert!(is_postgres_url("postgresql://h/db") && !is_postgres_url("/data/index"));
    }
}
