//! "A model ready to embed images": which model (a registry name + weights, or an exported
//! folder), the preprocessing its inputs need, and the engine that runs it — a burn device
//! (flex, tch, GPU) or ONNX Runtime. Every command embeds through [`InferenceModel::embed`],
//! the one place where non-finite features become 0 and rows are L2-normalised.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use visual_search_data::image::Normalization;
use visual_search_model::compute_pool::on_pool;
use visual_search_model::embedder::EmbeddingModel;
use visual_search_model::registry::{Architecture, BuildOptions, ModelSpec, lookup};
use visual_search_model::train_ops::MatmulPrecision;

use crate::device_choice::{DeviceChoice, Precision};
use crate::error::{InferenceError, Result};
use crate::forward_passes::{images_per_pass, in_passes};
use crate::model_dir::{ONNX_FILE, load_model_dir, read_info, verify_model_file};
use crate::onnx_cache::cached_onnx_export;
use crate::ort_runtime::OrtModel;

/// How images must be prepared for a model: square side and pixel statistics (0..1 scale).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    pub size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocessing {
    pub fn normalization(&self) -> Normalization {
        Normalization {
            mean: self.mean,
            std: self.std,
        }
    }
}

/// Which model made an embedding: what an index stores and the mining feature store records,
/// so a later command embeds new images exactly the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRef {
    /// Registry name (with `weights`), or `None` for an exported folder.
    pub model: Option<String>,
    pub model_dir: Option<PathBuf>,
    pub weights: Option<PathBuf>,
    /// Input side.
    pub size: usize,
}

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A registered architecture with pretrained backbone weights (random without).
    Registry {
        name: String,
        weights: Option<PathBuf>,
    },
    /// A folder written by `visual-search export`.
    Dir(PathBuf),
}

impl ModelSource {
    /// The source a [`ModelRef`] names.
    pub fn from_ref(r: &ModelRef) -> Result<Self> {
        match (&r.model_dir, &r.model) {
            (Some(dir), _) => Ok(ModelSource::Dir(dir.clone())),
            (None, Some(name)) => Ok(ModelSource::Registry {
                name: name.clone(),
                weights: r.weights.clone(),
            }),
            (None, None) => Err(InferenceError::Invalid(
                "the model reference names neither a model nor a model folder".into(),
            )),
        }
    }
}

/// The engine a model runs on.
#[allow(clippy::large_enum_variant)] // one per loaded model
pub enum Engine {
    Burn {
        model: EmbeddingModel,
        device: Device,
        /// Whether its products run in bf16 on AMX (flex `--dtype bf16`); in force for each of
        /// its forward passes, as the switch is process-wide.
        bf16_products: bool,
    },
    Ort(OrtModel),
}

/// A loaded model.
pub struct InferenceModel {
    pub spec: ModelSpec,
    pub preprocessing: Preprocessing,
    pub dim: usize,
    pub reference: ModelRef,
    pub engine: Engine,
    /// The device as the user would name it (`flex`, `ort`, `ort-cuda:0`, …).
    pub device_name: String,
}

/// What an engine's loader yields; [`InferenceModel::load`] adds the reference.
struct Loaded {
    spec: ModelSpec,
    preprocessing: Preprocessing,
    dim: usize,
    engine: Engine,
    device_name: String,
}

/// Loading choices.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    /// Input side [default: the model's own].
    pub size: Option<usize>,
    pub device: DeviceChoice,
    pub precision: Precision,
    /// Say nothing about random weights (tests, benchmarks).
    pub quiet: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            size: None,
            device: DeviceChoice::Auto,
            precision: Precision::F32,
            quiet: false,
        }
    }
}

