//! Embedding a list whole, as one worker of many, or from the workers' part files
//! ([`ShardMode`]) — the step `embed` and `index build` share, so both split and merge the same
//! way (the part format and its checks are in `retrieval::embedding_parts`).
//!
//! A whole run of a list longer than one part is made the workers' way too, as the one worker
//! of one: part by part into the parts folder, then merged (bit for bit what an in-memory run
//! makes), and the parts removed once the output is written. So a run killed after hours,
//! started again with the same arguments, embeds only the parts it had not finished — the
//! same safety as the workers': a part of another list, model or setting is refused, never
//! reused. `--no-resume` embeds in memory only.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use visual_search_data::Sample;
use visual_search_data::loader::SkippedSample;
use visual_search_data::work_lock::{Hold, WorkLock, hold_folder};
use visual_search_inference::ModelSource;
use visual_search_inference::fingerprint::model_fingerprint;
use visual_search_retrieval::embedding_file::Embeddings;
use visual_search_retrieval::embedding_parts::{
    ExistingPart, PartHeader, PartJob, PartSkip, ShardSpec, batch_aligned_chunk_rows, chunk_ranges,
    existing_part, list_digest, merge_parts, part_path, sweep_part_temps, write_part,
};
use visual_search_retrieval::postgres_connect::is_postgres_url;
use visual_search_train::embedding::{EmbedTimings, EmbeddedSet};

use crate::args::model::ModelArgs;
use crate::args::shard::{ShardArgs, ShardMode};
use crate::embedding_run::report_skipped;
use crate::sample_lists::ListArgs;

/// One list to embed, and how this run takes part in it.
pub struct ShardedList<'a> {
    pub mode: ShardMode,
    pub parts_dir: std::path::PathBuf,
    pub job: PartJob,
    pub samples: Arc<[Sample]>,
    pub list: &'a ListArgs,
    /// A whole run (`ShardMode::Whole`) made part by part, so that it can be resumed
    /// ([`ShardedList::finish`] removes its parts).
    resumable: bool,
    /// The parts folder is the default `<output>.parts` (removed once empty).
    default_parts_dir: bool,
    /// The parts folder held for this run: alone by a whole run (it removes the parts at the
    /// end), shared by a worker.
    _hold: Option<WorkLock>,
}

impl Drop for ShardedList<'_> {
    /// A whole run by parts leaves no empty default parts folder behind: neither when it
    /// succeeded ([`ShardedList::finish`] removed the parts) nor when it failed before its
    /// first part. (Workers may be creating their shared folder at this moment: only a whole
    /// run cleans.)
    fn drop(&mut self) {
        if self.resumable && self.default_parts_dir {
            // Succeeds only when nothing else is in it.
            let _ = std::fs::remove_dir(&self.parts_dir);
        }
    }
}

/// What embedding one's share of the parts did.
#[derive(Default)]
struct PartsRun {
    /// Parts found finished, and embedded now.
    before: usize,
    now: usize,
    unreadable: usize,
    timings: EmbedTimings,
}

