//! `visual-search embed` end to end on real grocery photos.

use std::process::Command;

use visual_search_retrieval::embedding_file::read_embeddings;

#[test]
fn embeds_a_gallery_in_csv_order_and_reports_bad_rows() {
    let Some(root) = visual_search_data::datasets::locate_grocery() else {
        visual_search_data::datasets::missing_test_dependency(
            "grocery dataset not found (set VISUAL_SEARCH_DATASETS)",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let gallery = std::fs::read_to_string(root.join("gallery.csv")).unwrap();
    let mut lines: Vec<&str> = gallery.lines().take(7).collect();
    lines.insert(3, "no/such/image.jpg,999");
    let csv = dir.path().join("gallery.csv");
    std::fs::write(&csv, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("emb.safetensors");

    let mut args = vec![
        "embed",
        "--csv",
        csv.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
    ];
    args.extend([
        "--out",
        out.to_str().unwrap(),
        "--batch-size",
        "3",
        "--device",
        "flex",
    ]);
    let weights = visual_search_model::pretrained::efficientnet_lite0_weights();
    let weights_arg = weights.as_ref().map(|w| w.to_str().unwrap().to_string());
    match &weights_arg {
        Some(w) => args.extend(["--model", "efficientnet_lite0", "--weights", w.as_str()]),
        None => args.extend(["--model", "tiny_convnext", "--size", "32"]),
    }
    let output = Command::new(env!("CARGO_BIN_EXE_visual-search"))
        .args(&args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("1 image(s) could not be read") && text.contains("row 2"),
        "{text}"
    );
    let missing = root.join("no/such/image.jpg").display().to_string();
    assert!(
        text.contains(&format!("row 2: {missing}: No such file"))
            && !text.contains(&format!("{missing}: {missing}")),
        "the file named once per line: {text}"
    );

    let e = read_embeddings(&out).unwrap();
    assert_eq!(e.rows, 7);
    let labels = e.labels.clone().unwrap();
    assert_eq!(labels[2], 999);
    for i in 0..e.rows {
        let norm: f32 = e.row(i).iter().map(|v| v * v).sum::<f32>().sqrt();
        if i == 2 {
            assert_eq!(norm, 0.0, "the unreadable image's row is zero");
        } else {
            assert!((norm - 1.0).abs() < 1e-4, "row {i} has norm {norm}");
        }
    }
    assert_eq!(e.dim, if weights_arg.is_some() { 1280 } else { 32 });
}

#[test]
fn unusable_query_boxes_are_named_then_counted() {
    let Some(root) = visual_search_data::datasets::locate_grocery() else {
        visual_search_data::datasets::missing_test_dependency(
            "grocery dataset not found (set VISUAL_SEARCH_DATASETS)",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let queries = std::fs::read_to_string(root.join("queries.csv")).unwrap();
    // Five boxes written in fractions of the photo (read as pixels: a sliver each), one good.
    let mut lines = vec!["img_path,product_id,bbox_x,bbox_y,bbox_w,bbox_h".to_string()];
    for (i, row) in queries.lines().skip(1).take(6).enumerate() {
        let path = row.split(',').next().unwrap();
        let bbox = if i == 5 {
            "10,10,100,100"
        } else {
            "0.1,0.2,0.5,0.4"
        };
        lines.push(format!("{path},1,{bbox}"));
    }
    let csv = dir.path().join("queries.csv");
    std::fs::write(&csv, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("emb.safetensors");
    let output = Command::new(env!("CARGO_BIN_EXE_visual-search"))
        .args(["embed", "--csv", csv.to_str().unwrap(), "--root"])
        .arg(&root)
        .args(["--out", out.to_str().unwrap(), "--device", "flex"])
        .args(["--model", "tiny_convnext", "--size", "32"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{text}");
    assert_eq!(
        text.matches("covers only").count(),
        3,
        "three named:\n{text}"
    );
    assert!(
        text.contains("warning: 5 unusable query boxes were embedded")
            && text.contains("data check"),
        "{text}"
    );
    assert_eq!(read_embeddings(&out).unwrap().rows, 6);
}
