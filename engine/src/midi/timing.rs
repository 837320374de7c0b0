//! The timing of a Standard MIDI File: its division, tempo map, time and key
//! signatures. The tokenizer measures every note in 10 ms units and forgets
//! the file's grid; [`Timing`] keeps that grid so that a continuation can be
//! written back in the input's own ticks, tempo and metre, and lands on the
//! bars of a DAW's timeline (see [`notes_to_midi_timed`](super::notes_to_midi_timed)).

use super::reader::DEFAULT_TEMPO_US_PER_BEAT;
use super::writer::WRITER_TICKS_PER_BEAT;

/// How a file counts time: ticks per beat, or SMPTE frames (tempo-free).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FileDivision {
    /// Ticks per quarter note; the tempo map says how long a quarter is.
    TicksPerBeat(u16),
    /// SMPTE timing: `raw` is the header's 16-bit field (negative frame code,
    /// ticks per frame); every tick lasts `seconds_per_tick`.
    Smpte { raw: u16, seconds_per_tick: f64 },
}

impl FileDivision {
    /// The 16-bit division field of the file header.
    pub fn header_field(&self) -> u16 {
        match *self {
            FileDivision::TicksPerBeat(ticks) => ticks,
            FileDivision::Smpte { raw, .. } => raw,
        }
    }
}

/// A file's grid: division, tempo changes, time and key signatures, at the
/// absolute ticks the reader gives them (mido's ticks, quirks included).
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    pub division: FileDivision,
    /// `(tick, microseconds per beat)`, in file order; the tempo before the
    /// first one is 120 BPM. Ignored under SMPTE timing.
    pub tempos: Vec<(u64, u32)>,
    /// `(tick, [numerator, log2 denominator, clocks per click, 32nds per beat])`.
    pub time_signatures: Vec<(u64, [u8; 4])>,
    /// `(tick, [sharps or flats as i8, 0 major / 1 minor])`.
    pub key_signatures: Vec<(u64, [u8; 2])>,
}

impl Timing {
    /// The reference writer's grid: 50 ticks per beat at 120 BPM (10 ms per
    /// tick), with no tempo or signature events.
    pub fn reference() -> Self {
        Timing {
            division: FileDivision::TicksPerBeat(WRITER_TICKS_PER_BEAT),
            tempos: Vec::new(),
            time_signatures: Vec::new(),
            key_signatures: Vec::new(),
        }
    }

    fn seconds_per_tick(&self, tempo: u32) -> f64 {
        match self.division {
            FileDivision::TicksPerBeat(ticks) => f64::from(tempo) * 1e-6 / f64::from(ticks),
            FileDivision::Smpte {
                seconds_per_tick, ..
            } => seconds_per_tick,
        }
    }

    /// The tempo segments: `(first tick, seconds at that tick, µs per beat)`.
    fn segments(&self) -> impl Iterator<Item = (u64, f64, u32)> + '_ {
        let smpte = matches!(self.division, FileDivision::Smpte { .. });
        let changes: &[(u64, u32)] = if smpte { &[] } else { &self.tempos };
        let mut state = (0_u64, 0.0_f64, DEFAULT_TEMPO_US_PER_BEAT);
        std::iter::once(state).chain(changes.iter().map(move |&(tick, tempo)| {
            let (start, seconds, current) = state;
            let at = seconds + (tick - start) as f64 * self.seconds_per_tick(current);
            state = (tick, at, tempo);
            state
        }))
    }

    /// The last tempo segment whose start (tick, seconds) is `reached`; segments start in
    /// order of both, and the first starts at 0.
    fn last_segment(&self, reached: impl Fn(u64, f64) -> bool) -> (u64, f64, u32) {
        self.segments()
            .take_while(|&(start, at, _)| reached(start, at))
            .last()
            .unwrap_or((0, 0.0, DEFAULT_TEMPO_US_PER_BEAT))
    }

    /// The time of `tick` in seconds from the start of the file.
    pub fn tick_to_seconds(&self, tick: u64) -> f64 {
        let (start, seconds, tempo) = self.last_segment(|start, _| start <= tick);
        seconds + (tick - start) as f64 * self.seconds_per_tick(tempo)
    }

    /// The (fractional) tick at `seconds` from the start of the file; the
    /// inverse of [`Timing::tick_to_seconds`]. Negative times give tick 0.
    pub fn seconds_to_tick(&self, seconds: f64) -> f64 {
        let (start, at, tempo) = self.last_segment(|_, at| at <= seconds);
        (start as f64 + (seconds - at) / self.seconds_per_tick(tempo)).max(0.0)
    }
}
