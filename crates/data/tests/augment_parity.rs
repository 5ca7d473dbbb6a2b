//! The AutoAugment/RandAugment operations against torchvision's `_apply_op` on PIL images.
//!
//! Fixture: `tests/fixtures/augment/manifest.json`, from `tools/make_augment_fixtures.py`.

use serde_json::Value;
use visual_search_data::augment::pil_ops::{Op, apply};
use visual_search_data::datasets::locate_grocery;
use visual_search_data::image::{
    DecodeLimits, Rect, decode_rgb_file, resize_rgb, shorter_side_size,
};

fn checksum(bytes: &[u8]) -> u64 {
    const M: u128 = 1 << 61;
    let mut total: u128 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        total = (total + ((i as u128 + 1) * b as u128) % M) % M;
    }
    total as u64
}

#[test]
fn every_operation_matches_torchvision_on_pil() {
    let Some(root) = locate_grocery() else {
        visual_search_data::datasets::missing_test_dependency(
            "grocery dataset not found (set VISUAL_SEARCH_DATASETS)",
        );
        return;
    };
    let manifest: Value =
        serde_json::from_str(include_str!("fixtures/augment/manifest.json")).unwrap();
    let img = decode_rgb_file(
        &root.join(manifest["photo"].as_str().unwrap()),
        &DecodeLimits::default(),
    )
    .unwrap();
    let (w, h) = shorter_side_size(img.width(), img.height(), 96);
    let img = resize_rgb(&img, Rect::full(img.width(), img.height()), w, h);
    let mut failures = Vec::new();
    for case in manifest["cases"].as_array().unwrap() {
        let name = case["op"].as_str().unwrap();
        let m = case["magnitude"].as_f64().unwrap();
        let op = match name {
            "Identity" => Op::Identity,
            "ShearX" => Op::ShearX(m),
            "ShearY" => Op::ShearY(m),
            "TranslateX" => Op::TranslateX(m),
            "TranslateY" => Op::TranslateY(m),
            "Rotate" => Op::Rotate(m),
            "Brightness" => Op::Brightness(m),
            "Color" => Op::Color(m),
            "Contrast" => Op::Contrast(m),
            "Sharpness" => Op::Sharpness(m),
            "Posterize" => Op::Posterize(m as u8),
            "Solarize" => Op::Solarize(m),
            "AutoContrast" => Op::AutoContrast,
            "Equalize" => Op::Equalize,
            "Invert" => Op::Invert,
            other => panic!("unknown op {other}"),
        };
        let out = apply(&img, op);
        let mut diffs = 0;
        for s in case["samples"].as_array().unwrap() {
            let v: Vec<i64> = s
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect();
            let px = out.get_pixel(v[1] as u32, v[0] as u32).0;
            diffs += (0..3).filter(|&c| px[c] as i64 != v[2 + c]).count();
        }
        let sum: i64 = out.as_raw().iter().map(|&b| b as i64).sum();
        if checksum(out.as_raw()) != case["checksum"].as_u64().unwrap() {
            failures.push(format!("{name}({m}): checksum differs (byte sum {sum} vs {}, {diffs} sampled values differ)", case["sum"]));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
