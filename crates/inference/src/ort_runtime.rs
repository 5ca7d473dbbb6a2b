//! Running an exported ONNX model through ONNX Runtime, loaded at run time (`ort`'s
//! `load-dynamic`): nothing is downloaded at build or run time, and a build without the
//! library still works for every other device.
//!
//! The library is looked for, in order: `ORT_DYLIB_PATH`; the folder
//! `tools/install_onnxruntime.sh` unpacks the PyPI wheel's library into
//! (`~/.cache/visual-search/onnxruntime`); the system's `libonnxruntime.so`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use crate::error::{InferenceError, Result};
use crate::onnx::{INPUT_NAME, OUTPUT_NAME};

/// Where ONNX Runtime runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrtTarget {
    Cpu,
    /// CUDA execution provider on GPU N.
    Cuda(usize),
}

const HOW_TO_GET: &str = "ONNX Runtime's library (libonnxruntime.so) was not found. Get it with \
     `tools/install_onnxruntime.sh` (unpacks the onnxruntime PyPI wheel's library into \
     ~/.cache/visual-search/onnxruntime), install it system-wide, or point ORT_DYLIB_PATH at it";

/// The folder `tools/install_onnxruntime.sh` fills.
pub fn default_library_dir() -> Option<PathBuf> {
    crate::cache_dir().map(|c| c.join("onnxruntime"))
}

fn newest_library_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// The library file that will be loaded, if one is found.
pub fn library_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = default_library_dir().and_then(|d| newest_library_in(&d)) {
        return Some(p);
    }
    ["/usr/local/lib", "/usr/lib", "/usr/lib/x86_64-linux-gnu"]
        .iter()
        .find_map(|d| newest_library_in(Path::new(d)))
}

/// Whether ONNX Runtime can be used (the library is found and loads).
pub fn available() -> bool {
    environment().is_ok()
}

fn environment() -> Result<&'static Environment> {
    static ENV: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let path = library_path().ok_or_else(|| HOW_TO_GET.to_string())?;
        if !path.exists() {
            return Err(format!("{} does not exist. {HOW_TO_GET}", path.display()));
        }
        ort::init_from(&path)
            .map_err(|e| format!("loading {}: {e}. {HOW_TO_GET}", path.display()))?
            .with_name("visual-search")
            .build()
            .map_err(|e| format!("starting ONNX Runtime from {}: {e}", path.display()))
    })
    .as_ref()
    .map_err(|e| InferenceError::Ort(e.clone()))
}

/// An ONNX Runtime session over an exported embedder.
pub struct OrtModel {
    /// `Session::run` takes `&mut self`; one batch runs at a time, using every core.
    session: Mutex<Session>,
    pub target: OrtTarget,
}

impl OrtModel {
    /// Opens `model.onnx` with every graph optimisation on.
    pub fn open(path: &Path, target: OrtTarget) -> Result<Self> {
        let env = environment()?;
        let mut builder = Session::builder(env)?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(ort::Error::from)?;
        if let Some(threads) = std::env::var("VISUAL_SEARCH_ORT_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        {
            builder = builder
                .with_intra_threads(threads)
                .map_err(ort::Error::from)?;
        }
        if std::env::var("VISUAL_SEARCH_ORT_SPIN").is_ok_and(|v| v == "0") {
            builder = builder
                .with_config_entry("session.intra_op.allow_spinning", "0")
                .map_err(ort::Error::from)?;
        }
        if let OrtTarget::Cuda(device) = target {
            builder = builder
                .with_execution_providers([ort::ep::CUDA::default()
                    .with_device_id(device as i32)
                    .build()
                    .error_on_failure()])
                .map_err(|e| {
                    InferenceError::Ort(format!(
                        "the CUDA execution provider is not available (it needs the onnxruntime-gpu \
                         library and an NVIDIA GPU {device}): {e}"
                    ))
                })?;
        }
        let session = builder
            .commit_from_file(path)
            .map_err(|e| InferenceError::Ort(format!("{}: {e}", path.display())))?;
        Ok(OrtModel {
            session: Mutex::new(session),
            target,
        })
    }

    /// Runs `n` images (`n × 3 × size × size` floats); returns `n × dim` values.
    pub fn run(&self, pixels: &[f32], n: usize, size: usize) -> Result<Vec<f32>> {
        let mut outputs = self.run_named(pixels, n, size, &[OUTPUT_NAME.to_string()])?;
        Ok(outputs.pop().unwrap_or_default())
    }

    /// Runs `n` images and returns the named values (any tensors the graph outputs), flattened.
    pub fn run_named(
        &self,
        pixels: &[f32],
        n: usize,
        size: usize,
        names: &[String],
    ) -> Result<Vec<Vec<f32>>> {
        let input = TensorRef::from_array_view(([n, 3, size, size], pixels))?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| InferenceError::Ort("a previous run panicked".into()))?;
        let outputs = session.run(ort::inputs![INPUT_NAME => input])?;
        names
            .iter()
            .map(|name| {
                let value = outputs.get(name.as_str()).ok_or_else(|| {
                    InferenceError::Ort(format!("the model has no output {name}"))
                })?;
                let (_, values) = value.try_extract_tensor::<f32>()?;
                Ok(values.to_vec())
            })
            .collect()
    }
}