/// bf16 on flex with AMX: f32 tensors, with the convolutions' and linear layers' products in
/// bf16 on AMX tiles (f32 sums) — faster than f32 and than burn's bf16 tensors, which flex
/// computes without AMX. On flex this sets the process-wide matmul precision (`bf16` or back
/// to f32); each model runs each forward pass with its own in force ([`InferenceModel::embed`]
/// through `with_matmul_precision_for`), so models of both precisions in one process (a
/// benchmark's alternating rounds, two models serving from two threads) each run their own.
/// True when bf16 products are now in force; false where the CPU or the device has no such
/// path (then a bf16 model's tensors are cast to bf16).
fn native_bf16_products(device: &Device, bf16: bool) -> bool {
    use visual_search_model::train_ops::set_matmul_precision_for;
    set_matmul_precision_for(device, products_precision(bf16)) == MatmulPrecision::Bf16
}

/// The matmul precision of a model whose products run in bf16 (`bf16`) or f32.
fn products_precision(bf16: bool) -> MatmulPrecision {
    if bf16 {
        MatmulPrecision::Bf16
    } else {
        MatmulPrecision::F32
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(|e| InferenceError::io(p, e))
}

/// Builds the burn model of `source` on `device`.
pub fn load_burn(
    source: &ModelSource,
    size: Option<usize>,
    device: &Device,
    quiet: bool,
) -> Result<(EmbeddingModel, ModelSpec, Preprocessing)> {
    match source {
        ModelSource::Dir(dir) => {
            let (model, info) = load_model_dir(dir, size, device)?;
            Ok((model, lookup(&info.model)?, info.preprocessing(size)))
        }
        ModelSource::Registry { name, weights } => {
            let spec = lookup(name)?;
            let image_size = size.unwrap_or(spec.input_size);
            let options = BuildOptions {
                image_size,
                ..spec.default_options()
            };
            let mut model = EmbeddingModel::new(&spec, &options, None, device);
            match weights {
                Some(path) => {
                    model = model.load_pretrained_backbone(&spec, &options, path)?;
                }
                None if !quiet => eprintln!(
                    "warning: no --weights given; {} has random weights (fine for testing the pipeline only)",
                    spec.name
                ),
                None => {}
            }
            let pre = Preprocessing {
                size: image_size,
                mean: spec.mean,
                std: spec.std,
            };
            Ok((model, spec, pre))
        }
    }
}

fn check_size(size: Option<usize>) -> Result<()> {
    match size {
        Some(s) if s == 0 || s > crate::MAX_INPUT_SIZE => Err(InferenceError::Invalid(format!(
            "input size {s} is outside 1..={}",
            crate::MAX_INPUT_SIZE
        ))),
        _ => Ok(()),
    }
}

/// The architecture `source` will load as, where its name is known (for `--device auto`); a
/// source that cannot be read is reported by the load itself.
fn architecture_of(source: &ModelSource) -> Option<Architecture> {
    let name = match source {
        ModelSource::Registry { name, .. } => name.clone(),
        ModelSource::Dir(dir) => read_info(dir).ok()?.model,
    };
    lookup(&name).ok().map(|spec| spec.architecture)
}

impl InferenceModel {
    /// Loads `source` as `options` say.
    pub fn load(source: &ModelSource, options: &LoadOptions) -> Result<Self> {
        check_size(options.size)?;
        let reference = match source {
            ModelSource::Dir(dir) => ModelRef {
                model: None,
                model_dir: Some(absolute(dir)?),
                weights: None,
                size: 0,
            },
            ModelSource::Registry { name, weights } => ModelRef {
                model: Some(name.clone()),
                model_dir: None,
                weights: weights.as_deref().map(absolute).transpose()?,
                size: 0,
            },
        };
        let architecture = match options.device {
            DeviceChoice::Auto => architecture_of(source),
            _ => None,
        };
        let loaded = match options
            .device
            .resolve(options.precision, architecture.as_ref())?
        {
            DeviceChoice::Ort(target) => {
                if matches!(options.precision, Precision::F16 | Precision::Bf16) {
                    return Err(InferenceError::Invalid(
                        "ONNX Runtime runs the exported model in f32 or int8 (--dtype f32|int8)"
                            .into(),
                    ));
                }
                Self::load_ort(source, options, target)?
            }
            DeviceChoice::Burn(name) if options.precision == Precision::Int8 => {
                return Err(InferenceError::Invalid(format!(
                    "int8 runs on ONNX Runtime (--device ort), not on {name}"
                )));
            }
            DeviceChoice::Burn(name) => Self::load_on_burn(source, options, name)?,
            DeviceChoice::Auto => unreachable!("resolve never returns Auto"),
        };
        Ok(InferenceModel {
            reference: ModelRef {
                size: loaded.preprocessing.size,
                ..reference
            },
            spec: loaded.spec,
            preprocessing: loaded.preprocessing,
            dim: loaded.dim,
            engine: loaded.engine,
            device_name: loaded.device_name,
        })
    }

    /// An embedder already in memory (a model soup being scored, say) on the burn `device`
    /// named `device_name`, batch norm folded as [`InferenceModel::load`] does; f32.
    pub fn from_embedder(
        model: EmbeddingModel,
        spec: ModelSpec,
        preprocessing: Preprocessing,
        device: Device,
        device_name: &str,
    ) -> Self {
        native_bf16_products(&device, false);
        let model = crate::batch_norm_folding::fold_batch_norms(model);
        InferenceModel {
            reference: ModelRef {
                model: Some(spec.name.clone()),
                model_dir: None,
                weights: None,
                size: preprocessing.size,
            },
            dim: model.dim(),
            spec,
            preprocessing,
            engine: Engine::Burn {
                model,
                device,
                bf16_products: false,
            },
            device_name: device_name.to_string(),
        }
    }

    fn load_on_burn(source: &ModelSource, options: &LoadOptions, name: String) -> Result<Loaded> {
        let mut device = visual_search_model::device::parse_device(&name)?;
        let bf16_products =
            options.precision == Precision::Bf16 && native_bf16_products(&device, true);
        let float = match options.precision {
            Precision::F16 => FloatDType::F16,
            Precision::Bf16 if bf16_products => FloatDType::F32,
            Precision::Bf16 => {
                if matches!(name.as_str(), "flex" | "cpu") && !options.quiet {
                    eprintln!(
                        "warning: this CPU has no AMX-BF16, so flex computes --dtype bf16 in \
                         bf16 tensors, several times slower than f32 (efficientnet_lite0 at \
                         batch 32 on a 2-core AVX2 CPU: 22 against 83 images/s); f32, or \
                         --device ort, is the fast path on this CPU"
                    );
                }
                FloatDType::BF16
            }
            Precision::F32 | Precision::Int8 => {
                native_bf16_products(&device, false);
                FloatDType::F32
            }
        };
        // burn fixes a device's float type for the whole process at its first tensor: a model
        // in another type than an earlier one on the same device cannot load (a clear error
        // rather than computing in the earlier model's type).
        if float != FloatDType::F32 {
            device.configure(float).map_err(|e| {
                InferenceError::Invalid(format!(
                    "device {name} cannot compute in {:?}: {e}",
                    options.precision
                ))
            })?;
        } else {
            let current = device.settings().float_dtype;
            if current != FloatDType::F32 {
                return Err(InferenceError::Invalid(format!(
                    "device {name} already computes in {current:?} in this process (an \
                     earlier model asked for it); load an f32 model in a separate process"
                )));
            }
        }
        let (model, spec, preprocessing) = load_burn(source, options.size, &device, options.quiet)?;
        let model = crate::batch_norm_folding::fold_batch_norms(model);
        Ok(Loaded {
            dim: model.dim(),
            spec,
            preprocessing,
            engine: Engine::Burn {
                model,
                device,
                bf16_products,
            },
            device_name: name,
        })
    }

    fn load_ort(
        source: &ModelSource,
        options: &LoadOptions,
        target: crate::ort_runtime::OrtTarget,
    ) -> Result<Loaded> {
        // An exported folder at its own size runs its own model.onnx; anything else is exported
        // once into the cache.
        let own = match source {
            ModelSource::Dir(dir) if options.precision == Precision::Int8 => {
                let info = read_info(dir)?;
                let onnx = dir.join(crate::int8::INT8_FILE);
                if !onnx.exists() || options.size.is_some_and(|s| s != info.input_size) {
                    return Err(InferenceError::model_dir(
                        dir,
                        format!(
                            "has no {} at {} px; make one with `visual-search export --onnx --int8`",
                            crate::int8::INT8_FILE,
                            info.input_size
                        ),
                    ));
                }
                verify_model_file(dir, crate::int8::INT8_FILE)?;
                Some((onnx, info))
            }
            ModelSource::Dir(dir) => {
                let info = read_info(dir)?;
                let onnx = dir.join(ONNX_FILE);
                if onnx.exists() && options.size.is_none_or(|s| s == info.input_size) {
                    verify_model_file(dir, ONNX_FILE)?;
                    Some((onnx, info))
                } else {
                    None
                }
            }
            ModelSource::Registry { .. } if options.precision == Precision::Int8 => {
                return Err(InferenceError::Invalid(
                    "int8 needs an exported model folder with a gated int8 model \
                     (`visual-search export --onnx --int8`)"
                        .into(),
                ));
            }
            ModelSource::Registry { .. } => None,
        };
        let (onnx, spec, preprocessing, dim) = match own {
            Some((onnx, info)) => (
                onnx,
                lookup(&info.model)?,
                info.preprocessing(None),
                info.embedding_dim,
            ),
            None => cached_onnx_export(source, options.size, options.quiet)?,
        };
        Ok(Loaded {
            spec,
            preprocessing,
            dim,
            engine: Engine::Ort(OrtModel::open(&onnx, target)?),
            device_name: match target {
                crate::ort_runtime::OrtTarget::Cpu => "ort".into(),
                crate::ort_runtime::OrtTarget::Cuda(i) => format!("ort-cuda:{i}"),
            },
        })
    }

    /// L2-normalised embeddings (`n × dim`) of `n` prepared images (`n × 3 × size × size`
    /// floats); non-finite features are set to 0 first.
    pub fn embed(&self, pixels: Vec<f32>, n: usize) -> Result<Vec<f32>> {
        let s = self.preprocessing.size;
        if pixels.len() != n * 3 * s * s {
            return Err(InferenceError::Invalid(format!(
                "{} input values for {n} images of {s} px",
                pixels.len()
            )));
        }
        let mut rows = match &self.engine {
            Engine::Burn {
                model,
                device,
                bf16_products,
            } => {
                use visual_search_model::train_ops::with_matmul_precision_for;
                let precision = products_precision(*bf16_products);
                with_matmul_precision_for(device, precision, || {
                    burn_features(model, device, pixels, n, s)
                })
            }
            Engine::Ort(session) => session.run(&pixels, n, s)?,
        };
        finish_rows(&mut rows, self.dim);
        Ok(rows)
    }
}

/// Un-normalised features of a burn model, as host floats, in forward passes of at most
/// [`images_per_pass`] images; computed on a thread of the compute pool ([`on_pool`]).
pub fn burn_features(
    model: &EmbeddingModel,
    device: &Device,
    pixels: Vec<f32>,
    n: usize,
    size: usize,
) -> Vec<f32> {
    on_pool(device, || {
        in_passes(pixels, n, images_per_pass(device, model), |pass, images| {
            let data = TensorData::new(pass, [images, 3, size, size]);
            let x = Tensor::<4>::from_data(data, device).cast(device.settings().float_dtype);
            model.features(x).into_data().iter::<f32>().collect()
        })
    })
}

/// NaN/inf → 0, then each row scaled to unit L2 norm (all-zero rows stay zero): the SPEC's
/// ranking input, done here and nowhere else.
pub fn finish_rows(rows: &mut [f32], dim: usize) {
    if dim == 0 {
        return;
    }
    for row in rows.chunks_mut(dim) {
        let mut sum = 0.0f64;
        for v in row.iter_mut() {
            if !v.is_finite() {
                *v = 0.0;
            }
            sum += (*v as f64) * (*v as f64);
        }
        let norm = sum.sqrt().max(1e-12) as f32;
        row.iter_mut().for_each(|v| *v /= norm);
    }
}
