//! Sub-centre ArcFace with per-class dynamic margins (`ArcMarginProduct_subcenter` plus
//! `ArcFaceLossAdaptiveMargin` of the Google Landmark 2020 winners, used by the challenge
//! solution). SPEC "Model":
//!
//! - weights `W` of shape (C·k, D), initialised U(-1/√D, 1/√D); cosine between the normalised
//!   feature and each normalised row, viewed (B, C, k) and maxed over the k sub-centres;
//! - margin of class c from its image count: `t_c = n_c^(-1/4)`,
//!   `m_c = (t_c - min t) / (max t - min t) · m + m_min` (rarer classes get larger margins; when
//!   every class has the same count, all get `m + m_min`);
//! - for the target class `phi = cos·cos(m) - sin·sin(m)`, replaced by `cos - sin(π - m)·m`
//!   where `cos <= cos(π - m)`; logits `s · (onehot·phi + (1 - onehot)·cos)`; cross-entropy.
//!
//! `sin = sqrt(max(0, 1 - cos²))`: the clamp only matters where the reference would produce NaN.

use burn::module::{Module, Param};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

use crate::embedder::l2_normalize;

/// The sub-centre weight matrix.
#[derive(Module, Debug)]
pub struct ArcFaceSubcenter {
    /// `[classes * k, dim]`, sub-centres of class c in rows `c*k .. c*k + k`.
    pub weight: Param<Tensor<2>>,
    pub classes: usize,
    pub k: usize,
}

impl ArcFaceSubcenter {
    pub fn new(dim: usize, classes: usize, k: usize, device: &Device) -> Self {
        let bound = 1.0 / (dim as f64).sqrt();
        ArcFaceSubcenter {
            weight: Param::from_tensor(Tensor::random(
                [classes * k, dim],
                Distribution::Uniform(-bound, bound),
                device,
            )),
            classes,
            k,
        }
    }

    /// Best sub-centre cosine per class, `[B, classes]`.
    pub fn cosine(&self, features: Tensor<2>) -> Tensor<2> {
        let [b, _] = features.dims();
        let f = l2_normalize(features);
        let w = l2_normalize(self.weight.val());
        let all = f.matmul(w.transpose());
        all.reshape([b, self.classes, self.k])
            .max_dim(2)
            .reshape([b, self.classes])
    }
}

/// Per-class margins from class image counts (SPEC formula).
pub fn dynamic_margins(counts: &[usize], m: f64, m_min: f64) -> Vec<f64> {
    let t: Vec<f64> = counts
        .iter()
        .map(|&n| (n.max(1) as f64).powf(-0.25))
        .collect();
    let (lo, hi) = t
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    t.iter()
        .map(|&v| {
            if hi > lo {
                (v - lo) / (hi - lo) * m + m_min
            } else {
                m + m_min
            }
        })
        .collect()
}

/// The adaptive-margin ArcFace loss for a batch.
#[derive(Debug, Clone)]
pub struct ArcFaceLoss {
    /// Margin per class index.
    pub margins: Vec<f64>,
    /// Logit scale.
    pub s: f64,
}

impl ArcFaceLoss {
    /// Margin-adjusted, scaled logits `[B, C]` for `labels` (class indices).
    pub fn logits(&self, cosine: Tensor<2>, labels: &[usize]) -> Tensor<2> {
        let [b, c] = cosine.dims();
        assert_eq!(labels.len(), b, "one label per row");
        let device = cosine.device();
        let column = |f: &dyn Fn(f64) -> f64| {
            let v: Vec<f32> = labels.iter().map(|&l| f(self.margins[l]) as f32).collect();
            Tensor::<2>::from_data(TensorData::new(v, [b, 1]), &device).cast(cosine.dtype())
        };
        let cos_m = column(&|m| m.cos());
        let sin_m = column(&|m| m.sin());
        let th = column(&|m| (std::f64::consts::PI - m).cos());
        let mm = column(&|m| (std::f64::consts::PI - m).sin() * m);
        let sine = (cosine.clone().powi_scalar(2).neg() + 1.0)
            .clamp_min(0.0)
            .sqrt();
        let phi = cosine.clone() * cos_m - sine * sin_m;
        let fallback = cosine.clone() - mm;
        let phi = fallback.mask_where(cosine.clone().greater(th), phi);
        let onehot = one_hot(labels, c, &device).cast(cosine.dtype());
        (onehot.clone() * phi + (onehot.neg() + 1.0) * cosine).mul_scalar(self.s)
    }

    /// Mean cross-entropy of the margin logits.
    pub fn forward(&self, cosine: Tensor<2>, labels: &[usize]) -> Tensor<1> {
        let c = cosine.dims()[1];
        let device = cosine.device();
        let logits = self.logits(cosine, labels);
        let onehot = one_hot(labels, c, &device).cast(logits.dtype());
        (log_softmax(logits, 1) * onehot).sum_dim(1).neg().mean()
    }
}

/// `[B, C]` one-hot rows of `labels`.
pub fn one_hot(labels: &[usize], classes: usize, device: &Device) -> Tensor<2> {
    let idx: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [labels.len()]), device);
    idx.one_hot(classes).float()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margins_span_m_min_to_m_min_plus_m() {
        let m = dynamic_margins(&[100, 10, 1], 0.45, 0.05);
        assert!((m[0] - 0.05).abs() < 1e-12 && (m[2] - 0.50).abs() < 1e-12);
        assert!(m[1] > m[0] && m[1] < m[2]);
        assert_eq!(dynamic_margins(&[7, 7], 0.45, 0.05), vec![0.5, 0.5]);
    }
}
