//! visual-search-retrieval: what happens to embeddings once they exist — storing them, finding
//! nearest neighbours, scoring rankings with the challenge metric — with no deep-learning
//! dependency, so it is fast to build and usable on its own.

pub mod embedding_file;
pub mod error;
pub mod npy;

pub use error::RetrievalError;
