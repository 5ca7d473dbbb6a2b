//! `data check`: validates a dataset root before anything expensive runs on it.
//!
//! A root may be a Product10K root (`train.csv`, `test_kaggletest.csv`), a dev-set root
//! (`gallery.csv`, `queries.csv`) or both (the bundled grocery set is). Every list present is
//! parsed leniently (all bad rows are reported, not just the first), every image is opened and
//! decoded on all cores, and the result is a report per list with class counts and problems,
//! each problem naming the CSV, its line and the image.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::csv_table::Parsed;
use crate::error::{DataError, Result};
use crate::formats::BBox;
use crate::formats::dev_set::{parse_gallery, parse_queries};
use crate::formats::product10k::parse_product10k;
use crate::image::{DecodeLimits, check_query_box, decode_rgb_file};

/// Which list a CSV is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Product10kTrain,
    Product10kVal,
    Gallery,
    Queries,
}

impl ListKind {
    /// The file name the challenge uses and the default image prefix.
    pub fn file_and_prefix(self) -> (&'static str, &'static str) {
        match self {
            ListKind::Product10kTrain => ("train.csv", "train/"),
            ListKind::Product10kVal => ("test_kaggletest.csv", "test/"),
            ListKind::Gallery => ("gallery.csv", ""),
            ListKind::Queries => ("queries.csv", ""),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            ListKind::Product10kTrain => "Product10K train",
            ListKind::Product10kVal => "Product10K val",
            ListKind::Gallery => "dev gallery",
            ListKind::Queries => "dev queries",
        }
    }
}

/// Options of [`check_dataset`].
#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub root: PathBuf,
    /// Image prefix of `train.csv`; `None` picks `train/` or `` by where the images are.
    pub train_prefix: Option<String>,
    /// Image prefix of `test_kaggletest.csv`; `None` picks `test/` or ``.
    pub val_prefix: Option<String>,
    /// Decode every image (else only check that the files exist).
    pub decode: bool,
    pub threads: usize,
    pub limits: DecodeLimits,
}

/// The result for one list.
#[derive(Debug, Clone)]
pub struct ListReport {
    pub kind: ListKind,
    pub csv: PathBuf,
    pub prefix: String,
    /// Data rows in the file, good or bad.
    pub rows: usize,
    pub images_ok: usize,
    pub problems: Vec<String>,
    /// Images per class over the rows that parsed.
    pub class_counts: BTreeMap<i64, usize>,
}

/// The result for a root.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub root: PathBuf,
    pub lists: Vec<ListReport>,
}

impl CheckReport {
    /// Distinct classes over all lists.
    pub fn n_classes(&self) -> usize {
        self.lists
            .iter()
            .flat_map(|l| l.class_counts.keys())
            .collect::<BTreeSet<_>>()
            .len()
    }

    pub fn n_problems(&self) -> usize {
        self.lists.iter().map(|l| l.problems.len()).sum()
    }
}

/// One parsed row, reduced to what the check needs.
struct Row {
    line: u64,
    relative: PathBuf,
    label: i64,
    /// A query's box, checked against its image's size when images are decoded.
    bbox: Option<BBox>,
}

/// Checks every list found in `options.root`.
pub fn check_dataset(options: &CheckOptions) -> Result<CheckReport> {
    let root = &options.root;
    if !root.is_dir() {
        return Err(DataError::Invalid {
            path: root.clone(),
            message: "not a folder".to_string(),
        });
    }
    let mut lists = Vec::new();
    for kind in [
        ListKind::Product10kTrain,
        ListKind::Product10kVal,
        ListKind::Gallery,
        ListKind::Queries,
    ] {
        let (file, _) = kind.file_and_prefix();
        let csv = root.join(file);
        if csv.is_file() {
            lists.push(check_list(kind, &csv, options));
        }
    }
    if lists.is_empty() {
        return Err(DataError::Invalid {
            path: root.clone(),
            message: "no train.csv, test_kaggletest.csv, gallery.csv or queries.csv here"
                .to_string(),
        });
    }
    Ok(CheckReport {
        root: root.clone(),
        lists,
    })
}

fn parse_list(kind: ListKind, csv: &Path) -> Result<Parsed<Row>> {
    fn map<T>(p: Parsed<T>, f: impl Fn(T) -> Row) -> Parsed<Row> {
        Parsed {
            rows: p.rows.into_iter().map(f).collect(),
            errors: p.errors,
        }
    }
    Ok(match kind {
        ListKind::Product10kTrain | ListKind::Product10kVal => {
            map(parse_product10k(csv)?, |r| Row {
                line: r.line,
                relative: r.name,
                label: r.class,
                bbox: None,
            })
        }
        ListKind::Gallery => map(parse_gallery(csv)?, |r| Row {
            line: r.line,
            relative: r.img_path,
            label: r.product_id,
            bbox: None,
        }),
        ListKind::Queries => map(parse_queries(csv)?, |r| Row {
            line: r.line,
            relative: r.img_path,
            label: r.product_id,
            bbox: r.bbox,
        }),
    })
}

fn check_list(kind: ListKind, csv: &Path, options: &CheckOptions) -> ListReport {
    let mut report = ListReport {
        kind,
        csv: csv.to_path_buf(),
        prefix: String::new(),
        rows: 0,
        images_ok: 0,
        problems: Vec::new(),
        class_counts: BTreeMap::new(),
    };
    let parsed = match parse_list(kind, csv) {
        Ok(p) => p,
        Err(e) => {
            report.problems.push(e.to_string());
            return report;
        }
    };
    report.rows = parsed.rows.len() + parsed.errors.len();
    report
        .problems
        .extend(parsed.errors.iter().map(|e| e.to_string()));
    for row in &parsed.rows {
        *report.class_counts.entry(row.label).or_default() += 1;
    }
    let explicit = match kind {
        ListKind::Product10kTrain => options.train_prefix.clone(),
        ListKind::Product10kVal => options.val_prefix.clone(),
        _ => Some(String::new()),
    };
    report.prefix = explicit.unwrap_or_else(|| detect_prefix(kind, &options.root, &parsed.rows));
    let base = options.root.join(&report.prefix);
    let outcomes = check_images(&base, &parsed.rows, options);
    for (row, outcome) in parsed.rows.iter().zip(outcomes) {
        match outcome {
            Ok(()) => report.images_ok += 1,
            Err(e) => report
                .problems
                .push(format!("{}: line {}: {e}", csv.display(), row.line)),
        }
    }
    report
}

/// The default prefix if the first listed image is found under it, else the root itself.
fn detect_prefix(kind: ListKind, root: &Path, rows: &[Row]) -> String {
    let (_, default) = kind.file_and_prefix();
    match rows.first() {
        Some(first)
            if !root.join(default).join(&first.relative).exists()
                && root.join(&first.relative).exists() =>
        {
            String::new()
        }
        _ => default.to_string(),
    }
}

fn check_images(base: &Path, rows: &[Row], options: &CheckOptions) -> Vec<Result<()>> {
    let check = |row: &Row| -> Result<()> {
        let path = base.join(&row.relative);
        if options.decode {
            let image = decode_rgb_file(&path, &options.limits)?;
            match &row.bbox {
                Some(b) => check_query_box(b, image.width(), image.height(), "image")
                    .map_err(|message| DataError::Invalid { path, message }),
                None => Ok(()),
            }
        } else if path.is_file() {
            Ok(())
        } else {
            Err(DataError::io(&path, std::io::ErrorKind::NotFound.into()))
        }
    };
    let threads = options.threads.max(1);
    let chunk = rows.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = rows
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(check).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("image check thread panicked"))
            .collect()
    })
}
