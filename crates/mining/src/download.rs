//! `mine download`: fetch the kept images (product and review photos of the kept products) into
//! an image folder under content-addressed names (`ab/abcdef….jpg`, the SHA-256 of the bytes, so
//! the same picture listed twice is stored once). Each body must decode before it is written,
//! via a temp file and a rename, so no partial or corrupt file is ever left under a final name.
//!
//! Progress is a journal (`downloads.csv`: url, path, error) appended and flushed after each
//! image is in place. A resumed run reads it (ignoring a torn last line, and entries whose file
//! has gone), rewrites it cleanly, and skips every URL it holds: nothing is fetched twice.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use visual_search_data::image::{DecodeLimits, decode_rgb_bytes};
use visual_search_data::work_lock::{lock_shared_folder, lock_work_folder};

use crate::error::{MiningError, Result};
use crate::fetch::{FetchConfig, fetch_all};
use crate::pairs_table::read_products;

/// What the journal says about one URL: the image's path relative to the image folder, or why
/// it failed.
pub type JournalEntry = std::result::Result<PathBuf, String>;

/// What `mine download` did.
#[derive(Debug, Default)]
pub struct DownloadReport {
    pub urls: usize,
    pub already_done: usize,
    pub downloaded: usize,
    pub failed: usize,
}

/// Reads a download journal; a missing file is an empty journal. Only complete lines whose
/// image file still exists count.
pub fn read_journal(journal: &Path, images_dir: &Path) -> Result<HashMap<String, JournalEntry>> {
    let bytes = match std::fs::read(journal) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(MiningError::io(journal, e)),
    };
    // A kill can tear the last line; only newline-terminated lines are whole.
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(&bytes[..whole]);
    let mut out = HashMap::new();
    for record in reader.records() {
        let Ok(record) = record else { continue };
        let (Some(url), Some(path), Some(error)) = (record.get(0), record.get(1), record.get(2))
        else {
            continue;
        };
        if record.len() != 3 {
            continue;
        }
        if !path.is_empty() && images_dir.join(path).is_file() {
            out.insert(url.to_string(), Ok(PathBuf::from(path)));
        } else if path.is_empty() && !error.is_empty() {
            out.insert(url.to_string(), Err(error.to_string()));
        }
    }
    Ok(out)
}

fn write_journal(journal: &Path, entries: &HashMap<String, JournalEntry>) -> Result<()> {
    let mut rows: Vec<_> = entries.iter().collect();
    rows.sort_by(|a, b| a.0.cmp(b.0));
    let mut w = csv::Writer::from_writer(Vec::new());
    let err = |e: csv::Error| MiningError::invalid(journal, e.to_string());
    w.write_record(["url", "path", "error"]).map_err(err)?;
    for (url, entry) in rows {
        match entry {
            Ok(p) => w.write_record([url.as_str(), &p.to_string_lossy(), ""]),
            Err(e) => w.write_record([url.as_str(), "", e.as_str()]),
        }
        .map_err(err)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| MiningError::invalid(journal, e.to_string()))?;
    visual_search_data::atomic_write::write_atomically(journal, &bytes)?;
    Ok(())
}

/// The content-addressed name of an image: `ab/abcdef….ext`.
pub fn content_name(bytes: &[u8]) -> PathBuf {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    let ext = match image::guess_format(bytes) {
        Ok(image::ImageFormat::Png) => "png",
        Ok(image::ImageFormat::WebP) => "webp",
        _ => "jpg",
    };
    PathBuf::from(&hex[..2]).join(format!("{hex}.{ext}"))
}

/// The lock file of the one download writing a work folder's journal.
const JOURNAL_LOCK_FILE: &str = ".download.lock";

/// Removes what a killed run was writing (`images_dir/*/.partial-*`).
fn sweep_partials(images_dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(images_dir).map_err(|e| MiningError::io(images_dir, e))? {
        let entry = entry.map_err(|e| MiningError::io(images_dir, e))?;
        if entry.path().is_dir() {
            crate::partial_files::remove_partials(&entry.path())?;
        }
    }
    Ok(())
}

/// Validates and stores one body; returns its path relative to `images_dir`.
fn store(
    images_dir: &Path,
    url: &str,
    bytes: &[u8],
    limits: &DecodeLimits,
) -> std::result::Result<PathBuf, String> {
    decode_rgb_bytes(bytes, Path::new(url), limits).map_err(|e| e.to_string())?;
    let name = content_name(bytes);
    let path = images_dir.join(&name);
    if !path.is_file() {
        // Through a `.partial-` file, which `sweep_partials` removes if this run is killed
        // before the rename (a plain temp file would stay in the user's images folder).
        crate::partial_files::write_via_partial(&path, bytes).map_err(|e| e.to_string())?;
    }
    Ok(name)
}

