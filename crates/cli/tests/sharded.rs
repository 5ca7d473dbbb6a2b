//! Sharded workers (`--shard I/N`, then `--merge-parts`) make what one process makes, bit for
//! bit: `embed` and `index build` with 1, 2 and 3 worker processes running at once on real
//! grocery photos (one of them unreadable), a lost part redone by re-running its worker, and
//! parts of another job refused; one process without `--shard` resumes from the parts a killed
//! run of it finished. (`mine features` workers are tested in `mine.rs`.)

mod common;

use std::path::{Path, PathBuf};

use common::{bin, catalogue, grocery_and_lite0, run_ok};
use visual_search_retrieval::index::Index;

/// `embed` or `index build` of `csv` with Lite0 on flex, batches of 3, parts of 6 rows.
fn job_args(command: &[&str], csv: &Path, weights: &Path, out: &Path) -> Vec<String> {
    let mut args: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    args.extend(
        [
            "--model",
            "efficientnet_lite0",
            "--weights",
            weights.to_str().unwrap(),
            "--device",
            "flex",
            "--follow-links",
            "--csv",
            csv.to_str().unwrap(),
            "--batch-size",
            "3",
            "--part-rows",
            "6",
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from),
    );
    args
}

fn run(args: &[String], extra: &[&str]) -> String {
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    run_ok(&all)
}

/// Runs workers 0/n … n-1/n at once, then the merge; returns the merge's output.
fn workers_then_merge(args: &[String], n: usize) -> String {
    let children: Vec<_> = (0..n)
        .map(|i| {
            bin()
                .args(args)
                .args(["--shard", &format!("{i}/{n}")])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "worker {i}/{n}: {text}");
        assert!(text.contains(&format!("worker {i}/{n}:")), "{text}");
    }
    run(args, &["--merge-parts"])
}

/// The rows of an index and its items, for comparing two builds.
fn index_content(dir: &Path) -> (Vec<f32>, Vec<(i64, PathBuf, String)>) {
    let index = Index::open(dir).unwrap();
    let view = index.view().unwrap();
    let mut scratch = Vec::new();
    let rows = view.rows_f32(0, view.rows, &mut scratch).to_vec();
    let items = index
        .items
        .iter()
        .map(|i| (i.label, i.path.clone(), format!("{:?}", i.metadata)))
        .collect();
    (rows, items)
}

