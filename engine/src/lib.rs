//! Continuo's engine: everything musical and numerical, nothing about plugins.
//!
//! The plugin and the `continuo` CLI (`main.rs`) are its two users. Data flows
//! MIDI → [`Note`]s → model rows → the model → decoded [`Note`]s → MIDI.
//!
//! | module | what it holds |
//! |---|---|
//! | [`note`] | the compound note token and the 10 ms tick |
//! | [`midi`] | MIDI files and live note events to and from notes (the tokenizer) |
//! | [`vocab`] | model input rows and the flat output vocabulary |
//! | [`config`] | the official Moonbeam config schema and the engine's plain config |
//! | [`checkpoint`] | the name and shape of every tensor of a checkpoint, written once |
//! | [`model`] | the Moonbeam model: loading, the batched path, the single-token path with its KV cache, the GRU note head |
//! | [`kernels`] | the hand-written f32 kernels of the single-token path |
//! | [`quant`] | 8- and 4-bit weight matrices (per-group scales) and their kernels |
//! | [`lora`] | LoRA adapters and [`Style`], the unmerged side path |
//! | [`style`] | the native style file (adapter + card) and peft import/export |
//! | [`generate`] | sampling, [`Session`] (a warm conversation) and the prompt-to-continuation loop |
//! | [`train`] | the data pipeline, the packed loss, and LoRA and base training |
//! | [`eval`] | held-out loss and continuation statistics against baselines |
//! | [`memory`] | the process's peak memory, for benchmarks and training reports |
//! | [`bench`](mod@bench) | the `continuo bench` measurement and the bandwidth bound |
//! | [`pianoroll`] | piano-roll pictures of a prompt and its continuation |
//! | [`files`] | input files checked before they are opened (regular files, size caps) |
//! | [`error`] | one error type per operation |
//!
//! The types most callers need are re-exported here. Comments cite the reference implementation
//! as `spec §N`: the sections of `docs/reference-model.md`.

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod eval;
pub mod files;
pub mod generate;
pub mod kernels;
pub mod lora;
pub mod memory;
pub mod midi;
pub mod model;
pub mod note;
pub mod pianoroll;
pub mod pool;
pub mod quant;
pub mod style;
pub mod train;
pub mod vocab;

pub use config::Config;
pub use error::{AdapterError, ModelError, WeightsError};
pub use generate::{continue_notes, GenerateOptions, Sampling, Session};
pub use lora::{Adapter, Style};
pub use model::forward::Row;
pub use model::gru::Chooser;
pub use model::{Moonbeam, Precision};
pub use note::{Note, TICK_MS};
pub use style::StyleCard;
