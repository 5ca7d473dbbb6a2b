//! `runs/NAME/metrics.csv`: one row per optimiser step (loss, learning rate, throughput) and per
//! validation (dev mAP@k, R@1, mAP@R, val accuracy), appended as training goes. A resumed run
//! first drops rows past the checkpoint it resumes from, so the curve continues without overlap.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::checkpoint::ValidationMetrics;
use crate::error::TrainError;

pub const HEADER: &str =
    "step,epoch,loss,lr,images_per_s,map_at_k,recall_at_1,map_at_r,val_accuracy";

/// One parsed row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub step: usize,
    pub epoch: usize,
    pub loss: Option<f64>,
    pub lr: Option<f64>,
    pub images_per_s: Option<f64>,
    pub map_at_k: Option<f64>,
    pub recall_at_1: Option<f64>,
    pub map_at_r: Option<f64>,
    pub val_accuracy: Option<f64>,
}

/// Appends rows to a run's metrics.csv.
pub struct MetricsLog {
    path: PathBuf,
}

fn cell(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| format!("{v}"))
}

impl MetricsLog {
    /// Opens `run_dir/metrics.csv`, keeping only rows up to `resume_step` (all rows when `None`
    /// and the file is new).
    pub fn open(run_dir: &Path, resume_step: Option<usize>) -> Result<Self, TrainError> {
        let path = run_dir.join("metrics.csv");
        let kept: Vec<Row> = match resume_step {
            Some(step) => read_rows(&path)?
                .into_iter()
                .filter(|r| r.step <= step)
                .collect(),
            None => Vec::new(),
        };
        let mut text = format!("{HEADER}\n");
        for r in &kept {
            text += &format_row(r);
        }
        let mut tmp = tempfile::Builder::new()
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .tempfile_in(run_dir)
            .map_err(|e| TrainError::io(run_dir, e))?;
        tmp.write_all(text.as_bytes())
            .map_err(|e| TrainError::io(&path, e))?;
        tmp.persist(&path)
            .map_err(|e| TrainError::io(&path, e.error))?;
        Ok(MetricsLog { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn append(&self, row: &Row) -> Result<(), TrainError> {
        let mut f = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| TrainError::io(&self.path, e))?;
        f.write_all(format_row(row).as_bytes())
            .map_err(|e| TrainError::io(&self.path, e))
    }

    pub fn step(
        &self,
        step: usize,
        epoch: usize,
        loss: f64,
        lr: f64,
        images_per_s: f64,
    ) -> Result<(), TrainError> {
        self.append(&Row {
            step,
            epoch,
            loss: Some(loss),
            lr: Some(lr),
            images_per_s: Some(images_per_s),
            ..Row::default()
        })
    }

    pub fn validation(
        &self,
        step: usize,
        epoch: usize,
        m: &ValidationMetrics,
    ) -> Result<(), TrainError> {
        self.append(&Row {
            step,
            epoch,
            map_at_k: m.map_at_k,
            recall_at_1: m.recall_at_1,
            map_at_r: m.map_at_r,
            val_accuracy: m.val_accuracy,
            ..Row::default()
        })
    }
}

fn format_row(r: &Row) -> String {
    format!(
        "{},{},{},{},{},{},{},{},{}\n",
        r.step,
        r.epoch,
        cell(r.loss),
        cell(r.lr),
        cell(r.images_per_s),
        cell(r.map_at_k),
        cell(r.recall_at_1),
        cell(r.map_at_r),
        cell(r.val_accuracy)
    )
}

/// Reads a metrics.csv (missing file: no rows).
pub fn read_rows(path: &Path) -> Result<Vec<Row>, TrainError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::io(path, e)),
    };
    let num = |s: &str| -> Option<f64> { s.parse().ok() };
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let c: Vec<&str> = line.split(',').collect();
            if c.len() != 9 {
                return None;
            }
            Some(Row {
                step: c[0].parse().ok()?,
                epoch: c[1].parse().ok()?,
                loss: num(c[2]),
                lr: num(c[3]),
                images_per_s: num(c[4]),
                map_at_k: num(c[5]),
                recall_at_1: num(c[6]),
                map_at_r: num(c[7]),
                val_accuracy: num(c[8]),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_drops_rows_past_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let log = MetricsLog::open(dir.path(), None).unwrap();
        for s in 1..=5 {
            log.step(s, 0, 1.0 / s as f64, 0.1, 10.0).unwrap();
        }
        log.validation(
            4,
            0,
            &ValidationMetrics {
                map_at_k: Some(0.5),
                recall_at_1: None,
                map_at_r: None,
                val_accuracy: None,
            },
        )
        .unwrap();
        let log = MetricsLog::open(dir.path(), Some(3)).unwrap();
        log.step(4, 0, 0.2, 0.1, 10.0).unwrap();
        let rows = read_rows(log.path()).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.step).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!(rows[3].loss, Some(0.2));
    }
}
