//! The host transport as the audio thread sees it, block by block.

use super::{Core, Moment};
use crate::protocol::{DEFAULT_TEMPO_BPM, TEMPO_RANGE_BPM};

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

/// The host's musical time for one block, made usable: a tempo in range (the default when the
/// host gives none), a finite song position (the transport counts as stopped without one) and
/// a metre.
#[derive(Debug, Clone, Copy)]
pub(super) struct HostTime {
    /// The musical "now" at the block's first sample.
    pub(super) now: Moment,
    pub(super) samples_per_beat: f64,
    /// Start of the current bar in quarter notes, as the host says.
    pub(super) bar_start_beats: Option<f64>,
}

impl HostTime {
    pub(super) fn read(transport: &TransportSnapshot, sample_rate: f64) -> Self {
        let tempo_bpm = transport
            .tempo_bpm
            .filter(|t| t.is_finite() && *t > 0.0)
            .unwrap_or(DEFAULT_TEMPO_BPM)
            .clamp(TEMPO_RANGE_BPM.0, TEMPO_RANGE_BPM.1);
        let pos_beats = transport.pos_beats.filter(|p| p.is_finite());
        let beats_per_bar = match transport.time_sig {
            Some((num, den)) if num > 0 && den > 0 => f64::from(num) * 4.0 / f64::from(den),
            _ => 4.0,
        };
        Self {
            now: Moment {
                pos_beats: pos_beats.unwrap_or(0.0),
                playing: transport.playing && pos_beats.is_some(),
                tempo_bpm,
                beats_per_bar,
            },
            samples_per_beat: sample_rate * 60.0 / tempo_bpm,
            bar_start_beats: transport.bar_start_beats,
        }
    }
}

impl Core {
    /// Remembers this block's transport and returns whether it stopped or jumped since the
    /// previous block (everything generated is then released).
    pub(super) fn follow_transport(&mut self, time: &HostTime) -> bool {
        let Moment {
            pos_beats, playing, ..
        } = time.now;
        let memory = self.previous_transport;
        let jumped = playing
            && memory.is_some_and(|m| {
                m.playing
                    && m.expected_pos_beats
                        .is_some_and(|e| (pos_beats - e).abs() > JUMP_TOLERANCE_BEATS)
            });
        let stopped = !playing && memory.is_some_and(|m| m.playing);
        self.previous_transport = Some(TransportMemory {
            playing,
            expected_pos_beats: playing
                .then(|| pos_beats + f64::from(self.block.len) / time.samples_per_beat),
        });
        jumped || stopped
    }
}