impl<'a> ShardedList<'a> {
    /// The job of embedding `samples` (read from `list`) with `model`, run in `mode` (from
    /// `shard.mode()`); `views` names what else changes the embeddings (test-time flips and
    /// sizes), so parts made otherwise are refused.
    pub fn new(
        mode: ShardMode,
        shard: &ShardArgs,
        output: &std::path::Path,
        list: &'a ListArgs,
        samples: Arc<[Sample]>,
        model: &ModelArgs,
        views: &str,
    ) -> anyhow::Result<Self> {
        let source = model.source();
        let name = match &source {
            ModelSource::Registry { name, .. } => name.clone(),
            ModelSource::Dir(d) => d.display().to_string(),
        };
        let chunk_rows = batch_aligned_chunk_rows(shard.part_rows, list.batch_size);
        // Random weights (no --weights) differ from run to run: no part could be reused.
        let random_weights = model.random_weights();
        if mode != ShardMode::Whole {
            model.require_weights_for_workers()?;
        }
        let resumable = mode == ShardMode::Whole
            && !shard.no_resume
            && !random_weights
            && samples.len() > chunk_rows
            && (shard.parts.is_some() || !is_postgres_url(&output.to_string_lossy()));
        // Parts are recognised by the list's and the weights' digests; a run without parts
        // needs neither.
        let by_parts = mode != ShardMode::Whole || resumable;
        let fingerprint = match by_parts {
            false => String::new(),
            true => model_fingerprint(&source)
                .with_context(|| format!("reading the weights of {name}"))?,
        };
        let size = model
            .size
            .map_or_else(|| "its own size".to_string(), |s| format!("{s} px"));
        let job = PartJob {
            list_digest: match by_parts {
                false => String::new(),
                true => list_digest(&list.csv, &format!("prefix {}", list.prefix))?,
            },
            rows: samples.len(),
            chunk_rows,
            model: format!(
                "{name} (weights {}) at {size}, {}{views}",
                &fingerprint[..fingerprint.len().min(16)],
                model.device.dtype.name()
            ),
        };
        let parts_dir = shard.parts_dir(output);
        let hold = match (mode, resumable) {
            (ShardMode::Whole, true) => Some(Hold::Alone),
            (ShardMode::Worker(_), _) => Some(Hold::Shared),
            _ => None,
        };
        let _hold = match hold {
            Some(hold) => {
                std::fs::create_dir_all(&parts_dir)
                    .with_context(|| format!("creating {}", parts_dir.display()))?;
                Some(hold_folder(&parts_dir, hold, "an embedding of this list")?)
            }
            None => None,
        };
        Ok(ShardedList {
            mode,
            parts_dir,
            job,
            samples,
            list,
            resumable,
            default_parts_dir: shard.parts.is_none(),
            _hold,
        })
    }

    /// Embeds per the mode with `embed` (which embeds a slice of the list, shows its own
    /// progress and reports its unreadable images): the whole list's set, or `None` for a
    /// worker, whose parts are then written. A merge reports the parts' unreadable images as
    /// `embed` would (`what`, `consequence`).
    pub fn embed(
        &self,
        device: &str,
        what: &str,
        consequence: &str,
        embed: &mut dyn FnMut(Arc<[Sample]>) -> anyhow::Result<EmbeddedSet>,
    ) -> anyhow::Result<Option<EmbeddedSet>> {
        match self.mode {
            ShardMode::Whole if self.resumable => self.whole_by_parts(device, embed).map(Some),
            ShardMode::Whole => embed(self.samples.clone()).map(Some),
            ShardMode::Worker(spec) => self.work(spec, device, embed).map(|()| None),
            ShardMode::Merge => {
                let set = self.merge(true)?;
                report_skipped(&set.skipped, what, consequence);
                Ok(Some(set))
            }
        }
    }

