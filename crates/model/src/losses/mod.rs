//! Pair-based losses for training without a classifier: the XBM contrastive loss and the
//! cross-batch memory it draws extra pairs from.

pub mod contrastive;
pub mod xbm;
