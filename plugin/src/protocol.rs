//! The message protocol between the audio thread and the generator thread.
//!
//! Every message is a small fixed-size `Copy` value, so it can travel through a preallocated
//! lock-free `rtrb` queue without allocating or dropping anything heap-owning on the audio thread.
//! The same messages drive the Moonbeam generator ([`crate::generator::MoonbeamGenerator`]) and
//! the stand-in echo generator used by the shell's unit tests, so this module is the contract
//! between the plugin shell and the engine. Every field has a reader. Decisions are made once,
//! on the audio thread: an [`AnswerRequest`] carries the answer's start, length and tempo
//! resolved, and the generator only follows them.
//!
//! Times:
//! * `clock_ms` is the plugin's own monotonic clock: milliseconds of audio processed since
//!   `activate()`. It runs whether or not the host transport plays, and is the time base used
//!   while the transport is stopped ("wall time").
//! * `beats` is the host's song position in quarter notes, available while the transport plays.
//!
//! Generated notes carry absolute times ([`NoteTime`]) in one of those two bases, so the audio
//! thread can map them onto sample offsets without knowing anything about the model.

use nice_plug::prelude::Enum;

/// The tempo assumed when the host gives none (or an invalid one).
pub const DEFAULT_TEMPO_BPM: f64 = 120.0;
/// The tempos the plugin works with; a host tempo outside is clamped into it (only absurd values
/// are affected).
pub const TEMPO_RANGE_BPM: (f64, f64) = (1.0, 100_000.0);
/// The longest answer ever requested, in ms; longer lengths are cut to it.
pub const MAX_ANSWER_MS: f64 = 10.0 * 60_000.0;

/// The capacity of the audio → generator queue.
pub const TO_ENGINE_CAPACITY: usize = 4096;
/// The capacity of the generator → audio queue.
pub const FROM_ENGINE_CAPACITY: usize = 4096;

/// A point in time as seen by the audio thread when it sends a message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stamp {
    /// The plugin's monotonic clock, in milliseconds since `activate()`.
    pub clock_ms: f64,
    /// The host song position in quarter notes, `None` while the transport is stopped or the host
    /// gives no musical time.
    pub beats: Option<f64>,
}

/// An absolute time for a generated note event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NoteTime {
    /// Host song position in quarter notes. Only meaningful while the transport plays; such notes
    /// are dropped when the transport stops or jumps.
    Beats(f64),
    /// The plugin's monotonic clock in milliseconds (see [`Stamp::clock_ms`]).
    Millis(f64),
}

/// A note played by the musician, as reported to the generator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlayedNote {
    pub time: Stamp,
    /// MIDI channel, `0..16`.
    pub channel: u8,
    /// MIDI key, `0..128`.
    pub key: u8,
    /// Velocity in `[0, 1]`; `0.0` for note-offs.
    pub velocity: f32,
    /// `true` for a note-on, `false` for a note-off.
    pub is_on: bool,
}

/// The most swing the parameter allows, in percent.
pub const MAX_SWING_PERCENT: u8 = 75;

/// Pitch class names, sharps only, `C` = 0.
pub const PITCH_CLASS_NAMES: [&str; 12] = [
    "C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B",
];

/// The grid generated note starts snap to.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Quantize {
    #[id = "off"]
    #[name = "Off"]
    Off,
    #[id = "8th"]
    #[name = "1/8"]
    Eighth,
    #[id = "16th"]
    #[name = "1/16"]
    Sixteenth,
    #[id = "8trip"]
    #[name = "1/8 triplet"]
    EighthTriplet,
}

/// The scale generated pitches are locked to.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Scale {
    #[id = "off"]
    #[name = "Off"]
    Off,
    #[id = "major"]
    #[name = "Major"]
    Major,
    #[id = "minor"]
    #[name = "Natural minor"]
    NaturalMinor,
    #[id = "harmin"]
    #[name = "Harmonic minor"]
    HarmonicMinor,
    #[id = "dorian"]
    #[name = "Dorian"]
    Dorian,
    #[id = "mixo"]
    #[name = "Mixolydian"]
    Mixolydian,
    #[id = "majpen"]
    #[name = "Major pentatonic"]
    MajorPentatonic,
    #[id = "minpen"]
    #[name = "Minor pentatonic"]
    MinorPentatonic,
    #[id = "blues"]
    #[name = "Blues"]
    Blues,
}

/// Generation settings, sent whenever a parameter that affects generation changes.
///
/// The musical settings are one byte each (`u8` and `#[repr(u8)]` enums), which keeps
/// [`ToEngine`] within its 64 bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenParams {
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u32,
    /// Style (LoRA) strength, `0.0` = base model only.
    pub style_strength: f32,
    /// The share of the second style slot, `0.0..=1.0` (see `ContinuoParams::blend`).
    pub blend: f32,
    /// Multiplies generated velocities.
    pub velocity_scale: f32,
    /// Lowest key the generator may play.
    pub pitch_low: u8,
    /// Highest key the generator may play.
    pub pitch_high: u8,
    /// Upper bound on generated note-ons per beat.
    pub density_cap_per_beat: f32,
    /// The grid generated note starts snap to (see [`crate::generator::shaper`]).
    pub quantize: Quantize,
    /// Swing of straight grids in percent, `0..=75`.
    pub swing_percent: u8,
    /// The scale lock's root pitch class, `0..12` (0 = C).
    pub scale_root: u8,
    /// The scale generated pitches are locked to.
    pub scale: Scale,
}

