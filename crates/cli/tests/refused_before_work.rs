//! Outputs a finished job could not be written to are refused before the job: `index build`
//! into a folder of other files or with a `--key-column` a row lacks, `embed` to a file that
//! is not `.npy` / `.safetensors`, `rank` to anything but an `.npy` file, either over a file of
//! the user's (a `--out gallery.npy` whose CSV would replace the dataset's list), `export --int8`
//! with a calibration list or gate dev set it cannot use; ranking settings that are no numbers
//! (a NaN distance, `--top-k 0`, `--dba-k 0`), an int8 gate that is no cosine; sharded workers
//! without weights (each would draw its own); a batch size of 0 (which stopped the
//! loader on an assertion). Each run with weights names weights that do not exist, so it can
//! only end with the expected message if it stops before loading the model.

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> (Output, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_visual-search"))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output, text)
}

/// A gallery list whose images need not exist (nothing is read before the refusal), with a
/// `sku` column that its second row leaves empty.
fn gallery(dir: &Path) -> String {
    let csv = dir.join("gallery.csv");
    std::fs::write(&csv, "img_path,product_id,sku\na.jpg,1,S1\nb.jpg,2,\n").unwrap();
    csv.to_str().unwrap().to_string()
}

const MODEL: [&str; 4] = [
    "--model",
    "efficientnet_lite0",
    "--weights",
    "/nonexistent/lite0.pth",
];

#[test]
fn index_build_refuses_a_folder_of_other_files_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let csv = gallery(dir.path());
    let photos = dir.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    std::fs::write(photos.join("holiday.jpg"), "mine").unwrap();
    let mut args = vec!["index", "build", "--csv", &csv, "--out"];
    args.push(photos.to_str().unwrap());
    args.extend(MODEL);
    let (output, text) = run(&args);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("not an index") && text.contains("holiday.jpg"),
        "{text}"
    );
    assert!(!text.contains("lite0.pth"), "refused after loading: {text}");
    let names: Vec<_> = std::fs::read_dir(&photos)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["holiday.jpg"]);
}

#[test]
fn index_build_refuses_a_key_column_a_row_leaves_empty() {
    let dir = tempfile::tempdir().unwrap();
    let csv = gallery(dir.path());
    let out = dir.path().join("idx");
    let mut args = vec!["index", "build", "--csv", &csv, "--key-column", "sku"];
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend(MODEL);
    let (output, text) = run(&args);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("b.jpg") && text.contains("has no sku"),
        "{text}"
    );
    assert!(!out.exists());
}

#[test]
fn embed_refuses_an_output_that_is_not_an_embedding_file() {
    let dir = tempfile::tempdir().unwrap();
    let csv = gallery(dir.path());
    let out = dir.path().join("emb.txt");
    let mut args = vec!["embed", "--csv", &csv, "--out", out.to_str().unwrap()];
    args.extend(MODEL);
    let (output, text) = run(&args);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("emb.txt") && text.contains(".npy"), "{text}");
    assert!(!text.contains("lite0.pth"), "refused after loading: {text}");

    // A file of the user's under an embedding file's name is theirs, not an earlier output.
    for name in ["emb.npy", "emb.safetensors"] {
        let out = dir.path().join(name);
        std::fs::write(&out, "my notes\n").unwrap();
        let mut args = vec!["embed", "--csv", &csv, "--out", out.to_str().unwrap()];
        args.extend(MODEL);
        let (output, text) = run(&args);
        assert!(!output.status.success(), "{text}");
        assert!(
            text.contains(name) && text.contains("refusing to replace it"),
            "{text}"
        );
        assert!(!text.contains("lite0.pth"), "refused after loading: {text}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "my notes\n");
    }
}

#[test]
fn rank_refuses_an_output_that_is_not_an_npy_file() {
    let dir = tempfile::tempdir().unwrap();
    gallery(dir.path());
    std::fs::write(
        dir.path().join("queries.csv"),
        "img_path,product_id\nq.jpg,1\n",
    )
    .unwrap();
    let folder = dir.path().join("results");
    std::fs::create_dir(&folder).unwrap();
    for (out, expected) in [
        (dir.path().join("ranking.csv"), "*.npy"),
        (folder.clone(), "*.npy"),
    ] {
        let mut args = vec!["rank", "--dataset-dir", dir.path().to_str().unwrap()];
        args.extend(["--out", out.to_str().unwrap()]);
        args.extend(MODEL);
        let (output, text) = run(&args);
        assert!(!output.status.success(), "{text}");
        assert!(text.contains(expected), "{text}");
        assert!(!text.contains("lite0.pth"), "refused after loading: {text}");
    }
    let mut npy_folder = folder.clone();
    npy_folder.set_extension("npy");
    std::fs::create_dir(&npy_folder).unwrap();
    let mut args = vec!["rank", "--dataset-dir", dir.path().to_str().unwrap()];
    args.extend(["--out", npy_folder.to_str().unwrap()]);
    args.extend(MODEL);
    let (output, text) = run(&args);
    assert!(
        !output.status.success() && text.contains("is a folder"),
        "{text}"
    );
    assert!(!dir.path().join("ranking.csv").exists());

    // `--out DATASET/gallery.npy` would write its CSV over the dataset's gallery list.
    let list = std::fs::read(dir.path().join("gallery.csv")).unwrap();
    let out = dir.path().join("gallery.npy");
    let mut args = vec!["rank", "--dataset-dir", dir.path().to_str().unwrap()];
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend(MODEL);
    let (output, text) = run(&args);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("gallery.csv")
            && text.contains("query_index,rank,gallery_index,score")
            && text.contains("refusing to replace it"),
        "{text}"
    );
    assert!(!text.contains("lite0.pth"), "refused after loading: {text}");
    assert_eq!(std::fs::read(dir.path().join("gallery.csv")).unwrap(), list);
    assert!(!out.exists());
}

