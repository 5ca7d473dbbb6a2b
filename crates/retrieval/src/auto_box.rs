//! Finding the product in a photo that has no box (`--auto-box`, `box=auto`): search with the
//! whole photo and with overlapping windows of it, and search with the window whose catalogue
//! matches name one product most clearly — more clearly than the whole photo's do.
//!
//! Why this way: the catalogue already knows what products look like, so the window that shows
//! the product is the one the catalogue recognises (the challenge's 1st place scored sliding
//! windows against catalogue photos the same way, offline). No detector, nothing new to train.
//!
//! Why "most clearly" and not "best match": in a shelf or a cluttered table, every window shows
//! some product, and a window over the clutter often matches *its* product as well as the window
//! over the user's product matches theirs (the best cosine picked the right window too rarely:
//! 17 % of the boxed-scene gap closed, BENCHMARKS.md). A window that cuts the photo's main
//! object out cleanly has catalogue matches that agree on one product; a window over a mix of
//! objects has matches spread over several. So each view is scored by its *confidence*: among
//! its `candidates` best catalogue items, take each product's best cosine `c_p`, and the
//! confidence is the softmax share of the first product, `1 / Σ_p exp((c_p − c_max) / T)` with
//! temperature `T`. It is 1 when one product stands alone and 1/n when n products tie.
//!
//! Each window is cropped from the decoded photo and embedded on its own: features pooled from
//! sub-regions of the whole photo's feature map were tried and chose the right window less often
//! (a deep map's cells each see most of the photo), and so did smaller, cheaper window inputs.
//!
//! Cost, in embeddings of one photo at the model's side `s`: the photo (1) and the windows at
//! `window_scale · s` pixels — at the default five windows at 0.63 s: 5 · 0.63² = 1.98, 2.98 in
//! all; the winning window's own embedding is the query, so nothing more is embedded. Plus one
//! catalogue search for all the views.
//!
//! Exactly, for one photo: the windows are squares `window` of the photo wide and high (in photo
//! fractions) at `positions` evenly spaced places along each side — `positions²` of them, from
//! the top-left corner — plus the centred one when `positions` is even (a grid of even side has
//! no middle window). `q_0` is the whole photo's confidence and `q_i` window i's; the query is
//! window `i* = argmax q_i` when `q_i* >= q_0 + min_gain`, else the whole photo.

use std::collections::HashMap;

use visual_search_data::formats::Window;

use crate::catalogue::Catalogue;
use crate::error::RetrievalError;
use crate::item_metadata::Filter;

/// The knobs of the window search (defaults in [`AutoBox::default`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoBox {
    /// The windows' side, as a fraction of the photo's width and height.
    pub window: f32,
    /// Window places along each side of the photo (2: the four corners, and the centre).
    pub positions: usize,
    /// Windows are embedded at this fraction of the model's input side (the cost of `n` windows
    /// is `n · window_scale²` embeddings).
    pub window_scale: f32,
    /// How much higher a window's confidence (0..=1) must be than the whole photo's.
    pub min_gain: f32,
    /// Catalogue items per view that the confidence looks at.
    pub candidates: usize,
    /// Softmax temperature of the confidence, in cosine.
    pub temperature: f32,
}

impl Default for AutoBox {
    fn default() -> Self {
        AutoBox {
            window: 0.45,
            positions: 2,
            window_scale: 0.63,
            min_gain: 0.0,
            candidates: 20,
            temperature: 0.1,
        }
    }
}

/// The window chosen for a photo, and the confidences that chose it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxChoice {
    /// Which of [`AutoBox::windows`] won, and the window.
    pub index: usize,
    pub window: Window,
    /// Confidence of the window and of the whole photo.
    pub score: f32,
    pub whole_score: f32,
}

impl BoxChoice {
    /// The winning window's row among `window_rows` (one `dim`-wide row per window, in
    /// [`AutoBox::windows`] order): the query to search with.
    pub fn row<'a>(&self, window_rows: &'a [f32], dim: usize) -> &'a [f32] {
        &window_rows[self.index * dim..(self.index + 1) * dim]
    }
}