impl Default for GenParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 0.95,
            seed: 0,
            style_strength: 1.0,
            blend: 0.0,
            velocity_scale: 1.0,
            pitch_low: 0,
            pitch_high: 127,
            density_cap_per_beat: 8.0,
            quantize: Quantize::Off,
            swing_percent: 0,
            scale_root: 0,
            scale: Scale::Off,
        }
    }
}

/// A request for an answer, resolved by the audio thread: the generator does not second-guess
/// its start, length or tempo.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnswerRequest {
    /// Increases by one for every request; notes carry it back so the audio thread can discard
    /// notes of cancelled answers.
    pub answer_id: u32,
    /// When the answer's first beat is. `start.beats` is set when the transport plays (the answer
    /// is then timed in beats), otherwise the answer is timed on the plugin clock.
    pub start: Stamp,
    /// How long the answer lasts, in ms: finite, positive and at most [`MAX_ANSWER_MS`].
    pub length_ms: f64,
    /// The tempo used to convert between beats and milliseconds: finite and positive.
    pub tempo_bpm: f64,
}

impl AnswerRequest {
    /// Whether the request keeps the protocol: finite times, a tempo in [`TEMPO_RANGE_BPM`] and a
    /// length in `(0, MAX_ANSWER_MS]`. The audio thread only sends such requests.
    pub fn is_valid(&self) -> bool {
        self.start.clock_ms.is_finite()
            && self.start.beats.is_none_or(f64::is_finite)
            && (TEMPO_RANGE_BPM.0..=TEMPO_RANGE_BPM.1).contains(&self.tempo_bpm)
            && self.length_ms > 0.0
            && self.length_ms <= MAX_ANSWER_MS
    }

    /// Milliseconds per quarter note at the request's tempo.
    pub fn ms_per_beat(&self) -> f64 {
        60_000.0 / self.tempo_bpm
    }

    /// The time `ms` after the answer's start, in the answer's time base: song beats when it is
    /// timed in beats, else the plugin clock. The one conversion from answer time to
    /// [`NoteTime`].
    pub fn time_at(&self, ms: f64) -> NoteTime {
        match self.start.beats {
            Some(beats) => NoteTime::Beats(beats + ms / self.ms_per_beat()),
            None => NoteTime::Millis(self.start.clock_ms + ms),
        }
    }

    /// Beats from the answer's start to `time` (the inverse of [`AnswerRequest::time_at`], in
    /// beats).
    pub fn beats_after_start(&self, time: NoteTime) -> f64 {
        match (time, self.start.beats) {
            (NoteTime::Beats(b), Some(origin)) => b - origin,
            (NoteTime::Millis(ms), _) => (ms - self.start.clock_ms) / self.ms_per_beat(),
            (NoteTime::Beats(b), None) => b,
        }
    }
}

/// Messages from the audio thread to the generator thread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ToEngine {
    /// The player played or released a note.
    Note(PlayedNote),
    /// Generation settings changed.
    Params(GenParams),
    /// Generate an answer.
    Trigger(AnswerRequest),
    /// Stop generating the given answer (barge-in, mode change, bypass). Its notes still in flight
    /// are discarded by the audio thread.
    Cancel { answer_id: u32 },
}

/// A note generated for an answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeneratedNote {
    pub answer_id: u32,
    /// When the note starts.
    pub start: NoteTime,
    /// When the note ends. Should use the same base as `start`.
    pub end: NoteTime,
    /// MIDI key, `0..128`.
    pub key: u8,
    /// Velocity in `(0, 1]`.
    pub velocity: f32,
}

/// Messages from the generator thread to the audio thread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FromEngine {
    /// A note of an answer.
    Note(GeneratedNote),
    /// The generator has sent every note of this answer.
    AnswerEnd { answer_id: u32 },
}

/// A played note on channel 0 at `clock_ms` of the plugin's clock (transport stopped), for the
/// generators' unit tests.
#[cfg(test)]
pub(crate) fn played(clock_ms: f64, key: u8, is_on: bool, velocity: f32) -> ToEngine {
    ToEngine::Note(PlayedNote {
        time: Stamp {
            clock_ms,
            beats: None,
        },
        channel: 0,
        key,
        velocity: if is_on { velocity } else { 0.0 },
        is_on,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_small_copy_values() {
        fn assert_copy<T: Copy + Send + 'static>() {}
        assert_copy::<ToEngine>();
        assert_copy::<FromEngine>();
        assert!(
            std::mem::size_of::<GenParams>() <= 40,
            "{}",
            std::mem::size_of::<GenParams>()
        );
        // Keep the queue slots small: a few cache lines at most.
        assert!(
            std::mem::size_of::<ToEngine>() <= 64,
            "{}",
            std::mem::size_of::<ToEngine>()
        );
        assert!(
            std::mem::size_of::<FromEngine>() <= 64,
            "{}",
            std::mem::size_of::<FromEngine>()
        );
    }
}
