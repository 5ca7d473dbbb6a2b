//! Embedding a list whole, as one worker of many, or from the workers' part files
//! ([`ShardMode`]) — the step `embed` and `index build` share, so both split and merge the same
//! way (the part format and its checks are in `retrieval::embedding_parts`).

use std::sync::Arc;

use anyhow::Context;
use visual_search_data::Sample;
use visual_search_data::loader::SkippedSample;
use visual_search_inference::ModelSource;
use visual_search_inference::fingerprint::model_fingerprint;
use visual_search_retrieval::embedding_file::Embeddings;
use visual_search_retrieval::embedding_parts::{
    ExistingPart, PartHeader, PartJob, PartSkip, ShardSpec, batch_aligned_chunk_rows, chunk_ranges,
    existing_part, list_digest, merge_parts, sweep_part_temps, write_part,
};
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
        let fingerprint = match mode {
            ShardMode::Whole => String::new(),
            _ => model_fingerprint(&source)
                .with_context(|| format!("reading the weights of {name}"))?,
        };
        let size = model
            .size
            .map_or_else(|| "its own size".to_string(), |s| format!("{s} px"));
        let job = PartJob {
            list_digest: match mode {
                ShardMode::Whole => String::new(),
                _ => list_digest(&list.csv, &format!("prefix {}", list.prefix))?,
            },
            rows: samples.len(),
            chunk_rows: batch_aligned_chunk_rows(shard.part_rows, list.batch_size),
            model: format!(
                "{name} (weights {}) at {size}, {}{views}",
                &fingerprint[..fingerprint.len().min(16)],
                model.device.dtype.name()
            ),
        };
        Ok(ShardedList {
            mode,
            parts_dir: shard.parts_dir(output),
            job,
            samples,
            list,
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
            ShardMode::Whole => embed(self.samples.clone()).map(Some),
            ShardMode::Worker(spec) => self.work(spec, device, embed).map(|()| None),
            ShardMode::Merge => {
                let set = self.merge()?;
                report_skipped(&set.skipped, what, consequence);
                Ok(Some(set))
            }
        }
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
        let chunks = chunk_ranges(self.job.rows, self.job.chunk_rows);
        let mine = &chunks[spec.share(chunks.len())];
        let dir = &self.parts_dir;
        let (mut before, mut now, mut unreadable) = (0, 0, 0);
        // A killed run of this worker may have left temp files of its parts.
        sweep_part_temps(dir, mine);
        for (n, rows) in mine.iter().enumerate() {
            match existing_part(dir, &self.job, rows)? {
                ExistingPart::Done => {
                    before += 1;
                    continue;
                }
                ExistingPart::Damaged(why) => {
                    eprintln!("embedding rows {}..{} again: {why}", rows.start, rows.end)
                }
                ExistingPart::Missing => {}
            }
            eprintln!(
                "worker {spec}: part {} of {} (rows {}..{})",
                n + 1,
                mine.len(),
                rows.start,
                rows.end
            );
            let set = embed(self.samples[rows.clone()].to_vec().into())?;
            let skipped: Vec<PartSkip> = set
                .skipped
                .iter()
                .map(|s| PartSkip {
                    row: rows.start + s.sample_index,
                    path: s.path.clone(),
                    reason: s.reason.clone(),
                })
                .collect();
            unreadable += skipped.len();
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
            now += 1;
        }
        println!(
            "worker {spec}: {} parts ({} rows each) in {} ({before} written before, {now} now, {unreadable} unreadable images); when every worker is done, run again with --merge-parts",
            mine.len(),
            self.job.chunk_rows,
            dir.display()
        );
        Ok(())
    }

    fn merge(&self) -> anyhow::Result<EmbeddedSet> {
        let merged = merge_parts(&self.parts_dir, &self.job).with_context(|| {
            format!(
                "merging the parts of {} in {}",
                self.list.csv.display(),
                self.parts_dir.display()
            )
        })?;
        eprintln!(
            "merged {} parts ({:.1} s of model time on {})",
            merged.parts,
            merged.model_seconds,
            merged.devices.join(", ")
        );
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
