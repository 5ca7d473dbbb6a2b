//! `visual-search data check` on the real grocery data and on a deliberately broken copy.

use std::path::Path;
use std::process::Command;

use image::{DynamicImage, ImageFormat, Rgb, RgbImage};

fn visual_search(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_visual-search"))
        .args(args)
        .output()
        .expect("running visual-search");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn grocery_dataset_passes_with_81_classes() {
    let Some(root) = visual_search_data::datasets::locate_grocery() else {
        visual_search_data::datasets::missing_test_dependency(
            "grocery dataset not found (set VISUAL_SEARCH_DATASETS)",
        );
        return;
    };
    let (ok, out) = visual_search(&["data", "check", "--dataset-dir", root.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("classes over all lists: 81"), "{out}");
    assert!(out.contains("ok: no problems"), "{out}");
}

fn write_jpeg(path: &Path) {
    let img = RgbImage::from_fn(40, 30, |x, y| Rgb([x as u8 * 5, y as u8 * 7, 90]));
    DynamicImage::ImageRgb8(img)
        .save_with_format(path, ImageFormat::Jpeg)
        .unwrap();
}

#[test]
fn broken_copy_reports_every_problem_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("train")).unwrap();
    write_jpeg(&root.join("train/good.jpg"));
    write_jpeg(&root.join("train/cut.jpg"));
    let bytes = std::fs::read(root.join("train/cut.jpg")).unwrap();
    std::fs::write(root.join("train/cut.jpg"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(
        root.join("train.csv"),
        "name,class,group\ngood.jpg,1,0\ncut.jpg,1,0\nmissing.jpg,2,0\ngood.jpg,notanumber,0\n",
    )
    .unwrap();
    // A gallery whose header lacks product_id.
    std::fs::write(
        root.join("gallery.csv"),
        "img_path,label\ntrain/good.jpg,1\n",
    )
    .unwrap();

    // Query boxes on a 40x30 image: inside, outside it, and in fractions (read as pixels).
    std::fs::write(
        root.join("queries.csv"),
        "img_path,product_id,bbox_x,bbox_y,bbox_w,bbox_h\n\
         train/good.jpg,1,5,5,20,20\n\
         train/good.jpg,1,100,100,20,20\n\
         train/good.jpg,1,0.1,0.2,0.5,0.4\n",
    )
    .unwrap();

    let (ok, out) = visual_search(&["data", "check", "--dataset-dir", root.to_str().unwrap()]);
    assert!(!ok, "a broken dataset must fail the check:\n{out}");
    assert!(
        out.contains("queries.csv: line 3") && out.contains("lies outside the 40x30 image"),
        "box outside the image:\n{out}"
    );
    assert!(
        out.contains("queries.csv: line 4") && out.contains("covers only 1x1 pixels"),
        "box in fractions:\n{out}"
    );
    assert!(
        out.contains("train.csv: line 3") && out.contains("cut.jpg"),
        "truncated JPEG:\n{out}"
    );
    assert!(
        out.contains("train.csv: line 4") && out.contains("missing.jpg"),
        "missing file:\n{out}"
    );
    assert!(
        out.contains("train.csv: line 5: column `class`"),
        "bad label:\n{out}"
    );
    assert!(
        out.contains("gallery.csv: missing column `product_id`"),
        "bad header:\n{out}"
    );
    assert!(out.contains("6 problem(s) found"), "{out}");
}
