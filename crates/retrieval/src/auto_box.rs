//! Finding the product in a photo that has no box (`--auto-box`, `box=auto`): search with the
//! whole photo and with four overlapping corner windows of it, and search with the window whose
//! best catalogue match is clearly better than the whole photo's.
//!
//! Why this way: the catalogue already knows what products look like, so the window that
//! matches a catalogue image best is the one that shows the product (the challenge's 1st place
//! scored sliding windows against catalogue photos the same way, offline). No detector, nothing
//! new to train. Each window is cropped from the decoded photo and embedded on its own: features
//! pooled from sub-regions of the whole photo's feature map were tried first and do not work
//! here, because every cell of a deep map sees most of the photo (in a cluttered scene they
//! matched the clutter, not the product).
//!
//! Cost, in embeddings of one photo at the model's side `s`: the photo (1) and the four corner
//! windows at `window_scale · s` pixels (4 · 0.7² = 1.96 at the default): 2.96x; the winning
//! window's own embedding is the query, so nothing more is embedded. Plus one catalogue search
//! for the five queries.
//!
//! Exactly, for one photo: the windows are the four corners of the photo `window_cells/grid` wide
//! and high (4/7: they overlap in the middle 1/7, so a product up to 3/7 of the photo lies wholly
//! in one of them wherever it is, and a larger one mostly); `t_0` is the whole photo's top-1
//! cosine in the catalogue and `t_i` window i's; the query is window `i* = argmax t_i` when
//! `t_i* >= t_0 + min_gain`, else the whole photo.

use visual_search_data::formats::Window;

use crate::catalogue::Catalogue;
use crate::error::RetrievalError;
use crate::item_metadata::Filter;

/// The knobs of the window search (defaults in [`AutoBox::default`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoBox {
    /// The windows are `window_cells / grid` of the photo wide and high, at `positions` evenly
    /// spaced places along each side (2: the four corners).
    pub grid: usize,
    pub window_cells: usize,
    pub positions: usize,
    /// Windows are embedded at this fraction of the model's input side (the cost of the four
    /// is `4 · window_scale²` embeddings).
    pub window_scale: f32,
    /// How much higher (cosine) a window's best match must be than the whole photo's.
    pub min_gain: f32,
}

impl Default for AutoBox {
    fn default() -> Self {
        AutoBox {
            grid: 7,
            window_cells: 4,
            positions: 2,
            window_scale: 0.7,
            min_gain: 0.0,
        }
    }
}

/// The window chosen for a photo, and the scores that chose it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxChoice {
    /// Which of [`AutoBox::windows`] won, and the window.
    pub index: usize,
    pub window: Window,
    /// Top-1 catalogue score of the window and of the whole photo.
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
        if self.grid == 0 || self.window_cells == 0 || self.window_cells > self.grid {
            return Err(format!(
                "auto-box windows must be 1..={} of {} cells, got {}",
                self.grid, self.grid, self.window_cells
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
        Ok(())
    }

    /// The windows, row by row: `positions²` squares (in photo fractions) `window_cells / grid`
    /// wide, from the top-left corner to the bottom-right one.
    pub fn windows(&self) -> Vec<Window> {
        let g = self.grid as f32;
        let side = self.window_cells as f32 / g;
        let far = (self.grid - self.window_cells) as f32 / g;
        let steps = self.positions.max(1);
        let at = |i: usize| match steps {
            1 => far / 2.0,
            _ => far * i as f32 / (steps - 1) as f32,
        };
        (0..steps * steps)
            .map(|k| {
                let (x, y) = (at(k % steps), at(k / steps));
                Window {
                    x0: x,
                    y0: y,
                    x1: x + side,
                    y1: y + side,
                }
            })
            .collect()
    }

    /// The side windows are embedded at, for a model whose input side is `size`.
    pub fn window_side(&self, size: usize) -> usize {
        ((size as f32 * self.window_scale).round() as usize).max(1)
    }

    /// The winning window from the whole photo's top-1 score and each window's (in
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
    /// scored against the items `filter` keeps, the ones the search will return.
    pub fn choose_in_catalogue(
        &self,
        catalogue: &dyn Catalogue,
        whole: &[f32],
        window_rows: &[f32],
        filter: &Filter,
    ) -> Result<Option<BoxChoice>, RetrievalError> {
        let mut queries = whole.to_vec();
        queries.extend_from_slice(window_rows);
        let top: Vec<f32> = catalogue
            .search_items(&queries, 1, filter)?
            .iter()
            .map(|hits| hits.first().map_or(-1.0, |h| h.score))
            .collect();
        Ok(top
            .split_first()
            .and_then(|(&whole_score, windows)| self.choose(whole_score, windows)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_overlapping_corners_that_cover_the_photo() {
        let w = AutoBox::default().windows();
        assert_eq!(w.len(), 4);
        assert_eq!((w[0].x0, w[0].x1), (0.0, 4.0 / 7.0));
        assert_eq!((w[3].x0, w[3].y1), (3.0 / 7.0, 1.0));
        assert_eq!(AutoBox::default().window_side(224), 157);
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
