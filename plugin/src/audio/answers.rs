//! Answers on the audio thread: when one is asked for, how long it is and where it starts,
//! and the generated notes coming back into the schedule.

use super::schedule::{EventTime, NoteState, ScheduledNote};
use std::sync::atomic::Ordering;

use super::transport::HostTime;
use super::{BlockIo, Core, Moment};
use crate::params::{Mode, Settings};
use crate::protocol::{AnswerRequest, FromEngine, ToEngine, MAX_ANSWER_MS};
use crate::status::SharedStatus;
use crate::status::{NoteSource, RollNote};

/// Why an answer is requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerKind {
    /// Call-and-response: the player went silent.
    Silence,
    /// The trigger button, the trigger parameter or a MIDI trigger.
    Manual,
    /// Continuous mode: the next segment of an ongoing stream.
    Continuous,
}

/// The length of an "as played" answer when no phrase has been played yet.
const DEFAULT_ANSWER_BEATS: f64 = 4.0;

/// How far ahead of "now" an answer starts at the earliest, so the generator has time to produce
/// its first notes. While the transport plays, the answer then starts on the next beat. Once the
/// generator's speed is measured, the lead also covers generating the whole answer: see
/// [`answer_lead_ms`].
pub const ANSWER_LEAD_MS: f64 = 100.0;
/// The measured time to generate an answer is stretched by this much for its lead.
pub const ANSWER_LEAD_MARGIN: f64 = 1.25;
/// The longest lead: past this (a model slower than about a quarter of real time), answers
/// stream, and notes not ready in time are dropped and counted.
pub const MAX_ANSWER_LEAD_MS: f64 = 2_000.0;
/// How far ahead of the trigger an answer of `answer_ms` of music starts at the earliest: enough
/// for the generator to produce all of it first, at the measured `generation_ratio` (generation
/// time per time of music; `None` before any answer) with [`ANSWER_LEAD_MARGIN`], but at least
/// [`ANSWER_LEAD_MS`] and at most [`MAX_ANSWER_LEAD_MS`].
pub fn answer_lead_ms(generation_ratio: Option<f64>, answer_ms: f64) -> f64 {
    let whole = generation_ratio.unwrap_or(0.0) * answer_ms.max(0.0) * ANSWER_LEAD_MARGIN;
    if whole.is_finite() {
        whole.clamp(ANSWER_LEAD_MS, MAX_ANSWER_LEAD_MS)
    } else {
        MAX_ANSWER_LEAD_MS
    }
}

/// The bars an answer of `kind` lasts (0: as long as the phrase played); a continuous answer is
/// at least a bar. The continuous mode's look-ahead and the request use this one rule.
pub(super) fn answer_bars(kind: TriggerKind, settings: &Settings) -> u32 {
    if kind == TriggerKind::Continuous {
        settings.answer_bars.max(1)
    } else {
        settings.answer_bars
    }
}

impl Core {
    pub(super) fn receive_from_engine(&mut self, bypassed: bool) {
        let Some(consumer) = &mut self.from_engine else {
            return;
        };
        while let Ok(message) = consumer.pop() {
            match message {
                FromEngine::Note(note) => {
                    if bypassed || note.answer_id < self.accept_from_id {
                        continue;
                    }
                    let scheduled_on = EventTime::from_note_time(note.start, self.sample_rate);
                    let scheduled_off = EventTime::from_note_time(note.end, self.sample_rate);
                    let inserted = self.schedule.insert(ScheduledNote {
                        answer_id: note.answer_id,
                        on: scheduled_on,
                        off: scheduled_off,
                        key: note.key.min(127),
                        velocity: if note.velocity.is_finite() {
                            note.velocity.clamp(1.0 / 127.0, 1.0)
                        } else {
                            1.0
                        },
                        state: NoteState::Waiting,
                    });
                    if !inserted {
                        SharedStatus::count(&self.status.dropped_schedule_full);
                    } else if let (Some(on), Some(off)) = (
                        self.block.offset_of(scheduled_on),
                        self.block.offset_of(scheduled_off),
                    ) {
                        // The roll's preview, on the plugin clock (beats at the current tempo).
                        let start = self.block.start_sample + on;
                        self.upcoming.push(RollNote {
                            end: self.block.start_sample + off.max(on),
                            ..RollNote::started(
                                NoteSource::Generated,
                                0,
                                note.key,
                                note.velocity,
                                start,
                                note.answer_id,
                            )
                        });
                    }
                }
                FromEngine::AnswerEnd { answer_id } => {
                    if self.current_answer == Some(answer_id) {
                        self.engine_done = true;
                    }
                }
            }
        }
    }

