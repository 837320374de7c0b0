//! The host transport as the audio thread sees it, block by block.

/// A song position this far (in beats) from where the previous block said it would be counts as
/// a jump (seek or loop).
pub const JUMP_TOLERANCE_BEATS: f64 = 0.01;

/// The host transport for one block.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TransportSnapshot {
    pub playing: bool,
    pub tempo_bpm: Option<f64>,
    /// Song position in quarter notes at the block's first sample.
    pub pos_beats: Option<f64>,
    /// Start of the current bar in quarter notes.
    pub bar_start_beats: Option<f64>,
    pub time_sig: Option<(i32, i32)>,
}

/// What the previous block saw of the transport.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct TransportMemory {
    pub(super) playing: bool,
    /// Where the song position should be at the next block if nothing jumps.
    pub(super) expected_pos_beats: Option<f64>,
}
