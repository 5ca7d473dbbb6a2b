//! visual-search-retrieval: what happens to embeddings once they exist — storing them, finding
//! nearest neighbours, scoring rankings with the challenge metric — with no deep-learning
//! dependency, so it is fast to build and usable on its own.

pub mod auto_box;
pub mod catalogue;
pub mod catalogue_duplicates;
pub mod centring;
pub mod duplicates;
pub mod embedding_file;
pub mod embedding_parts;
pub mod ensemble;
pub mod error;
mod few_query_scores;
pub mod filter_postings;
pub mod index;
pub mod index_post_processing;
pub mod item_metadata;
pub mod k_reciprocal;
pub mod matrix;
pub mod metrics;
pub mod npy;
pub mod open_set;
pub mod pipeline;
#[cfg(feature = "postgres")]
pub mod postgres_connect;
#[cfg(feature = "postgres")]
pub mod postgres_edit;
#[cfg(feature = "postgres")]
pub mod postgres_index;
#[cfg(feature = "postgres")]
pub mod postgres_load;
#[cfg(feature = "postgres")]
pub mod postgres_tls;
pub mod query_blending;
pub mod rerank;
pub mod topk;

pub use error::RetrievalError;
