//! The note-matching state machine shared by the file reader and the live
//! tokenizer: note-on/note-off/program-change events in, compound notes out.
//!
//! It is the body of the reference's `MusicTokenizer.midi_to_compound` loop
//! (spec §1.1), separated from the time source so that a MIDI file (times in
//! seconds, mido's float accumulation) and live input (times in milliseconds)
//! go through exactly the same matching rules:
//!
//! - a note-on with velocity > 0 appends a note, in event order, with
//!   `onset = round_ties_even(ticks(time))` (10 ms ticks);
//! - a note-off, or a note-on with velocity 0, closes the oldest open note
//!   (FIFO) with the same key `(instrument, key, channel)`, where the
//!   instrument is the one in force *now* (a program change between a note's
//!   on and off makes the off miss); an off with no open note is ignored;
//! - `duration = round_ties_even(ticks(time - onset_time))`, and 1 if that is
//!   below 1;
//! - channel 9 (MIDI channel 10) is instrument 128 (drums); other channels use
//!   their last program change, 0 by default.

use std::collections::{HashMap, VecDeque};

use crate::note::TICK_MS;
use crate::Note;

/// Duration the reference gives to notes still open at the end of a file:
/// `TIME_RESOLUTION // 4` = 25 ticks = 250 ms.
pub(crate) const UNCLOSED_DURATION: i64 = 25;

/// The instrument code of General MIDI drums (channel 10, index 9).
pub(crate) const DRUMS: i64 = 128;

/// The MIDI channel index (0-based) of General MIDI drums.
pub(crate) const DRUM_CHANNEL: u8 = 9;

/// The unit of the times fed to a [`NoteTracker`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimeUnit {
    /// Seconds, as accumulated by mido: ticks = `100 * t` (the reference's expression).
    Seconds,
    /// Milliseconds (live input): ticks = `t / 10`.
    Milliseconds,
}

impl TimeUnit {
    fn to_ticks(self, time: f64) -> i64 {
        let ticks = match self {
            TimeUnit::Seconds => (1000.0 / TICK_MS) * time,
            TimeUnit::Milliseconds => time / TICK_MS,
        };
        // `as` saturates (and maps NaN to 0), so this cannot panic.
        ticks.round_ties_even() as i64
    }
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    note: Note,
    /// The onset in the tracker's time unit, unrounded (durations are
    /// computed from the unrounded difference, as the reference does).
    onset_time: f64,
    open: bool,
}

/// Matches note-ons with note-offs; see the module docs for the rules.
#[derive(Clone, Debug)]
pub(crate) struct NoteTracker {
    unit: TimeUnit,
    programs: [u8; 16],
    /// Notes in note-on order. `slots[0]` has sequence number `first_seq`.
    slots: VecDeque<Slot>,
    first_seq: usize,
    /// FIFO of the sequence numbers of the open notes, per (instrument, key, channel).
    open: HashMap<(i64, u8, u8), VecDeque<usize>>,
    n_open: usize,
}

impl NoteTracker {
    pub(crate) fn new(unit: TimeUnit) -> Self {
        NoteTracker {
            unit,
            programs: [0; 16],
            slots: VecDeque::new(),
            first_seq: 0,
            open: HashMap::new(),
            n_open: 0,
        }
    }

    fn instrument(&self, channel: u8) -> i64 {
        if channel == DRUM_CHANNEL {
            DRUMS
        } else {
            i64::from(self.programs[usize::from(channel & 0x0f)])
        }
    }

    /// `channel` must be < 16 (callers check).
    pub(crate) fn program_change(&mut self, channel: u8, program: u8) {
        self.programs[usize::from(channel & 0x0f)] = program;
    }

    /// `channel` < 16, `key` and `velocity` < 128 (callers check).
    pub(crate) fn note_on(&mut self, time: f64, channel: u8, key: u8, velocity: u8) {
        if velocity == 0 {
            self.note_off(time, channel, key);
            return;
        }
        let instrument = self.instrument(channel);
        let seq = self.first_seq + self.slots.len();
        self.slots.push_back(Slot {
            note: Note::from_pitch(
                self.unit.to_ticks(time),
                -1,
                key,
                instrument,
                i64::from(velocity),
            ),
            onset_time: time,
            open: true,
        });
        self.open
            .entry((instrument, key, channel))
            .or_default()
            .push_back(seq);
        self.n_open += 1;
    }

    pub(crate) fn note_off(&mut self, time: f64, channel: u8, key: u8) {
        let instrument = self.instrument(channel);
        let Some(queue) = self.open.get_mut(&(instrument, key, channel)) else {
            return;
        };
        let Some(seq) = queue.pop_front() else {
            return;
        };
        if queue.is_empty() {
            self.open.remove(&(instrument, key, channel));
        }
        self.close(seq, time);
    }

    fn close(&mut self, seq: usize, time: f64) {
        let unit = self.unit;
        // Open notes are never drained, so `seq - first_seq` is in range.
        if let Some(slot) = self.slots.get_mut(seq - self.first_seq) {
            slot.note.duration = unit.to_ticks(time - slot.onset_time).max(1);
            slot.open = false;
            self.n_open -= 1;
        }
    }

    /// Closes every open note at `time` (as if each got its note-off).
    pub(crate) fn close_all_at(&mut self, time: f64) {
        let open: Vec<usize> = self.open.drain().flat_map(|(_, queue)| queue).collect();
        for seq in open {
            self.close(seq, time);
        }
    }

    /// Gives every open note the fixed `duration` (the reference's end-of-file rule).
    pub(crate) fn close_all_with_duration(&mut self, duration: i64) {
        self.open.clear();
        for slot in self.slots.iter_mut().filter(|slot| slot.open) {
            slot.note.duration = duration;
            slot.open = false;
        }
        self.n_open = 0;
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn n_open(&self) -> usize {
        self.n_open
    }

    /// Every note in note-on order with its open flag; open notes have duration -1.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Note, bool, f64)> + '_ {
        self.slots
            .iter()
            .map(|slot| (slot.note, slot.open, slot.onset_time))
    }

    /// Removes and returns the longest run of closed notes at the front.
    pub(crate) fn drain_closed_prefix(&mut self) -> Vec<Note> {
        let n = self.slots.iter().take_while(|slot| !slot.open).count();
        self.first_seq += n;
        self.slots.drain(..n).map(|slot| slot.note).collect()
    }

    pub(crate) fn closed_prefix_len(&self) -> usize {
        self.slots.iter().take_while(|slot| !slot.open).count()
    }

    pub(crate) fn into_notes(self) -> Vec<Note> {
        self.slots.into_iter().map(|slot| slot.note).collect()
    }

    pub(crate) fn to_ticks(&self, time: f64) -> i64 {
        self.unit.to_ticks(time)
    }
}