/// Runs the step for a kept-products table. `retry_failed` fetches again URLs the journal
/// records as failed.
pub fn mine_download(
    kept: &Path,
    images_dir: &Path,
    journal: &Path,
    fetch: &FetchConfig,
    retry_failed: bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<DownloadReport> {
    let mut urls = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for row in read_products(kept)? {
        for u in row.product_images.into_iter().chain(row.user_images) {
            if seen.insert(u.clone()) {
                urls.push(u);
            }
        }
    }
    // One download per work folder (its journal is rewritten at start), any number per image
    // folder (the categories' downloads may share one): leftovers are swept only by a lone one.
    let journal_dir = crate::pairs_table::parent_dir(journal);
    std::fs::create_dir_all(journal_dir).map_err(|e| MiningError::io(journal_dir, e))?;
    let _journal_lock = lock_work_folder(journal_dir, JOURNAL_LOCK_FILE, "mine download")?;
    std::fs::create_dir_all(images_dir).map_err(|e| MiningError::io(images_dir, e))?;
    let _images_lock = lock_shared_folder(images_dir, || sweep_partials(images_dir))?;
    let mut entries = read_journal(journal, images_dir)?;
    if retry_failed {
        entries.retain(|_, e| e.is_ok());
    }
    write_journal(journal, &entries)?;
    let todo: Vec<String> = urls
        .iter()
        .filter(|u| !entries.contains_key(*u))
        .cloned()
        .collect();
    let mut report = DownloadReport {
        urls: urls.len(),
        already_done: urls.len() - todo.len(),
        ..Default::default()
    };
    progress(report.already_done, urls.len());
    let mut file = OpenOptions::new()
        .append(true)
        .open(journal)
        .map_err(|e| MiningError::io(journal, e))?;
    let dir = images_dir.to_path_buf();
    let limits = DecodeLimits::default();
    let results = fetch_all(todo, fetch.clone(), move |url, bytes| {
        store(&dir, url, &bytes, &limits)
    })?;
    for (url, result) in results {
        let mut w = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(Vec::new());
        let line = match &result {
            Ok(p) => w.write_record([url.as_str(), &p.to_string_lossy(), ""]),
            Err(e) => w.write_record([url.as_str(), "", e.as_str()]),
        };
        line.map_err(|e| MiningError::invalid(journal, e.to_string()))?;
        let line = w
            .into_inner()
            .map_err(|e| MiningError::invalid(journal, e.to_string()))?;
        file.write_all(&line)
            .map_err(|e| MiningError::io(journal, e))?;
        match result {
            Ok(_) => report.downloaded += 1,
            Err(e) => {
                tracing::debug!("{url}: {e}");
                report.failed += 1
            }
        }
        progress(
            report.already_done + report.downloaded + report.failed,
            urls.len(),
        );
    }
    file.sync_all().map_err(|e| MiningError::io(journal, e))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_lines_and_vanished_files_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        std::fs::create_dir_all(images.join("ab")).unwrap();
        std::fs::write(images.join("ab/abc.jpg"), b"x").unwrap();
        let journal = dir.path().join("downloads.csv");
        std::fs::write(
            &journal,
            "url,path,error\nhttp://a,ab/abc.jpg,\nhttp://b,,HTTP 404\nhttp://c,ab/gone.jpg,\nhttp://d,ab/ab",
        )
        .unwrap();
        let j = read_journal(&journal, &images).unwrap();
        assert_eq!(j.len(), 2);
        assert_eq!(j["http://a"], Ok(PathBuf::from("ab/abc.jpg")));
        assert_eq!(j["http://b"], Err("HTTP 404".to_string()));
    }

    #[test]
    fn one_download_per_work_folder_and_no_sweep_under_another() {
        let dir = tempfile::tempdir().unwrap();
        let kept = dir.path().join("kept.parquet");
        crate::pairs_table::ProductWriter::create(&kept)
            .unwrap()
            .finish()
            .unwrap();
        let (images, journal) = (dir.path().join("images"), dir.path().join("downloads.csv"));
        let run = || {
            mine_download(
                &kept,
                &images,
                &journal,
                &FetchConfig::default(),
                false,
                &mut |_, _| {},
            )
        };
        let held = lock_work_folder(dir.path(), JOURNAL_LOCK_FILE, "mine download").unwrap();
        let err = run().err().unwrap().to_string();
        assert!(
            err.contains("another process is running mine download"),
            "{err}"
        );
        drop(held);

        // A partial file of a download still running elsewhere into the same image folder.
        let partial = crate::partial_files::create_partial(&images.join("ab"))
            .unwrap()
            .keep()
            .unwrap()
            .1;
        let other = lock_shared_folder::<MiningError>(&images, || Ok(())).unwrap();
        run().unwrap();
        assert!(partial.exists(), "swept under a live download");
        drop(other);
        run().unwrap();
        assert!(
            !partial.exists(),
            "a lone download sweeps what a killed one left"
        );
    }

    #[test]
    fn names_are_content_addresses() {
        let a = content_name(b"\x89PNG\r\n\x1a\nrest");
        assert!(a.to_string_lossy().ends_with(".png"));
        assert_eq!(a, content_name(b"\x89PNG\r\n\x1a\nrest"));
        assert_ne!(a, content_name(b"\x89PNG\r\n\x1a\nother"));
        assert_eq!(a.parent().unwrap().as_os_str().len(), 2);
    }
}
