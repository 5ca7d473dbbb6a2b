//! The mining pipeline end to end with no internet: a loopback server plays Amazon's image CDN
//! with real grocery photos (each product's catalogue image as its product image, in-store
//! photos of it as the right review photos, a photo of another product as a wrong one), and
//! generated review + metadata dumps point at it. Covers a flaky server (every 10th request
//! fails), malformed dump lines, both dump layouts, and kills mid-`features` and mid-`download`.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::image_server::ImageServer;
use common::{bin, run_ok};

/// One fixture product: its catalogue image and review photos (right and wrong) as URLs.
struct Product {
    asin: String,
    catalogue: String,
    right: Vec<String>,
    wrong: Vec<String>,
}

/// `n` grocery products spread over the 81 classes, `photos` right review photos each.
fn grocery_products(grocery: &Path, server: &ImageServer, n: usize, photos: usize) -> Vec<Product> {
    let classes = std::fs::read_to_string(grocery.join("classes.csv")).unwrap();
    let rows: Vec<Vec<String>> = classes
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    let step = rows.len() / n;
    let picked: Vec<&Vec<String>> = rows.iter().skip(step / 2).step_by(step).take(n).collect();
    let photos_of = |row: &Vec<String>| -> Vec<String> {
        let iconic = row[4].trim_start_matches('/');
        let folder = Path::new(iconic)
            .parent()
            .unwrap()
            .strip_prefix("iconic-images-and-descriptions")
            .unwrap();
        let dir = grocery.join("train").join(folder);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
            .iter()
            .map(|f| server.url(&format!("train/{}/{f}", folder.display())))
            .collect()
    };
    let all: Vec<Vec<String>> = picked.iter().map(|r| photos_of(r)).collect();
    picked
        .iter()
        .enumerate()
        .map(|(i, row)| Product {
            asin: format!("B0GROCERY{:02}", i),
            catalogue: server.url(row[4].trim_start_matches('/')),
            right: all[i][..photos].to_vec(),
            // A photo of a product from the other half of the list (another kind of product).
            wrong: vec![all[(i + n / 2) % n][photos + 1].clone()],
        })
        .collect()
}

/// Writes a gzip review dump and a plain metadata dump for `products`, mixing the 2018 and 2023
/// layouts, with noise the pipeline must survive. Returns their paths.
fn write_dumps(dir: &Path, products: &[Product], server: &ImageServer) -> (PathBuf, PathBuf) {
    let reviews = dir.join("reviews.json.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&reviews).unwrap(),
        flate2::Compression::fast(),
    );
    for (i, p) in products.iter().enumerate() {
        let user: Vec<&String> = p.right.iter().chain(&p.wrong).collect();
        for (j, url) in user.iter().enumerate() {
            let line = if i % 2 == 0 {
                serde_json::json!({"overall": 5.0, "asin": p.asin, "reviewText": "great", "image": [url]})
            } else {
                serde_json::json!({"rating": 4, "asin": format!("{}-v{j}", p.asin), "parent_asin": p.asin,
                    "images": [{"small_image_url": "https://example.invalid/s.jpg", "large_image_url": url}]})
            };
            writeln!(gz, "{line}").unwrap();
        }
        writeln!(
            gz,
            "{}",
            serde_json::json!({"overall": 3.0, "asin": p.asin, "reviewText": "no photo"})
        )
        .unwrap();
    }
    // Noise: a broken line, a Python-dict line (the 2014 dumps), a line without an ASIN, a
    // photo that the server does not have, a product with photos but no catalogue image, and a
    // product the metadata never mentions.
    writeln!(gz, "{{\"asin\": \"B0BROKEN\", \"image\": [").unwrap();
    writeln!(gz, "{{'asin': 'B0PYDICT'}}").unwrap();
    writeln!(gz, "{}", serde_json::json!({"reviewText": "who am I"})).unwrap();
    let missing = server.url("train/no/such/photo.jpg");
    writeln!(
        gz,
        "{}",
        serde_json::json!({"asin": products[0].asin, "image": [missing]})
    )
    .unwrap();
    writeln!(
        gz,
        "{}",
        serde_json::json!({"asin": "B0NOPICTURE", "image": [products[0].right[0]]})
    )
    .unwrap();
    writeln!(
        gz,
        "{}",
        serde_json::json!({"asin": "B0NOMETA", "image": [products[0].right[0]]})
    )
    .unwrap();
    gz.finish().unwrap();

    let meta = dir.join("meta.json");
    let mut m = std::fs::File::create(&meta).unwrap();
    for (i, p) in products.iter().enumerate() {
        let line = if i % 2 == 0 {
            serde_json::json!({"asin": p.asin, "title": format!("product {i}"), "imageURLHighRes": [p.catalogue]})
        } else {
            serde_json::json!({"parent_asin": p.asin, "title": format!("product {i}"),
                "images": [{"thumb": "https://example.invalid/t.jpg", "large": p.catalogue, "variant": "MAIN"}]})
        };
        writeln!(m, "{line}").unwrap();
    }
    writeln!(
        m,
        "{}",
        serde_json::json!({"asin": "B0NOPICTURE", "title": "x", "imageURLHighRes": []})
    )
    .unwrap();
    writeln!(m, "{}", serde_json::json!({"asin": "B0UNREVIEWED", "title": "y", "imageURLHighRes": [products[0].catalogue]})).unwrap();
    writeln!(m, "not json at all").unwrap();
    (reviews, meta)
}

