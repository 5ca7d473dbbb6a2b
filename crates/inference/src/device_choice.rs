//! Device names a user gives (`--device`): burn's devices (`flex`, `tch`, `tch-cuda:N`,
//! `cuda:N`, `wgpu`), ONNX Runtime (`ort`, `ort-cuda:N`), or `auto` — the fastest engine this
//! build and machine have: a compiled GPU backend, else ONNX Runtime when its library is found,
//! else the CPU backend compiled in — except a ViT or a ConvNeXt in f32 on an AVX-512 CPU,
//! which flex runs faster than ONNX Runtime (batch 32 on a 2-core AMX Xeon, BENCHMARKS.md
//! "Attention heads in registers": ViT-B/32 43.0 against 37.9 images/s, ConvNeXt-tiny 32.1
//! against 26.9); EfficientNet-Lite and ResNet are faster on `ort` (275 against 204, 49.2
//! against 34.9).

use std::str::FromStr;

use visual_search_model::registry::Architecture;

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
    /// Replaces `Auto` by the engine it means here for a model of `architecture` (see the
    /// module docs). Lower precisions run on burn's devices only.
    pub fn resolve(
        &self,
        precision: Precision,
        architecture: Option<&Architecture>,
    ) -> Result<DeviceChoice> {
        match self {
            DeviceChoice::Auto => {
                let compiled = visual_search_model::device::compiled_backends();
                let gpu = compiled.iter().find(|b| matches!(**b, "cuda" | "wgpu"));
                if let Some(gpu) = gpu {
                    return Ok(DeviceChoice::Burn(gpu.to_string()));
                }
                let flex_first = precision == Precision::F32
                    && matches!(
                        architecture,
                        Some(Architecture::Vit(_) | Architecture::ConvNext(_))
                    )
                    && compiled.contains(&"flex")
                    && cpu_has_avx512();
                if flex_first {
                    return Ok(DeviceChoice::Burn("flex".into()));
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

/// Whether this CPU has AVX-512F (flex's attention and GEMM kernels' widest path).
fn cpu_has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use visual_search_model::registry::lookup;

    /// `auto` sends a ViT or a ConvNeXt in f32 to flex exactly where the CPU has AVX-512 (and
    /// no GPU backend is compiled in); Lite0, another precision, or no AVX-512 keeps the
    /// general order.
    #[test]
    fn auto_runs_vit_and_convnext_on_flex_with_avx512() {
        let compiled = visual_search_model::device::compiled_backends();
        if compiled.iter().any(|b| matches!(*b, "cuda" | "wgpu")) || !compiled.contains(&"flex") {
            eprintln!(
                "SKIPPED auto_runs_vit_and_convnext_on_flex_with_avx512: a GPU build or no flex"
            );
            return;
        }
        let vit = lookup("vit_b32_clip").unwrap().architecture;
        let convnext = lookup("convnext_tiny").unwrap().architecture;
        let lite0 = lookup("efficientnet_lite0").unwrap().architecture;
        let general = DeviceChoice::Auto.resolve(Precision::F32, None).unwrap();
        let flex = DeviceChoice::Burn("flex".into());
        let want_flex = if cpu_has_avx512() { &flex } else { &general };
        assert_eq!(
            &DeviceChoice::Auto
                .resolve(Precision::F32, Some(&vit))
                .unwrap(),
            want_flex
        );
        assert_eq!(
            &DeviceChoice::Auto
                .resolve(Precision::F32, Some(&convnext))
                .unwrap(),
            want_flex
        );
        assert_eq!(
            DeviceChoice::Auto
                .resolve(Precision::F32, Some(&lite0))
                .unwrap(),
            general
        );
        assert_eq!(
            DeviceChoice::Auto
                .resolve(Precision::Int8, Some(&vit))
                .unwrap(),
            DeviceChoice::Auto.resolve(Precision::Int8, None).unwrap()
        );
    }
}
