//! `export --onnx --int8`: a model folder's `model.onnx` → `model.int8.onnx`, calibrated on
//! catalogue images and written only when it passes its gate. Half of the images (even rows)
//! calibrate the activation ranges, the other half measure each image's cosine between the
//! int8 and the f32 embedding; below `min_cosine` the export is refused with the figures.

use std::path::Path;

use prost::Message;

use crate::error::{InferenceError, Result};
use crate::model::finish_rows;
use crate::model_dir::{ONNX_FILE, read_info, refresh_manifest, verify_model_file};
use crate::onnx::proto::ModelProto;
use crate::onnx::quantize::{RangeObserver, activation_tensors, calibration_model, quantize};
use crate::onnx::write_model;
use crate::ort_runtime::{OrtModel, OrtTarget};

/// The int8 model's file in a model folder.
pub const INT8_FILE: &str = "model.int8.onnx";

/// What calibration and the gate measured.
#[derive(Debug, Clone)]
pub struct Int8Report {
    pub calibration_images: usize,
    pub gate_images: usize,
    pub quantized_tensors: usize,
    pub min_cosine: f64,
    pub mean_cosine: f64,
    pub written: bool,
}

fn batches(pixels: &[f32], per: usize, rows: &[usize], batch: usize) -> Vec<(Vec<f32>, usize)> {
    rows.chunks(batch)
        .map(|chunk| {
            let mut b = Vec::with_capacity(chunk.len() * per);
            for &r in chunk {
                b.extend_from_slice(&pixels[r * per..(r + 1) * per]);
            }
            (b, chunk.len())
        })
        .collect()
}

/// The largest int8 weight level for this CPU: 127, or 63 (7-bit weights, ONNX Runtime's
/// `reduce_range`) where the CPU has no VNNI. Without VNNI, ONNX Runtime's u8 × s8 kernels add
/// product pairs in saturating 16-bit lanes: on an AVX2-only AMD EPYC, 8-bit weights left
/// Lite0's int8 embeddings at cosine 0.84 (min) / 0.92 (mean) to f32, against 0.985 / 0.995
/// on a CPU with VNNI. The gate measures on this CPU either way; a file made here also runs at
/// full accuracy where VNNI exists, at a small cost in weight resolution.
pub fn weight_max() -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512vnni")
            || std::arch::is_x86_feature_detected!("avxvnni")
        {
            return 127.0;
        }
        63.0
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        127.0
    }
}

/// Removes `dir/model.int8.onnx` (refused by a later gate) and drops it from the manifest.
pub fn remove_int8_model(dir: &Path) -> Result<()> {
    let path = dir.join(INT8_FILE);
    std::fs::remove_file(&path).map_err(|e| InferenceError::io(&path, e))?;
    refresh_manifest(dir)
}

/// Quantises `dir/model.onnx` with `n` prepared images (`n × 3 × size × size`, the model's
/// own preprocessing) and writes `dir/model.int8.onnx` if every gate image keeps a cosine of at
/// least `min_cosine` to its f32 embedding.
pub fn quantize_model_dir(
    dir: &Path,
    pixels: &[f32],
    n: usize,
    min_cosine: f64,
) -> Result<Int8Report> {
    let info = read_info(dir)?;
    let size = info.input_size;
    let per = 3 * size * size;
    if n < 2 || pixels.len() != n * per {
        return Err(InferenceError::Invalid(format!(
            "int8 calibration needs at least 2 images of {size} px ({} values for {n})",
            pixels.len()
        )));
    }
    let onnx_path = dir.join(ONNX_FILE);
    verify_model_file(dir, ONNX_FILE)?;
    let bytes = std::fs::read(&onnx_path).map_err(|e| InferenceError::io(&onnx_path, e))?;
    let model = ModelProto::decode(bytes.as_slice())
        .map_err(|e| InferenceError::model_dir(&onnx_path, format!("not an ONNX model: {e}")))?;
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| InferenceError::model_dir(&onnx_path, "no graph"))?;
    let tensors = activation_tensors(graph);
    let work = tempfile::tempdir_in(dir).map_err(|e| InferenceError::io(dir, e))?;

    let calib_path = work.path().join("calibration.onnx");
    write_model(&calibration_model(&model, &tensors), &calib_path)?;
    let calibrator = OrtModel::open(&calib_path, OrtTarget::Cpu)?;
    let calibration_rows: Vec<usize> = (0..n).step_by(2).collect();
    let gate_rows: Vec<usize> = (1..n).step_by(2).collect();
    let mut observer = RangeObserver::default();
    for (b, m) in batches(pixels, per, &calibration_rows, 8) {
        let values = calibrator.run_named(&b, m, size, &tensors)?;
        observer.observe(&tensors, &values);
    }
    drop(calibrator);
    let ranges = observer.ranges();

    let int8 = quantize(&model, &ranges, weight_max())?;
    let int8_tmp = work.path().join(INT8_FILE);
    write_model(&int8, &int8_tmp)?;
    let f32_model = OrtModel::open(&onnx_path, OrtTarget::Cpu)?;
    let int8_model = OrtModel::open(&int8_tmp, OrtTarget::Cpu)?;
    let dim = info.embedding_dim;
    let mut cosines = Vec::new();
    for (b, m) in batches(pixels, per, &gate_rows, 8) {
        let mut a = f32_model.run(&b, m, size)?;
        let mut q = int8_model.run(&b, m, size)?;
        finish_rows(&mut a, dim);
        finish_rows(&mut q, dim);
        cosines.extend(a.chunks(dim).zip(q.chunks(dim)).map(|(x, y)| {
            x.iter()
                .zip(y)
                .map(|(u, v)| *u as f64 * *v as f64)
                .sum::<f64>()
        }));
    }
    let min_cosine_seen = cosines.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = cosines.iter().sum::<f64>() / cosines.len().max(1) as f64;
    let mut report = Int8Report {
        calibration_images: calibration_rows.len(),
        gate_images: gate_rows.len(),
        quantized_tensors: tensors.len(),
        min_cosine: min_cosine_seen,
        mean_cosine: mean,
        written: false,
    };
    if min_cosine_seen >= min_cosine {
        std::fs::rename(&int8_tmp, dir.join(INT8_FILE))
            .map_err(|e| InferenceError::io(&dir.join(INT8_FILE), e))?;
        refresh_manifest(dir)?;
        report.written = true;
    }
    Ok(report)
}