impl AutoBox {
    /// Checks the knobs.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.window > 0.0 && self.window <= 1.0) {
            return Err(format!(
                "the auto-box window side must be in (0, 1] of the photo, got {}",
                self.window
            ));
        }
        if !(1..=8).contains(&self.positions) {
            return Err(format!(
                "auto-box window positions per side must be 1..=8, got {}",
                self.positions
            ));
        }
        if !(self.window_scale >= 0.25 && self.window_scale <= 2.0) {
            return Err(format!(
                "the auto-box window scale must be in 0.25..=2, got {}",
                self.window_scale
            ));
        }
        if self.candidates == 0 || !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(format!(
                "auto-box needs at least one candidate and a positive temperature, got {} and {}",
                self.candidates, self.temperature
            ));
        }
        Ok(())
    }

    /// The windows: `positions²` squares (in photo fractions) `window` wide, row by row from
    /// the top-left corner, then the centred one when `positions` is even.
    pub fn windows(&self) -> Vec<Window> {
        let far = 1.0 - self.window;
        let steps = self.positions.max(1);
        let at = |i: usize| match steps {
            1 => far / 2.0,
            _ => far * i as f32 / (steps - 1) as f32,
        };
        let square = |x: f32, y: f32| Window {
            x0: x,
            y0: y,
            x1: x + self.window,
            y1: y + self.window,
        };
        let mut windows: Vec<Window> = (0..steps * steps)
            .map(|k| square(at(k % steps), at(k / steps)))
            .collect();
        if steps.is_multiple_of(2) {
            windows.push(square(far / 2.0, far / 2.0));
        }
        windows
    }

    /// The side windows are embedded at, for a model whose input side is `size`.
    pub fn window_side(&self, size: usize) -> usize {
        ((size as f32 * self.window_scale).round() as usize).max(1)
    }

    /// The confidence of one view from its catalogue hits, best first, as (product key, cosine):
    /// the softmax share of the first product among the products of the first `candidates`
    /// hits (each at its best cosine). 0 for a view with no hits.
    pub fn confidence<K: Eq + std::hash::Hash>(
        &self,
        hits: impl IntoIterator<Item = (K, f32)>,
    ) -> f32 {
        let mut best: HashMap<K, f32> = HashMap::new();
        let mut top = f32::NEG_INFINITY;
        for (key, score) in hits.into_iter().take(self.candidates) {
            let score = if score.is_finite() { score } else { -1.0 };
            top = top.max(score);
            let entry = best.entry(key).or_insert(score);
            *entry = entry.max(score);
        }
        if best.is_empty() {
            return 0.0;
        }
        let sum: f32 = best
            .values()
            .map(|&c| ((c - top) / self.temperature).exp())
            .sum();
        1.0 / sum
    }

    /// The winning window from the whole photo's confidence and each window's (in
    /// [`AutoBox::windows`] order); `None` when none beats the whole photo by `min_gain`.
    pub fn choose(&self, whole_score: f32, window_scores: &[f32]) -> Option<BoxChoice> {
        let windows = self.windows();
        let (index, &score) = window_scores
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))?;
        (score >= whole_score + self.min_gain).then(|| BoxChoice {
            index,
            window: windows[index],
            score,
            whole_score,
        })
    }

    /// [`AutoBox::choose`] for one photo searched in an index (its stored post-processing
    /// included): `whole` is the photo's embedding, `window_rows` the windows'. Windows are
    /// scored against the items `filter` keeps, the ones the search will return; products are
    /// told apart by the index's product key (an item without one is a product of its own).
    pub fn choose_in_catalogue(
        &self,
        catalogue: &dyn Catalogue,
        whole: &[f32],
        window_rows: &[f32],
        filter: &Filter,
    ) -> Result<Option<BoxChoice>, RetrievalError> {
        let mut queries = whole.to_vec();
        queries.extend_from_slice(window_rows);
        let meta = catalogue.meta();
        let scores: Vec<f32> = catalogue
            .search_items(&queries, self.candidates, filter)?
            .iter()
            .map(|hits| {
                self.confidence(hits.iter().map(|h| {
                    let key = meta.key_of(&h.item).unwrap_or_else(|| format!("#{}", h.id));
                    (key, h.score)
                }))
            })
            .collect();
        Ok(scores
            .split_first()
            .and_then(|(&whole_score, windows)| self.choose(whole_score, windows)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_corners_and_the_centre_that_cover_the_photo() {
        let a = AutoBox::default();
        let w = a.windows();
        assert_eq!(w.len(), 5);
        assert_eq!((w[0].x0, w[0].y0, w[0].x1), (0.0, 0.0, 0.45));
        assert_eq!((w[3].x0, w[3].y1), (0.55, 1.0));
        assert!((w[4].x0 - 0.275).abs() < 1e-6 && (w[4].y1 - 0.725).abs() < 1e-6);
        assert_eq!(a.window_side(224), 141);
        let nine = AutoBox { positions: 3, ..a };
        assert_eq!(nine.windows().len(), 9, "an odd grid has its own middle");
    }

    #[test]
    fn confidence_is_the_first_products_softmax_share() {
        let a = AutoBox {
            candidates: 4,
            temperature: 0.1,
            ..AutoBox::default()
        };
        // One product alone: certain.
        assert_eq!(a.confidence([("a", 0.9), ("a", 0.8)]), 1.0);
        // Two products tied at their best: a half, whatever their other items score.
        assert!((a.confidence([("a", 0.9), ("b", 0.9), ("a", 0.5)]) - 0.5).abs() < 1e-6);
        // b is 0.1 behind: 1 / (1 + e^-1).
        let expected = 1.0 / (1.0 + (-1.0f32).exp());
        assert!((a.confidence([("a", 0.9), ("b", 0.8)]) - expected).abs() < 1e-6);
        // Only the first `candidates` hits count.
        assert_eq!(
            a.confidence([("a", 0.9), ("a", 0.9), ("a", 0.9), ("a", 0.9), ("b", 0.9)]),
            1.0
        );
        assert_eq!(a.confidence(Vec::<(&str, f32)>::new()), 0.0);
    }

    #[test]
    fn a_window_wins_only_by_a_clear_margin() {
        let a = AutoBox {
            min_gain: 0.05,
            ..AutoBox::default()
        };
        let choice = a.choose(0.6, &[0.5, 0.66, 0.7, 0.62]).unwrap();
        assert_eq!(
            (choice.index, choice.score, choice.whole_score),
            (2, 0.7, 0.6)
        );
        assert_eq!(choice.window, a.windows()[2]);
        assert_eq!(choice.row(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], 2), &[4.0, 5.0]);
        assert_eq!(a.choose(0.66, &[0.5, 0.66, 0.7, 0.62]), None);
        assert_eq!(a.choose(0.66, &[]), None);
    }
}
