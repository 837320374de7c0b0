//! Training: LoRA styles on a frozen base, and full-parameter training of a base.
//!
//! - [`data`]: MIDI folders to packed, block-causal training sequences.
//! - [`loss`]: the teacher-forced loss over packed sequences.
//! - [`optim`]: AdamW with state that can be saved and resumed.
//! - [`params`]: the trainable parameters (LoRA pairs or every base tensor).

pub mod data;
pub mod loss;
pub mod optim;
pub mod params;
pub mod run;
