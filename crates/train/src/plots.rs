//! PNG plots of a run (`loss.png`, `lr.png`, `map.png`) drawn from its metrics.csv with
//! plotters, redrawn after every validation. Labels use a bundled ASCII subset of DejaVu Sans
//! (`assets/`, made by `tools/make_plot_font.sh`), so no system font is needed.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use crate::error::TrainError;
use crate::metrics_log::{Row, read_rows};

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans-ascii.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        // The bundled font is valid; if registration ever failed, text would be missing, not wrong.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Draws one series as a line chart into `path` (atomically: temp file, then rename).
pub fn line_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    points: &[(f64, f64)],
) -> Result<(), TrainError> {
    register_font();
    let plot_err =
        |e: String| TrainError::Invalid(format!("{}: cannot draw plot: {e}", path.display()));
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp.png",
        path.file_stem().and_then(|s| s.to_str()).unwrap_or("plot")
    ));
    {
        let root = BitMapBackend::new(&tmp, (800, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(e.to_string()))?;
        let (x0, x1) = points
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                (a.min(p.0), b.max(p.0))
            });
        let (y0, y1) = points
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                (a.min(p.1), b.max(p.1))
            });
        let (x0, x1) = if points.is_empty() {
            (0.0, 1.0)
        } else if x1 > x0 {
            (x0, x1)
        } else {
            (x0 - 1.0, x1 + 1.0)
        };
        let pad = ((y1 - y0).abs() * 0.05).max(1e-9);
        let (y0, y1) = if points.is_empty() {
            (0.0, 1.0)
        } else {
            (y0 - pad, y1 + pad)
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| plot_err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(y_label)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| plot_err(e.to_string()))?;
        chart
            .draw_series(LineSeries::new(points.iter().copied(), &BLUE))
            .map_err(|e| plot_err(e.to_string()))?;
        if points.len() < 40 {
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 3, BLUE.filled())))
                .map_err(|e| plot_err(e.to_string()))?;
        }
        root.present().map_err(|e| plot_err(e.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// Redraws loss.png, lr.png and map.png from `run_dir/metrics.csv`.
pub fn plot_run(run_dir: &Path) -> Result<(), TrainError> {
    let rows = read_rows(&run_dir.join("metrics.csv"))?;
    let series = |f: fn(&Row) -> Option<f64>| -> Vec<(f64, f64)> {
        rows.iter()
            .filter_map(|r| f(r).map(|v| (r.step as f64, v)))
            .collect()
    };
    line_chart(
        &run_dir.join("loss.png"),
        "training loss",
        "loss",
        &series(|r| r.loss),
    )?;
    line_chart(
        &run_dir.join("lr.png"),
        "learning rate (head)",
        "lr",
        &series(|r| r.lr),
    )?;
    line_chart(
        &run_dir.join("map.png"),
        "validation mAP@1000 (dev set)",
        "mAP@1000",
        &series(|r| r.map_at_k),
    )?;
    Ok(())
}