    /// The triggers evaluated at the block's first sample: the trigger button or parameter,
    /// the player's silence (call-and-response), the stream running low (continuous). MIDI
    /// triggers fire at their own sample, in [`Core::play_block`].
    pub(super) fn trigger_at_block_start(
        &mut self,
        io: &mut impl BlockIo,
        time: &HostTime,
        settings: &Settings,
    ) {
        let trigger_controller = settings.trigger_controller();
        if trigger_controller != self.trigger_cc_tracked {
            // A new trigger controller starts "up", unless it is a pedal passed on as down.
            self.trigger_cc_tracked = trigger_controller;
            for (channel, down) in (0..16u8).zip(&mut self.trigger_cc_down) {
                *down = trigger_controller.is_some_and(|cc| self.pedals.is_down(channel, cc));
            }
        }
        let trigger_edge = settings.trigger && !self.previous_trigger_param;
        self.previous_trigger_param = settings.trigger;
        let trigger_requested = self.status.trigger_request.swap(false, Ordering::Relaxed);
        if settings.bypass {
            return;
        }
        let HostTime {
            now,
            samples_per_beat,
            bar_start_beats,
        } = *time;
        let kind = if trigger_edge || trigger_requested {
            // A trigger while an answer plays replaces it ("regenerate").
            self.cancel_answer(io, 0);
            Some(TriggerKind::Manual)
        } else {
            match settings.mode {
                Mode::CallResponse => {
                    let silent_samples = self.clock.saturating_sub(self.last_player_activity);
                    (self.current_answer.is_none()
                        && self.phrase_pending
                        && self.held.total() == 0
                        && silent_samples as f64 >= settings.silence_beats * samples_per_beat)
                        .then_some(TriggerKind::Silence)
                }
                Mode::Continuous => {
                    let bars = answer_bars(TriggerKind::Continuous, settings);
                    let answer_ms = self.answer_ms(bars, now.beats_per_bar, now.tempo_bpm);
                    let lead_ms = answer_lead_ms(self.status.generation_ratio(), answer_ms);
                    let lead_beats = lead_ms / 60_000.0 * now.tempo_bpm;
                    let needs_more = self
                        .continuous_next_beat
                        .is_none_or(|end| end - now.pos_beats < now.beats_per_bar + lead_beats);
                    (now.playing
                        && self.has_context
                        && (self.current_answer.is_none() || self.engine_done)
                        && needs_more)
                        .then_some(TriggerKind::Continuous)
                }
                Mode::Manual => None,
            }
        };
        if let Some(kind) = kind {
            self.start_answer(kind, settings, now, bar_start_beats, 0);
        }
    }

    /// How long an answer of `bars` lasts, in ms: the one place this is decided. 0 bars ("as
    /// played") is the length of the latest phrase (first note-on to last note event), or
    /// [`DEFAULT_ANSWER_BEATS`] before any; never more than [`MAX_ANSWER_MS`].
    pub(super) fn answer_ms(&self, bars: u32, beats_per_bar: f64, tempo_bpm: f64) -> f64 {
        let ms_per_beat = 60_000.0 / tempo_bpm;
        let asked_ms = if bars > 0 {
            f64::from(bars) * beats_per_bar * ms_per_beat
        } else {
            self.last_phrase_ms
                .unwrap_or(DEFAULT_ANSWER_BEATS * ms_per_beat)
        };
        if asked_ms.is_finite() && asked_ms > 0.0 {
            asked_ms.min(MAX_ANSWER_MS)
        } else {
            DEFAULT_ANSWER_BEATS * ms_per_beat
        }
    }

    /// Requests an answer. `now` is the moment at sample `offset` of the current block.
    pub(super) fn start_answer(
        &mut self,
        kind: TriggerKind,
        settings: &Settings,
        now: Moment,
        bar_start_beats: Option<f64>,
        offset: u32,
    ) {
        let answer_id = self.next_answer_id;
        let bars = answer_bars(kind, settings);
        let length_beats = f64::from(bars) * now.beats_per_bar;
        let ms_per_beat = 60_000.0 / now.tempo_bpm;
        if self.phrase_pending {
            let samples = self.last_player_activity - self.phrase_started;
            if samples > 0 {
                self.last_phrase_ms = Some(samples as f64 * 1000.0 / self.sample_rate);
            }
        }
        let answer_ms = self.answer_ms(bars, now.beats_per_bar, now.tempo_bpm);
        let lead_ms = answer_lead_ms(self.status.generation_ratio(), answer_ms);
        let start = if now.playing {
            let earliest = now.pos_beats + lead_ms / ms_per_beat;
            let beat = if kind == TriggerKind::Continuous {
                let origin = bar_start_beats.filter(|b| b.is_finite()).unwrap_or(0.0);
                let next_bar =
                    origin + ((earliest - origin) / now.beats_per_bar).ceil() * now.beats_per_bar;
                self.continuous_next_beat
                    .map_or(next_bar, |end| end.max(next_bar))
            } else {
                earliest.ceil()
            };
            let mut stamp = self.stamp(offset, Some(beat));
            stamp.clock_ms += (beat - now.pos_beats) * ms_per_beat;
            stamp
        } else {
            let mut stamp = self.stamp(offset, None);
            stamp.clock_ms += lead_ms;
            stamp
        };
        let request = AnswerRequest {
            answer_id,
            start,
            length_ms: answer_ms,
            tempo_bpm: now.tempo_bpm,
        };
        if !self.send_to_engine(ToEngine::Trigger(request)) {
            // Tried again at the next block.
            return;
        }
        self.next_answer_id += 1;
        self.current_answer = Some(answer_id);
        let to_samples = |ms: f64| (ms * self.sample_rate / 1000.0).round() as i64;
        self.answer_span = Some((
            to_samples(start.clock_ms),
            to_samples(start.clock_ms + answer_ms),
        ));
        self.answer_start_beats = start.beats;
        self.engine_done = false;
        self.phrase_pending = false;
        if kind == TriggerKind::Continuous {
            self.continuous_next_beat = start.beats.map(|b| b + length_beats);
        }
        SharedStatus::count(&self.status.answers_triggered);
    }

    /// Stops the current answer: tells the generator, discards its notes still to come and
    /// releases the generated notes sounding, at sample `timing`.
    pub(super) fn cancel_answer(&mut self, io: &mut impl BlockIo, timing: u32) {
        if let Some(answer_id) = self.current_answer.take() {
            self.send_to_engine(ToEngine::Cancel { answer_id });
        }
        self.engine_done = true;
        self.accept_from_id = self.next_answer_id;
        self.continuous_next_beat = None;
        self.release_generated(io, timing);
    }
}
