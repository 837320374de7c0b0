//! A deterministic stand-in generator for the audio shell's unit tests.

use super::{Generator, Outbox};
use crate::protocol::{AnswerRequest, FromEngine, GenParams, GeneratedNote, PlayedNote, ToEngine};
use crate::status::EngineStatus;

/// The most notes of a played phrase the stand-in remembers.
const MAX_PHRASE_NOTES: usize = 256;
/// Length given to a note that is still held when the answer is made.
const HELD_NOTE_MS: f64 = 250.0;
/// The shortest note the stand-in plays.
const MIN_NOTE_MS: f64 = 20.0;

#[derive(Debug, Clone, Copy)]
struct PhraseNote {
    start_ms: f64,
    end_ms: Option<f64>,
    key: u8,
    velocity: f32,
}

/// STAND-IN for the Moonbeam engine, used by the shell's unit tests ([`crate::audio`]), which need
/// exactly predictable answers. The plugin itself runs [`super::MoonbeamGenerator`].
///
/// It answers a phrase by echoing the notes played since the previous answer, transposed by
/// [`EchoGenerator::TRANSPOSE`] semitones (folded by octaves into the pitch range), with the
/// played rhythm, cut to the requested length and thinned to the density cap. With nothing new
/// played it repeats the previous phrase, so continuous mode loops it. It is deterministic:
/// temperature, top-p, seed and style strength are accepted and ignored, and so are quantize,
/// swing and the scale lock (their tests run on Moonbeam in [`super::moonbeam`] and [`super::shaper`]).
#[derive(Debug, Default)]
pub struct EchoGenerator {
    params: GenParams,
    phrase: Vec<PhraseNote>,
    previous_phrase: Vec<PhraseNote>,
}

impl EchoGenerator {
    /// The echo's transposition in semitones.
    pub const TRANSPOSE: i32 = 12;

    pub fn new() -> Self {
        Self {
            params: GenParams::default(),
            phrase: Vec::with_capacity(MAX_PHRASE_NOTES),
            previous_phrase: Vec::with_capacity(MAX_PHRASE_NOTES),
        }
    }

    fn record(&mut self, note: PlayedNote) {
        if note.is_on {
            if self.phrase.len() == MAX_PHRASE_NOTES {
                self.phrase.remove(0);
            }
            self.phrase.push(PhraseNote {
                start_ms: note.time.clock_ms,
                end_ms: None,
                key: note.key,
                velocity: note.velocity,
            });
        } else if let Some(open) = self
            .phrase
            .iter_mut()
            .rev()
            .find(|n| n.key == note.key && n.end_ms.is_none())
        {
            open.end_ms = Some(note.time.clock_ms);
        }
    }

    /// Folds `key + TRANSPOSE` into `[low, high]` by octaves (clamping if the range is narrower
    /// than an octave).
    pub fn fold_key(key: u8, low: u8, high: u8) -> u8 {
        let (low, high) = (i32::from(low.min(high)), i32::from(low.max(high)));
        let mut k = i32::from(key) + Self::TRANSPOSE;
        while k > high && k - 12 >= low {
            k -= 12;
        }
        while k < low && k + 12 <= high {
            k += 12;
        }
        k.clamp(low, high).clamp(0, 127) as u8
    }

    fn answer(&mut self, request: AnswerRequest, out: &mut Outbox<'_>) {
        out.set_status(EngineStatus::Generating);
        if !self.phrase.is_empty() {
            self.previous_phrase.clear();
            self.previous_phrase.append(&mut self.phrase);
        }
        let ms_per_beat = request.ms_per_beat();
        let phrase = &self.previous_phrase;
        if let Some(first) = phrase.first() {
            let t0 = first.start_ms;
            let length_ms = request.length_ms;
            let max_per_beat = self.params.density_cap_per_beat.max(0.0).ceil() as u32;
            let (mut beat_index, mut in_beat) = (u64::MAX, 0u32);
            for note in phrase {
                let rel_start_ms = note.start_ms - t0;
                if rel_start_ms >= length_ms {
                    break;
                }
                let this_beat = (rel_start_ms / ms_per_beat) as u64;
                if this_beat != beat_index {
                    (beat_index, in_beat) = (this_beat, 0);
                }
                if in_beat >= max_per_beat {
                    continue;
                }
                in_beat += 1;
                let end_ms = note.end_ms.unwrap_or(note.start_ms + HELD_NOTE_MS);
                let rel_end_ms = (end_ms - t0).max(rel_start_ms + MIN_NOTE_MS).min(length_ms);
                let velocity = (note.velocity * self.params.velocity_scale).clamp(1.0 / 127.0, 1.0);
                out.send(FromEngine::Note(GeneratedNote {
                    answer_id: request.answer_id,
                    start: request.time_at(rel_start_ms),
                    end: request.time_at(rel_end_ms.max(rel_start_ms)),
                    key: Self::fold_key(note.key, self.params.pitch_low, self.params.pitch_high),
                    velocity,
                }));
            }
        }
        out.send(FromEngine::AnswerEnd {
            answer_id: request.answer_id,
        });
        out.set_status(EngineStatus::Idle);
    }
}

impl Generator for EchoGenerator {
    fn handle(&mut self, message: ToEngine, out: &mut Outbox<'_>) {
        match message {
            ToEngine::Note(note) => self.record(note),
            ToEngine::Params(params) => self.params = params,
            ToEngine::Trigger(request) => self.answer(request, out),
            // Answers are made in one go, so there is nothing in progress to stop.
            ToEngine::Cancel { .. } => {}
        }
    }
}
