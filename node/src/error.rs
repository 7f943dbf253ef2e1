//! The node's one error type.

use std::path::PathBuf;

/// What can stop the node or one of its operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file is missing, unreadable or invalid.
    #[error("configuration {path}: {message}")]
    Config { path: PathBuf, message: String },
    /// An engine library could not be loaded or an instance not created.
    #[error("engine {model_id} ({library}): {message}")]
    Engine { model_id: String, library: PathBuf, message: String },
    /// The state directory (identity) could not be read or written.
    #[error("state {path}: {source}")]
    State { path: PathBuf, source: std::io::Error },
    /// A command-line or URL problem.
    #[error("{0}")]
    Usage(String),
    /// Installing, listing or verifying models (`tolk-node models`).
    #[error("models: {0}")]
    Models(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
