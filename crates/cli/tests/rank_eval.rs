//! `rank` and `eval` end to end on a small dev set cut from the grocery data.

use std::path::{Path, PathBuf};
use std::process::Command;

use visual_search_retrieval::embedding_file::read_embeddings;
use visual_search_retrieval::npy::read_f32;

fn visual_search(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_visual-search"))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A dev-set root whose CSVs point into the grocery dataset: the first `nq` queries and `ng`
/// gallery rows (absolute paths are not allowed, so images are reached through a symlink).
fn small_dev_set(dir: &Path, grocery: &Path, nq: usize, ng: usize) -> PathBuf {
    let root = dir.join("dev");
    std::fs::create_dir_all(&root).unwrap();
    for sub in ["train", "val", "test", "iconic-images-and-descriptions"] {
        std::os::unix::fs::symlink(grocery.join(sub), root.join(sub)).unwrap();
    }
    let head = |name: &str, n: usize| -> String {
        let text = std::fs::read_to_string(grocery.join(name)).unwrap();
        text.lines().take(n + 1).collect::<Vec<_>>().join("\n") + "\n"
    };
    std::fs::write(root.join("queries.csv"), head("queries.csv", nq)).unwrap();
    std::fs::write(root.join("gallery.csv"), head("gallery.csv", ng)).unwrap();
    root
}

/// A temporary folder holding [`small_dev_set`], or `None` (with a loud SKIPPED, a failure
/// under CI) when the grocery data is missing.
fn small_dev_set_or_skip(nq: usize, ng: usize) -> Option<(tempfile::TempDir, PathBuf)> {
    let Some(grocery) = visual_search_data::datasets::locate_grocery() else {
        visual_search_data::datasets::missing_test_dependency(
            "grocery dataset not found (set VISUAL_SEARCH_DATASETS)",
        );
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = small_dev_set(dir.path(), &grocery, nq, ng);
    Some((dir, root))
}

/// `embed` of the dev set's `list` (queries or gallery) on flex into `out/<list>.safetensors`.
fn embed_list(root: &Path, list: &str, out: &Path, model: &[&str], extra: &[&str]) -> PathBuf {
    let file = out.join(format!("{list}.safetensors"));
    let csv = root.join(format!("{list}.csv"));
    let mut args = vec![
        "embed",
        "--follow-links",
        "--csv",
        csv.to_str().unwrap(),
        "--out",
        file.to_str().unwrap(),
        "--device",
        "flex",
    ];
    args.extend(extra);
    args.extend(model);
    visual_search(&args);
    file
}

fn model_args() -> Vec<String> {
    match visual_search_model::pretrained::efficientnet_lite0_weights() {
        Some(w) => vec![
            "--model".into(),
            "efficientnet_lite0".into(),
            "--weights".into(),
            w.display().to_string(),
        ],
        None => vec![
            "--model".into(),
            "tiny_convnext".into(),
            "--size".into(),
            "32".into(),
        ],
    }
}

#[test]
fn rank_writes_a_valid_submission_and_eval_agrees_with_precomputed_embeddings() {
    let Some((dir, root)) = small_dev_set_or_skip(24, 40) else {
        return;
    };
    let root_s = root.to_str().unwrap();
    let model = model_args();
    let model: Vec<&str> = model.iter().map(String::as_str).collect();
    let out = dir.path().join("ranking.npy");

    let mut args = vec![
        "rank",
        "--dataset-dir",
        root_s,
        "--out",
        out.to_str().unwrap(),
        "--device",
        "flex",
        "--dba-k",
        "2",
    ];
    args.extend(&model);
    let text = visual_search(&args);
    assert!(text.contains("ranking") && text.contains("model"), "{text}");
    let (values, rows, cols) = read_f32_i64(&out);
    assert_eq!(
        (rows, cols),
        (24, 40),
        "k = 1000 > gallery returns the whole gallery"
    );
    for r in 0..rows {
        let mut row: Vec<i64> = values[r * cols..(r + 1) * cols].to_vec();
        row.sort();
        assert_eq!(
            row,
            (0..40).collect::<Vec<i64>>(),
            "row {r} is a permutation of the gallery"
        );
    }
    let csv = std::fs::read_to_string(out.with_extension("csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 24 * 40);

    let mut args = vec![
        "eval",
        "--dataset-dir",
        root_s,
        "--device",
        "flex",
        "--json",
    ];
    args.extend(&model);
    let direct: serde_json::Value = serde_json::from_str(visual_search(&args).trim()).unwrap();

    let emb: Vec<PathBuf> = ["queries", "gallery"]
        .iter()
        .map(|list| embed_list(&root, list, dir.path(), &model, &[]))
        .collect();
    let args = vec![
        "eval",
        "--dataset-dir",
        root_s,
        "--json",
        "--query-embeddings",
        emb[0].to_str().unwrap(),
        "--gallery-embeddings",
        emb[1].to_str().unwrap(),
    ];
    let from_files: serde_json::Value = serde_json::from_str(visual_search(&args).trim()).unwrap();
    for key in ["map_at_k", "recall_at_1", "map_at_r"] {
        let (a, b) = (
            direct[key].as_f64().unwrap(),
            from_files[key].as_f64().unwrap(),
        );
        assert!(
            (a - b).abs() < 1e-9,
            "{key}: model {a} vs embedding files {b}"
        );
    }
    assert_eq!(direct["queries"], 24);
}

/// `--tta-flip --tta-sizes` embed the same way in `embed` and `eval`, and change the
/// embeddings; the post-processing options run from embedding files and are reported in the
/// JSON line.
#[test]
fn test_time_augmentation_and_post_processing_run_end_to_end() {
    let Some((dir, root)) = small_dev_set_or_skip(12, 20) else {
        return;
    };
    let root_s = root.to_str().unwrap();
    let model = model_args();
    let model: Vec<&str> = model.iter().map(String::as_str).collect();
    let eval = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["eval", "--dataset-dir", root_s, "--json"];
        args.extend(extra);
        serde_json::from_str(visual_search(&args).trim()).unwrap()
    };
    // One more input side than the model's own: 256 for Lite0 at 224, 40 for the tiny model.
    let other_size = if model.contains(&"tiny_convnext") {
        "40"
    } else {
        "256"
    };
    let augmentation = ["--tta-flip", "--tta-sizes", other_size];
    let embed = |list: &str, augmented: bool| -> PathBuf {
        let out = dir.path().join(format!("augmented-{augmented}"));
        std::fs::create_dir_all(&out).unwrap();
        let extra: &[&str] = if augmented { &augmentation } else { &[] };
        embed_list(&root, list, &out, &model, extra)
    };
    let (q_flip, g_flip) = (embed("queries", true), embed("gallery", true));
    let mut direct_args = vec!["--device", "flex"];
    direct_args.extend(augmentation);
    direct_args.extend(&model);
    let direct = eval(&direct_args);
    let files = |q: &Path, g: &Path, extra: &[&str]| {
        let mut args = vec![
            "--query-embeddings",
            q.to_str().unwrap(),
            "--gallery-embeddings",
            g.to_str().unwrap(),
        ];
        args.extend(extra);
        eval(&args)
    };
    let from_files = files(&q_flip, &g_flip, &[]);
    assert!(
        (direct["map_at_k"].as_f64().unwrap() - from_files["map_at_k"].as_f64().unwrap()).abs()
            < 1e-9
    );
    let plain = read_embeddings(&embed("queries", false)).unwrap();
    let flipped = read_embeddings(&q_flip).unwrap();
    let moved = plain
        .data
        .iter()
        .zip(&flipped.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(moved > 1e-3, "the augmentation changed nothing ({moved})");

    let winner = files(&q_flip, &g_flip, &["--preset", "winner", "--k-reciprocal"]);
    let ranking = &winner["ranking"];
    assert_eq!(ranking["centre"], true);
    assert_eq!(ranking["dba_k"], 5);
    assert_eq!(ranking["blend_max_distance"].as_f64(), Some(0.8f32 as f64));
    assert_eq!(ranking["k_reciprocal"]["k1"], 20);
    let map = winner["map_at_k"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&map), "{winner}");
}

/// `--ensemble` of a model with its own export: the concatenated unit vectors have the same
/// cosines, so the metrics are the model's.
#[test]
fn an_ensemble_of_a_model_with_itself_ranks_like_the_model() {
    let Some((dir, root)) = small_dev_set_or_skip(12, 20) else {
        return;
    };
    let root_s = root.to_str().unwrap();
    let model = model_args();
    let model: Vec<&str> = model.iter().map(String::as_str).collect();
    let export = dir.path().join("export");
    let mut args = vec!["export", "--out", export.to_str().unwrap()];
    args.extend(&model);
    visual_search(&args);
    let eval = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "eval",
            "--dataset-dir",
            root_s,
            "--json",
            "--device",
            "flex",
        ];
        args.extend(&model);
        args.extend(extra);
        serde_json::from_str(visual_search(&args).trim()).unwrap()
    };
    let alone = eval(&[]);
    let twice = eval(&["--ensemble", export.to_str().unwrap()]);
    assert!(twice["source"].as_str().unwrap().contains(" + "), "{twice}");
    for key in ["map_at_k", "recall_at_1", "map_at_r"] {
        let (a, b) = (alone[key].as_f64().unwrap(), twice[key].as_f64().unwrap());
        assert!((a - b).abs() < 1e-6, "{key}: alone {a}, ensemble {b}");
    }
}

/// `eval --holdout-products`: with one exact gallery match per product, present queries score
/// 1 and queries whose product was held out score 0, so the separation is perfect whichever
/// products the seed hides.
#[test]
fn holding_out_products_reports_the_open_set_separation() {
    use visual_search_retrieval::embedding_file::{Embeddings, StoredDtype, write_embeddings};
    let dir = tempfile::tempdir().unwrap();
    let unit_rows = |n: usize| -> Embeddings {
        let mut data = vec![0.0f32; n * 8];
        (0..n).for_each(|i| data[i * 8 + i] = 1.0);
        Embeddings {
            rows: n,
            dim: 8,
            data,
            labels: Some((0..n as i64).collect()),
        }
    };
    let (q, g) = (
        dir.path().join("q.safetensors"),
        dir.path().join("g.safetensors"),
    );
    write_embeddings(&q, &unit_rows(6), StoredDtype::F32).unwrap();
    write_embeddings(&g, &unit_rows(6), StoredDtype::F32).unwrap();
    let text = visual_search(&[
        "eval",
        "--dataset-dir",
        dir.path().to_str().unwrap(),
        "--query-embeddings",
        q.to_str().unwrap(),
        "--gallery-embeddings",
        g.to_str().unwrap(),
        "--holdout-products",
        "0.5",
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    let open = &json["open_set"];
    assert_eq!(
        (
            &open["held_out_products"],
            &open["present_queries"],
            &open["absent_queries"]
        ),
        (&3.into(), &3.into(), &3.into()),
        "{open}"
    );
    assert_eq!(open["auroc"].as_f64(), Some(1.0), "{open}");
    assert_eq!(open["recall"].as_f64(), Some(1.0), "{open}");
}

/// Reads the int64 ranking through the float reader's header parsing rules.
fn read_f32_i64(path: &Path) -> (Vec<i64>, usize, usize) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'descr': '<i8'"), "{header}");
    let shape = header.split('(').nth(1).unwrap().split(')').next().unwrap();
    let dims: Vec<usize> = shape
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let data = &bytes[10 + header_len..];
    let values = data
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let _ = read_f32; // the float reader refuses integer arrays, which is what rank writes
    (values, dims[0], dims[1])
}
