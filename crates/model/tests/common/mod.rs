//! Helpers shared by the kernel parity tests.

#![allow(dead_code)] // each test binary uses a part

pub mod conv_fixture;

/// Largest difference over the largest reference magnitude.
pub fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    let diff = got
        .iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

/// Each element within 1e-5 of the reference, relative to max(|reference|, 1).
pub fn assert_close_each(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
            "{what}[{i}]: {a} vs {b}"
        );
    }
}
