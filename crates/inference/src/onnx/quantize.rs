//! Static int8 quantisation of an exported model, in ONNX Runtime's QDQ form: every activation
//! entering or leaving a convolution, a weight matmul, a residual add or the global pooling
//! gets a `QuantizeLinear → DequantizeLinear` pair (uint8, asymmetric, range calibrated on real
//! images), weights become int8 per output channel (symmetric), conv biases int32 at
//! `input scale × weight scale`. ONNX Runtime's graph optimiser turns these patterns into its
//! integer kernels (QLinearConv, …) and drops a ReLU6 whose range the quantisation already
//! covers; nodes it cannot fuse still compute correctly in float.
//!
//! Calibration adds every activation to quantise as a graph output, runs the float model on the
//! calibration images and keeps each tensor's min/max (0 always inside, so ReLU outputs get
//! zero point 0).

use std::collections::{HashMap, HashSet};

use super::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, TypeProto, TypeProtoTensor,
    ValueInfoProto, attribute_type, data_type,
};
use crate::error::{InferenceError, Result};

/// Observed value range of each calibrated tensor.
pub type Ranges = HashMap<String, (f32, f32)>;

fn initializer_names(graph: &GraphProto) -> HashSet<String> {
    graph.initializer.iter().map(|t| t.name.clone()).collect()
}

fn consumers(graph: &GraphProto) -> HashMap<String, Vec<usize>> {
    let mut map: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        for input in &node.input {
            map.entry(input.clone()).or_default().push(i);
        }
    }
    map
}

/// The activations to quantise, in graph order (see the module docs).
pub fn activation_tensors(graph: &GraphProto) -> Vec<String> {
    let weights = initializer_names(graph);
    let users = consumers(graph);
    let mut out: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    let mut mark = |t: &str, out: &mut Vec<String>| {
        if !weights.contains(t) && seen.insert(t.to_string()) {
            out.push(t.to_string());
        }
    };
    for node in &graph.node {
        let input = |i: usize| node.input.get(i).map(String::as_str).unwrap_or("");
        match node.op_type.as_str() {
            "Conv" => {
                mark(input(0), &mut out);
                let y = &node.output[0];
                // A Conv feeding only a Clip/Relu is quantised after the activation.
                let next = users
                    .get(y)
                    .filter(|u| u.len() == 1)
                    .map(|u| &graph.node[u[0]]);
                match next {
                    Some(act) if matches!(act.op_type.as_str(), "Clip" | "Relu") => {
                        mark(&act.output[0], &mut out)
                    }
                    _ => mark(y, &mut out),
                }
            }
            "MatMul" if weights.contains(input(1)) => {
                mark(input(0), &mut out);
                mark(&node.output[0], &mut out);
            }
            "Add" if !weights.contains(input(0)) && !weights.contains(input(1)) => {
                mark(input(0), &mut out);
                mark(input(1), &mut out);
                mark(&node.output[0], &mut out);
            }
            "GlobalAveragePool" => {
                mark(input(0), &mut out);
                mark(&node.output[0], &mut out);
            }
            _ => {}
        }
    }
    out
}

/// The model with `tensors` added as outputs, for calibration.
pub fn calibration_model(model: &ModelProto, tensors: &[String]) -> ModelProto {
    let mut m = model.clone();
    if let Some(g) = m.graph.as_mut() {
        let existing: HashSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
        for t in tensors.iter().filter(|t| !existing.contains(*t)) {
            g.output.push(ValueInfoProto {
                name: t.clone(),
                r#type: Some(TypeProto {
                    tensor_type: Some(TypeProtoTensor {
                        elem_type: data_type::FLOAT,
                        shape: None,
                    }),
                }),
            });
        }
    }
    m
}

/// Collects each calibrated tensor's range over the calibration batches: the mean of the
/// per-batch minima and maxima (the "moving average min/max" of TensorFlow's and ONNX Runtime's
/// calibrators), which keeps one outlier image from stretching a tensor's scale.
#[derive(Default)]
pub struct RangeObserver {
    sums: HashMap<String, (f64, f64, usize)>,
}

impl RangeObserver {
    /// Adds one batch's values of each tensor.
    pub fn observe(&mut self, tensors: &[String], values: &[Vec<f32>]) {
        for (t, v) in tensors.iter().zip(values) {
            let (lo, hi) = v
                .iter()
                .filter(|x| x.is_finite())
                .fold((0.0f32, 0.0f32), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            let e = self.sums.entry(t.clone()).or_insert((0.0, 0.0, 0));
            e.0 += lo as f64;
            e.1 += hi as f64;
            e.2 += 1;
        }
    }

    pub fn ranges(&self) -> Ranges {
        self.sums
            .iter()
            .map(|(t, &(lo, hi, n))| {
                let n = n.max(1) as f64;
                (t.clone(), ((lo / n) as f32, (hi / n) as f32))
            })
            .collect()
    }
}

/// uint8 asymmetric `(scale, zero point)` for a range that contains 0.
fn activation_params(lo: f32, hi: f32) -> (f32, u8) {
    let span = (hi - lo).max(1e-8);
    let scale = span / 255.0;
    let zp = (-lo / scale).round().clamp(0.0, 255.0) as u8;
    (scale, zp)
}

fn tensor(name: String, dims: Vec<i64>, ty: i32, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        dims,
        data_type: ty,
        name,
        raw_data: raw,
    }
}

