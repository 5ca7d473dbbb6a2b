//! Training heads that sit on the embedding: sub-centre ArcFace with dynamic margins.

pub mod arcface_subcenter;
