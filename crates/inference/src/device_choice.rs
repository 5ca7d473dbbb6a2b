//! Device names a user gives (`--device`): burn's devices (`flex`, `tch`, `tch-cuda:N`,
//! `cuda:N`, `wgpu`), ONNX Runtime (`ort`, `ort-cuda:N`), or `auto` — the fastest engine this
//! build and machine have: a compiled GPU backend, else ONNX Runtime when its library is found,
//! else the CPU backend compiled in.

use std::str::FromStr;

use crate::error::{InferenceError, Result};
use crate::ort_runtime::{self, OrtTarget};

/// Precision a model runs in: f32; bf16 (on flex with AMX, f32 tensors with bf16 products in
/// the convolutions and linear layers; elsewhere bf16 tensors); f16 on burn devices that
/// support it; int8 on ONNX Runtime, from a folder's gated `model.int8.onnx`
/// (`export --onnx --int8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    F16,
    Bf16,
    Int8,
}

/// A device as named on the command line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    /// A burn device by name (checked when the model loads).
    Burn(String),
    Ort(OrtTarget),
}

impl FromStr for DeviceChoice {
    type Err = InferenceError;

    fn from_str(s: &str) -> Result<Self> {
        if s == "auto" {
            return Ok(DeviceChoice::Auto);
        }
        if s == "ort" {
            return Ok(DeviceChoice::Ort(OrtTarget::Cpu));
        }
        if let Some(rest) = s.strip_prefix("ort-cuda") {
            let index = match rest.strip_prefix(':') {
                Some(i) => i.parse().map_err(|_| {
                    InferenceError::Invalid(format!("device `{s}`: expected ort-cuda:N"))
                })?,
                None if rest.is_empty() => 0,
                None => {
                    return Err(InferenceError::Invalid(format!(
                        "device `{s}`: expected ort-cuda:N"
                    )));
                }
            };
            return Ok(DeviceChoice::Ort(OrtTarget::Cuda(index)));
        }
        Ok(DeviceChoice::Burn(s.to_string()))
    }
}

impl DeviceChoice {
    /// Replaces `Auto` by the engine it means here (see the module docs). Lower precisions
    /// run on burn's devices only.
    pub fn resolve(&self, precision: Precision) -> Result<DeviceChoice> {
        match self {
            DeviceChoice::Auto => {
                let compiled = visual_search_model::device::compiled_backends();
                let gpu = compiled.iter().find(|b| matches!(**b, "cuda" | "wgpu"));
                if let Some(gpu) = gpu {
                    return Ok(DeviceChoice::Burn(gpu.to_string()));
                }
                if matches!(precision, Precision::F32 | Precision::Int8) && ort_runtime::available()
                {
                    return Ok(DeviceChoice::Ort(OrtTarget::Cpu));
                }
                let first = compiled.first().ok_or_else(|| {
                    InferenceError::Invalid("this build has no compute backend".into())
                })?;
                Ok(DeviceChoice::Burn(first.to_string()))
            }
            other => Ok(other.clone()),
        }
    }
}