#[test]
fn sharded_embed_and_index_build_equal_one_process() {
    let Some((grocery, weights)) = grocery_and_lite0() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = catalogue(dir.path(), &grocery, 70);
    // An unreadable image in the middle: a zero row in `embed`, left out of the index.
    let csv = root.join("gallery.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(9, "no/such/photo.jpg,7");
    std::fs::write(&csv, lines.join("\n") + "\n").unwrap();
    let rows = lines.len() - 1;
    assert!(rows >= 20, "{rows}");

    let single = dir.path().join("single.safetensors");
    run(
        &job_args(&["embed"], &csv, &weights, &single),
        &["--no-resume"],
    );
    let single_bytes = std::fs::read(&single).unwrap();

    // One process without --shard embeds a list longer than a part by parts, so a killed run
    // resumes: the same file, and the parts gone once it is written.
    let whole = dir.path().join("whole.safetensors");
    let whole_args = job_args(&["embed"], &csv, &weights, &whole);
    let text = run(&whole_args, &[]);
    assert!(text.contains("embedding in parts of 6 rows"), "{text}");
    assert!(std::fs::read(&whole).unwrap() == single_bytes);
    let whole_parts = dir.path().join("whole.safetensors.parts");
    assert!(!whole_parts.exists());
    // Killed after two parts: what `--shard 0/1` leaves with the rest missing.
    run(&whole_args, &["--shard", "0/1"]);
    for entry in std::fs::read_dir(&whole_parts).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.as_str() >= "rows-000000000012" {
            std::fs::remove_file(path).unwrap();
        }
    }
    std::fs::remove_file(&whole).unwrap();
    let text = run(&whole_args, &[]);
    assert!(
        text.contains(&format!(
            "resuming: 2 of {} parts were embedded by an earlier run",
            rows.div_ceil(6)
        )) && !text.contains("part 1 of"),
        "{text}"
    );
    assert!(std::fs::read(&whole).unwrap() == single_bytes);
    assert!(!whole_parts.exists());
    // While another process embeds this list (here: holds its parts folder), a second run of
    // the same command is refused instead of removing that one's parts under it.
    std::fs::create_dir(&whole_parts).unwrap();
    let held = visual_search_data::work_lock::hold_folder(
        &whole_parts,
        visual_search_data::work_lock::Hold::Shared,
        "a worker",
    )
    .unwrap();
    let second = bin().args(&whole_args).output().unwrap();
    let text = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{text}");
    assert!(text.contains("another process is running"), "{text}");
    drop(held);
    std::fs::remove_dir(&whole_parts).unwrap();
    for n in 1..=3 {
        let out = dir.path().join(format!("sharded-{n}.safetensors"));
        let args = job_args(&["embed"], &csv, &weights, &out);
        let text = workers_then_merge(&args, n);
        assert!(
            text.contains(&format!("merged {} parts", rows.div_ceil(6))),
            "{text}"
        );
        assert!(
            text.contains("1 image(s) could not be read") && text.contains("no/such/photo.jpg"),
            "the merge reports the unreadable image as one process does: {text}"
        );
        assert!(
            std::fs::read(&out).unwrap() == single_bytes,
            "{n} workers made another file than one process"
        );
    }

    // A part lost (say its worker was killed while writing it, leaving its temp file): the
    // merge names its rows, and re-running its worker redoes that part alone and sweeps the
    // temp file (a user's file beside it stays).
    let out = dir.path().join("sharded-3.safetensors");
    let args = job_args(&["embed"], &csv, &weights, &out);
    let parts = dir.path().join("sharded-3.safetensors.parts");
    std::fs::remove_file(parts.join("rows-000000000006-000000000012.safetensors")).unwrap();
    let killed_write = parts.join(".rows-000000000006-000000000012.safetensors.x7Yz0a");
    let users_note = parts.join(".rows-000000000006-000000000012.safetensors.notes");
    std::fs::write(&killed_write, b"half a part").unwrap();
    std::fs::write(&users_note, b"mine").unwrap();
    let merge = bin().args(&args).arg("--merge-parts").output().unwrap();
    let text = String::from_utf8_lossy(&merge.stderr);
    assert!(!merge.status.success());
    assert!(
        text.contains("1 of 4 parts are missing (rows 6..12)"),
        "{text}"
    );
    let text = run(&args, &["--shard", "1/3"]);
    assert!(
        text.contains("(0 written before, 1 now, 1 unreadable images)"),
        "{text}"
    );
    assert!(!killed_write.exists() && users_note.exists());
    let text = run(&args, &["--shard", "2/3"]);
    assert!(
        text.contains("(2 written before, 0 now, 0 unreadable images)"),
        "{text}"
    );
    run(&args, &["--merge-parts"]);
    assert!(std::fs::read(&out).unwrap() == single_bytes);

    // A worker of another job (mirror-averaged embeddings) refuses the folder.
    let other = bin()
        .args(&args)
        .args(["--tta-flip", "--shard", "1/3"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&other.stderr);
    assert!(!other.status.success());
    assert!(
        text.contains("belongs to another job: another model"),
        "{text}"
    );

    // `index build`: the same items and rows as one process, the unreadable image left out.
    let one = dir.path().join("index-one");
    run(&job_args(&["index", "build"], &csv, &weights, &one), &[]);
    let sharded = dir.path().join("index-sharded");
    let args = job_args(&["index", "build"], &csv, &weights, &sharded);
    let text = workers_then_merge(&args, 2);
    assert!(
        text.contains(&format!("indexed {} images", rows - 1)),
        "{text}"
    );
    let (one_rows, one_items) = index_content(&one);
    let (rows_2, items_2) = index_content(&sharded);
    assert_eq!(one_items, items_2);
    assert!(
        one_rows == rows_2,
        "2 workers built another index than one process"
    );
}
