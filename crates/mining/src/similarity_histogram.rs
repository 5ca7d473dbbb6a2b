//! The histogram `mine filter` draws: how the mean similarities of review photos to their
//! product spread, with the threshold as a red line. Review photos of the right product form a
//! high mode and wrong or unrelated photos a low one; the threshold belongs in the valley.
//! Labels use the same bundled ASCII subset of DejaVu Sans as the training plots (no system
//! font is needed).

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use crate::error::{MiningError, Result};
use crate::pairs_table::parent_dir;

static FONT: &[u8] = include_bytes!("../../train/assets/DejaVuSans-ascii.ttf");
static REGISTER: Once = Once::new();
const BINS: usize = 40;
/// The PNG's width and height in pixels.
const SIZE: (u32, u32) = (800, 480);

/// Refuses to replace `path` unless it is absent or a PNG of the histogram's size (an earlier
/// run of `mine filter`): the work folder may hold a user's own images.
pub(crate) fn check_replaceable(path: &Path) -> Result<()> {
    let mut head = [0u8; 24];
    match std::fs::File::open(path) {
        Ok(mut f) => {
            let n = std::io::Read::read(&mut f, &mut head).map_err(|e| MiningError::io(path, e))?;
            let ours = n == head.len()
                && head[..8] == *b"\x89PNG\r\n\x1a\n"
                && head[12..16] == *b"IHDR"
                && u32::from_be_bytes([head[16], head[17], head[18], head[19]]) == SIZE.0
                && u32::from_be_bytes([head[20], head[21], head[22], head[23]]) == SIZE.1;
            if ours {
                return Ok(());
            }
            Err(MiningError::invalid(
                path,
                "exists and is not the histogram `visual-search mine filter` drew; refusing to \
                 replace it (choose another --work-dir, or move the file)",
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(MiningError::io(path, e)),
    }
}

/// Counts of `values` in `BINS` equal bins over [-1, 1].
pub fn bin_counts(values: &[f32]) -> Vec<u32> {
    let mut counts = vec![0u32; BINS];
    for v in values.iter().filter(|v| v.is_finite()) {
        let i = (((v + 1.0) / 2.0) * BINS as f32).floor() as isize;
        counts[i.clamp(0, BINS as isize - 1) as usize] += 1;
    }
    counts
}

/// Draws the histogram PNG (temp file, then rename).
pub fn draw_histogram(path: &Path, similarities: &[f32], threshold: f32) -> Result<()> {
    REGISTER.call_once(|| {
        // The bundled font is valid; if registration ever failed, text would be missing, not wrong.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
    let err = |e: String| MiningError::invalid(path, format!("cannot draw the histogram: {e}"));
    let tmp = parent_dir(path).join(".similarity_histogram.tmp.png");
    let counts = bin_counts(similarities);
    let top = counts.iter().copied().max().unwrap_or(0).max(1);
    {
        let root = BitMapBackend::new(&tmp, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "mean similarity of review photos ({} images)",
                    similarities.len()
                ),
                ("sans-serif", 22),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(-1.0f32..1.0f32, 0u32..top + top / 10 + 1)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("mean cosine similarity to the product's catalogue images")
            .y_desc("review photos")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        let width = 2.0 / BINS as f32;
        chart
            .draw_series(counts.iter().enumerate().map(|(i, &c)| {
                let x0 = -1.0 + i as f32 * width;
                let colour = if x0 + width / 2.0 > threshold {
                    BLUE
                } else {
                    RGBColor(160, 160, 160)
                };
                Rectangle::new([(x0, 0), (x0 + width, c)], colour.filled())
            }))
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(LineSeries::new(
                [(threshold, 0), (threshold, top + top / 10)],
                RED.stroke_width(2),
            ))
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| MiningError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_their_bins() {
        let c = bin_counts(&[-1.0, -0.99, 0.0, 0.74, 0.76, 1.0, f32::NAN]);
        assert_eq!(c.iter().sum::<u32>(), 6);
        assert_eq!(c[0], 2);
        assert_eq!(c[20], 1);
        assert_eq!(c[34], 1);
        assert_eq!(c[35], 1);
        assert_eq!(c[39], 1);
    }
}
