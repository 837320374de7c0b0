//! State shared between the audio thread, the generator thread and the editor.
//!
//! What the audio thread touches here is lock-free: atomic counters the editor reads, one atomic
//! request flag the editor writes, and a `Copy` snapshot (with its [`NoteRing`]s) the audio
//! thread publishes through a triple buffer. Two mutexes hold what the audio thread never sees:
//! the engine's texts ([`EngineInfo`]) and the capture log ([`CaptureLog`]), shared by the
//! generator, the loader and the editor.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use crate::sync::{lock, try_with};

/// The generator's state, shown in the editor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EngineStatus {
    /// No generator thread is running (the plugin is not active).
    Stopped = 0,
    /// Waiting for a trigger.
    Idle = 1,
    /// Generating an answer.
    Generating = 2,
    /// The generator failed; the plugin keeps passing MIDI through.
    Failed = 3,
}

impl EngineStatus {
    pub fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Idle,
            2 => Self::Generating,
            3 => Self::Failed,
            _ => Self::Stopped,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::Idle => "idle",
            Self::Generating => "generating",
            Self::Failed => "failed",
        }
    }
}

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
    /// While answering: where the answer plays, on the plugin clock in samples (start, end).
    pub answer_span: Option<(i64, i64)>,
    /// While answering with the transport playing: the song position of its first beat.
    pub answer_start_beats: Option<f64>,
}

// ---------------------------------------------------------------------------------------------
// The piano roll's note ring
// ---------------------------------------------------------------------------------------------

/// How many of the most recent notes (played and generated) the snapshot carries.
pub const RECENT_NOTES: usize = 128;
/// How many scheduled, not yet sounding generated notes the snapshot carries.
pub const UPCOMING_NOTES: usize = 32;

/// Where a note in the roll came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NoteSource {
    /// Played by the musician (recorded whether or not it was passed through).
    #[default]
    Played,
    /// Generated by the model and sent to the output.
    Generated,
}

/// One note in the roll.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollNote {
    /// Plugin clock sample of the note-on.
    pub start: i64,
    /// Plugin clock sample of the note-off, [`RollNote::OPEN`] while the note sounds.
    pub end: i64,
    /// Tells notes of the same source, channel and key apart when closing them: the schedule slot
    /// of a generated note, 0 for a played note, the answer id of an upcoming note.
    pub tag: u32,
    pub key: u8,
    pub channel: u8,
    /// MIDI velocity, `1..=127`.
    pub velocity: u8,
    pub source: NoteSource,
}

impl RollNote {
    /// The `end` of a note that still sounds.
    pub const OPEN: i64 = i64::MAX;

    /// A note starting at plugin clock sample `start`, still sounding. `velocity` is in `[0, 1]`.
    pub fn started(
        source: NoteSource,
        channel: u8,
        key: u8,
        velocity: f32,
        start: i64,
        tag: u32,
    ) -> Self {
        Self {
            start,
            end: Self::OPEN,
            tag,
            key: key & 127,
            channel: channel & 15,
            velocity: midi_velocity(velocity),
            source,
        }
    }

    pub fn is_open(&self) -> bool {
        self.end == Self::OPEN
    }

    fn matches(&self, source: NoteSource, channel: u8, key: u8, tag: u32) -> bool {
        self.source == source
            && self.channel == channel & 15
            && self.key == key & 127
            && self.tag == tag
    }
}

/// A `[0, 1]` velocity as a MIDI velocity `1..=127` (anything not finite counts as 64).
fn midi_velocity(velocity: f32) -> u8 {
    if velocity.is_finite() {
        (velocity * 127.0).round().clamp(1.0, 127.0) as u8
    } else {
        64
    }
}

/// The `N` most recent notes, oldest overwritten first. A `Copy` value with no heap part, so it
/// can live in the audio thread's state and travel in the editor snapshot: the audio thread only
/// calls [`NoteRing::push`] and [`NoteRing::close`], which never allocate, and the ring is
/// copied whole into every snapshot. [`crate::editor::roll`] lays it out for painting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoteRing<const N: usize> {
    notes: [RollNote; N],
    /// Notes pushed since the last clear; the next one goes to `written % N`.
    written: u64,
    /// Open notes among those held, so a search for one can stop once it has seen them all.
    open: u32,
}

