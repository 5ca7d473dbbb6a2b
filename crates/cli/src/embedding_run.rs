//! Embedding a sample list with a loaded model the way every command does it: the evaluation
//! transform, a progress bar, and a report of the images that could not be read (the loader
//! skips and counts them; each command says what that means for its output).

use std::sync::Arc;

use anyhow::Context;
use visual_search_data::Sample;
use visual_search_data::loader::{LoaderConfig, SkippedSample};
use visual_search_data::transform::{EvalTransform, SampleTransform};
use visual_search_retrieval::embedding_file::Embeddings;
use visual_search_retrieval::ensemble::average_normalised;
use visual_search_train::embedding::{EmbedTimings, EmbeddedSet, embed_samples};

use crate::progress::images_bar;
use visual_search_inference::test_time_flip::FlipAveraged;
use visual_search_inference::{BatchEmbedder, InferenceModel};

/// Embeds `samples` (row i = sample i), showing a bar labelled `what`; unreadable images are
/// listed on stderr followed by `consequence` ("their rows are all zero", …). With `flip`, each
/// embedding is averaged with its mirror image's (test-time augmentation, twice the model cost).
pub fn embed_with_progress(
    model: &InferenceModel,
    flip: bool,
    samples: Arc<[Sample]>,
    loader: &LoaderConfig,
    what: &str,
    consequence: &str,
) -> anyhow::Result<EmbeddedSet> {
    let transform = Arc::new(EvalTransform::new(
        model.preprocessing.size as u32,
        model.preprocessing.normalization(),
    ));
    let flipped = FlipAveraged { inner: model };
    let embedder: &dyn BatchEmbedder = if flip { &flipped } else { model };
    embed_with_transform(embedder, samples, transform, loader, what, consequence)
}

/// [`embed_with_progress`] through the caller's `transform` (e.g. one that decodes a photo once
/// for several crops of it), with the same bar and report.
pub fn embed_with_transform(
    embedder: &dyn BatchEmbedder,
    samples: Arc<[Sample]>,
    transform: Arc<dyn SampleTransform>,
    loader: &LoaderConfig,
    what: &str,
    consequence: &str,
) -> anyhow::Result<EmbeddedSet> {
    let bar = images_bar(samples.len(), what);
    let set = embed_samples(embedder, samples, transform, loader, |done, _| {
        bar.set_position(done as u64)
    });
    bar.finish_and_clear();
    let set = set?;
    report_skipped(&set.skipped, what, consequence);
    Ok(set)
}

/// Embeds `samples` with each of `scales` (one model loaded at several input sizes, the first
/// its own) and averages the unit embeddings (multi-scale test-time augmentation); with one
/// scale this is [`embed_with_progress`].
pub fn embed_at_scales(
    scales: &[InferenceModel],
    flip: bool,
    samples: Arc<[Sample]>,
    loader: &LoaderConfig,
    what: &str,
    consequence: &str,
) -> anyhow::Result<EmbeddedSet> {
    let mut parts = Vec::with_capacity(scales.len());
    for (i, model) in scales.iter().enumerate() {
        let label = match i {
            0 => what.to_string(),
            _ => format!("{what} at {} px", model.preprocessing.size),
        };
        parts.push(embed_with_progress(
            model,
            flip,
            samples.clone(),
            loader,
            &label,
            consequence,
        )?);
    }
    merge_sets(parts, average_normalised)
}

/// One set from several embeddings of the same images (`combine`: concatenation for an
/// ensemble, mean for test-time views); timings add up, skipped images are the first part's.
pub fn merge_sets(
    mut parts: Vec<EmbeddedSet>,
    combine: fn(&[&Embeddings]) -> Option<Embeddings>,
) -> anyhow::Result<EmbeddedSet> {
    if parts.len() <= 1 {
        return parts.pop().context("nothing was embedded");
    }
    let embeddings = combine(&parts.iter().map(|p| &p.embeddings).collect::<Vec<_>>())
        .context("the models embedded different numbers of images")?;
    let mut timings = EmbedTimings::default();
    for p in &parts {
        timings.waiting_for_data += p.timings.waiting_for_data;
        timings.model += p.timings.model;
        timings.total += p.timings.total;
    }
    Ok(EmbeddedSet {
        embeddings,
        skipped: parts.swap_remove(0).skipped,
        timings,
    })
}

/// Lists (up to 20 of) the images that could not be read.
pub fn report_skipped(skipped: &[SkippedSample], what: &str, consequence: &str) {
    if skipped.is_empty() {
        return;
    }
    eprintln!(
        "{what}: {} image(s) could not be read; {consequence}:",
        skipped.len()
    );
    for s in skipped.iter().take(20) {
        let path = s.path.display().to_string();
        // The data crate's errors start with the file already.
        let reason = s
            .reason
            .strip_prefix(&format!("{path}: "))
            .unwrap_or(&s.reason);
        eprintln!("  row {}: {path}: {reason}", s.sample_index);
    }
    if skipped.len() > 20 {
        eprintln!("  … and {} more", skipped.len() - 20);
    }
}
