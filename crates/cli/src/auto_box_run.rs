//! `--auto-box` for the commands that embed queries (`rank`, `eval`, `search`): for a query
//! photo without a box, its windows (four corners and the centre by default) are embedded with
//! the same model loaded at the window side, and the query becomes the window whose catalogue
//! matches name one product more clearly than the whole photo's. The method and its exact rule
//! are in `retrieval::auto_box`.

use std::sync::Arc;

use anyhow::{Context, bail};
use visual_search_data::Sample;
use visual_search_data::formats::Crop;
use visual_search_data::repeated_photo_transform::RepeatedPhotoTransform;
use visual_search_data::transform::EvalTransform;
use visual_search_inference::InferenceModel;
use visual_search_retrieval::auto_box::AutoBox;
use visual_search_retrieval::matrix::MatrixView;
use visual_search_retrieval::topk::top_k;
use visual_search_train::embedding::EmbeddedSet;

use crate::args::model::ModelArgs;
use crate::dev_set_run::eval_loader;
use crate::embedding_run::embed_with_transform;

/// Finding the product in query photos that have no box.
#[derive(clap::Args, Debug, Clone)]
pub struct AutoBoxArgs {
    /// For query photos without a box: also search with windows of the photo (its four
    /// corners and its centre, each 0.45 of it wide and high) and use the window whose 20 best
    /// catalogue items name one product most clearly, when that beats the whole photo by
    /// --auto-box-min-gain. Cost per query: the photo plus five windows at --auto-box-scale
    /// times the model's side (5 x 0.63² = 1.98 at the default), 2.98 embeddings in all, plus
    /// one search for the six. Thorough (about 10 embeddings, finds more products in clutter):
    /// --auto-box-positions 3 --auto-box-scale 1
    #[arg(long)]
    pub auto_box: bool,
    /// How much higher a window's confidence (0 to 1: the share of its first product among the
    /// products of its best catalogue items) must be than the whole photo's.
    #[arg(long, default_value_t = AutoBox::default().min_gain)]
    pub auto_box_min_gain: f32,
    /// Windows are embedded at this fraction of the model's input side.
    #[arg(long, default_value_t = AutoBox::default().window_scale)]
    pub auto_box_scale: f32,
    /// Window places along each side of the photo (2: the four corners, plus the centre;
    /// 3: nine windows).
    #[arg(long, default_value_t = AutoBox::default().positions)]
    pub auto_box_positions: usize,
    /// The windows' side, as a fraction of the photo's width and height.
    #[arg(long, default_value_t = AutoBox::default().window)]
    pub auto_box_window: f32,
}

impl AutoBoxArgs {
    /// Off.
    pub fn off() -> Self {
        AutoBoxArgs {
            auto_box: false,
            auto_box_min_gain: AutoBox::default().min_gain,
            auto_box_scale: AutoBox::default().window_scale,
            auto_box_positions: AutoBox::default().positions,
            auto_box_window: AutoBox::default().window,
        }
    }

    /// The knobs when `--auto-box` is on.
    pub fn params(&self) -> anyhow::Result<Option<AutoBox>> {
        if !self.auto_box {
            return Ok(None);
        }
        let params = AutoBox {
            min_gain: self.auto_box_min_gain,
            window_scale: self.auto_box_scale,
            positions: self.auto_box_positions,
            window: self.auto_box_window,
            ..AutoBox::default()
        };
        params.validate().map_err(anyhow::Error::msg)?;
        Ok(Some(params))
    }

    /// The model at the window side, when `--auto-box` is on (`model` loads the main model).
    pub fn window_model(
        &self,
        model: &ModelArgs,
        own_size: usize,
    ) -> anyhow::Result<Option<InferenceModel>> {
        let Some(params) = self.params()? else {
            return Ok(None);
        };
        let size = params.window_side(own_size);
        let loaded = ModelArgs {
            size: Some(size),
            ..model.clone()
        }
        .load()
        .with_context(|| format!("loading the model at {size} px for --auto-box"))?;
        Ok(Some(loaded))
    }
}

/// What the window search did.
#[derive(Debug, Default, Clone, Copy)]
pub struct AutoBoxReport {
    /// Queries without a box that were searched.
    pub searched: usize,
    /// Of those, the ones a window won for.
    pub boxed: usize,
    /// Time spent embedding the windows and choosing.
    pub seconds: f64,
}

/// Replaces, in `queries` (the whole photos' embeddings of `samples`), the embedding of each
/// photo without a box by its winning window's, when one wins against `gallery` (`dim`-wide
/// unit rows, whose products are `gallery_labels`); the windows are embedded with
/// `window_model`.
#[allow(clippy::too_many_arguments)]
pub fn box_queries(
    window_model: &InferenceModel,
    params: &AutoBox,
    samples: &[Sample],
    queries: &mut EmbeddedSet,
    gallery: &[f32],
    gallery_labels: &[i64],
    batch_size: usize,
    workers: Option<usize>,
) -> anyhow::Result<AutoBoxReport> {
    let started = std::time::Instant::now();
    let dim = queries.embeddings.dim;
    if window_model.dim != dim {
        bail!(
            "the window model gives {}-d rows, the queries are {dim}-d",
            window_model.dim
        );
    }
    let open: Vec<usize> = (0..samples.len())
        .filter(|&i| samples[i].crop == Crop::None)
        .collect();
    let windows = params.windows();
    let window_samples: Arc<[Sample]> = open
        .iter()
        .flat_map(|&i| {
            windows.iter().map(move |w| Sample {
                crop: Crop::Window(*w),
                ..samples[i].clone()
            })
        })
        .collect();
    // The windows of a photo are consecutive samples: decode the photo once for them.
    let transform = Arc::new(RepeatedPhotoTransform::new(EvalTransform::new(
        window_model.preprocessing.size as u32,
        window_model.preprocessing.normalization(),
    )));
    let embedded = embed_with_transform(
        window_model,
        window_samples,
        transform,
        &eval_loader(batch_size, workers),
        "auto-box windows",
        "they cannot win",
    )?;
    let per = windows.len();
    let mut all = Vec::with_capacity(open.len() * (1 + per) * dim);
    for (k, &i) in open.iter().enumerate() {
        all.extend_from_slice(queries.embeddings.row(i));
        for w in 0..per {
            all.extend_from_slice(embedded.embeddings.row(k * per + w));
        }
    }
    let rows = all.len() / dim.max(1);
    let top = top_k(
        MatrixView::f32(&all, rows, dim),
        MatrixView::f32(gallery, gallery.len() / dim.max(1), dim),
        params.candidates,
    );
    let mut report = AutoBoxReport {
        searched: open.len(),
        ..AutoBoxReport::default()
    };
    for (k, &i) in open.iter().enumerate() {
        let score = |r: usize| {
            let labels = top.row(r).iter().map(|&g| gallery_labels[g as usize]);
            params.confidence(labels.zip(top.row_scores(r).iter().copied()))
        };
        let base = k * (1 + per);
        let window_scores: Vec<f32> = (1..=per).map(|w| score(base + w)).collect();
        if let Some(choice) = params.choose(score(base), &window_scores) {
            let rows = &embedded.embeddings.data[k * per * dim..(k + 1) * per * dim];
            queries.embeddings.data[i * dim..(i + 1) * dim].copy_from_slice(choice.row(rows, dim));
            report.boxed += 1;
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
