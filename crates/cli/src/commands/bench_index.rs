//! `visual-search bench index`: the embedded on-disk index against PostgreSQL + pgvector on the
//! same synthetic catalogue (clustered unit vectors, like real embeddings) — build time, search
//! latency p50/p99 for one query at a time (what `serve` does), and HNSW recall@k against exact
//! search; then the same with a metadata filter that keeps 10% of the rows (`shelf=3`: the
//! embedded index gathers those rows into its exact scan, pgvector adds a `WHERE` clause and
//! scans HNSW iteratively). The embedded exact search is the baseline the ratios are taken
//! against (its filtered search for the filtered rows).

use std::time::Instant;

use anyhow::bail;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use visual_search_retrieval::catalogue::{Catalogue, CatalogueHit};
use visual_search_retrieval::index::{
    Index, IndexDtype, IndexItem, IndexMeta, Preprocessing, build_index,
};
use visual_search_retrieval::item_metadata::Filter;
use visual_search_retrieval::postgres_index::{
    PgIndex, PgOptions, create_hnsw, create_tables, is_postgres_url,
};
use visual_search_retrieval::postgres_load::{LoadKind, load_rows};

use crate::table;

#[derive(clap::Args)]
pub struct Args {
    /// A PostgreSQL server with pgvector (`postgres://user@host:port/db`); the table is replaced.
    /// Without it only the embedded index is measured.
    #[arg(long)]
    url: Option<String>,
    #[arg(long, default_value = "bench_items")]
    table: String,
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    #[arg(long, default_value_t = 512)]
    dim: usize,
    /// Queries timed per engine (exact PostgreSQL search uses a fifth of them).
    #[arg(long, default_value_t = 200)]
    queries: usize,
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// HNSW search beam widths to time.
    #[arg(long, value_delimiter = ',', default_value = "40,100,200")]
    ef_search: Vec<u32>,
    /// Stored precision of the embedded index (and of the pgvector column: halfvec for f16).
    #[arg(long, value_enum, default_value = "f32")]
    store: StoreArg,
    /// Parallel workers for the HNSW build (`max_parallel_maintenance_workers`).
    #[arg(long, default_value_t = 2)]
    hnsw_workers: u32,
    /// Leave out the filtered pass (at 1M rows pgvector's filtered searches take seconds each).
    #[arg(long)]
    no_filter: bool,
    /// Keep the embedded index in this new folder (to `serve` it, e.g. for the load test);
    /// refused if the folder exists.
    #[arg(long)]
    keep: Option<std::path::PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum StoreArg {
    F32,
    F16,
}

/// Resident memory of this process, MiB (Linux; 0 elsewhere).
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// `rows` unit vectors around `rows / 100` random centres, and queries near random rows.
fn clustered(rows: usize, dim: usize, queries: usize) -> (Vec<f32>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut gauss = move || -> f32 {
        let (u, v): (f32, f32) = (rng.random::<f32>().max(1e-9), rng.random());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    };
    let normalize = |v: &mut [f32]| {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.iter_mut().for_each(|x| *x /= n);
    };
    let centres: Vec<Vec<f32>> = (0..(rows / 100).max(1))
        .map(|_| {
            let mut c: Vec<f32> = (0..dim).map(|_| gauss()).collect();
            normalize(&mut c);
            c
        })
        .collect();
    let noise = 0.6 / (dim as f32).sqrt();
    let mut data = Vec::with_capacity(rows * dim);
    for i in 0..rows {
        let c = &centres[i % centres.len()];
        let mut v: Vec<f32> = c.iter().map(|x| x + noise * gauss()).collect();
        normalize(&mut v);
        data.extend(v);
    }
    let mut q = Vec::with_capacity(queries * dim);
    for i in 0..queries {
        let row = (i * 7919) % rows;
        let mut v: Vec<f32> = data[row * dim..(row + 1) * dim]
            .iter()
            .map(|x| x + noise * gauss())
            .collect();
        normalize(&mut v);
        q.extend(v);
    }
    (data, q)
}

/// p50 and p99 of per-query latencies (ms), and the results.
fn time_queries(
    index: &dyn Catalogue,
    queries: &[f32],
    dim: usize,
    k: usize,
    filter: &Filter,
) -> anyhow::Result<(f64, f64, Vec<Vec<CatalogueHit>>)> {
    let mut ms = Vec::new();
    let mut out = Vec::new();
    for q in queries.chunks(dim) {
        let t = Instant::now();
        let hits = index.search_items(q, k, filter)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        out.extend(hits);
    }
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    Ok((pct(0.5), pct(0.99), out))
}

fn recall(found: &[Vec<CatalogueHit>], exact: &[Vec<CatalogueHit>]) -> f64 {
    let mut hits = 0;
    let mut total = 0;
    for (f, e) in found.iter().zip(exact) {
        let want: std::collections::HashSet<u64> = e.iter().map(|h| h.id).collect();
        hits += f.iter().filter(|h| want.contains(&h.id)).count();
        total += e.len();
    }
    hits as f64 / total.max(1) as f64
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(url) = &args.url
        && !is_postgres_url(url)
    {
        bail!("--url must be a postgres:// URL");
    }
    if let Some(keep) = &args.keep
        && keep.exists()
    {
        bail!(
            "{} exists; --keep writes a new folder and never replaces one",
            keep.display()
        );
    }
    let dtype = match args.store {
        StoreArg::F32 => IndexDtype::F32,
        StoreArg::F16 => IndexDtype::F16,
    };
    let (data, queries) = clustered(args.rows, args.dim, args.queries);
    // Ten shelves, so `shelf=3` keeps 10% of the rows, spread over every cluster.
    let items: Vec<IndexItem> = (0..args.rows)
        .map(|i| {
            let mut item = IndexItem::new((i / 4) as i64, format!("img/{i}.jpg"));
            item.metadata.insert("shelf".into(), (i % 10).to_string());
            item
        })
        .collect();
    let filter = Filter::parse("shelf=3")?;
    let all = Filter::default();
    let meta = IndexMeta::new(
        dtype,
        args.dim,
        serde_json::json!({"synthetic": true}),
        Preprocessing {
            size: 224,
            mean: [0.5; 3],
            std: [0.5; 3],
        },
    );
    let mut rows_out: Vec<Vec<String>> = Vec::new();

    let temp = tempfile::tempdir()?;
    let dir = args
        .keep
        .clone()
        .unwrap_or_else(|| temp.path().join("index"));
    let t = Instant::now();
    build_index(&dir, meta.clone(), &items, &data)?;
    let embedded_build = t.elapsed().as_secs_f64();
    let pg = match &args.url {
        Some(url) => Some(load_postgres(&args, url, &meta, &items, &data)?),
        None => None,
    };
    drop(data);
    let rss_before = rss_mib();
    let t = Instant::now();
    let embedded = Index::open(&dir)?;
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let rss_open = rss_mib();
    let few = &queries[..(args.queries / 5).max(1) * args.dim];

    // Every engine without a filter, then with the filter keeping 10% of the rows; each pass's
    // baseline is the embedded exact search with the same filter.
    let passes = [
        (&all, "", "", true),
        (&filter, ", filter 10%", ", filter 10% (iterative)", false),
    ];
    let passes = &passes[..if args.no_filter { 1 } else { 2 }];
    let mut rss_searched: f64 = 0.0;
    for &(filter, suffix, hnsw_suffix, with_build) in passes {
        let build = |text: String| if with_build { text } else { "-".to_string() };
        let (p50, p99, exact) = time_queries(&embedded, &queries, args.dim, args.k, filter)?;
        rss_searched = rss_searched.max(rss_mib());
        let base = p50;
        rows_out.push(vec![
            format!("embedded exact ({:?}){suffix}", args.store).to_lowercase(),
            build(format!("{embedded_build:.1}")),
            format!("{p50:.2}"),
            format!("{p99:.2}"),
            "1.00x".into(),
            "1.000".into(),
        ]);
        let Some(pg) = &pg else {
            continue;
        };
        let (p50, p99, pg_exact) = time_queries(&pg.exact, few, args.dim, args.k, filter)?;
        rows_out.push(vec![
            format!("pgvector exact (vector){suffix}"),
            build(format!("{:.1} (COPY)", pg.load_s)),
            format!("{p50:.2}"),
            format!("{p99:.2}"),
            format!("{:.2}x", base / p50),
            format!("{:.3}", recall(&pg_exact, &exact[..pg_exact.len()])),
        ]);
        for ef in &args.ef_search {
            let hnsw = PgIndex::open(&PgOptions {
                pool: 1,
                ef_search: *ef,
                ..pg.opts.clone()
            })?;
            let (p50, p99, found) = time_queries(&hnsw, &queries, args.dim, args.k, filter)?;
            let short = found.iter().filter(|f| f.len() < args.k).count();
            let short = match short {
                0 => String::new(),
                n => format!(" ({n} queries short of k)"),
            };
            rows_out.push(vec![
                format!("pgvector HNSW ef_search {ef}{hnsw_suffix}"),
                build(format!(
                    "{:.1} (COPY + HNSW {:.1})",
                    pg.load_s + pg.hnsw_s,
                    pg.hnsw_s
                )),
                format!("{p50:.2}"),
                format!("{p99:.2}"),
                format!("{:.2}x", base / p50),
                format!("{:.3}{short}", recall(&found, &exact)),
            ]);
        }
    }
    println!(
        "index: {} clustered {}-d vectors, {} single queries, top {}, {} cores; ratio = embedded exact p50 / p50",
        args.rows,
        args.dim,
        args.queries,
        args.k,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    print!(
        "{}",
        table::render(
            &[
                "engine",
                "build s",
                "p50 ms",
                "p99 ms",
                "speed",
                &format!("recall@{}", args.k)
            ],
            &rows_out
        )
    );
    println!(
        "embedded index: {:.0} MiB on disk, opened in {open_ms:.1} ms; resident memory {rss_before:.0} MiB before opening it, {rss_open:.0} MiB after, {rss_searched:.0} MiB after the searches (its rows are memory-mapped: resident once read)",
        embedded.meta.rows as f64 * args.dim as f64 * dtype.bytes() as f64 / (1 << 20) as f64
    );
    if let Some(keep) = &args.keep {
        println!("kept the embedded index in {}", keep.display());
    }
    Ok(())
}

/// A loaded PostgreSQL table: exact search on it, the options for HNSW searches, and how long
/// the COPY and the HNSW build took.
struct LoadedPg {
    exact: PgIndex,
    opts: PgOptions,
    load_s: f64,
    hnsw_s: f64,
}

fn load_postgres(
    args: &Args,
    url: &str,
    meta: &IndexMeta,
    items: &[IndexItem],
    data: &[f32],
) -> anyhow::Result<LoadedPg> {
    // The graph must fit maintenance_work_mem or pgvector builds it far more slowly.
    let graph_mib = args.rows as f64 * (4 * args.dim + 8 * 16) as f64 / (1 << 20) as f64;
    let opts = PgOptions {
        batch_rows: 10_000,
        hnsw_memory_mb: (graph_mib * 1.5) as u32 + 256,
        hnsw_workers: Some(args.hnsw_workers),
        ..PgOptions::new(url, &args.table)
    };
    let t = Instant::now();
    create_tables(&opts, meta, true)?;
    load_rows(
        &opts,
        meta.dtype,
        LoadKind::Build,
        items,
        data,
        &mut |_, _| {},
    )?;
    let load_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    create_hnsw(&opts, meta.dtype)?;
    let hnsw_s = t.elapsed().as_secs_f64();
    let mut exact = PgIndex::open(&PgOptions {
        pool: 1,
        ..opts.clone()
    })?;
    exact.exact = true;
    Ok(LoadedPg {
        exact,
        opts,
        load_s,
        hnsw_s,
    })
}
