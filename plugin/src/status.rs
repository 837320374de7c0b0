//! State shared between the audio thread, the generator thread and the editor.
//!
//! Everything here is lock-free: atomic counters the editor reads, one atomic request flag the
//! editor writes, and a `Copy` snapshot the audio thread publishes through a triple buffer.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use crate::capture::CaptureLog;
use crate::protocol::EngineStatus;
use crate::roll::{NoteRing, RECENT_NOTES, UPCOMING_NOTES};
use crate::sync::{lock, try_with};

/// Counters and flags shared by all threads of one plugin instance.
///
/// Counters only ever increase (relaxed ordering is enough: they are statistics).
#[derive(Debug, Default)]
pub struct SharedStatus {
    /// Messages the audio thread could not send because the audio → generator queue was full.
    /// Written by the audio thread, read by the editor.
    pub dropped_to_engine: AtomicU64,
    /// Messages the generator could not send because the generator → audio queue was full.
    /// Written by the generator thread, read by the editor.
    pub dropped_from_engine: AtomicU64,
    /// Generated notes dropped because the audio thread's schedule was full.
    /// Written by the audio thread, read by the editor.
    pub dropped_schedule_full: AtomicU64,
    /// Generated notes dropped because their start time had already passed when they were due
    /// (they are never played late). Written by the audio thread, read by the editor.
    pub late_notes: AtomicU64,
    /// Output events the host refused (its output buffer was full) or that did not fit this
    /// block's staging area. Written by the audio thread, read by the editor.
    pub dropped_output_events: AtomicU64,
    /// Generated note-ons actually sent. Written by the audio thread, read by the editor.
    pub generated_notes_played: AtomicU64,
    /// Answers requested from the generator. Written by the audio thread, read by the editor.
    pub answers_triggered: AtomicU64,
    /// An [`EngineStatus`] as `u8`. Written by the generator thread (and by `activate`/`deactivate`
    /// on the main thread), read by the editor.
    pub engine_status: AtomicU8,
    /// Set by the editor's trigger button, consumed (swapped back to `false`) by the audio thread.
    pub trigger_request: AtomicBool,
    /// Average decode time per generated note in the latest answer, in microseconds (0 = none
    /// yet). Written by the generator thread, read by the editor.
    pub us_per_note: AtomicU64,
    /// Time from the generator receiving the latest trigger to its first note being sent, in
    /// microseconds (0 = none yet). Written by the generator thread, read by the editor.
    pub first_note_us: AtomicU64,
    /// How long the generator takes to produce an answer, per length of music it covers, in
    /// millionths (0 = unknown). Seeded from a short warm-up when a model is installed, then a
    /// conservative running estimate over answers, see
    /// [`SharedStatus::record_generation_ratio`]. Written by the generator thread, read by the
    /// audio thread to choose how far ahead an answer starts.
    pub generation_ratio_ppm: AtomicU64,
    /// Texts for the editor: which model runs and the last error. Written by the generator thread
    /// (rarely: at load time and on errors), read by the editor with `try_lock`. The audio
    /// thread never touches it.
    pub engine_info: Mutex<EngineInfo>,
    /// The last answers, for export. Filed by the generator thread, read by the editor and the
    /// loader thread; never touched by the audio thread.
    pub captures: CaptureLog,
}

/// What the editor shows about the model. See [`SharedStatus::engine_info`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineInfo {
    /// Which model is loaded (or being loaded), e.g. "tiny test model (random weights)".
    pub model: String,
    /// The name of the style in use, empty for the plain base model.
    pub style: String,
    /// The last error (model load failure, decode error), empty if none.
    pub last_error: String,
}

impl SharedStatus {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn engine_status(&self) -> EngineStatus {
        EngineStatus::from_u8(self.engine_status.load(Ordering::Relaxed))
    }

    pub fn set_engine_status(&self, status: EngineStatus) {
        self.engine_status.store(status as u8, Ordering::Relaxed);
    }

    /// Sets the model description shown in the editor. Called on the generator thread.
    pub fn set_model_label(&self, label: &str) {
        let mut info = lock(&self.engine_info);
        info.model.clear();
        info.model.push_str(label);
    }

    /// Sets the name of the style in use (empty: the plain base model). Called on the generator
    /// thread when it swaps a style in or out.
    pub fn set_style_label(&self, style: &str) {
        let mut info = lock(&self.engine_info);
        info.style.clear();
        info.style.push_str(style);
    }

    /// Sets the last error shown in the editor. Called on the generator thread.
    pub fn set_last_error(&self, error: &str) {
        let mut info = lock(&self.engine_info);
        info.last_error.clear();
        info.last_error.push_str(error);
    }

    /// A copy of the engine texts, or `None` if the generator is writing them right now (the
    /// editor then keeps what it showed before). Never blocks.
    pub fn try_engine_info(&self) -> Option<EngineInfo> {
        try_with(&self.engine_info, EngineInfo::clone)
    }

    /// The latest timings: (ms per generated note, ms from trigger to first note); `None` until
    /// measured.
    pub fn timings_ms(&self) -> (Option<f64>, Option<f64>) {
        let ms = |c: &AtomicU64| match c.load(Ordering::Relaxed) {
            0 => None,
            us => Some(us as f64 / 1000.0),
        };
        (ms(&self.us_per_note), ms(&self.first_note_us))
    }

