//! Post-processing stored in an embedded index (centring on the catalogue mean, the 1st place's
//! blending rounds) gives, through `search_items`, exactly the ranking the retrieval functions
//! give when composed by hand — the functions themselves are tested against NumPy in
//! `rerank_parity.rs`. The same through PostgreSQL is in the CLI's `postgres.rs` tests.

mod common;

use common::{floats, rerank_fixture};
use visual_search_retrieval::catalogue::Catalogue;
use visual_search_retrieval::index::{
    Index, IndexDtype, IndexItem, IndexMeta, Preprocessing, build_index,
};
use visual_search_retrieval::index_post_processing::IndexPostProcessing;
use visual_search_retrieval::item_metadata::Filter;
use visual_search_retrieval::matrix::MatrixView;
use visual_search_retrieval::query_blending::{QueryBlending, blend_queries};
use visual_search_retrieval::rerank::sanitize_and_normalize;
use visual_search_retrieval::topk::top_k;

#[test]
fn a_centred_blending_index_searches_like_the_composed_functions() {
    let f = rerank_fixture();
    let dim = f["dim"].as_u64().unwrap() as usize;
    let (queries, mut gallery) = (floats(&f["queries"]), floats(&f["gallery"]));
    let rows = gallery.len() / dim;

    let mean = IndexPostProcessing::centre_catalogue(&mut gallery, dim);
    let post = IndexPostProcessing {
        centre: Some(mean.clone()),
        blending: Some(QueryBlending::winner()),
    };
    let mut meta = IndexMeta::new(
        IndexDtype::F32,
        dim,
        serde_json::json!({"model": "fixture"}),
        Preprocessing {
            size: 32,
            mean: [0.5; 3],
            std: [0.5; 3],
        },
    );
    meta.post_processing = post.clone();
    let items: Vec<IndexItem> = (0..rows)
        .map(|i| IndexItem::new(i as i64, format!("img/{i}.jpg")))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    build_index(dir.path(), meta, &items, &gallery).unwrap();
    let index = Index::open(dir.path()).unwrap();
    assert_eq!(index.meta.post_processing, post, "stored and read back");

    let hits = index
        .search_items(&queries, 10, &Filter::default())
        .unwrap();

    let mut q = queries.clone();
    sanitize_and_normalize(&mut q, dim);
    for row in q.chunks_exact_mut(dim) {
        row.iter_mut().zip(&mean).for_each(|(v, m)| *v -= m);
    }
    sanitize_and_normalize(&mut q, dim);
    blend_queries(&mut q, &gallery, dim, &QueryBlending::winner());
    let nq = q.len() / dim;
    let want = top_k(
        MatrixView::f32(&q, nq, dim),
        MatrixView::f32(&gallery, rows, dim),
        10,
    );
    for (i, found) in hits.iter().enumerate() {
        let ids: Vec<u32> = found.iter().map(|h| h.id as u32).collect();
        assert_eq!(ids, want.row(i), "query {i}");
    }
    // Blending moved some query: the plain search of the centred queries differs somewhere.
    let plain = index
        .search_raw(
            &{
                let mut c = queries.clone();
                post.prepare_rows(&mut c, dim).unwrap();
                c
            },
            10,
            &Filter::default(),
        )
        .unwrap();
    assert_ne!(
        plain, hits,
        "the blending rounds changed nothing on this data"
    );
}
