//! The player's side of a block: thru, MIDI triggers, hold pedals and the notes sent to the
//! generator.

use nice_plug::midi::NoteEvent;

use super::output::{note_off, send_or_count};
use super::schedule::controller_is_down;
use super::voice::VoiceSource;
use super::{BlockIo, Core};
use crate::params::{Mode, Settings};
use crate::protocol::{PlayedNote, ToEngine};
use crate::status::SharedStatus;
use crate::status::{NoteSource, RollNote};

impl Core {
    /// Records a played note-on in the piano roll (whatever thru and bypass say).
    pub(super) fn record_played_on(&mut self, channel: u8, key: u8, velocity: f32, timing: u32) {
        let start = self.clock + i64::from(timing);
        self.recent.push(RollNote::started(
            NoteSource::Played,
            channel,
            key,
            velocity,
            start,
            0,
        ));
    }

    /// Ends played notes in the piano roll: bit `key` of `released[channel]` per released key.
    pub(super) fn record_played_offs(&mut self, released: &[u128; 16], timing: u32) {
        let end = self.clock + i64::from(timing);
        for (channel, &keys) in released.iter().enumerate() {
            let mut keys = keys;
            while keys != 0 {
                let key = keys.trailing_zeros() as u8;
                keys &= keys - 1;
                self.recent
                    .close_all(NoteSource::Played, channel as u8, key, 0, end);
            }
        }
    }

    /// Handles one input event at sample `timing`. Returns `true` if it barged in on an answer.
    pub(super) fn handle_input(
        &mut self,
        io: &mut impl BlockIo,
        event: NoteEvent<()>,
        timing: u32,
        settings: &Settings,
    ) -> bool {
        let forward = settings.thru || settings.bypass;
        // MIDI triggers work unless bypassed.
        let armed = !settings.bypass;
        let mut barged_in = false;
        match event {
            NoteEvent::NoteOn {
                channel,
                key,
                velocity,
                ..
            } => {
                // A note-on must name its channel and key; anything else is malformed.
                let (Some(c), Some(k)) = (channel.number(), key.number()) else {
                    return false;
                };
                let (c, k) = (c & 15, k & 127);
                if armed && settings.trigger_key() == Some(k) {
                    // A trigger, not a note. Nothing is recorded, so its note-off finds nothing
                    // to release and is dropped too.
                    self.midi_trigger_at = Some(timing);
                    return false;
                }
                self.held.note_on(c, k);
                self.record_played_on(c, k, velocity, timing);
                self.last_player_activity = self.clock + i64::from(timing);
                if !settings.bypass {
                    if !self.phrase_pending {
                        self.phrase_started = self.clock + i64::from(timing);
                    }
                    self.phrase_pending = true;
                    self.has_context = true;
                    if settings.mode == Mode::CallResponse && self.current_answer.is_some() {
                        // Barge-in: the answer stops before the player's note.
                        self.cancel_answer(io, timing);
                        barged_in = true;
                    }
                    let time = self.stamp(timing, self.beats_at(timing));
                    self.send_to_engine(ToEngine::Note(PlayedNote {
                        time,
                        channel: c,
                        key: k,
                        velocity,
                        is_on: true,
                    }));
                    if settings.voice {
                        self.synth.note_on(VoiceSource::Player, c, k, velocity);
                    }
                }
                if forward {
                    if self.thru.note_on(c, k) {
                        if !send_or_count(io, &self.status, with_timing(event, timing)) {
                            self.thru.note_off(c, k);
                        }
                    } else {
                        SharedStatus::count(&self.status.dropped_output_events);
                    }
                }
            }
            NoteEvent::NoteOff { channel, key, .. } | NoteEvent::Choke { channel, key, .. } => {
                let (c, k) = (
                    channel.number().map(|c| c & 15),
                    key.number().map(|k| k & 127),
                );
                self.player_released(c, k, timing, settings);
                match (c, k) {
                    (Some(c), Some(k)) => {
                        // Only note-offs of notes we passed on are sent, so the output never
                        // holds an unmatched note-off, whatever thru and bypass did meanwhile.
                        if self.thru.note_off(c, k) {
                            let off = match event {
                                NoteEvent::Choke { .. } => note_off(timing, c, k),
                                _ => with_timing(event, timing),
                            };
                            if !send_or_count(io, &self.status, off) {
                                self.thru.note_on(c, k);
                            }
                        }
                    }
                    // A wildcard note-off releases every matching note passed on.
                    (c, k) => {
                        let status = &self.status;
                        self.thru.release_matching(c, k, |c, k| {
                            send_or_count(io, status, note_off(timing, c, k))
                        });
                    }
                }
            }
            NoteEvent::PolyPressure { channel, key, .. }
            | NoteEvent::PolyVolume { channel, key, .. }
            | NoteEvent::PolyPan { channel, key, .. }
            | NoteEvent::PolyTuning { channel, key, .. }
            | NoteEvent::PolyVibrato { channel, key, .. }
            | NoteEvent::PolyExpression { channel, key, .. }
            | NoteEvent::PolyBrightness { channel, key, .. } => {
                // Expressions of a trigger note go with it, unless that key was passed on (it
                // was held before it became the trigger note).
                let of_trigger = armed
                    && settings
                        .trigger_key()
                        .is_some_and(|t| key.number() == Some(t));
                let passed_on = match (channel.number(), key.number()) {
                    (Some(c), Some(k)) => self.thru.count(c, k) > 0,
                    _ => false,
                };
                if forward && (passed_on || !of_trigger) {
                    self.forward(io, event, timing);
                }
            }
            NoteEvent::MidiCC {
                channel, cc, value, ..
            } => self.handle_controller(io, event, timing, (channel & 15, cc), value, settings),
            NoteEvent::MidiPitchBend { .. }
            | NoteEvent::MidiChannelPressure { .. }
            | NoteEvent::MidiProgramChange { .. }
                if forward =>
            {
                self.forward(io, event, timing);
            }
            _ => {}
        }
        barged_in
    }

