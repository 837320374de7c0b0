//! Live note events (times in milliseconds) → compound notes, for the plugin.
//!
//! [`LiveTokenizer`] applies the same rules as the file reader (spec §1.1,
//! shared code in `tracker.rs`): notes in note-on order, FIFO note-off
//! matching per (instrument now, key, channel), velocity-0 note-on = note-off,
//! channel 9 = drums (128), program changes per channel. Only the clock
//! differs: `onset = round_ties_even(time_ms / 10)` and
//! `duration = max(1, round_ties_even((off_ms - on_ms) / 10))`.
//!
//! For the same events at the same times it gives the same notes as
//! [`midi_to_notes`](super::midi_to_notes), except when a time (or a
//! duration) lies within float noise of an exact 5 ms tie: there mido's
//! seconds accumulation decides the file path's rounding, and the exact
//! millisecond value decides the live one.
//!
//! # Threading
//!
//! It allocates (a growing note list and a hash map), so it belongs on the
//! inference thread, not the audio thread: the audio thread pushes
//! fixed-size events into a queue and the inference thread feeds them here
//! in order. It is plain data (`Send`, no locks, no interior mutability).
//!
//! # Input hygiene
//!
//! Nothing panics. Events with channel > 15 or key > 127 are ignored,
//! velocities above 127 are clamped to 127, programs above 127 are ignored.
//! Times go through a monotonic clock: a time that is NaN, infinite or
//! earlier than the latest time seen is replaced by the latest time seen
//! (which starts at 0), so onsets never decrease and durations are >= 1.

use super::tracker::{NoteTracker, TimeUnit, UNCLOSED_DURATION};
use crate::Note;

/// A note as known so far: final, or still sounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveNote {
    /// For a sounding note, `duration` is provisional (see [`LiveTokenizer::snapshot`]).
    pub note: Note,
    /// `true` while no note-off has matched this note.
    pub sounding: bool,
}

/// Turns live note events into compound notes; see the module docs.
#[derive(Clone, Debug)]
pub struct LiveTokenizer {
    tracker: NoteTracker,
    latest_time_ms: f64,
}

impl Default for LiveTokenizer {
    fn default() -> Self {
        Self::new()
    }
}

impl LiveTokenizer {
    pub fn new() -> Self {
        LiveTokenizer {
            tracker: NoteTracker::new(TimeUnit::Milliseconds),
            latest_time_ms: 0.0,
        }
    }

    /// Forgets all notes, programs and the clock.
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// The monotonic clock described in the module docs.
    fn clock(&mut self, time_ms: f64) -> f64 {
        if time_ms.is_finite() && time_ms > self.latest_time_ms {
            self.latest_time_ms = time_ms;
        }
        self.latest_time_ms
    }

    /// A note-on; velocity 0 is a note-off.
    pub fn note_on(&mut self, time_ms: f64, channel: u8, key: u8, velocity: u8) {
        let time_ms = self.clock(time_ms);
        if channel < 16 && key < 128 {
            self.tracker
                .note_on(time_ms, channel, key, velocity.min(127));
        }
    }

    /// A note-off: closes the oldest sounding note with this key on this
    /// channel and the channel's current instrument; ignored if there is none.
    pub fn note_off(&mut self, time_ms: f64, channel: u8, key: u8) {
        let time_ms = self.clock(time_ms);
        if channel < 16 && key < 128 {
            self.tracker.note_off(time_ms, channel, key);
        }
    }

    /// Sets the instrument of later notes on `channel` (ignored for channel 9,
    /// which is always drums, 128).
    pub fn program_change(&mut self, channel: u8, program: u8) {
        if channel < 16 && program < 128 {
            self.tracker.program_change(channel, program);
        }
    }

    /// Ends every sounding note at `time_ms` (all-notes-off, transport stop).
    pub fn close_all(&mut self, time_ms: f64) {
        let time_ms = self.clock(time_ms);
        self.tracker.close_all_at(time_ms);
    }

    /// Number of notes held (final and sounding).
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.len() == 0
    }

    /// Number of notes still sounding.
    pub fn n_sounding(&self) -> usize {
        self.tracker.n_open()
    }

    /// Every note held, in note-on order. Sounding notes get the provisional
    /// duration `max(1, round_ties_even((now_ms - on_ms) / 10))`, where
    /// `now_ms` is clamped like event times (it does not advance the clock).
    pub fn snapshot(&self, now_ms: f64) -> Vec<LiveNote> {
        let now_ms = if now_ms.is_finite() {
            now_ms.max(self.latest_time_ms)
        } else {
            self.latest_time_ms
        };
        self.tracker
            .iter()
            .map(|(mut note, sounding, onset_ms)| {
                if sounding {
                    note.duration = self.tracker.to_ticks(now_ms - onset_ms).max(1);
                }
                LiveNote { note, sounding }
            })
            .collect()
    }

    /// The notes whose durations are final, in note-on order.
    pub fn finished_notes(&self) -> Vec<Note> {
        self.tracker
            .iter()
            .filter(|(_, sounding, _)| !sounding)
            .map(|(note, _, _)| note)
            .collect()
    }

    /// The sounding notes with provisional durations up to `now_ms`.
    pub fn sounding_notes(&self, now_ms: f64) -> Vec<Note> {
        self.snapshot(now_ms)
            .into_iter()
            .filter(|n| n.sounding)
            .map(|n| n.note)
            .collect()
    }

    /// How many notes at the front are final (a prefix that will not change).
    pub fn finished_prefix_len(&self) -> usize {
        self.tracker.closed_prefix_len()
    }

    /// Removes and returns the final notes at the front, so that a long
    /// session keeps bounded memory; later notes keep their order.
    pub fn drain_finished_prefix(&mut self) -> Vec<Note> {
        self.tracker.drain_closed_prefix()
    }

    /// All notes, with sounding ones given the reference's end-of-file
    /// duration 25 (250 ms): what [`midi_to_notes`](super::midi_to_notes)
    /// returns for a file that ends here.
    pub fn finish(mut self) -> Vec<Note> {
        self.tracker.close_all_with_duration(UNCLOSED_DURATION);
        self.tracker.into_notes()
    }
}