    /// After the output is written: a whole run made by parts removes them (its default
    /// parts folder goes when the list is dropped). A part that cannot be removed is only a
    /// warning.
    pub fn finish(&self) {
        if !self.resumable {
            return;
        }
        for rows in chunk_ranges(self.job.rows, self.job.chunk_rows) {
            let path = part_path(&self.parts_dir, &rows);
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                eprintln!("warning: could not remove {}: {e}", path.display());
            }
        }
    }

    /// The whole list as the one worker of one, then merged: a killed run resumes from its
    /// finished parts.
    fn whole_by_parts(
        &self,
        device: &str,
        embed: &mut dyn FnMut(Arc<[Sample]>) -> anyhow::Result<EmbeddedSet>,
    ) -> anyhow::Result<EmbeddedSet> {
        let start = Instant::now();
        let whole = ShardSpec::new(0, 1).map_err(anyhow::Error::msg)?;
        eprintln!(
            "embedding in parts of {} rows in {} (a killed run started again resumes from them; \
             --no-resume embeds in memory only)",
            self.job.chunk_rows,
            self.parts_dir.display()
        );
        let run = self.embed_parts(whole, device, embed)?;
        if run.now == 0 {
            eprintln!("all {} parts were embedded by an earlier run", run.before);
        }
        let mut set = self.merge(false)?;
        set.timings = EmbedTimings {
            total: start.elapsed(),
            ..run.timings
        };
        Ok(set)
    }

    /// Whether this run makes the output from parts (and needs no model run).
    pub fn is_merge(&self) -> bool {
        self.mode == ShardMode::Merge
    }

    fn work(
        &self,
        spec: ShardSpec,
        device: &str,
        embed: &mut dyn FnMut(Arc<[Sample]>) -> anyhow::Result<EmbeddedSet>,
    ) -> anyhow::Result<()> {
        let run = self.embed_parts(spec, device, embed)?;
        println!(
            "worker {spec}: {} parts ({} rows each) in {} ({} written before, {} now, {} unreadable images); when every worker is done, run again with --merge-parts",
            run.before + run.now,
            self.job.chunk_rows,
            self.parts_dir.display(),
            run.before,
            run.now,
            run.unreadable
        );
        Ok(())
    }

    /// Embeds the parts of worker `spec`'s share that are not finished yet.
    fn embed_parts(
        &self,
        spec: ShardSpec,
        device: &str,
        embed: &mut dyn FnMut(Arc<[Sample]>) -> anyhow::Result<EmbeddedSet>,
    ) -> anyhow::Result<PartsRun> {
        let chunks = chunk_ranges(self.job.rows, self.job.chunk_rows);
        let mine = &chunks[spec.share(chunks.len())];
        let dir = &self.parts_dir;
        let mut run = PartsRun::default();
        let who = match self.mode {
            ShardMode::Whole => String::new(),
            _ => format!("worker {spec}: "),
        };
        // A killed run of this worker may have left temp files of its parts.
        sweep_part_temps(dir, mine);
        for (n, rows) in mine.iter().enumerate() {
            match existing_part(dir, &self.job, rows)? {
                ExistingPart::Done => {
                    run.before += 1;
                    continue;
                }
                ExistingPart::Damaged(why) => {
                    eprintln!("embedding rows {}..{} again: {why}", rows.start, rows.end)
                }
                ExistingPart::Missing => {}
            }
            if self.resumable && run.now == 0 && run.before > 0 {
                eprintln!(
                    "resuming: {} of {} parts were embedded by an earlier run",
                    run.before,
                    mine.len()
                );
            }
            eprintln!(
                "{who}part {} of {} (rows {}..{})",
                n + 1,
                mine.len(),
                rows.start,
                rows.end
            );
            let set = embed(self.samples[rows.clone()].to_vec().into())?;
            run.timings.model += set.timings.model;
            run.timings.waiting_for_data += set.timings.waiting_for_data;
            let skipped: Vec<PartSkip> = set
                .skipped
                .iter()
                .map(|s| PartSkip {
                    row: rows.start + s.sample_index,
                    path: s.path.clone(),
                    reason: s.reason.clone(),
                })
                .collect();
            run.unreadable += skipped.len();
            let header = PartHeader {
                format: 0,
                job: self.job.clone(),
                start: rows.start,
                end: rows.end,
                dim: set.embeddings.dim,
                crc32: 0,
                skipped,
                device: device.to_string(),
                model_seconds: set.timings.model.as_secs_f64(),
            };
            write_part(dir, header, &set.embeddings.data)?;
            run.now += 1;
        }
        Ok(run)
    }

    /// The list's embeddings from its parts; `say` reports the merge (a whole run by parts
    /// does not).
    fn merge(&self, say: bool) -> anyhow::Result<EmbeddedSet> {
        let merged = merge_parts(&self.parts_dir, &self.job).with_context(|| {
            format!(
                "merging the parts of {} in {}",
                self.list.csv.display(),
                self.parts_dir.display()
            )
        })?;
        if say {
            eprintln!(
                "merged {} parts ({:.1} s of model time on {})",
                merged.parts,
                merged.model_seconds,
                merged.devices.join(", ")
            );
        }
        let timings = EmbedTimings {
            // From the parts' headers: a damaged one must not stop the merge over a timing.
            model: std::time::Duration::try_from_secs_f64(merged.model_seconds).unwrap_or_default(),
            ..EmbedTimings::default()
        };
        Ok(EmbeddedSet {
            embeddings: Embeddings {
                rows: self.job.rows,
                dim: merged.dim,
                data: merged.data,
                labels: Some(self.samples.iter().map(|s| s.label).collect()),
            },
            skipped: merged
                .skipped
                .into_iter()
                .map(|s| SkippedSample {
                    sample_index: s.row,
                    path: s.path,
                    reason: s.reason,
                })
                .collect(),
            timings,
        })
    }
}
