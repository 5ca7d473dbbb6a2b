//! Finding the real datasets that tests and benchmarks use (`../shared/datasets` beside the
//! checkout, or `$VISUAL_SEARCH_DATASETS`). They are read in place, never copied into the repo.

use std::path::{Path, PathBuf};

/// The datasets folder, if it can be found.
///
/// Looks at `$VISUAL_SEARCH_DATASETS`, then for `shared/datasets` beside any ancestor of the
/// current directory and of this crate's source folder.
pub fn locate_datasets() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("VISUAL_SEARCH_DATASETS") {
        let dir = PathBuf::from(dir);
        return dir.is_dir().then_some(dir);
    }
    let starts = [
        std::env::current_dir().ok(),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR"))),
    ];
    starts.into_iter().flatten().find_map(|start| {
        start
            .ancestors()
            .map(|a| a.join("shared").join("datasets"))
            .find(|p| p.is_dir())
    })
}

/// The grocery dataset's challenge-format root (`grocery-store/dataset`), if present.
pub fn locate_grocery() -> Option<PathBuf> {
    locate_datasets()
        .map(|d| d.join("grocery-store").join("dataset"))
        .filter(|p| Path::new(p).join("gallery.csv").is_file())
}

/// Reports a test dependency (data set, weights, a server, a browser) that is missing: under CI
/// (`CI=true` or `VISUAL_SEARCH_REQUIRE_ALL=1`) this fails the test, since CI installs every
/// dependency and a test must never pass by not running; locally it prints a loud SKIPPED and
/// the caller returns.
pub fn missing_test_dependency(what: &str) {
    let required = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("VISUAL_SEARCH_REQUIRE_ALL").is_ok_and(|v| v == "1");
    if required {
        panic!("a test dependency is missing under CI: {what}");
    }
    eprintln!("SKIPPED: {what}");
}
