//! `--shard I/N`, `--merge-parts`, `--parts`, `--part-rows`: one job split over many worker
//! processes (`embed`, `index build`, `mine features`), then merged. Launchers number their
//! workers in environment variables, so a worker without `--shard` takes its number from a
//! Kubernetes Indexed Job (`JOB_COMPLETION_INDEX`), a Slurm array (`SLURM_ARRAY_TASK_ID`) or
//! `VISUAL_SEARCH_SHARD`, and the worker count from `VISUAL_SEARCH_SHARDS` (or
//! `SLURM_ARRAY_TASK_COUNT`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use visual_search_retrieval::embedding_parts::{DEFAULT_CHUNK_ROWS, ShardSpec};

/// Which worker this run is, or whether it merges the workers' output.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct WorkerArgs {
    /// Run as worker I of N (0-based, e.g. `2/8`): embed only this worker's share of the list
    /// (into part files, or a store of its own for `mine features`; a re-run skips what is
    /// already written), then merge with --merge-parts. Without it, a worker number in JOB_COMPLETION_INDEX (Kubernetes
    /// Indexed Job), SLURM_ARRAY_TASK_ID (Slurm array) or VISUAL_SEARCH_SHARD, with the count
    /// in VISUAL_SEARCH_SHARDS (or SLURM_ARRAY_TASK_COUNT), makes this run a worker (unset
    /// them to run the whole job in one process).
    #[arg(long, conflicts_with = "merge_parts")]
    pub shard: Option<ShardSpec>,
    /// Make the output from what the workers wrote (run with the workers' arguments, without
    /// --shard): the same output one process makes, bit for bit.
    #[arg(long)]
    pub merge_parts: bool,
}

/// How a list is split over workers into part files.
#[derive(clap::Args, Debug, Clone)]
pub struct ShardArgs {
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Folder of the part files, shared by the workers and the merge [default: the output's
    /// path with `.parts` appended].
    #[arg(long)]
    pub parts: Option<PathBuf>,
    /// List rows per part file (rounded up to a multiple of --batch-size); the unit a killed
    /// worker redoes. Workers and the merge must agree.
    #[arg(long, default_value_t = DEFAULT_CHUNK_ROWS)]
    pub part_rows: usize,
    /// Without --shard, a list longer than one part is still embedded part by part into the
    /// parts folder, so a killed run, started again with the same arguments, keeps the parts
    /// it finished (the parts go once the output is written). This embeds it in memory only.
    #[arg(long)]
    pub no_resume: bool,
}

/// What this run does with the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardMode {
    /// All of it, in this process.
    Whole,
    /// One worker's share, into part files.
    Worker(ShardSpec),
    /// The output, from the part files.
    Merge,
}

impl Default for ShardArgs {
    fn default() -> Self {
        ShardArgs {
            worker: WorkerArgs::default(),
            parts: None,
            part_rows: DEFAULT_CHUNK_ROWS,
            no_resume: false,
        }
    }
}

impl ShardArgs {
    pub fn mode(&self) -> anyhow::Result<ShardMode> {
        self.worker.mode()
    }

    /// The parts folder: --parts, else `output` + `.parts`.
    pub fn parts_dir(&self, output: &Path) -> PathBuf {
        self.parts.clone().unwrap_or_else(|| {
            let mut name = output.as_os_str().to_owned();
            name.push(".parts");
            PathBuf::from(name)
        })
    }
}

impl WorkerArgs {
    /// The mode, reading the launcher's variables when neither flag is given.
    pub fn mode(&self) -> anyhow::Result<ShardMode> {
        self.mode_with_env(|k| std::env::var(k).ok())
    }

    fn mode_with_env(&self, var: impl Fn(&str) -> Option<String>) -> anyhow::Result<ShardMode> {
        if self.merge_parts {
            return Ok(ShardMode::Merge);
        }
        let spec = match self.shard {
            Some(s) => s,
            None => match shard_from_env(var)? {
                Some((s, from)) => {
                    eprintln!("worker {s} (from {from})");
                    s
                }
                None => return Ok(ShardMode::Whole),
            },
        };
        Ok(ShardMode::Worker(spec))
    }
}

/// The worker number and count a launcher set, and the variable it came from.
fn shard_from_env(
    var: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<(ShardSpec, &'static str)>> {
    let number = |name: &'static str| -> anyhow::Result<Option<usize>> {
        var(name)
            .map(|v| {
                v.trim()
                    .parse::<usize>()
                    .with_context(|| format!("{name}={v:?} is not a worker number"))
            })
            .transpose()
    };
    let (index, from) = if let Some(i) = number("VISUAL_SEARCH_SHARD")? {
        (i, "VISUAL_SEARCH_SHARD")
    } else if let Some(i) = number("JOB_COMPLETION_INDEX")? {
        (i, "JOB_COMPLETION_INDEX")
    } else if let Some(i) = number("SLURM_ARRAY_TASK_ID")? {
        let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        let Some(i) = i.checked_sub(min) else {
            bail!("SLURM_ARRAY_TASK_ID {i} is below SLURM_ARRAY_TASK_MIN {min}");
        };
        (i, "SLURM_ARRAY_TASK_ID")
    } else {
        return Ok(None);
    };
    let count = match number("VISUAL_SEARCH_SHARDS")? {
        Some(n) => n,
        None => match (from, number("SLURM_ARRAY_TASK_COUNT")?) {
            ("SLURM_ARRAY_TASK_ID", Some(n)) => n,
            _ => bail!(
                "{from} makes this run worker {index}, but the number of workers is unknown: \
                 set VISUAL_SEARCH_SHARDS (or pass --shard I/N)"
            ),
        },
    };
    Ok(Some((ShardSpec::new(index, count)?, from)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn mode(args: &WorkerArgs, env: &[(&str, &str)]) -> anyhow::Result<ShardMode> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        args.mode_with_env(|k| env.get(k).cloned())
    }

    #[test]
    fn the_worker_number_comes_from_the_flag_or_the_launcher() {
        let none = WorkerArgs::default();
        assert_eq!(mode(&none, &[]).unwrap(), ShardMode::Whole);
        let w = |i, n| ShardMode::Worker(ShardSpec::new(i, n).unwrap());
        let k8s = [("JOB_COMPLETION_INDEX", "2"), ("VISUAL_SEARCH_SHARDS", "4")];
        assert_eq!(mode(&none, &k8s).unwrap(), w(2, 4));
        let slurm = [
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
        ];
        assert_eq!(mode(&none, &slurm).unwrap(), w(4, 8));
        let e = mode(&none, &[("JOB_COMPLETION_INDEX", "1")]).unwrap_err();
        assert!(e.to_string().contains("VISUAL_SEARCH_SHARDS"), "{e}");
        assert!(
            mode(
                &none,
                &[("JOB_COMPLETION_INDEX", "4"), ("VISUAL_SEARCH_SHARDS", "4")]
            )
            .is_err()
        );
        assert!(mode(&none, &[("VISUAL_SEARCH_SHARD", "x")]).is_err());

        let flag = WorkerArgs {
            shard: Some(ShardSpec::new(0, 1).unwrap()),
            ..WorkerArgs::default()
        };
        assert_eq!(mode(&flag, &k8s).unwrap(), w(0, 1));
        let merge = WorkerArgs {
            merge_parts: true,
            ..WorkerArgs::default()
        };
        assert_eq!(mode(&merge, &k8s).unwrap(), ShardMode::Merge);
        assert_eq!(
            ShardArgs::default().parts_dir(Path::new("out/emb.npy")),
            PathBuf::from("out/emb.npy.parts")
        );
    }
}
