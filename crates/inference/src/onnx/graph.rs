//! Building an ONNX graph op by op: fresh value names, weights as initializers, and the handful
//! of layer patterns our backbones are made of (convolution, linear, layer norm, GELU, …) in
//! the exact form PyTorch's exporter writes them, so ONNX Runtime's graph optimiser fuses them
//! the same way (e.g. `x·½·(1+erf(x/√2))` into its Gelu kernel).

use super::proto::{
    AttributeProto, Dimension, DimensionValue, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, TypeProtoTensor, ValueInfoProto,
    attribute_type, data_type,
};

/// The opset every export declares (LayerNormalization needs 17).
pub const OPSET: i64 = 17;
/// IR version that goes with opset 17.
const IR_VERSION: i64 = 8;

/// An attribute of a node.
pub fn attr_int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i: Some(value),
        r#type: attribute_type::INT,
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: values.to_vec(),
        r#type: attribute_type::INTS,
        ..Default::default()
    }
}

pub fn attr_float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        f: Some(value),
        r#type: attribute_type::FLOAT,
        ..Default::default()
    }
}

/// A graph under construction.
#[derive(Default)]
pub struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    counter: usize,
    /// Total bytes of initializers (protobuf caps a message at 2 GiB).
    weight_bytes: usize,
}

fn dims_i64(dims: &[usize]) -> Vec<i64> {
    dims.iter().map(|&d| d as i64).collect()
}

