//! Top-k and metrics against the competition formula and pytorch-metric-learning.
//!
//! Fixture: `tests/fixtures/metrics.*`, from `tools/make_metric_fixtures.py`.

use std::path::Path;

use safetensors::SafeTensors;
use safetensors::tensor::Dtype;
use serde_json::Value;
use visual_search_retrieval::matrix::MatrixView;
use visual_search_retrieval::metrics::evaluate;
use visual_search_retrieval::topk::top_k;

struct Case {
    q: Vec<f32>,
    g: Vec<f32>,
    ql: Vec<i64>,
    gl: Vec<i64>,
    dim: usize,
}

fn load(name: &str) -> (Case, Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let path = dir.join("metrics.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let floats = |k: &str| -> (Vec<f32>, Vec<usize>) {
        let t = st.tensor(&format!("{name}_{k}")).unwrap();
        assert_eq!(t.dtype(), Dtype::F32);
        (
            t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            t.shape().to_vec(),
        )
    };
    let ints = |k: &str| -> Vec<i64> {
        let t = st.tensor(&format!("{name}_{k}")).unwrap();
        t.data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (q, shape) = floats("q");
    let (g, _) = floats("g");
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap();
    (
        Case {
            q,
            g,
            ql: ints("ql"),
            gl: ints("gl"),
            dim: shape[1],
        },
        expected[name].clone(),
    )
}

fn close(a: f64, b: &Value, what: &str) {
    let b = b.as_f64().unwrap();
    assert!((a - b).abs() < 1e-9, "{what}: {a} vs {b}");
}

#[test]
fn map_recall_and_map_at_r_match_the_references() {
    let (c, exp) = load("main");
    let (nq, ng) = (c.ql.len(), c.gl.len());
    let ranking = top_k(
        MatrixView::f32(&c.q, nq, c.dim),
        MatrixView::f32(&c.g, ng, c.dim),
        1000,
    );
    for k in [5, 1000] {
        let m = evaluate(&ranking, &c.ql, &c.gl, k);
        let e = &exp[format!("k{k}")];
        close(m.map_at_k, &e["map_at_k"], "mAP@k");
        close(m.recall_at_1, &e["recall_at_1"], "R@1");
        close(m.map_at_r, &e["map_at_r"], "mAP@R");
    }
    // pytorch-metric-learning averages over queries that have a relevant gallery item only.
    let m = evaluate(&ranking, &c.ql, &c.gl, 1000);
    assert_eq!(
        m.evaluated_queries as u64,
        exp["evaluated_queries"].as_u64().unwrap()
    );
    let rescale = nq as f64 / m.evaluated_queries as f64;
    let p = &exp["pml_k1000"];
    close(m.map_at_k * rescale, &p["map_at_k"], "PML mAP@1000");
    close(
        m.recall_at_1 * rescale,
        &p["recall_at_1"],
        "PML precision@1",
    );
    close(m.map_at_r * rescale, &p["map_at_r"], "PML mAP@R");
}

#[test]
fn duplicate_embeddings_tie_break_to_the_lower_index() {
    let (c, exp) = load("ties");
    let (nq, ng) = (c.ql.len(), c.gl.len());
    let ranking = top_k(
        MatrixView::f32(&c.q, nq, c.dim),
        MatrixView::f32(&c.g, ng, c.dim),
        1000,
    );
    assert_eq!(
        ranking.k, ng,
        "k larger than the gallery returns the whole gallery"
    );
    for (qi, row) in exp["ranking_top10"].as_array().unwrap().iter().enumerate() {
        let want: Vec<u32> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(&ranking.row(qi)[..10], &want[..], "query {qi}");
    }
    for k in [5, 1000] {
        let m = evaluate(&ranking, &c.ql, &c.gl, k);
        close(
            m.map_at_k,
            &exp[format!("k{k}")]["map_at_k"],
            "mAP@k with ties",
        );
    }
}