impl<const N: usize> Default for NoteRing<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> NoteRing<N> {
    pub const fn new() -> Self {
        Self {
            notes: [RollNote {
                start: 0,
                end: RollNote::OPEN,
                tag: 0,
                key: 0,
                channel: 0,
                velocity: 0,
                source: NoteSource::Played,
            }; N],
            written: 0,
            open: 0,
        }
    }

    /// Forgets every note. Real-time safe.
    pub fn clear(&mut self) {
        self.written = 0;
        self.open = 0;
    }

    /// Notes held (at most `N`).
    pub fn len(&self) -> usize {
        self.written.min(N as u64) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    /// Adds a note, overwriting the oldest once the ring is full. Real-time safe.
    pub fn push(&mut self, note: RollNote) {
        if N == 0 {
            return;
        }
        let slot = &mut self.notes[(self.written % N as u64) as usize];
        if self.written >= N as u64 && slot.is_open() {
            self.open -= 1;
        }
        if note.is_open() {
            self.open += 1;
        }
        *slot = note;
        self.written += 1;
    }

    /// Calls `f` on the open notes, newest first, until it returns `true`; returns how many
    /// it did. Visits only as far back as the oldest open note.
    fn for_open_newest_first(&mut self, mut f: impl FnMut(&mut RollNote) -> bool) -> u32 {
        let mut unseen = self.open;
        let mut closed = 0;
        let mut back = 0;
        while unseen > 0 && back < self.written.min(N as u64) {
            back += 1;
            let note = &mut self.notes[((self.written - back) % N as u64) as usize];
            if !note.is_open() {
                continue;
            }
            unseen -= 1;
            let stop = f(note);
            if !note.is_open() {
                closed += 1;
            }
            if stop {
                break;
            }
        }
        self.open -= closed;
        closed
    }

    /// Ends the newest open note of this source, channel, key and tag at `end`. Returns `false`
    /// if there is none (its note-on was overwritten, or never recorded). Real-time safe: at
    /// most `N` comparisons, and usually a few: the search stops at the oldest open note.
    ///
    /// Newest first, so a note whose note-off was never seen stays open on its own instead of
    /// swallowing the note-offs of every later note on its key.
    pub fn close(&mut self, source: NoteSource, channel: u8, key: u8, tag: u32, end: i64) -> bool {
        let closed = self.for_open_newest_first(|note| {
            let found = note.matches(source, channel, key, tag);
            if found {
                note.end = end.max(note.start);
            }
            found
        });
        closed > 0
    }

    /// Ends every open note of this source, channel, key and tag at `end`; returns how many.
    /// Real-time safe: at most one pass over the ring, back to the oldest open note.
    ///
    /// For played notes: the core releases every stacked note-on of a key at its first note-off,
    /// and so does the roll.
    pub fn close_all(
        &mut self,
        source: NoteSource,
        channel: u8,
        key: u8,
        tag: u32,
        end: i64,
    ) -> usize {
        let closed = self.for_open_newest_first(|note| {
            if note.matches(source, channel, key, tag) {
                note.end = end.max(note.start);
            }
            false
        });
        closed as usize
    }

    /// The notes, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &RollNote> + '_ {
        let len = self.len() as u64;
        let first = self.written - len;
        (first..self.written).map(move |i| &self.notes[(i % N as u64) as usize])
    }
}

// ---------------------------------------------------------------------------------------------
// The captured answers
// ---------------------------------------------------------------------------------------------

/// How many answers are kept.
pub const CAPTURE_KEEP: usize = 8;

/// One generated note, as sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CapturedNote {
    /// Start, in beats after the answer's first beat.
    pub start_beats: f64,
    /// End, in beats after the answer's first beat.
    pub end_beats: f64,
    pub key: u8,
    /// Velocity in `(0, 1]`.
    pub velocity: f32,
}