#[test]
fn a_batch_size_of_zero_is_refused_with_the_flags_name() {
    let dir = tempfile::tempdir().unwrap();
    let csv = gallery(dir.path());
    let out = dir.path().join("emb.npy");
    for command in [&["embed"][..], &["index", "build"]] {
        let mut args = command.to_vec();
        args.extend(["--csv", &csv, "--out", out.to_str().unwrap()]);
        args.extend(["--batch-size", "0"]);
        args.extend(MODEL);
        let (output, text) = run(&args);
        assert_eq!(output.status.code(), Some(2), "{text}");
        assert!(
            text.contains("--batch-size") && text.contains("must be at least 1"),
            "{text}"
        );
        assert!(!text.contains("panicked"), "{text}");
    }
}

#[test]
fn export_int8_checks_its_calibration_list_and_gate_set_before_exporting() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one.csv");
    std::fs::write(&one, "img_path,product_id\na.jpg,1\n").unwrap();
    let two = gallery(dir.path());
    let out = dir.path().join("model");
    let no_dev_set = dir.path().join("no-dev-set");
    for (csv, gate, expected) in [
        (one.to_str().unwrap(), None, "fewer than 2 images"),
        (
            two.as_str(),
            Some(no_dev_set.to_str().unwrap()),
            "no gallery.csv",
        ),
    ] {
        let mut args = vec!["export", "--out", out.to_str().unwrap(), "--onnx", "--int8"];
        args.extend(["--calibration-csv", csv]);
        if let Some(gate) = gate {
            args.extend(["--int8-gate-dataset", gate]);
        }
        args.extend(MODEL);
        let (output, text) = run(&args);
        assert!(
            !output.status.success() && text.contains(expected),
            "{text}"
        );
        assert!(!text.contains("lite0.pth"), "refused after loading: {text}");
        assert!(!out.exists(), "nothing exported");
    }
}

#[test]
fn ranking_settings_that_are_no_numbers_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let csv = gallery(dir.path());
    let out = dir.path().join("idx");
    // A NaN distance would be stored in the index's meta.json as `null`: only the read-back
    // after embedding the whole catalogue caught it.
    let mut args = vec!["index", "build", "--csv", &csv, "--blend", "0.5,0.5"];
    args.extend([
        "--blend-max-distance",
        "nan",
        "--out",
        out.to_str().unwrap(),
    ]);
    args.extend(MODEL);
    let (output, text) = run(&args);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("--blend-max-distance"), "{text}");
    assert!(!out.exists());
    let dataset = dir.path().to_str().unwrap();
    for (flag, value) in [
        ("--top-k", "0"),
        ("--qe-alpha", "nan"),
        ("--kr-k1", "0"),
        ("--kr-lambda", "1.5"),
        // DBA with 0 neighbours skipped the augmentation but still standardised both sides.
        ("--dba-k", "0"),
        ("--qe-k", "0"),
    ] {
        let mut args = vec!["eval", "--dataset-dir", dataset, flag, value];
        args.extend(MODEL);
        let (output, text) = run(&args);
        assert!(!output.status.success(), "{text}");
        assert!(text.contains(flag), "{flag} {value}: {text}");
    }
}

#[test]
fn an_int8_gate_that_is_no_cosine_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let csv = gallery(dir.path());
    let out = dir.path().join("model");
    for value in ["nan", "1.5"] {
        let mut args = vec!["export", "--out", out.to_str().unwrap(), "--onnx", "--int8"];
        args.extend(["--calibration-csv", &csv, "--int8-min-cosine", value]);
        args.extend(MODEL);
        let (output, text) = run(&args);
        assert_eq!(output.status.code(), Some(2), "{text}");
        assert!(
            text.contains("--int8-min-cosine") && text.contains("[-1, 1]"),
            "{text}"
        );
        assert!(!out.exists(), "nothing exported");
    }
}

/// Workers without `--weights` would each draw their own random weights, and the merge would
/// join embeddings of different models: refused, for workers and the merge alike.
#[test]
fn sharded_runs_without_weights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let csv = gallery(dir.path());
    let out = dir.path().join("emb.npy");
    for command in [&["embed"][..], &["index", "build"]] {
        for mode in [&["--shard", "0/2"][..], &["--merge-parts"]] {
            let mut args = command.to_vec();
            args.extend(["--csv", &csv, "--out", out.to_str().unwrap()]);
            args.extend(["--model", "efficientnet_lite0", "--device", "flex"]);
            args.extend(mode);
            let (output, text) = run(&args);
            assert!(!output.status.success(), "{command:?} {mode:?}: {text}");
            assert!(
                text.contains("no --weights") && text.contains("same weights"),
                "{command:?} {mode:?}: {text}"
            );
            assert!(!out.exists());
            assert!(!dir.path().join("emb.npy.parts").exists());
        }
    }
    // `mine features` workers: refused before the pairs file (a placeholder here) is read.
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(work.join("pairs.parquet"), "not read").unwrap();
    let mut args = vec!["mine", "features", "--work-dir", work.to_str().unwrap()];
    args.extend(["--model", "efficientnet_lite0", "--shard", "0/2"]);
    let (output, text) = run(&args);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("no --weights"), "{text}");
    let names: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["pairs.parquet"]);
}
