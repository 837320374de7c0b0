//! The compound note token: the unit Moonbeam reads and writes.
//!
//! Kept in its own module because every other part of the engine (tokenizer,
//! model, generation, training) speaks in these rows and nothing else.

use serde::{Deserialize, Serialize};

/// Milliseconds per tick, the unit of every time in a [`Note`].
pub const TICK_MS: f64 = 10.0;

/// One note as Moonbeam sees it (spec §1).
///
/// Times are in [`TICK_MS`] (10 ms) ticks. `onset` is absolute from the start of the piece.
/// The pitch is `octave * 12 + pitch_class`. `instrument` is the General MIDI
/// program (0..=127) or 128 for drums (channel 10).
///
/// Serialised as a JSON row `[onset, duration, octave, pitch_class, instrument, velocity]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "[i64; 6]", into = "[i64; 6]")]
pub struct Note {
    pub onset: i64,
    pub duration: i64,
    pub octave: i64,
    pub pitch_class: i64,
    pub instrument: i64,
    pub velocity: i64,
}

impl Note {
    /// Builds a note from a MIDI key number (0..=127).
    pub fn from_pitch(
        onset: i64,
        duration: i64,
        pitch: u8,
        instrument: i64,
        velocity: i64,
    ) -> Self {
        Note {
            onset,
            duration,
            octave: i64::from(pitch / 12),
            pitch_class: i64::from(pitch % 12),
            instrument,
            velocity,
        }
    }

    /// The MIDI key number `octave * 12 + pitch_class` (may be out of 0..=127 for generated rows).
    pub fn pitch(&self) -> i64 {
        // Saturating, so that absurd generated or hand-made values cannot overflow.
        self.octave
            .saturating_mul(12)
            .saturating_add(self.pitch_class)
    }

    /// The note the model's six decoded values describe when the previous note started at
    /// `prev_onset`: the first value is the timeshift (spec §5.1).
    pub fn from_decoded(prev_onset: i64, values: [i64; 6]) -> Self {
        Note {
            onset: prev_onset.saturating_add(values[0]),
            duration: values[1],
            octave: values[2],
            pitch_class: values[3],
            instrument: values[4],
            velocity: values[5],
        }
    }

    /// The row in the reference's column order.
    pub fn to_row(self) -> [i64; 6] {
        [
            self.onset,
            self.duration,
            self.octave,
            self.pitch_class,
            self.instrument,
            self.velocity,
        ]
    }

    pub fn from_row(row: [i64; 6]) -> Self {
        Note {
            onset: row[0],
            duration: row[1],
            octave: row[2],
            pitch_class: row[3],
            instrument: row[4],
            velocity: row[5],
        }
    }

    /// Whether this row is a playable MIDI note: pitch and velocity are valid
    /// MIDI data bytes, the duration is positive and the instrument exists.
    pub fn is_valid_midi(&self) -> bool {
        (0..=127).contains(&self.pitch())
            && (0..12).contains(&self.pitch_class)
            && (1..=127).contains(&self.velocity)
            && (0..=128).contains(&self.instrument)
            && self.duration > 0
            && self.onset >= 0
    }
}

impl From<[i64; 6]> for Note {
    fn from(row: [i64; 6]) -> Self {
        Note::from_row(row)
    }
}

impl From<Note> for [i64; 6] {
    fn from(note: Note) -> Self {
        note.to_row()
    }
}
