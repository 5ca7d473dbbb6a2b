//! Applying file tensors to a burn module, by path, with full error reporting.
//!
//! A `ModuleMapper` walks the module; at each parameter it builds the PyTorch-convention path
//! (burn's LayerNorm/BatchNorm `gamma`/`beta` are PyTorch's `weight`/`bias`), finds the file
//! tensor the family's [`WeightMapping`] assigned to it, converts it (Linear weights are stored
//! transposed in burn) and replaces the parameter's value, keeping its id. Every model parameter
//! without a tensor, every file tensor left over and every shape mismatch is collected, and any
//! of them makes the load fail with all the names listed.

use std::collections::{BTreeMap, BTreeSet};

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Tensor, TensorData};

use super::{TensorFile, WeightError, strip_common_prefixes};

/// How a backbone family's parameter names relate to a file's tensor names.
pub trait WeightMapping {
    /// The module path (PyTorch naming) that file tensor `name` (wrapper prefixes already
    /// stripped) loads into, or `None` if the tensor is not part of this model (a classifier,
    /// a text tower, `num_batches_tracked`).
    fn module_path(&self, name: &str) -> Option<String>;

    /// Converts a tensor whose shape differs from its parameter's (e.g. interpolating a ViT
    /// position embedding to a new grid). `None` means the mismatch is an error.
    fn adapt(
        &self,
        _path: &str,
        _data: &[f32],
        _from: &[usize],
        _to: &[usize],
    ) -> Option<Vec<f32>> {
        None
    }
}

/// Loads `file` into `module` through `mapping`; fails listing every problem.
pub fn load_weights<M: Module>(
    module: M,
    file: &TensorFile,
    mapping: &dyn WeightMapping,
) -> Result<M, WeightError> {
    let mut by_path: BTreeMap<String, String> = BTreeMap::new();
    for (short, original) in strip_common_prefixes(file.entries.keys().cloned()) {
        if let Some(path) = mapping.module_path(&short) {
            by_path.insert(path, original);
        }
    }
    let mut applier = Applier {
        file,
        mapping,
        by_path: &by_path,
        path: Vec::new(),
        containers: Vec::new(),
        used: BTreeSet::new(),
        missing: Vec::new(),
        mis_shaped: Vec::new(),
        failure: None,
    };
    let module = module.map(&mut applier);
    if let Some(e) = applier.failure {
        return Err(e);
    }
    let unexpected: Vec<String> = by_path
        .iter()
        .filter(|(path, _)| !applier.used.contains(*path))
        .map(|(_, original)| original.clone())
        .collect();
    if !applier.missing.is_empty() || !unexpected.is_empty() || !applier.mis_shaped.is_empty() {
        return Err(WeightError::Mismatch {
            path: file.path.clone(),
            missing: applier.missing,
            unexpected,
            mis_shaped: applier.mis_shaped,
        });
    }
    Ok(module)
}

struct Applier<'a> {
    file: &'a TensorFile,
    mapping: &'a dyn WeightMapping,
    by_path: &'a BTreeMap<String, String>,
    path: Vec<String>,
    containers: Vec<String>,
    used: BTreeSet<String>,
    missing: Vec<String>,
    mis_shaped: Vec<String>,
    failure: Option<WeightError>,
}

impl Applier<'_> {
    /// The type of the module that owns the parameter being mapped (`Struct:Linear`, ...):
    /// burn's derive enters each field with the type of the struct that holds it.
    fn owner(&self) -> &str {
        self.containers.last().map_or("", String::as_str)
    }

    /// The parameter's path in PyTorch naming.
    fn torch_path(&self) -> String {
        let mut parts = self.path.clone();
        if let Some(last) = parts.last_mut() {
            let norm = matches!(
                self.owner(),
                "Struct:LayerNorm" | "Struct:BatchNorm" | "Struct:GroupNorm"
            );
            if norm && last == "gamma" {
                *last = "weight".to_string();
            } else if norm && last == "beta" {
                *last = "bias".to_string();
            }
        }
        parts.join(".")
    }
}

impl ModuleMapper for Applier<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.containers.push(container_type.to_string());
        if !container_type.starts_with("Enum:") {
            self.path.push(name.to_string());
        }
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.containers.pop();
        if !container_type.starts_with("Enum:") {
            self.path.pop();
        }
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.failure.is_some() {
            return param;
        }
        let path = self.torch_path();
        let Some(original) = self.by_path.get(&path) else {
            // Pooling parameters (GeM's p) are this crate's own: never in a pretrained file.
            if !path.starts_with("pooling.") && !path.contains(".pooling.") {
                self.missing.push(path);
            }
            return param;
        };
        self.used.insert(path.clone());
        let entry = &self.file.entries[original];
        let target: Vec<usize> = param.lazy_shape().dims::<D>().to_vec();
        // burn's Linear stores [in, out]; PyTorch stores [out, in] (or [out, in, 1, 1] for a
        // 1x1 convolution used as a linear layer, as timm's ConvMlp does).
        let linear_shape = match entry.shape.as_slice() {
            [o, i] | [o, i, 1, 1]
                if self.owner() == "Struct:Linear" && path.ends_with(".weight") =>
            {
                Some((*o, *i))
            }
            _ => None,
        };
        let mut data = match entry.read_f32(&self.file.path) {
            Ok(d) => d,
            Err(e) => {
                self.failure = Some(e);
                return param;
            }
        };
        let file_shape = match linear_shape {
            Some((o, i)) => {
                data = transpose_2d(&data, o, i);
                vec![i, o]
            }
            None => entry.shape.clone(),
        };
        let data = if file_shape == target {
            data
        } else if file_shape.iter().product::<usize>() == target.iter().product::<usize>()
            && squeeze(&file_shape) == squeeze(&target)
        {
            // Same values, different unit dimensions (e.g. a [D] class token into [1, 1, D]).
            data
        } else if let Some(adapted) = self.mapping.adapt(&path, &data, &file_shape, &target) {
            adapted
        } else {
            self.mis_shaped.push(format!(
                "{original}: file {file_shape:?} vs model {target:?}"
            ));
            return param;
        };
        let device = param.lazy_device();
        // Files hold f32 here; a model on an f16/bf16 device gets its parameters in that type.
        let tensor = Tensor::<D>::from_data(TensorData::new(data, target), &device)
            .cast(device.settings().float_dtype);
        let id = param.id;
        param.transform_for_load(tensor, id)
    }
}

fn squeeze(shape: &[usize]) -> Vec<usize> {
    shape.iter().copied().filter(|&d| d != 1).collect()
}

fn transpose_2d(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}