fn node(op: &str, inputs: Vec<String>, output: String, attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs,
        output: vec![output.clone()],
        name: format!("q_{output}"),
        op_type: op.into(),
        attribute: attrs,
        domain: String::new(),
    }
}

fn axis(value: i64) -> AttributeProto {
    AttributeProto {
        name: "axis".into(),
        i: Some(value),
        r#type: attribute_type::INT,
        ..Default::default()
    }
}

fn floats(t: &TensorProto) -> Vec<f32> {
    t.raw_data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Appends `Q → DQ` for activation `t` (when calibrated) and records its dequantised name.
fn emit_qdq(
    t: &str,
    ranges: &Ranges,
    nodes: &mut Vec<NodeProto>,
    new_inits: &mut Vec<TensorProto>,
    dq: &mut HashMap<String, (String, f32)>,
) {
    let Some(&(lo, hi)) = ranges.get(t) else {
        return;
    };
    let (scale, zp) = activation_params(lo, hi);
    let s_name = format!("{t}_scale");
    let z_name = format!("{t}_zp");
    new_inits.push(tensor(
        s_name.clone(),
        vec![],
        data_type::FLOAT,
        scale.to_le_bytes().to_vec(),
    ));
    new_inits.push(tensor(z_name.clone(), vec![], data_type::UINT8, vec![zp]));
    let q = format!("{t}_q");
    let d = format!("{t}_dq");
    nodes.push(node(
        "QuantizeLinear",
        vec![t.to_string(), s_name.clone(), z_name.clone()],
        q.clone(),
        vec![],
    ));
    nodes.push(node(
        "DequantizeLinear",
        vec![q, s_name, z_name],
        d.clone(),
        vec![],
    ));
    dq.insert(t.to_string(), (d, scale));
}

/// The QDQ model of `model` with activation ranges `ranges`.
/// `weight_max` is the largest weight level: 127 (8 bits), or 63 (7 bits, ONNX Runtime's
/// `reduce_range`) for CPUs without VNNI, whose u8 × s8 products sum pairs in saturating 16-bit
/// lanes (`vpmaddubsw`) that full-range weights overflow.
pub fn quantize(model: &ModelProto, ranges: &Ranges, weight_max: f32) -> Result<ModelProto> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| InferenceError::Export("the model has no graph".into()))?;
    let tensors = activation_tensors(graph);
    let mut initializers: HashMap<String, TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    let mut new_inits: Vec<TensorProto> = Vec::new();
    let mut nodes: Vec<NodeProto> = Vec::new();
    // Activation tensor → (its dequantised name, scale).
    let mut dq: HashMap<String, (String, f32)> = HashMap::new();
    let quantizable: HashSet<&String> = tensors.iter().collect();

    for input in &graph.input {
        if quantizable.contains(&input.name) {
            emit_qdq(&input.name, ranges, &mut nodes, &mut new_inits, &mut dq);
        }
    }
    for original in &graph.node {
        let mut n = original.clone();
        let input_scale = n.input.first().and_then(|x| dq.get(x)).map(|(_, s)| *s);
        for inp in n.input.iter_mut() {
            if let Some((d, _)) = dq.get(inp.as_str()) {
                *inp = d.clone();
            }
        }
        let weight_axis = match n.op_type.as_str() {
            "Conv" => Some(0usize),
            "MatMul" => Some(1usize),
            _ => None,
        };
        if let (Some(ax), Some(w_name), Some(sx)) =
            (weight_axis, n.input.get(1).cloned(), input_scale)
            && initializers
                .get(&w_name)
                .is_some_and(|w| w.data_type == data_type::FLOAT)
            && let Some(w) = initializers.remove(&w_name)
        {
            let dims: Vec<usize> = w.dims.iter().map(|&d| d as usize).collect();
            let values = floats(&w);
            let w_scales = per_channel_scales(&values, &dims, ax, weight_max);
            let q: Vec<u8> = values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let c = channel_of(i, &dims, ax);
                    ((v / w_scales[c]).round().clamp(-weight_max, weight_max) as i8) as u8
                })
                .collect();
            n.input[1] = dequantized(
                &w_name,
                (w.dims.clone(), data_type::INT8, q),
                &w_scales,
                ax,
                &mut new_inits,
                &mut nodes,
            );
            // Conv bias as int32 at input scale × weight scale.
            if ax == 0
                && let Some(b_name) = n.input.get(2).cloned()
                && let Some(b) = initializers.remove(&b_name)
            {
                let bias = floats(&b);
                let scales: Vec<f32> = w_scales.iter().map(|s| s * sx).collect();
                let q: Vec<u8> = bias
                    .iter()
                    .zip(&scales)
                    .flat_map(|(v, s)| {
                        ((*v as f64 / *s as f64)
                            .round()
                            .clamp(i32::MIN as f64, i32::MAX as f64)
                            as i32)
                            .to_le_bytes()
                    })
                    .collect();
                n.input[2] = dequantized(
                    &b_name,
                    (b.dims.clone(), data_type::INT32, q),
                    &scales,
                    0,
                    &mut new_inits,
                    &mut nodes,
                );
            }
        }
        let outputs = n.output.clone();
        nodes.push(n);
        for out in outputs {
            if quantizable.contains(&out) {
                emit_qdq(&out, ranges, &mut nodes, &mut new_inits, &mut dq);
            }
        }
    }
    // Weights left in float (not consumed by a quantised node) stay as they were.
    let mut all_inits: Vec<TensorProto> = graph
        .initializer
        .iter()
        .filter(|t| initializers.contains_key(&t.name))
        .cloned()
        .collect();
    all_inits.extend(new_inits);
    let mut m = model.clone();
    let g = m.graph.as_mut().expect("checked above");
    g.node = nodes;
    g.initializer = all_inits;
    m.doc_string = format!("{} (int8, static QDQ)", m.doc_string);
    Ok(m)
}

