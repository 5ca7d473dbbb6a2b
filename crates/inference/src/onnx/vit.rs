//! OpenCLIP VisionTransformer as ONNX, with the position embeddings already resampled to the
//! export size (the token count is fixed in the graph; the batch axis is free).
//!
//! Attention is written as PyTorch's `nn.MultiheadAttention` exports it: one packed QKV
//! projection (over the token rows of the whole batch, `[batch·tokens, width]`), a reshape into
//! heads, `softmax(q·kᵀ/√d)·v`, the output projection. The class
//! token is pooled before `ln_post` (LayerNorm is per token, so this equals normalising every
//! token and taking the first).

use visual_search_model::backbones::vit::{ResidualAttentionBlock, VisionTransformer};

use super::cnn::{Feature, conv_bn};
use super::convnext::linear_layer;
use super::graph::{GraphBuilder, attr_int};
use super::params::{layer_norm, values};

/// CLIP's LayerNorm eps.
const LN_EPS: f64 = 1e-5;

fn ln(g: &mut GraphBuilder, x: &str, norm: &burn::nn::LayerNorm) -> String {
    let (gamma, beta) = layer_norm(norm);
    g.layer_norm(x, &gamma, beta.as_deref(), LN_EPS)
}

fn layer_scale(
    g: &mut GraphBuilder,
    x: String,
    ls: &Option<visual_search_model::backbones::vit::LayerScale>,
) -> String {
    match ls {
        Some(ls) => {
            let v = values(ls.gamma.val());
            let w = g.weight("ls_gamma", &[v.len()], &v);
            g.op("Mul", &[&x, &w], vec![])
        }
        None => x,
    }
}

fn attention(g: &mut GraphBuilder, x: &str, block: &ResidualAttentionBlock, n: usize) -> String {
    let attn = &block.attn;
    let w = attn.in_proj_weight.val();
    let [three_d, d] = w.dims();
    let w_t = values(w.transpose());
    let b = values(attn.in_proj_bias.val());
    let qkv = g.linear(x, &w_t, [d, three_d], Some(&b));
    let h = attn.heads;
    let dh = d / h;
    let qkv = g.reshape(&qkv, &[-1, n as i64, 3, h as i64, dh as i64]);
    let qkv = g.transpose(&qkv, &[2, 0, 3, 1, 4]);
    let pick = |g: &mut GraphBuilder, i: i64| {
        let idx = g.ints("qkv_index", &[], &[i]);
        g.op("Gather", &[&qkv, &idx], vec![attr_int("axis", 0)])
    };
    let q = pick(g, 0);
    let k = pick(g, 1);
    let v = pick(g, 2);
    let scale = g.scalar((dh as f32).powf(-0.5));
    let q = g.op("Mul", &[&q, &scale], vec![]);
    let kt = g.transpose(&k, &[0, 1, 3, 2]);
    let scores = g.op("MatMul", &[&q, &kt], vec![]);
    let probs = g.op("Softmax", &[&scores], vec![attr_int("axis", -1)]);
    let out = g.op("MatMul", &[&probs, &v], vec![]);
    let out = g.transpose(&out, &[0, 2, 1, 3]);
    let out = g.reshape(&out, &[-1, d as i64]);
    linear_layer(g, &out, &attn.out_proj)
}

pub fn vit(g: &mut GraphBuilder, m: &VisionTransformer, x: Feature) -> String {
    let patches = conv_bn(g, &x, &m.conv1, None);
    let d = m.conv1.weight.dims()[0];
    let tokens = patches.h * patches.w;
    let n = tokens + 1;
    let t = g.reshape(&patches.name, &[0, d as i64, tokens as i64]);
    let t = g.transpose(&t, &[0, 2, 1]);
    // The class token, broadcast to the batch: Expand to [batch, 1, d].
    let cls = values(m.class_embedding.val());
    let cls = g.weight("class_embedding", &[1, 1, d], &cls);
    let shape = g.op("Shape", &[&t], vec![]);
    let zero = g.ints("axis0", &[1], &[0]);
    let batch = g.op("Gather", &[&shape, &zero], vec![attr_int("axis", 0)]);
    let rest = g.ints("cls_shape", &[2], &[1, d as i64]);
    let target = g.op("Concat", &[&batch, &rest], vec![attr_int("axis", 0)]);
    let cls = g.op("Expand", &[&cls, &target], vec![]);
    let x = g.op("Concat", &[&cls, &t], vec![attr_int("axis", 1)]);
    let pos = m.positional_embedding.val();
    let pos_tokens = pos.dims()[0];
    assert_eq!(
        pos_tokens, n,
        "position embeddings are laid out for the export size"
    );
    let pos = values(pos);
    let pos = g.weight("positional_embedding", &[1, n, d], &pos);
    let x = g.op("Add", &[&x, &pos], vec![]);
    let x = ln(g, &x, &m.ln_pre);
    // The blocks run on `[batch·tokens, width]`: every linear layer is then a 2-D MatMul + Add,
    // which ONNX Runtime fuses into one Gemm (bias added inside the product; on 3-D inputs
    // the bias was a separate pass over every projection's output, as it is in PyTorch's own
    // export for all but the attention output).
    let mut x = g.reshape(&x, &[-1, d as i64]);
    for block in &m.transformer.resblocks {
        let a = ln(g, &x, &block.ln_1);
        let a = attention(g, &a, block, n);
        let a = layer_scale(g, a, &block.ls_1);
        x = g.op("Add", &[&x, &a], vec![]);
        let h = ln(g, &x, &block.ln_2);
        let h = linear_layer(g, &h, &block.mlp.c_fc);
        let h = if block.mlp.quick_gelu {
            g.quick_gelu(&h)
        } else {
            g.gelu(&h)
        };
        let h = linear_layer(g, &h, &block.mlp.c_proj);
        let h = layer_scale(g, h, &block.ls_2);
        x = g.op("Add", &[&x, &h], vec![]);
    }
    let x = g.reshape(&x, &[-1, n as i64, d as i64]);
    let first = g.ints("cls_index", &[], &[0]);
    let pooled = g.op("Gather", &[&x, &first], vec![attr_int("axis", 1)]);
    let pooled = ln(g, &pooled, &m.ln_post);
    match &m.proj {
        Some(p) => {
            let p = p.val();
            let dims = p.dims();
            g.linear(&pooled, &values(p), dims, None)
        }
        None => pooled,
    }
}
