//! torchvision's AutoAugment (ImageNet policy) and RandAugment: which operation, with which
//! magnitude, with which probability. Tables and magnitude ranges are torchvision's
//! (`transforms/autoaugment.py`); the random draws use our seeded per-sample RNG.

use rand::Rng;

use super::pil_ops::Op;

/// Operation names of the policy tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Identity,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Rotate,
    Brightness,
    Color,
    Contrast,
    Sharpness,
    Posterize,
    Solarize,
    AutoContrast,
    Equalize,
    Invert,
}

use Kind::*;

/// torchvision's `_augmentation_space(num_bins, image_size)`: the magnitude of bin `bin` and
/// whether the operation's sign is random.
pub fn magnitude(kind: Kind, bin: usize, bins: usize, width: u32, height: u32) -> (f64, bool) {
    let lin = |lo: f64, hi: f64| {
        if bins > 1 {
            lo + (hi - lo) * bin as f64 / (bins - 1) as f64
        } else {
            lo
        }
    };
    match kind {
        ShearX | ShearY => (lin(0.0, 0.3), true),
        TranslateX => (lin(0.0, 150.0 / 331.0 * width as f64), true),
        TranslateY => (lin(0.0, 150.0 / 331.0 * height as f64), true),
        Rotate => (lin(0.0, 30.0), true),
        Brightness | Color | Contrast | Sharpness => (lin(0.0, 0.9), true),
        // 8 - (arange(bins) / ((bins - 1) / 4)).round()
        Posterize => (
            8.0 - (bin as f64 / ((bins - 1) as f64 / 4.0)).round_ties_even(),
            false,
        ),
        Solarize => (lin(255.0, 0.0), false),
        Identity | AutoContrast | Equalize | Invert => (0.0, false),
    }
}

/// The operation for `kind` at a signed magnitude.
pub fn op(kind: Kind, m: f64) -> Op {
    match kind {
        Identity => Op::Identity,
        ShearX => Op::ShearX(m),
        ShearY => Op::ShearY(m),
        TranslateX => Op::TranslateX(m),
        TranslateY => Op::TranslateY(m),
        Rotate => Op::Rotate(m),
        Brightness => Op::Brightness(m),
        Color => Op::Color(m),
        Contrast => Op::Contrast(m),
        Sharpness => Op::Sharpness(m),
        Posterize => Op::Posterize(m as u8),
        Solarize => Op::Solarize(m),
        AutoContrast => Op::AutoContrast,
        Equalize => Op::Equalize,
        Invert => Op::Invert,
    }
}

type Step = (Kind, f64, Option<usize>);

/// AutoAugmentPolicy.IMAGENET: 25 sub-policies of two (operation, probability, magnitude bin).
pub const IMAGENET_POLICY: [(Step, Step); 25] = [
    ((Posterize, 0.4, Some(8)), (Rotate, 0.6, Some(9))),
    ((Solarize, 0.6, Some(5)), (AutoContrast, 0.6, None)),
    ((Equalize, 0.8, None), (Equalize, 0.6, None)),
    ((Posterize, 0.6, Some(7)), (Posterize, 0.6, Some(6))),
    ((Equalize, 0.4, None), (Solarize, 0.2, Some(4))),
    ((Equalize, 0.4, None), (Rotate, 0.8, Some(8))),
    ((Solarize, 0.6, Some(3)), (Equalize, 0.6, None)),
    ((Posterize, 0.8, Some(5)), (Equalize, 1.0, None)),
    ((Rotate, 0.2, Some(3)), (Solarize, 0.6, Some(8))),
    ((Equalize, 0.6, None), (Posterize, 0.4, Some(6))),
    ((Rotate, 0.8, Some(8)), (Color, 0.4, Some(0))),
    ((Rotate, 0.4, Some(9)), (Equalize, 0.6, None)),
    ((Equalize, 0.0, None), (Equalize, 0.8, None)),
    ((Invert, 0.6, None), (Equalize, 1.0, None)),
    ((Color, 0.6, Some(4)), (Contrast, 1.0, Some(8))),
    ((Rotate, 0.8, Some(8)), (Color, 1.0, Some(2))),
    ((Color, 0.8, Some(8)), (Solarize, 0.8, Some(7))),
    ((Sharpness, 0.4, Some(7)), (Invert, 0.6, None)),
    ((ShearX, 0.6, Some(5)), (Equalize, 1.0, None)),
    ((Color, 0.4, Some(0)), (Equalize, 0.6, None)),
    ((Equalize, 0.4, None), (Solarize, 0.2, Some(4))),
    ((Solarize, 0.6, Some(5)), (AutoContrast, 0.6, None)),
    ((Invert, 0.6, None), (Equalize, 1.0, None)),
    ((Color, 0.6, Some(4)), (Contrast, 1.0, Some(8))),
    ((Equalize, 0.8, None), (Equalize, 0.6, None)),
];

/// AutoAugment (ImageNet policy, 10 magnitude bins): one random sub-policy; each of its two
/// steps applied with its probability, signed magnitudes negated with probability ½.
pub fn auto_augment_ops(rng: &mut impl Rng, width: u32, height: u32) -> Vec<Op> {
    let (a, b) = IMAGENET_POLICY[rng.random_range(0..IMAGENET_POLICY.len())];
    let mut ops = Vec::new();
    for (kind, p, bin) in [a, b] {
        if rng.random::<f64>() <= p {
            let (mut m, signed) = match bin {
                Some(bin) => magnitude(kind, bin, 10, width, height),
                None => (0.0, false),
            };
            if signed && rng.random_bool(0.5) {
                m = -m;
            }
            ops.push(op(kind, m));
        }
    }
    ops
}

/// RandAugment's operations (torchvision: no Invert).
const RAND_AUGMENT_KINDS: [Kind; 14] = [
    Identity,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Rotate,
    Brightness,
    Color,
    Contrast,
    Sharpness,
    Posterize,
    Solarize,
    AutoContrast,
    Equalize,
];

/// RandAugment (31 magnitude bins): `num_ops` uniformly drawn operations at bin `magnitude`.
pub fn rand_augment_ops(
    rng: &mut impl Rng,
    num_ops: usize,
    magnitude_bin: usize,
    width: u32,
    height: u32,
) -> Vec<Op> {
    (0..num_ops)
        .map(|_| {
            let kind = RAND_AUGMENT_KINDS[rng.random_range(0..RAND_AUGMENT_KINDS.len())];
            let (mut m, signed) = magnitude(kind, magnitude_bin.min(30), 31, width, height);
            if signed && rng.random_bool(0.5) {
                m = -m;
            }
            op(kind, m)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magnitude_tables_match_torchvision() {
        // Posterize over 10 bins: 8 8 7 7 6 6 5 5 4 4 (torch rounds half to even).
        let p: Vec<f64> = (0..10)
            .map(|b| magnitude(Posterize, b, 10, 1, 1).0)
            .collect();
        assert_eq!(p, vec![8.0, 8.0, 7.0, 7.0, 6.0, 6.0, 5.0, 5.0, 4.0, 4.0]);
        assert!((magnitude(Rotate, 9, 10, 1, 1).0 - 30.0).abs() < 1e-12);
        assert!((magnitude(TranslateX, 9, 10, 331, 1).0 - 150.0).abs() < 1e-9);
        assert_eq!(magnitude(Solarize, 0, 10, 1, 1).0, 255.0);
    }
}