/// Adds a per-channel quantised initializer `(dims, type, raw)` with its scales (zero points
/// 0) and the `DequantizeLinear` along `axis` that restores it; returns the restored name.
fn dequantized(
    name: &str,
    (dims, ty, raw): (Vec<i64>, i32, Vec<u8>),
    scales: &[f32],
    axis_index: usize,
    new_inits: &mut Vec<TensorProto>,
    nodes: &mut Vec<NodeProto>,
) -> String {
    let suffix = if ty == data_type::INT32 {
        "int32"
    } else {
        "int8"
    };
    let zero_bytes = if ty == data_type::INT32 { 4 } else { 1 };
    let (q, s, z, d) = (
        format!("{name}_{suffix}"),
        format!("{name}_scale"),
        format!("{name}_zp"),
        format!("{name}_dq"),
    );
    let channels = scales.len();
    new_inits.push(tensor(q.clone(), dims, ty, raw));
    new_inits.push(tensor(
        s.clone(),
        vec![channels as i64],
        data_type::FLOAT,
        scales.iter().flat_map(|v| v.to_le_bytes()).collect(),
    ));
    new_inits.push(tensor(
        z.clone(),
        vec![channels as i64],
        ty,
        vec![0; channels * zero_bytes],
    ));
    nodes.push(node(
        "DequantizeLinear",
        vec![q, s, z],
        d.clone(),
        vec![axis(axis_index as i64)],
    ));
    d
}

/// Index of the channel (along `axis`) of flat element `i` of a row-major tensor.
fn channel_of(i: usize, dims: &[usize], axis: usize) -> usize {
    let inner: usize = dims[axis + 1..].iter().product();
    (i / inner) % dims[axis]
}

/// Symmetric int8 scale of each channel: `max |w| / weight_max` (1 for an all-zero channel).
fn per_channel_scales(values: &[f32], dims: &[usize], axis: usize, weight_max: f32) -> Vec<f32> {
    let mut max = vec![0.0f32; dims[axis]];
    for (i, v) in values.iter().enumerate() {
        let c = channel_of(i, dims, axis);
        max[c] = max[c].max(v.abs());
    }
    max.iter()
        .map(|&m| if m > 0.0 { m / weight_max } else { 1.0 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_follow_the_axis() {
        // [2, 3] row-major: axis 0 → rows, axis 1 → columns.
        assert_eq!(
            (0..6)
                .map(|i| channel_of(i, &[2, 3], 0))
                .collect::<Vec<_>>(),
            [0, 0, 0, 1, 1, 1]
        );
        assert_eq!(
            (0..6)
                .map(|i| channel_of(i, &[2, 3], 1))
                .collect::<Vec<_>>(),
            [0, 1, 2, 0, 1, 2]
        );
        assert_eq!(
            per_channel_scales(&[1.0, -2.0, 0.0, 0.0], &[2, 2], 0, 127.0),
            [2.0 / 127.0, 1.0]
        );
    }

    #[test]
    fn activation_ranges_keep_zero_exact() {
        let (s, zp) = activation_params(0.0, 6.0);
        assert_eq!(zp, 0);
        assert!((s - 6.0 / 255.0).abs() < 1e-9);
        let (s, zp) = activation_params(-1.0, 3.0);
        assert_eq!(zp, 64);
        assert!((s - 4.0 / 255.0).abs() < 1e-9);
    }
}