/// One answer.
#[derive(Debug, Clone, PartialEq)]
pub struct CapturedAnswer {
    /// Counts answers since the plugin was loaded (1 = the first), for names.
    pub number: u64,
    /// The style it was generated with ("base model" without one).
    pub style: String,
    pub tempo_bpm: f64,
    /// Zero-based MIDI channel the notes were sent on.
    pub channel: u8,
    pub notes: Vec<CapturedNote>,
}

impl CapturedAnswer {
    /// Length in beats (the end of the last note).
    pub fn length_beats(&self) -> f64 {
        self.notes.iter().map(|n| n.end_beats).fold(0.0, f64::max)
    }

    /// A one-line description for the editor.
    pub fn label(&self) -> String {
        format!(
            "#{} · {} · {} notes · {:.1} beats at {:.0} BPM",
            self.number,
            self.style,
            self.notes.len(),
            self.length_beats(),
            self.tempo_bpm
        )
    }
}

/// The kept answers, newest last. Written by the generator thread, read by the editor and the
/// loader thread; never by the audio thread.
#[derive(Debug, Default)]
pub struct CaptureLog {
    answers: Mutex<VecDeque<CapturedAnswer>>,
    /// Answers filed so far.
    filed: std::sync::atomic::AtomicU64,
}

impl CaptureLog {
    /// Files an answer (empty ones are not kept), dropping the oldest beyond [`CAPTURE_KEEP`].
    pub fn file(&self, mut answer: CapturedAnswer) {
        if answer.notes.is_empty() {
            return;
        }
        let number = self
            .filed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        answer.number = number;
        let mut answers = lock(&self.answers);
        answers.push_back(answer);
        while answers.len() > CAPTURE_KEEP {
            answers.pop_front();
        }
    }

    /// Copies of the kept answers, oldest first; `None` if the generator is filing one right
    /// now (the editor then shows what it showed before). Never blocks.
    pub fn try_list(&self) -> Option<Vec<CapturedAnswer>> {
        try_with(&self.answers, |answers| answers.iter().cloned().collect())
    }