    /// Handles a controller: a trigger, a hold pedal or any other. Called on the audio thread.
    pub(super) fn handle_controller(
        &mut self,
        io: &mut impl BlockIo,
        event: NoteEvent<()>,
        timing: u32,
        (channel, cc): (u8, u8),
        value: f32,
        settings: &Settings,
    ) {
        let forward = settings.thru || settings.bypass;
        let down = controller_is_down(value);
        if self.trigger_cc_tracked == Some(cc) {
            let was_down = std::mem::replace(&mut self.trigger_cc_down[usize::from(channel)], down);
            if !settings.bypass {
                if down && !was_down {
                    self.midi_trigger_at = Some(timing);
                }
                // Consumed, except the release of a pedal passed on as down before it became
                // the trigger.
                if !down && self.pedals.is_down(channel, cc) && self.forward(io, event, timing) {
                    self.pedals.release(channel, cc);
                }
                return;
            }
        }
        if down {
            if forward && self.forward(io, event, timing) {
                self.pedals.press(channel, cc);
            }
        } else if (forward || self.pedals.is_down(channel, cc)) && self.forward(io, event, timing) {
            self.pedals.release(channel, cc);
        }
    }

    /// Sends an input event on unchanged at sample `timing`; counts it if the host refuses it.
    pub(super) fn forward(
        &mut self,
        io: &mut impl BlockIo,
        event: NoteEvent<()>,
        timing: u32,
    ) -> bool {
        send_or_count(io, &self.status, with_timing(event, timing))
    }

    /// Bookkeeping for a player note-off (`None` = wildcard).
    pub(super) fn player_released(
        &mut self,
        c: Option<u8>,
        k: Option<u8>,
        timing: u32,
        settings: &Settings,
    ) {
        let mut released = [0u128; 16];
        let mut any = false;
        self.held.release_matching(c, k, |c, k| {
            released[usize::from(c)] |= 1 << k;
            any = true;
            true
        });
        if !any {
            return;
        }
        self.record_played_offs(&released, timing);
        self.last_player_activity = self.clock + i64::from(timing);
        if settings.bypass {
            return;
        }
        let time = self.stamp(timing, self.beats_at(timing));
        for (c, &keys) in released.iter().enumerate() {
            // Only the set bits: a note-off releases one key, not 128 candidates.
            let mut rest = keys;
            while rest != 0 {
                let k = rest.trailing_zeros() as u8;
                rest &= rest - 1;
                {
                    self.send_to_engine(ToEngine::Note(PlayedNote {
                        time,
                        channel: c as u8,
                        key: k,
                        velocity: 0.0,
                        is_on: false,
                    }));
                    self.synth
                        .note_off(VoiceSource::Player, Some(c as u8), Some(k));
                }
            }
        }
    }
}

/// The event with its timing clamped into the block.
pub(super) fn with_timing(mut event: NoteEvent<()>, timing: u32) -> NoteEvent<()> {
    let shift = event.timing().saturating_sub(timing);
    event.subtract_timing(shift);
    event
}
