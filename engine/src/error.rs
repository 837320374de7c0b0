//! Error types, one per operation, each variant carrying what a user needs to fix the input.

use std::path::PathBuf;

/// Reading or validating a model config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config is not valid JSON in the Moonbeam schema: {0}")]
    Json(serde_json::Error),
    #[error("unsupported config: {0}")]
    Invalid(String),
}

/// Loading model weights from a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot read weights {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a safetensors file or a PyTorch checkpoint: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("tensor `{name}` is missing from the checkpoint (expected shape {expected:?})")]
    Missing { name: String, expected: Vec<usize> },
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}; the weights do not match the config")]
    Shape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("tensor `{name}` has unsupported dtype {dtype}")]
    Dtype { name: String, dtype: String },
    #[error("tensor `{name}` contains non-finite values")]
    NonFinite { name: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Errors from running the model or generating.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("input row {row} is invalid: {reason}")]
    BadInput { row: usize, reason: String },
    #[error("sequence of {len} tokens exceeds the context limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Loading or validating a style adapter.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a valid adapter: {0}")]
    Format(String),
    #[error("adapter tensor `{tensor}` has shape {got:?}, expected {expected:?}: it was made for another base model")]
    Shape {
        tensor: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("adapter was made for another base model: {0}")]
    BaseMismatch(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
