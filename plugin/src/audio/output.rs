//! Sending generated notes at their sample, and releasing output notes (generated and passed
//! through) so nothing is left hanging.

use nice_plug::midi::{Channel, Key, NoteEvent, VoiceID};

use super::schedule::{DueEvent, EventTime, NoteState};
use super::voice::VoiceSource;
use super::{BlockIo, Core};
use crate::params::Settings;
use crate::status::SharedStatus;
use crate::status::{NoteSource, RollNote};

impl Core {
    /// Sends a note-off for every generated note sounding and forgets those still to come.
    pub(super) fn release_generated(&mut self, io: &mut impl BlockIo, timing: u32) {
        self.schedule.discard_waiting();
        for slot in 0..self.schedule.capacity() as u16 {
            let Some(note) = self.schedule.get(slot).copied() else {
                continue;
            };
            if let NoteState::Sounding { channel } = note.state {
                self.release_slot(io, slot, channel, note.key, timing);
            }
        }
    }

    /// The one release path of a sounding generated note: its note-off at sample `timing`. One
    /// the host refuses is counted and tried again at the next block: late is better than
    /// stuck.
    fn release_slot(
        &mut self,
        io: &mut impl BlockIo,
        slot: u16,
        channel: u8,
        key: u8,
        timing: u32,
    ) {
        if send_or_count(io, &self.status, note_off(timing, channel, key)) {
            self.schedule.remove(slot);
            self.recent.close(
                NoteSource::Generated,
                channel,
                key,
                u32::from(slot),
                self.clock + i64::from(timing),
            );
        } else if let Some(note) = self.schedule.get_mut(slot) {
            note.off = EventTime::IMMEDIATE;
        }
        self.synth
            .note_off(VoiceSource::Generated, Some(channel), Some(key));
    }

    /// Releases every output note (generated and passed through) and hold pedal passed on, and
    /// silences the voice.
    pub(super) fn release_everything(&mut self, io: &mut impl BlockIo, timing: u32) {
        self.cancel_answer(io, timing);
        let status = &self.status;
        self.thru.release_matching(None, None, |channel, key| {
            send_or_count(io, status, note_off(timing, channel, key))
        });
        self.pedals.release_all(|channel, cc| {
            let pedal_up = NoteEvent::MidiCC {
                timing,
                channel,
                cc,
                value: 0.0,
            };
            send_or_count(io, status, pedal_up)
        });
        self.synth.release_all();
    }

    pub(super) fn send_due(&mut self, io: &mut impl BlockIo, event: DueEvent, settings: &Settings) {
        let Some(note) = self.schedule.get(event.slot).copied() else {
            return;
        };
        match (event.is_on, note.state) {
            (true, NoteState::Waiting) => {
                let channel = settings.out_channel & 15;
                let note_on = NoteEvent::NoteOn {
                    timing: event.timing,
                    voice_id: VoiceID::Wildcard,
                    channel: Channel::Number(channel),
                    key: Key::Number(note.key),
                    velocity: note.velocity,
                };
                if send_or_count(io, &self.status, note_on) {
                    if let Some(note) = self.schedule.get_mut(event.slot) {
                        note.state = NoteState::Sounding { channel };
                    }
                    self.recent.push(RollNote::started(
                        NoteSource::Generated,
                        channel,
                        note.key,
                        note.velocity,
                        self.clock + i64::from(event.timing),
                        u32::from(event.slot),
                    ));
                    SharedStatus::count(&self.status.generated_notes_played);
                    if settings.voice {
                        self.synth.note_on(
                            VoiceSource::Generated,
                            channel,
                            note.key,
                            note.velocity,
                        );
                    }
                } else {
                    self.schedule.remove(event.slot);
                }
            }
            (false, NoteState::Sounding { channel }) => {
                self.release_slot(io, event.slot, channel, note.key, event.timing);
            }
            _ => {}
        }
    }
}

/// The one way an event goes out: sent, or counted as dropped when the host refuses it.
/// Returns whether it was sent.
pub(super) fn send_or_count(
    io: &mut impl BlockIo,
    status: &SharedStatus,
    event: NoteEvent<()>,
) -> bool {
    let sent = io.send(event);
    if !sent {
        SharedStatus::count(&status.dropped_output_events);
    }
    sent
}

pub(super) fn note_off(timing: u32, channel: u8, key: u8) -> NoteEvent<()> {
    NoteEvent::NoteOff {
        timing,
        voice_id: VoiceID::Wildcard,
        channel: Channel::Number(channel),
        key: Key::Number(key),
        velocity: 0.0,
    }
}
