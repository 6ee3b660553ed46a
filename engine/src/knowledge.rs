//! The tenant's knowledge: the text the assistant may answer from, its chunks, and lexical
//! retrieval over them with a calibrated confidence in `[0, 1]`.
//!
//! [`chunk()`] splits the text (at most [`MAX_KNOWLEDGE_CHARS`] characters) into overlapping
//! [`Chunk`]s; [`KnowledgeIndex`] scores chunks against a customer's question; the turn hands
//! off to a human when [`KnowledgeIndex::confidence`] is below the tenant's threshold.

pub mod chunk;
pub mod dense;
pub mod retrieve;

pub use chunk::chunk;
pub use dense::{DenseCalibration, DenseQuery};
pub use retrieve::{Hit, KnowledgeIndex, extractive_answer};

/// The longest knowledge text a tenant may store, in characters (not bytes).
pub const MAX_KNOWLEDGE_CHARS: usize = 50_000;

/// A verbatim piece of the knowledge text, about 800 characters, with an id stable for the text.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Chunk {
    pub id: u32,
    pub text: String,
    /// The chunk's embedding, when an embeddings endpoint is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<ChunkEmbedding>,
}

impl Chunk {
    /// A chunk without an embedding.
    pub fn new(id: u32, text: impl Into<String>) -> Self {
        Self {
            id,
            text: text.into(),
            embedding: None,
        }
    }
}

/// A chunk's vector and the model that computed it (a vector is reused only for the same text and
/// the same model).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChunkEmbedding {
    pub model: String,
    pub vector: Vec<f32>,
}

/// Why a knowledge text was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KnowledgeError {
    #[error("knowledge text has {chars} characters; the limit is {max}")]
    TooLong { chars: usize, max: usize },
}