impl GraphBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// Bytes of weights so far.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// A float initializer named after `hint`.
    pub fn weight(&mut self, hint: &str, dims: &[usize], values: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), values.len(), "{hint}");
        let name = self.fresh(hint);
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.weight_bytes += raw.len();
        self.initializers.push(TensorProto {
            dims: dims_i64(dims),
            data_type: data_type::FLOAT,
            name: name.clone(),
            raw_data: raw,
        });
        name
    }

    /// An int64 initializer (shapes, axes, indices); `dims` empty for a scalar.
    pub fn ints(&mut self, hint: &str, dims: &[usize], values: &[i64]) -> String {
        let name = self.fresh(hint);
        self.initializers.push(TensorProto {
            dims: dims_i64(dims),
            data_type: data_type::INT64,
            name: name.clone(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        name
    }

    /// A float scalar constant.
    pub fn scalar(&mut self, value: f32) -> String {
        self.weight("const", &[], &[value])
    }

    /// Appends a node with one output and returns that output's name.
    pub fn op(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> String {
        let output = self.fresh(&op_type.to_ascii_lowercase());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            name: format!("n{}", self.nodes.len()),
            op_type: op_type.into(),
            attribute: attributes,
            domain: String::new(),
        });
        output
    }

    // ---- layer patterns -------------------------------------------------------------------

    /// `Conv` (NCHW) with `pads` = [top, left, bottom, right].
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        x: &str,
        weight: &str,
        bias: Option<&str>,
        kernel: [usize; 2],
        stride: [usize; 2],
        pads: [usize; 4],
        groups: usize,
    ) -> String {
        let mut inputs = vec![x, weight];
        if let Some(b) = bias {
            inputs.push(b);
        }
        self.op(
            "Conv",
            &inputs,
            vec![
                attr_ints("kernel_shape", &dims_i64(&kernel)),
                attr_ints("strides", &dims_i64(&stride)),
                attr_ints("pads", &dims_i64(&pads)),
                attr_ints("dilations", &[1, 1]),
                attr_int("group", groups as i64),
            ],
        )
    }

    /// `x · W + b` over the last axis; `weight` is `[in, out]` (burn's layout).
    pub fn linear(
        &mut self,
        x: &str,
        weight: &[f32],
        dims: [usize; 2],
        bias: Option<&[f32]>,
    ) -> String {
        let w = self.weight("linear_w", &dims, weight);
        let y = self.op("MatMul", &[x, &w], vec![]);
        match bias {
            Some(b) => {
                let b = self.weight("linear_b", &[dims[1]], b);
                self.op("Add", &[&y, &b], vec![])
            }
            None => y,
        }
    }

    /// LayerNormalization over the last axis.
    pub fn layer_norm(&mut self, x: &str, gamma: &[f32], beta: Option<&[f32]>, eps: f64) -> String {
        let g = self.weight("ln_g", &[gamma.len()], gamma);
        let zeros;
        let b = match beta {
            Some(b) => self.weight("ln_b", &[b.len()], b),
            None => {
                zeros = vec![0.0; gamma.len()];
                self.weight("ln_b", &[gamma.len()], &zeros)
            }
        };
        self.op(
            "LayerNormalization",
            &[x, &g, &b],
            vec![attr_int("axis", -1), attr_float("epsilon", eps as f32)],
        )
    }

    /// Exact GELU, `x · ½ · (1 + erf(x / √2))`, as PyTorch exports it.
    pub fn gelu(&mut self, x: &str) -> String {
        let sqrt2 = self.scalar(std::f32::consts::SQRT_2);
        let one = self.scalar(1.0);
        let half = self.scalar(0.5);
        let d = self.op("Div", &[x, &sqrt2], vec![]);
        let e = self.op("Erf", &[&d], vec![]);
        let a = self.op("Add", &[&e, &one], vec![]);
        let m = self.op("Mul", &[x, &a], vec![]);
        self.op("Mul", &[&m, &half], vec![])
    }

    /// OpenAI CLIP's QuickGELU, `x · σ(1.702 x)`.
    pub fn quick_gelu(&mut self, x: &str) -> String {
        let k = self.scalar(1.702);
        let s = self.op("Mul", &[x, &k], vec![]);
        let s = self.op("Sigmoid", &[&s], vec![]);
        self.op("Mul", &[x, &s], vec![])
    }

    /// ReLU6 as `Clip(x, 0, 6)`.
    pub fn relu6(&mut self, x: &str) -> String {
        let lo = self.scalar(0.0);
        let hi = self.scalar(6.0);
        self.op("Clip", &[x, &lo, &hi], vec![])
    }

    pub fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.op("Transpose", &[x], vec![attr_ints("perm", perm)])
    }

    /// Reshape; 0 copies the input's size on that axis (the batch), -1 infers one.
    pub fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.ints("shape", &[shape.len()], shape);
        self.op("Reshape", &[x, &s], vec![])
    }

    /// `[B, C, H, W]` → `[B, C]` mean over the spatial axes.
    pub fn global_avg_pool(&mut self, x: &str) -> String {
        let p = self.op("GlobalAveragePool", &[x], vec![]);
        self.op("Flatten", &[&p], vec![attr_int("axis", 1)])
    }

    /// Rows scaled to unit L2 norm, `x / max(‖x‖, 1e-12)` (all-zero rows stay zero).
    pub fn l2_normalize(&mut self, x: &str) -> String {
        let n = self.op(
            "ReduceL2",
            &[x],
            vec![attr_ints("axes", &[1]), attr_int("keepdims", 1)],
        );
        let eps = self.scalar(1e-12);
        let n = self.op("Max", &[&n, &eps], vec![]);
        self.op("Div", &[x, &n], vec![])
    }

    /// The model: input `[batch, 3, size, size]` named `input`, output `[batch, dim]` named
    /// `embedding`, with a symbolic batch axis.
    pub fn finish(
        mut self,
        x_in: &str,
        size: usize,
        y: &str,
        dim: usize,
        doc: String,
    ) -> ModelProto {
        // Name the final value `embedding` with an Identity so callers find it by name.
        self.nodes.push(NodeProto {
            input: vec![y.to_string()],
            output: vec![OUTPUT_NAME.to_string()],
            name: "output".into(),
            op_type: "Identity".into(),
            attribute: vec![],
            domain: String::new(),
        });
        let value = |name: &str, dims: Vec<Dimension>| ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                tensor_type: Some(TypeProtoTensor {
                    elem_type: data_type::FLOAT,
                    shape: Some(TensorShapeProto { dim: dims }),
                }),
            }),
        };
        let batch = || Dimension {
            value: Some(DimensionValue::DimParam("batch".into())),
        };
        let fixed = |d: usize| Dimension {
            value: Some(DimensionValue::DimValue(d as i64)),
        };
        ModelProto {
            ir_version: IR_VERSION,
            producer_name: "visual-search".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: doc,
            graph: Some(GraphProto {
                node: self.nodes,
                name: "embedder".into(),
                initializer: self.initializers,
                input: vec![value(
                    x_in,
                    vec![batch(), fixed(3), fixed(size), fixed(size)],
                )],
                output: vec![value(OUTPUT_NAME, vec![batch(), fixed(dim)])],
            }),
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
        }
    }
}

/// Name of the graph input.
pub const INPUT_NAME: &str = "input";
/// Name of the graph output.
pub const OUTPUT_NAME: &str = "embedding";
