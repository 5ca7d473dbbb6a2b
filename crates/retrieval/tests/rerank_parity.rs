//! The ranker's post-processing against the NumPy references of `tools/make_rerank_fixtures.py`:
//! centring, query blending, DBA, the 1st place's chain and k-reciprocal re-ranking (the
//! authors' algorithm with full matrices, so this also checks that the sparse, blocked version
//! loses nothing).

mod common;

use common::{floats, rerank_fixture};
use serde_json::Value;
use visual_search_retrieval::centring::centre_on_joint_mean;
use visual_search_retrieval::k_reciprocal::{KReciprocal, k_reciprocal_rerank};
use visual_search_retrieval::pipeline::{RankOptions, rank};
use visual_search_retrieval::query_blending::{QueryBlending, blend_queries};
use visual_search_retrieval::rerank::{database_augmentation, sanitize_and_normalize, standardize};

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tolerance: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= tolerance, "{what}: max difference {worst}");
}

fn inputs(f: &Value) -> (Vec<f32>, Vec<f32>, usize) {
    let dim = f["dim"].as_u64().expect("dim") as usize;
    let (mut q, mut g) = (floats(&f["queries"]), floats(&f["gallery"]));
    sanitize_and_normalize(&mut q, dim);
    sanitize_and_normalize(&mut g, dim);
    (q, g, dim)
}

fn rounds(f: &Value) -> QueryBlending {
    QueryBlending {
        rounds: f["blend_rounds"]
            .as_array()
            .expect("rounds")
            .iter()
            .map(floats)
            .collect(),
        max_distance: f["blend_max_distance"].as_f64().expect("gate") as f32,
    }
}

#[test]
fn centring_matches_numpy() {
    let f = rerank_fixture();
    let (mut q, mut g, dim) = inputs(&f);
    centre_on_joint_mean(&mut q, &mut g, dim);
    assert_close("queries", &q, &floats(&f["centred_queries"]), 1e-5);
    assert_close("gallery", &g, &floats(&f["centred_gallery"]), 1e-5);
}

#[test]
fn query_blending_matches_numpy() {
    let f = rerank_fixture();
    let (mut q, g, dim) = inputs(&f);
    let blending = rounds(&f);
    assert_eq!(blending, QueryBlending::winner());
    blend_queries(&mut q, &g, dim, &blending);
    assert_close("blended", &q, &floats(&f["blended_queries"]), 1e-5);
}

#[test]
fn dba_matches_numpy() {
    let f = rerank_fixture();
    let (mut q, mut g, dim) = inputs(&f);
    let reference = g.clone();
    standardize(&reference, dim, &mut [&mut g, &mut q]);
    sanitize_and_normalize(&mut q, dim);
    sanitize_and_normalize(&mut g, dim);
    database_augmentation(&mut g, dim, f["dba_k"].as_u64().expect("k") as usize);
    assert_close("queries", &q, &floats(&f["dba_queries"]), 1e-5);
    assert_close("gallery", &g, &floats(&f["dba_gallery"]), 1e-5);
}

#[test]
fn winner_chain_matches_numpy() {
    let f = rerank_fixture();
    let (q, g, dim) = inputs(&f);
    let top = f["winner_top"].as_u64().expect("top") as usize;
    let (ranking, _) = rank(q, g, dim, &RankOptions::winner(top));
    assert_eq!(ranking.indices, ids(&f["winner_indices"]));
}

#[test]
fn k_reciprocal_matches_the_authors_algorithm() {
    let f = rerank_fixture();
    let (q, g, dim) = inputs(&f);
    for case in f["k_reciprocal"].as_array().expect("cases") {
        let params = KReciprocal {
            k1: case["k1"].as_u64().expect("k1") as usize,
            k2: case["k2"].as_u64().expect("k2") as usize,
            lambda: case["lambda"].as_f64().expect("lambda") as f32,
        };
        let top = case["top"].as_u64().expect("top") as usize;
        let ranked = k_reciprocal_rerank(&q, &g, dim, &params, top);
        assert_eq!(ranked.indices, ids(&case["indices"]), "{params:?}");
        let distances: Vec<f32> = ranked.scores.iter().map(|s| 1.0 - s).collect();
        assert_close(
            &format!("{params:?}"),
            &distances,
            &floats(&case["distances"]),
            1e-5,
        );
        // Through the pipeline: the same ranking.
        let options = RankOptions {
            top_k: top,
            k_reciprocal: Some(params),
            ..RankOptions::default()
        };
        let (piped, _) = rank(q.clone(), g.clone(), dim, &options);
        assert_eq!(piped.indices, ranked.indices);
    }
}