    /// Folds in one answer's generation time per time of music it covers. The estimate follows a
    /// slower answer at once and a faster one gradually (a quarter of the way each time), so
    /// a passing slowdown errs on the side of starting answers later, not of late notes.
    pub fn record_generation_ratio(&self, ratio: f64) {
        if !ratio.is_finite() || ratio <= 0.0 {
            return;
        }
        let estimate = match self.generation_ratio() {
            Some(old) => ratio.max(0.75 * old + 0.25 * ratio),
            None => ratio,
        };
        self.seed_generation_ratio(estimate);
    }

    /// Starts the estimate afresh (for a new model) from `ratio`; `0.0` forgets it.
    pub fn seed_generation_ratio(&self, ratio: f64) {
        let ppm = if ratio.is_finite() && ratio > 0.0 {
            ((ratio * 1e6).round() as u64).max(1)
        } else {
            0
        };
        self.generation_ratio_ppm.store(ppm, Ordering::Relaxed);
    }

    /// The running estimate of generation time per time of music; `None` until measured.
    pub fn generation_ratio(&self) -> Option<f64> {
        match self.generation_ratio_ppm.load(Ordering::Relaxed) {
            0 => None,
            ppm => Some(ppm as f64 / 1e6),
        }
    }

    /// A plain copy of all counters, for display and tests.
    pub fn counters(&self) -> Counters {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counters {
            dropped_to_engine: load(&self.dropped_to_engine),
            dropped_from_engine: load(&self.dropped_from_engine),
            dropped_schedule_full: load(&self.dropped_schedule_full),
            late_notes: load(&self.late_notes),
            dropped_output_events: load(&self.dropped_output_events),
            generated_notes_played: load(&self.generated_notes_played),
            answers_triggered: load(&self.answers_triggered),
        }
    }
}

/// A copy of the counters in [`SharedStatus`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub dropped_to_engine: u64,
    pub dropped_from_engine: u64,
    pub dropped_schedule_full: u64,
    pub late_notes: u64,
    pub dropped_output_events: u64,
    pub generated_notes_played: u64,
    pub answers_triggered: u64,
}

impl Counters {
    /// Every message or event lost to a full queue or buffer (late notes are counted apart).
    pub fn dropped_total(&self) -> u64 {
        self.dropped_to_engine
            + self.dropped_from_engine
            + self.dropped_schedule_full
            + self.dropped_output_events
    }
}

/// What the call-and-response logic is doing, for display.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AnswerState {
    /// Waiting for the player (or for a trigger).
    #[default]
    Listening,
    /// An answer was requested or is playing.
    Answering,
    /// Bypassed: MIDI passes through, nothing is generated.
    Bypassed,
}

impl AnswerState {
    pub fn label(self) -> &'static str {
        match self {
            Self::Listening => "listening",
            Self::Answering => "answering",
            Self::Bypassed => "bypassed",
        }
    }
}

/// The audio thread's view of things, published once per block through a triple buffer.
///
/// About 4 KB, almost all of it the two note rings; copying it once per block costs well under a
/// microsecond (see `plugin/benches/process.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EditorSnapshot {
    pub playing: bool,
    pub tempo_bpm: f64,
    /// Song position in quarter notes at the start of the last block (0 when stopped).
    pub pos_beats: f64,
    pub answer_state: AnswerState,
    /// How long the player has been silent, in beats.
    pub silence_beats: f64,
    /// Keys the player holds down.
    pub held_player_notes: u32,
    /// Output notes currently sounding (thru and generated).
    pub sounding_output_notes: u32,
    /// Generated notes scheduled but not finished.
    pub scheduled_notes: u32,
    /// Voices of the built-in synth that are sounding.
    pub active_voices: u32,

    /// The plugin clock (samples since `activate()`) at the end of the last block: "now" for the
    /// piano roll.
    pub now_samples: i64,
    /// Song position in quarter notes at `now_samples` (0 when stopped).
    pub now_beats: f64,
    /// Start of the current bar in quarter notes, for the roll's bar lines (0 when unknown).
    pub bar_start_beats: f64,
    pub beats_per_bar: f64,
    pub sample_rate_hz: f64,
    /// The most recent notes, played and generated, as they sounded on the output (played notes
    /// also when thru is off).
    pub recent: NoteRing<RECENT_NOTES>,
    /// Generated notes as they were scheduled, tagged with their answer id; the ones that have not
    /// started and whose answer is not cancelled are still to come.
    pub upcoming: NoteRing<UPCOMING_NOTES>,
    /// Answers with a lower id were cancelled: their upcoming notes will not play.
    pub accept_from_answer: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generation_estimate_follows_slowdowns_at_once_and_speedups_gradually() {
        let status = SharedStatus::default();
        assert_eq!(status.generation_ratio(), None);
        status.record_generation_ratio(f64::NAN);
        status.record_generation_ratio(0.0);
        assert_eq!(status.generation_ratio(), None);
        status.record_generation_ratio(0.02);
        assert_eq!(status.generation_ratio(), Some(0.02));
        status.record_generation_ratio(0.04);
        assert_eq!(status.generation_ratio(), Some(0.04));
        status.record_generation_ratio(0.02);
        assert_eq!(status.generation_ratio(), Some(0.035));
        status.seed_generation_ratio(0.01);
        assert_eq!(status.generation_ratio(), Some(0.01));
        status.seed_generation_ratio(f64::NAN);
        assert_eq!(status.generation_ratio(), None);
    }
}