    /// The answer with this number, if it is still kept (blocks briefly; not for the GUI).
    pub fn get(&self, number: u64) -> Option<CapturedAnswer> {
        let answers = lock(&self.answers);
        answers.iter().find(|a| a.number == number).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

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

    fn played(key: u8, start: i64) -> RollNote {
        RollNote::started(NoteSource::Played, 0, key, 0.5, start, 0)
    }

    #[test]
    fn the_ring_keeps_the_newest_notes_oldest_first() {
        let mut ring = NoteRing::<4>::new();
        assert!(ring.is_empty());
        for i in 0..6 {
            ring.push(played(60 + i as u8, i));
        }
        assert_eq!(ring.len(), 4);
        let starts: Vec<i64> = ring.iter().map(|n| n.start).collect();
        assert_eq!(starts, [2, 3, 4, 5], "the two oldest were overwritten");
        ring.clear();
        assert_eq!(ring.iter().count(), 0);
    }

    #[test]
    fn closing_after_wrap_around_finds_the_right_slot() {
        let mut ring = NoteRing::<4>::new();
        for i in 0..7 {
            ring.push(played(60 + i as u8, i * 10));
        }
        assert_eq!(ring.open, 4, "overwritten open notes are no longer counted");
        // Key 66 went into slot 2 on the second lap.
        assert!(ring.close(NoteSource::Played, 0, 66, 0, 65));
        assert_eq!(ring.open, 3);
        let closed: Vec<(u8, i64)> = ring
            .iter()
            .filter(|n| !n.is_open())
            .map(|n| (n.key, n.end))
            .collect();
        assert_eq!(closed, [(66, 65)]);
        // Key 60 was overwritten: nothing to close.
        assert!(!ring.close(NoteSource::Played, 0, 60, 0, 70));
    }

    #[test]
    fn note_off_closes_only_the_matching_entry() {
        let mut ring = NoteRing::<16>::new();
        ring.push(played(60, 0));
        ring.push(RollNote::started(NoteSource::Generated, 0, 60, 0.8, 5, 3));
        ring.push(RollNote::started(NoteSource::Generated, 0, 60, 0.8, 6, 4));
        ring.push(RollNote::started(NoteSource::Played, 1, 60, 0.5, 7, 0));
        // Generated, slot 3: not the played note on the same key, not the one in slot 4.
        assert!(ring.close(NoteSource::Generated, 0, 60, 3, 20));
        // Played on channel 0: not the one on channel 1.
        assert!(ring.close(NoteSource::Played, 0, 60, 0, 30));
        let ends: Vec<(NoteSource, u8, i64, i64)> = ring
            .iter()
            .map(|n| (n.source, n.channel, n.start, n.end))
            .collect();
        assert_eq!(
            ends,
            [
                (NoteSource::Played, 0, 0, 30),
                (NoteSource::Generated, 0, 5, 20),
                (NoteSource::Generated, 0, 6, RollNote::OPEN),
                (NoteSource::Played, 1, 7, RollNote::OPEN),
            ]
        );
        assert!(
            !ring.close(NoteSource::Played, 0, 60, 0, 40),
            "already closed"
        );
    }

    #[test]
    fn a_repeated_key_closes_the_newest_open_note_first() {
        let mut ring = NoteRing::<8>::new();
        ring.push(played(60, 0));
        ring.push(played(60, 10));
        assert!(ring.close(NoteSource::Played, 0, 60, 0, 20));
        let ends: Vec<i64> = ring.iter().map(|n| n.end).collect();
        assert_eq!(ends, [RollNote::OPEN, 20]);
        // A note-off before the note-on (rounding) never gives a negative length.
        ring.push(played(62, 100));
        ring.close(NoteSource::Played, 0, 62, 0, 90);
        assert_eq!(ring.iter().last().unwrap().end, 100);
    }

    #[test]
    fn close_all_ends_every_stacked_note_of_a_key() {
        let mut ring = NoteRing::<4>::new();
        for (key, start) in [(60, 0), (61, 1), (60, 2), (60, 3), (60, 4)] {
            ring.push(played(key, start));
        }
        // The first 60 was overwritten; the three others are closed, 61 is not.
        assert_eq!(ring.close_all(NoteSource::Played, 0, 60, 0, 9), 3);
        let open: Vec<u8> = ring.iter().filter(|n| n.is_open()).map(|n| n.key).collect();
        assert_eq!(open, [61]);
    }

    #[test]
    fn velocities_are_stored_as_midi_values() {
        assert_eq!(played(60, 0).velocity, 64);
        let loud = RollNote::started(NoteSource::Played, 0, 60, 1.0, 0, 0);
        let silent = RollNote::started(NoteSource::Played, 0, 60, 0.0, 0, 0);
        let broken = RollNote::started(NoteSource::Played, 0, 60, f32::NAN, 0, 0);
        assert_eq!(
            (loud.velocity, silent.velocity, broken.velocity),
            (127, 1, 64)
        );
    }

    #[test]
    fn the_ring_fits_in_a_small_snapshot() {
        assert_eq!(std::mem::size_of::<RollNote>(), 24);
        let size = std::mem::size_of::<EditorSnapshot>();
        println!("EditorSnapshot: {size} bytes");
        assert!(size <= 8 * 1024, "{size}");
    }

    #[test]
    fn log_keeps_the_newest_and_numbers_them() {
        let log = CaptureLog::default();
        log.file(testing::answer(&[]));
        for _ in 0..CAPTURE_KEEP + 2 {
            log.file(testing::answer(&[(0.0, 1.0, 60)]));
        }
        let kept = log.try_list().unwrap();
        assert_eq!(kept.len(), CAPTURE_KEEP);
        // The empty answer was not filed, so numbering starts at the first real one.
        assert_eq!(kept.last().unwrap().number, CAPTURE_KEEP as u64 + 2);
        assert_eq!(kept[0].number, 3);
        assert!(log.get(1).is_none());
        assert_eq!(log.get(5).unwrap().number, 5);
    }
}
