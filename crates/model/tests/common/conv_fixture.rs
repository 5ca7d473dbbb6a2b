//! The convolution fixture (`tests/fixtures/conv_grad.safetensors`, from
//! `tools/make_conv_grad_fixtures.py`): its cases, tensors and geometry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::ops::ConvOptions;
use serde::Deserialize;
use visual_search_model::train_ops::conv_kernels as kernels;
use visual_search_model::weights::TensorFile;

#[derive(Deserialize)]
pub struct Case {
    pub stride: usize,
    pub padding: [[usize; 2]; 2],
    pub dilation: usize,
    pub groups: usize,
}

pub fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/conv_grad.safetensors")
}

pub fn cases() -> BTreeMap<String, Case> {
    let bytes = std::fs::read(fixture_path()).unwrap();
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let json = &metadata.metadata().as_ref().unwrap()["cases"];
    serde_json::from_str(json).unwrap()
}

pub struct Loaded {
    pub file: TensorFile,
}

impl Loaded {
    pub fn open() -> Self {
        Loaded {
            file: TensorFile::open(&fixture_path()).unwrap(),
        }
    }

    pub fn get(&self, case: &str, name: &str) -> (Vec<f32>, Vec<usize>) {
        let key = format!("{case}.{name}");
        (
            self.file.read_f32(&key).unwrap(),
            self.file.entries[&key].shape.clone(),
        )
    }
}

pub fn options(case: &Case) -> ConvOptions<2> {
    ConvOptions::new_with_padding(
        [case.stride; 2],
        [
            (case.padding[0][0], case.padding[0][1]),
            (case.padding[1][0], case.padding[1][1]),
        ],
        [case.dilation; 2],
        case.groups,
    )
}

pub fn geometry(x: &[usize], w: &[usize], gy: &[usize], case: &Case) -> kernels::ConvGeometry {
    kernels::ConvGeometry {
        batch: x[0],
        in_channels: x[1],
        in_h: x[2],
        in_w: x[3],
        out_channels: w[0],
        kernel_h: w[2],
        kernel_w: w[3],
        out_h: gy[2],
        out_w: gy[3],
        stride: [case.stride; 2],
        pad_begin: [case.padding[0][0], case.padding[1][0]],
        dilation: [case.dilation; 2],
        groups: case.groups,
    }
}
