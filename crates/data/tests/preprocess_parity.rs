//! The image pipeline against PIL + torchvision on real grocery photos.
//!
//! Fixture: `tests/fixtures/preprocess/manifest.json`, written by
//! `tools/make_preprocess_fixtures.py`. The photos themselves are read from the shared datasets
//! folder (see `visual_search_data::datasets`).

use serde_json::Value;
use visual_search_data::datasets::locate_grocery;
use visual_search_data::formats::{BBox, Crop};
use visual_search_data::image::{
    DecodeLimits, Normalization, crop_rect, decode_rgb_file, resize_rgb, shorter_side_size,
};

fn manifest() -> Value {
    let text = include_str!("fixtures/preprocess/manifest.json");
    serde_json::from_str(text).expect("fixture manifest is JSON")
}

#[test]
fn resize_crop_and_normalise_match_pil_torchvision() {
    let Some(root) = locate_grocery() else {
        visual_search_data::datasets::missing_test_dependency(
            "grocery dataset not found (set VISUAL_SEARCH_DATASETS)",
        );
        return;
    };
    let manifest = manifest();
    for case in manifest["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let image = decode_rgb_file(
            &root.join(case["image"].as_str().unwrap()),
            &DecodeLimits::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let crop = match &case["crop"] {
            Value::Null => Crop::None,
            Value::String(s) if s == "white_border" => Crop::WhiteBorder,
            b => Crop::Box(BBox {
                x: b["x"].as_f64().unwrap(),
                y: b["y"].as_f64().unwrap(),
                w: b["w"].as_f64().unwrap(),
                h: b["h"].as_f64().unwrap(),
            }),
        };
        let rect = crop_rect(&image, &crop);
        if let Some(ltrb) = case["crop_box_ltrb"].as_array() {
            let l: Vec<u32> = ltrb.iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(
                (rect.x, rect.y, rect.x + rect.width, rect.y + rect.height),
                (l[0], l[1], l[2], l[3]),
                "{name}: crop box"
            );
        }
        let (w, h) = match &case["resize"] {
            Value::Array(s) => (s[1].as_u64().unwrap() as u32, s[0].as_u64().unwrap() as u32),
            s => shorter_side_size(rect.width, rect.height, s.as_u64().unwrap() as u32),
        };
        let hw = &case["output_hw"];
        assert_eq!(
            (h as u64, w as u64),
            (hw[0].as_u64().unwrap(), hw[1].as_u64().unwrap()),
            "{name}: size"
        );
        let out = resize_rgb(&image, rect, w, h);

        let mut max_diff = 0i64;
        for s in case["samples"].as_array().unwrap() {
            let v: Vec<i64> = s
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect();
            let px = out.get_pixel(v[1] as u32, v[0] as u32).0;
            for c in 0..3 {
                max_diff = max_diff.max((px[c] as i64 - v[2 + c]).abs());
            }
        }
        // Pillow's fixed-point arithmetic is reproduced to the bit, pass order included.
        assert_eq!(max_diff, 0, "{name}: max pixel difference {max_diff}/255");

        let raw = out.as_raw();
        let row_means = case["row_means"].as_array().unwrap();
        for (y, expect) in row_means.iter().enumerate() {
            let row = &raw[y * w as usize * 3..(y + 1) * w as usize * 3];
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / row.len() as f64;
            assert!(
                (mean - expect.as_f64().unwrap()).abs() < 1e-4,
                "{name}: row {y} mean {mean} vs {expect}"
            );
        }
        let col_means = case["col_means"].as_array().unwrap();
        for (x, expect) in col_means.iter().enumerate() {
            let mean = (0..h)
                .flat_map(|y| out.get_pixel(x as u32, y).0)
                .map(|v| v as f64)
                .sum::<f64>()
                / (h * 3) as f64;
            assert!(
                (mean - expect.as_f64().unwrap()).abs() < 1e-4,
                "{name}: column {x} mean {mean} vs {expect}"
            );
        }
    }
}

#[test]
fn normalisation_matches_torchvision_exactly() {
    // Uses only the fixture's raw pixels, so it runs without the dataset too.
    for case in manifest()["cases"].as_array().unwrap() {
        let pixels: Vec<[u8; 3]> = case["head_pixels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| std::array::from_fn(|c| p[c].as_u64().unwrap() as u8))
            .collect();
        let img = image::RgbImage::from_fn(pixels.len() as u32, 1, |x, _| {
            image::Rgb(pixels[x as usize])
        });
        let mut out = vec![0.0f32; 3 * pixels.len()];
        Normalization::CLIP.write_chw(&img, &mut out);
        let expect = &case["normalized_head"];
        for c in 0..3 {
            for i in 0..pixels.len() {
                let e = expect[c][i].as_f64().unwrap() as f32;
                let got = out[c * pixels.len() + i];
                assert!(
                    (got - e).abs() <= 1e-6,
                    "channel {c} pixel {i}: {got} vs {e}"
                );
            }
        }
    }
}
