//! Continuo's engine: everything musical and numerical, nothing about plugins.
//!
//! - [`note`]: the compound note token.
//! - [`midi`]: MIDI files and live note events to and from compound notes.

pub mod midi;
pub mod note;

pub use note::Note;