fn model_args(weights: &Path) -> Vec<String> {
    [
        "--model",
        "efficientnet_lite0",
        "--weights",
        weights.to_str().unwrap(),
        "--device",
        "flex",
    ]
    .map(String::from)
    .to_vec()
}

fn run_strings(args: &[String]) -> String {
    run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `mine <step> --work-dir W` plus `extra`.
fn mine(step: &str, work: &Path, extra: &[String]) -> String {
    let mut args: Vec<String> = vec![
        "mine".into(),
        step.into(),
        "--work-dir".into(),
        work.display().to_string(),
    ];
    args.extend_from_slice(extra);
    run_strings(&args)
}

fn fast_retries() -> Vec<String> {
    ["--retries", "4", "--backoff", "0.02", "--timeout", "20"]
        .map(String::from)
        .to_vec()
}

#[test]
fn mine_the_grocery_fixture_end_to_end() {
    let Some((grocery, weights)) = common::grocery_and_lite0() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = ImageServer::start(&grocery, 10, Duration::ZERO);
    let products = grocery_products(&grocery, &server, 8, 3);
    let (reviews, meta) = write_dumps(dir.path(), &products, &server);
    let work = dir.path().join("grocery");

    let text = mine(
        "pairs",
        &work,
        &[
            "--reviews".into(),
            reviews.display().to_string(),
            "--metadata".into(),
            meta.display().to_string(),
        ],
    );
    assert!(text.contains("wrote 8 products"), "{text}");
    assert!(
        text.contains("3 malformed"),
        "the broken, Python-dict and ASIN-less review lines: {text}"
    );
    assert!(
        text.contains("line 41: not a review"),
        "malformed lines are reported by line number: {text}"
    );
    assert!(
        text.contains("1 products without catalogue images, 1 without metadata"),
        "{text}"
    );

    let mut args = model_args(&weights);
    args.extend(fast_retries());
    args.extend([
        "--snapshot-every".into(),
        "10".into(),
        "--batch-size".into(),
        "8".into(),
    ]);
    let text = mine("features", &work, &args);
    // 8 catalogue images + 8 × (3 right + 1 wrong) photos + the missing one.
    assert!(
        text.contains("41 image URLs: 0 done before, 40 embedded now, 1 failed"),
        "{text}"
    );
    let failed = std::fs::read_to_string(work.join("features/failed_urls.csv")).unwrap();
    assert!(failed.contains("no/such/photo.jpg,HTTP 404"), "{failed}");
    assert!(
        server.requests() >= 45,
        "41 URLs and a retry for every 10th request: {}",
        server.requests()
    );
    // A second run finds everything done and fetches nothing.
    let before = server.requests();
    let text = mine("features", &work, &args);
    assert!(text.contains("41 done before, 0 embedded now"), "{text}");
    assert_eq!(server.requests(), before);

    // Three workers at once (`--shard I/3`), then `--merge-parts`: the same features, bit for
    // bit, as the one process.
    let work3 = dir.path().join("grocery-3-workers");
    std::fs::create_dir_all(&work3).unwrap();
    std::fs::copy(work.join("pairs.parquet"), work3.join("pairs.parquet")).unwrap();
    let workers: Vec<_> = (0..3)
        .map(|i| {
            let mut worker: Vec<String> = vec![
                "mine".into(),
                "features".into(),
                "--work-dir".into(),
                work3.display().to_string(),
                "--shard".into(),
                format!("{i}/3"),
            ];
            worker.extend_from_slice(&args);
            bin()
                .args(&worker)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for w in workers {
        let out = w.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut merge = args.clone();
    merge.push("--merge-parts".into());
    let text = mine("features", &work3, &merge);
    assert!(
        text.contains("41 image URLs from 3 worker stores: 0 merged before, 40 embedded and 1 failed merged now"),
        "{text}"
    );
    let one = visual_search_mining::feature_store::read_features(&work.join("features")).unwrap();
    let three =
        visual_search_mining::feature_store::read_features(&work3.join("features")).unwrap();
    assert!(
        one == three,
        "3 workers made other features than one process"
    );
    let text = mine("features", &work3, &merge);
    assert!(text.contains("41 merged before, 0 embedded"), "{text}");

    // ImageNet Lite0 is no product model: its right photos score 0.26-0.55 against the catalogue
    // image and the wrong ones 0.11-0.26 (the histogram shows the valley), so the threshold sits
    // lower than the 0.5-0.6 the original used with its trained model.
    let text = mine("filter", &work, &["--threshold".into(), "0.26".into()]);
    let sims = similarities(&work.join("user_images.csv"));
    let right: HashSet<&String> = products.iter().flat_map(|p| &p.right).collect();
    let wrong: HashSet<&String> = products.iter().flat_map(|p| &p.wrong).collect();
    let kept_right = sims
        .iter()
        .filter(|(u, (_, k))| right.contains(u) && *k)
        .count();
    let kept_wrong: Vec<_> = sims
        .iter()
        .filter(|(u, (_, k))| wrong.contains(u) && *k)
        .collect();
    eprintln!("{text}\nsimilarities: {sims:?}");
    assert!(
        kept_wrong.is_empty(),
        "photos of other products kept: {kept_wrong:?}"
    );
    assert!(
        kept_right >= 20,
        "only {kept_right} of 24 right photos kept"
    );
    assert!(work.join("similarity_histogram.png").is_file());
    assert!(
        std::fs::read_to_string(work.join("product_stats.csv"))
            .unwrap()
            .lines()
            .count()
            == 9
    );

    let text = mine("download", &work, &fast_retries());
    let expected = 8 + kept_right;
    assert!(
        text.contains(&format!(
            "{expected} image URLs: 0 done before, {expected} downloaded now, 0 failed"
        )),
        "{text}"
    );
    let list = dir.path().join("mined.csv");
    let text = run_strings(&[
        "mine".into(),
        "merge".into(),
        "--work-dir".into(),
        work.display().to_string(),
        "--out".into(),
        list.display().to_string(),
        "--min-images".into(),
        "2".into(),
    ]);
    assert!(
        text.contains(&format!("wrote {expected} images of 8 products")),
        "{text}"
    );
    // The list is what the XBM phase's `mined_pairs` reads: every path under the root, one
    // label per product, each image a valid file.
    let samples =
        visual_search_data::formats::mined_pairs::load_mined_pairs(&list, dir.path(), 10_000)
            .unwrap();
    assert_eq!(samples.len(), expected);
    let labels: HashSet<i64> = samples.iter().map(|s| s.label).collect();
    assert_eq!(labels, (10_000..10_008).collect());
    for s in &samples {
        visual_search_data::image::decode_rgb_file(&s.path, &Default::default()).unwrap();
    }
    let labels_csv = std::fs::read_to_string(dir.path().join("mined_labels.csv")).unwrap();
    assert!(
        labels_csv.starts_with("label,asin,title,images\n0,B0GROCERY00,product 0,"),
        "{labels_csv}"
    );
    // Merging again gives the same file (stable labels).
    let first = std::fs::read(&list).unwrap();
    run_strings(&[
        "mine".into(),
        "merge".into(),
        "--work-dir".into(),
        work.display().to_string(),
        "--out".into(),
        list.display().to_string(),
    ]);
    assert_eq!(std::fs::read(&list).unwrap(), first);
}

/// `url → (mean similarity, kept)` from user_images.csv.
fn similarities(csv: &Path) -> HashMap<String, (f32, bool)> {
    std::fs::read_to_string(csv)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[1].to_string(), (f[2].parse().unwrap(), f[3] == "true"))
        })
        .collect()
}

/// Fails when the server sent any of `done` after its `before`-th response.
fn assert_not_refetched(server: &ImageServer, before: usize, done: &HashSet<String>) {
    let again: Vec<String> = server.served()[before..]
        .iter()
        .filter(|u| done.contains(*u))
        .cloned()
        .collect();
    assert!(again.is_empty(), "fetched again after resume: {again:?}");
}

/// Starts `args`, waits until `ready()` holds, then SIGKILLs it.
fn kill_when(args: &[String], ready: impl Fn() -> bool) {
    let mut child = bin()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "never got ready to kill"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("finished ({status}) before it could be killed; slow the server down");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn killed_features_and_download_resume_without_fetching_twice() {
    let Some((grocery, weights)) = common::grocery_and_lite0() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Slow and flaky, so the kill lands mid-run.
    let server = ImageServer::start(&grocery, 10, Duration::from_millis(60));
    let products = grocery_products(&grocery, &server, 6, 4);
    let (reviews, meta) = write_dumps(dir.path(), &products, &server);
    let work = dir.path().join("w");
    mine(
        "pairs",
        &work,
        &[
            "--reviews".into(),
            reviews.display().to_string(),
            "--metadata".into(),
            meta.display().to_string(),
        ],
    );

    let mut args: Vec<String> = ["mine", "features", "--work-dir", work.to_str().unwrap()]
        .map(String::from)
        .to_vec();
    args.extend(model_args(&weights));
    args.extend(fast_retries());
    args.extend(
        [
            "--snapshot-every",
            "4",
            "--batch-size",
            "2",
            "--concurrency",
            "2",
        ]
        .map(String::from),
    );
    let features = work.join("features");
    kill_when(&args, || features.join("chunk-000002.parquet").exists());
    let snapshotted: HashSet<String> = std::fs::read_dir(&features)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .flat_map(|p| visual_search_mining::feature_store::read_chunk(&p).unwrap())
        .map(|r| r.url)
        .collect();
    assert!(snapshotted.len() >= 8);
    let served_before = server.served().len();
    let text = run_strings(&args);
    assert_not_refetched(&server, served_before, &snapshotted);
    // 6 catalogue images + 6 × (4 right + 1 wrong) + the missing one.
    assert!(
        text.contains(&format!("37 image URLs: {} done before", snapshotted.len())),
        "{text}"
    );
    let all = visual_search_mining::feature_store::read_features(&features).unwrap();
    assert_eq!(all.len(), 37);
    assert_eq!(all.values().filter(|r| r.is_err()).count(), 1);

    mine("filter", &work, &["--threshold".into(), "-1".into()]);
    let mut args: Vec<String> = ["mine", "download", "--work-dir", work.to_str().unwrap()]
        .map(String::from)
        .to_vec();
    args.extend(fast_retries());
    args.extend(["--concurrency", "2"].map(String::from));
    let journal = work.join("downloads.csv");
    kill_when(&args, || {
        std::fs::read_to_string(&journal).is_ok_and(|t| t.lines().count() > 6)
    });
    let images = work.join("images");
    let done: HashSet<String> = visual_search_mining::download::read_journal(&journal, &images)
        .unwrap()
        .into_keys()
        .collect();
    assert!(done.len() >= 5);
    let served_before = server.served().len();
    let text = run_strings(&args);
    assert_not_refetched(&server, served_before, &done);
    assert!(
        text.contains(&format!("36 image URLs: {} done before", done.len())),
        "{text}"
    );
    // No temp or partial file is left: every file is a named, decodable image in the journal.
    let journal =
        visual_search_mining::download::read_journal(&work.join("downloads.csv"), &images).unwrap();
    let listed: HashSet<PathBuf> = journal
        .values()
        .filter_map(|e| e.clone().ok())
        .map(|p| images.join(p))
        .collect();
    let mut on_disk = Vec::new();
    for sub in std::fs::read_dir(&images).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            on_disk.push(f.unwrap().path());
        }
    }
    for f in &on_disk {
        visual_search_data::image::decode_rgb_file(f, &Default::default()).unwrap();
    }
    assert!(
        on_disk.iter().all(|f| listed.contains(f)),
        "stray files: {on_disk:?}"
    );
    assert_eq!(journal.len(), 36);
}
