//! Continuo's engine: everything musical and numerical, nothing about plugins.
//!
//! - [`note`]: the compound note token.
//! - [`midi`]: MIDI files and live note events to and from compound notes.
//! - [`config`]: the official Moonbeam config schema.
//! - [`model`]: the Moonbeam model (batched and single-token paths).
//! - [`vocab`]: input rows and the flat output vocabulary.
//! - [`generate`]: sampling and the prompt-to-continuation loop.
//! - [`kernels`]: the hand-written decode kernels.

pub mod bench;
pub mod config;
pub mod error;
pub mod eval;
pub mod generate;
pub mod kernels;
pub mod lora;
pub mod midi;
pub mod model;
pub mod note;
pub mod pianoroll;
pub mod style;
pub mod train;
pub mod vocab;

pub use config::Config;
pub use model::{Moonbeam, Precision};
pub use note::Note;
