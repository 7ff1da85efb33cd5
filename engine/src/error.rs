//! The engine's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the engine, each variant naming what was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The model path does not exist.
    #[error("model not found at {}", .0.display())]
    ModelNotFound(PathBuf),
    /// The model path exists but is neither a GGUF file nor a Hugging Face model folder.
    #[error("{}: {reason}", .path.display())]
    UnsupportedModel {
        /// The offending path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An I/O error on a named file.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A tensor library error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
