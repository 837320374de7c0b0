//! Audio-thread bookkeeping: which output notes (and hold pedals) are sounding, and when
//! generated notes are due.
//!
//! Kept apart from the plugin glue so it can be unit-tested without a host. Nothing here
//! allocates after construction.

use crate::protocol::NoteTime;

/// A generated note-on whose start is this many samples in the past still counts as on time
/// (rounding between blocks), and is played at the block's first sample.
pub const LATE_TOLERANCE_SAMPLES: i64 = 2;

/// Per channel and key counts of note-ons sent without their note-off yet.
///
/// Used for the notes passed through, so that exactly those can be released later, whatever the
/// parameters say by then.
#[derive(Clone)]
pub struct NoteCounts {
    counts: [[u8; 128]; 16],
    total: u32,
}

impl Default for NoteCounts {
    fn default() -> Self {
        Self {
            counts: [[0; 128]; 16],
            total: 0,
        }
    }
}

impl NoteCounts {
    /// Records a note-on. Returns `false` (and records nothing) if this key is already stacked
    /// 255 deep.
    pub fn note_on(&mut self, channel: u8, key: u8) -> bool {
        let count = &mut self.counts[usize::from(channel & 15)][usize::from(key & 127)];
        if *count == u8::MAX {
            return false;
        }
        *count += 1;
        self.total += 1;
        true
    }

    /// Records a note-off. Returns `false` if no note-on was recorded for this key, in which
    /// case the note-off must not be sent.
    pub fn note_off(&mut self, channel: u8, key: u8) -> bool {
        let count = &mut self.counts[usize::from(channel & 15)][usize::from(key & 127)];
        if *count == 0 {
            return false;
        }
        *count -= 1;
        self.total -= 1;
        true
    }

    pub fn count(&self, channel: u8, key: u8) -> u8 {
        self.counts[usize::from(channel & 15)][usize::from(key & 127)]
    }

    /// Number of recorded note-ons without a note-off.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Calls `f(channel, key)` once per recorded note-on matching the filters (`None` matches
    /// all), in channel and key order, and forgets those notes. `f` returns `false` when the
    /// note-off could not be sent; that note is kept for a later try and the rest are skipped.
    pub fn release_matching(
        &mut self,
        channel: Option<u8>,
        key: Option<u8>,
        mut f: impl FnMut(u8, u8) -> bool,
    ) {
        if self.total == 0 {
            return;
        }
        let channels = channel.map_or(0..16, |c| c..c.saturating_add(1).min(16));
        for c in channels {
            let keys = key.map_or(0..128, |k| k..k.saturating_add(1).min(128));
            for k in keys {
                while self.counts[usize::from(c)][usize::from(k)] > 0 {
                    if !f(c, k) {
                        return;
                    }
                    self.counts[usize::from(c)][usize::from(k)] -= 1;
                    self.total -= 1;
                }
            }
        }
    }
}

/// The controllers that hold notes while down: sustain (64), sostenuto (66) and hold 2 (69).
pub const HOLD_PEDALS: [u8; 3] = [64, 66, 69];

/// Whether a controller value (normalized, as nice-plug gives it) means "down" for a switch:
/// 64 or more out of 127.
pub fn controller_is_down(value: f32) -> bool {
    (value * 127.0).round() >= 64.0
}

/// Per channel, the hold pedals passed on as down and not released yet.
///
/// A pedal left down downstream holds every later note there, which is as stuck as a stuck note.
/// So, as for notes: the release of a pedal passed on is always passed on (whatever thru and the
/// trigger source say by then), and everything still down is lifted on bypass, transport stop
/// or jump and reset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeldPedals {
    /// Bit `i` of channel `c`: `HOLD_PEDALS[i]` is down on channel `c`.
    down: [u8; 16],
}

impl HeldPedals {
    fn bit(cc: u8) -> Option<u8> {
        HOLD_PEDALS
            .iter()
            .position(|&pedal| pedal == cc)
            .map(|i| 1 << i)
    }

    pub fn is_hold_pedal(cc: u8) -> bool {
        Self::bit(cc).is_some()
    }

    pub fn is_down(&self, channel: u8, cc: u8) -> bool {
        Self::bit(cc).is_some_and(|bit| self.down[usize::from(channel & 15)] & bit != 0)
    }

    /// Records a pedal passed on as down (nothing for other controllers).
    pub fn press(&mut self, channel: u8, cc: u8) {
        if let Some(bit) = Self::bit(cc) {
            self.down[usize::from(channel & 15)] |= bit;
        }
    }

    /// Records a pedal's release passed on.
    pub fn release(&mut self, channel: u8, cc: u8) {
        if let Some(bit) = Self::bit(cc) {
            self.down[usize::from(channel & 15)] &= !bit;
        }
    }

    /// Calls `f(channel, cc)` for every pedal down, in channel and pedal order, and forgets it.
    /// `f` returns `false` when the release could not be sent; that pedal is kept for a later
    /// try and the rest are skipped.
    pub fn release_all(&mut self, mut f: impl FnMut(u8, u8) -> bool) {
        for channel in 0..16u8 {
            for (i, &cc) in HOLD_PEDALS.iter().enumerate() {
                let bit = 1 << i;
                if self.down[usize::from(channel)] & bit != 0 {
                    if !f(channel, cc) {
                        return;
                    }
                    self.down[usize::from(channel)] &= !bit;
                }
            }
        }
    }
}

/// A time as the audio thread stores it: already in samples when it is wall time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EventTime {
    /// The plugin clock in samples since `activate()`.
    Clock(i64),
    /// Host song position in quarter notes.
    Beats(f64),
}

impl EventTime {
    /// "As soon as possible": a time far in the past.
    pub const IMMEDIATE: Self = Self::Clock(i64::MIN / 4);

    pub fn from_note_time(time: NoteTime, sample_rate: f64) -> Self {
        match time {
            NoteTime::Beats(beats) => Self::Beats(beats),
            NoteTime::Millis(ms) => Self::Clock(round_to_sample(ms * sample_rate / 1000.0)),
        }
    }
}

/// Rounds a fractional sample position, halves upward (so a time split over two blocks lands in
/// the same place from either side).
pub fn round_to_sample(position: f64) -> i64 {
    (position + 0.5).floor() as i64
}

/// Maps times onto sample offsets within one block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockClock {
    /// The plugin clock in samples at the block's first sample.
    pub start_sample: i64,
    /// Block length in samples.
    pub len: u32,
    /// The song position in quarter notes at the block's first sample, and samples per quarter
    /// note, while the transport plays.
    pub beats: Option<(f64, f64)>,
}

impl BlockClock {
    /// The offset of `time` from the block's first sample (negative: in the past; `>= len`: in a
    /// later block). `None` for a time in beats while the transport does not play.
    pub fn offset_of(&self, time: EventTime) -> Option<i64> {
        match time {
            EventTime::Clock(sample) => Some(sample.saturating_sub(self.start_sample)),
            EventTime::Beats(beats) => self
                .beats
                .map(|(pos, samples_per_beat)| round_to_sample((beats - pos) * samples_per_beat)),
        }
    }
}

/// What became of a scheduled note.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteState {
    /// Its note-on has not been sent.
    Waiting,
    /// Its note-on was sent on this channel; the note-off is owed.
    Sounding { channel: u8 },
}

/// A generated note in the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduledNote {
    pub answer_id: u32,
    pub on: EventTime,
    pub off: EventTime,
    pub key: u8,
    pub velocity: f32,
    pub state: NoteState,
}

/// An output event due in the current block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueEvent {
    /// Sample offset in the block.
    pub timing: u32,
    /// `false` for the note-off, `true` for the note-on. Note-offs sort first at equal times, so
    /// a key can be struck again on the sample its previous note ends.
    pub is_on: bool,
    /// The schedule slot of the note.
    pub slot: u16,
}

/// What [`Schedule::collect_due`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CollectStats {
    /// Waiting notes dropped because their start had passed.
    pub late: u32,
    /// Events that did not fit in the due list (tried again next block).
    pub overflow: u32,
}

/// Generated notes waiting to start or to end, in fixed slots.
pub struct Schedule {
    slots: Vec<Option<ScheduledNote>>,
    len: usize,
}

impl Schedule {
    /// Allocates room for `capacity` notes (at most `u16::MAX`). Called off the audio thread.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.min(usize::from(u16::MAX));
        Self {
            slots: vec![None; capacity],
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// A due list with room for every event this schedule can produce in one block.
    pub fn new_due_list(&self) -> Vec<DueEvent> {
        Vec::with_capacity(self.slots.len() * 2)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Notes whose note-on was sent and whose note-off is owed.
    pub fn sounding(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter(|n| matches!(n.state, NoteState::Sounding { .. }))
            .count()
    }

    /// Adds a note. Returns `false` if the schedule is full.
    pub fn insert(&mut self, note: ScheduledNote) -> bool {
        match self.slots.iter_mut().find(|s| s.is_none()) {
            Some(slot) => {
                *slot = Some(note);
                self.len += 1;
                true
            }
            None => false,
        }
    }

    pub fn get(&self, slot: u16) -> Option<&ScheduledNote> {
        self.slots.get(usize::from(slot)).and_then(Option::as_ref)
    }

    pub fn get_mut(&mut self, slot: u16) -> Option<&mut ScheduledNote> {
        self.slots
            .get_mut(usize::from(slot))
            .and_then(Option::as_mut)
    }

    /// Frees a slot.
    pub fn remove(&mut self, slot: u16) -> Option<ScheduledNote> {
        let note = self.slots.get_mut(usize::from(slot)).and_then(Option::take);
        if note.is_some() {
            self.len -= 1;
        }
        note
    }

    /// Removes every note that has not started yet (their note-ons will never be sent).
    pub fn discard_waiting(&mut self) {
        for slot in &mut self.slots {
            if slot.is_some_and(|n| n.state == NoteState::Waiting) {
                *slot = None;
                self.len -= 1;
            }
        }
    }

    /// Slots of sounding notes, for releasing them.
    pub fn sounding_slots(&self) -> impl Iterator<Item = u16> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| match s {
            Some(ScheduledNote {
                state: NoteState::Sounding { .. },
                ..
            }) => Some(i as u16),
            _ => None,
        })
    }

    /// Finds the events due in this block, drops (and counts) notes that are late, and fills
    /// `due` with the due events sorted by time, note-offs first at equal times. Every note-off
    /// is at least one sample after its note-on, so a note never ends before it starts. `due`
    /// never grows beyond its capacity (see [`Schedule::new_due_list`]).
    pub fn collect_due(&mut self, clock: &BlockClock, due: &mut Vec<DueEvent>) -> CollectStats {
        let mut stats = CollectStats::default();
        due.clear();
        let len = i64::from(clock.len);
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let Some(note) = slot else { continue };
            match note.state {
                NoteState::Waiting => {
                    let on = match clock.offset_of(note.on) {
                        Some(on) if on >= -LATE_TOLERANCE_SAMPLES => on.max(0),
                        // Its time has passed (or it is in beats and the transport stopped):
                        // never play it late.
                        _ => {
                            *slot = None;
                            self.len -= 1;
                            stats.late += 1;
                            continue;
                        }
                    };
                    if on >= len {
                        continue;
                    }
                    if due.len() + 2 > due.capacity() {
                        stats.overflow += 1;
                        continue;
                    }
                    due.push(DueEvent {
                        timing: on as u32,
                        is_on: true,
                        slot: index as u16,
                    });
                    let off = clock.offset_of(note.off).unwrap_or(on + 1).max(on + 1);
                    if off < len {
                        due.push(DueEvent {
                            timing: off as u32,
                            is_on: false,
                            slot: index as u16,
                        });
                    }
                }
                NoteState::Sounding { .. } => {
                    // A note-off that has passed (or whose beat time vanished with the
                    // transport) is sent at once: late is better than stuck.
                    let off = clock.offset_of(note.off).unwrap_or(0).max(0);
                    if off < len {
                        if due.len() == due.capacity() {
                            stats.overflow += 1;
                            continue;
                        }
                        due.push(DueEvent {
                            timing: off as u32,
                            is_on: false,
                            slot: index as u16,
                        });
                    }
                }
            }
        }
        // `sort_unstable` does not allocate (the stable sort does).
        due.sort_unstable_by_key(|e| (e.timing, e.is_on, e.slot));
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(on: EventTime, off: EventTime) -> ScheduledNote {
        ScheduledNote {
            answer_id: 1,
            on,
            off,
            key: 60,
            velocity: 0.5,
            state: NoteState::Waiting,
        }
    }

    fn clock(start_sample: i64, len: u32) -> BlockClock {
        BlockClock {
            start_sample,
            len,
            beats: None,
        }
    }

    #[test]
    fn note_counts_track_and_release_exactly() {
        let mut counts = NoteCounts::default();
        assert!(counts.note_on(0, 60));
        assert!(counts.note_on(0, 60));
        assert!(counts.note_on(3, 10));
        assert!(counts.note_off(0, 60));
        assert!(!counts.note_off(5, 60), "an unmatched note-off is refused");
        let mut released = Vec::new();
        counts.release_matching(None, None, |c, k| {
            released.push((c, k));
            true
        });
        assert_eq!(released, vec![(0, 60), (3, 10)]);
        assert_eq!(counts.total(), 0);
    }

    #[test]
    fn held_pedals_track_hold_pedals_only_and_release_exactly() {
        assert!(!controller_is_down(63.0 / 127.0));
        assert!(controller_is_down(64.0 / 127.0));
        assert!(controller_is_down(1.0));
        assert!(!controller_is_down(0.0));
        assert!(!controller_is_down(f32::NAN));
        let mut pedals = HeldPedals::default();
        pedals.press(0, 64);
        pedals.press(0, 64);
        pedals.press(3, 66);
        pedals.press(15, 69);
        pedals.press(2, 1); // the mod wheel holds nothing
        assert!(!HeldPedals::is_hold_pedal(1) && HeldPedals::is_hold_pedal(66));
        assert!(pedals.is_down(0, 64) && !pedals.is_down(0, 66) && !pedals.is_down(2, 1));
        pedals.release(15, 69);
        let mut lifted = Vec::new();
        // The first try fails on channel 3: channel 0 is lifted, 3 is kept.
        pedals.release_all(|c, cc| {
            lifted.push((c, cc));
            c != 3
        });
        assert_eq!(lifted, [(0, 64), (3, 66)]);
        assert!(!pedals.is_down(0, 64) && pedals.is_down(3, 66));
        pedals.release_all(|_, _| true);
        assert_eq!(pedals, HeldPedals::default());
    }

    #[test]
    fn release_keeps_notes_whose_note_off_failed() {
        let mut counts = NoteCounts::default();
        counts.note_on(0, 1);
        counts.note_on(0, 2);
        counts.release_matching(None, None, |_, k| k != 2);
        assert_eq!(counts.count(0, 1), 0);
        assert_eq!(counts.count(0, 2), 1);
        counts.release_matching(Some(0), Some(2), |_, _| true);
        assert_eq!(counts.total(), 0);
    }

    #[test]
    fn beats_map_to_sample_offsets() {
        // 120 BPM at 48 kHz: 24,000 samples per beat.
        let clock = BlockClock {
            start_sample: 0,
            len: 512,
            beats: Some((1.5, 24_000.0)),
        };
        assert_eq!(clock.offset_of(EventTime::Beats(1.5)), Some(0));
        assert_eq!(
            clock.offset_of(EventTime::Beats(1.5 + 100.0 / 24_000.0)),
            Some(100)
        );
        assert_eq!(clock.offset_of(EventTime::Beats(1.0)), Some(-12_000));
        let stopped = BlockClock {
            beats: None,
            ..clock
        };
        assert_eq!(stopped.offset_of(EventTime::Beats(2.0)), None);
        assert_eq!(
            EventTime::from_note_time(NoteTime::Millis(1000.0), 44_100.0),
            EventTime::Clock(44_100)
        );
    }

    #[test]
    fn half_samples_land_in_the_same_block_from_both_sides() {
        // 511.5 rounds to 512, i.e. the next block's first sample, and that block sees -0.5,
        // which rounds to 0.
        assert_eq!(round_to_sample(511.5), 512);
        assert_eq!(round_to_sample(-0.5), 0);
    }

    #[test]
    fn due_events_are_time_ordered_with_note_offs_first() {
        let mut schedule = Schedule::new(8);
        schedule.insert(note(EventTime::Clock(100), EventTime::Clock(300)));
        schedule.insert(note(EventTime::Clock(300), EventTime::Clock(400)));
        schedule.insert(note(EventTime::Clock(10), EventTime::Clock(5000)));
        let mut due = schedule.new_due_list();
        let stats = schedule.collect_due(&clock(0, 512), &mut due);
        let got: Vec<(u32, bool)> = due.iter().map(|e| (e.timing, e.is_on)).collect();
        assert_eq!(
            got,
            vec![
                (10, true),
                (100, true),
                (300, false),
                (300, true),
                (400, false)
            ]
        );
        assert_eq!(stats, CollectStats::default());
    }

    #[test]
    fn late_notes_are_dropped_and_counted_never_played() {
        let mut schedule = Schedule::new(8);
        schedule.insert(note(EventTime::Clock(90), EventTime::Clock(2000)));
        schedule.insert(note(EventTime::Clock(99), EventTime::Clock(2000)));
        let mut due = schedule.new_due_list();
        let stats = schedule.collect_due(&clock(100, 512), &mut due);
        assert_eq!(stats.late, 1, "the note 10 samples late is dropped");
        assert_eq!(due.len(), 1, "the note 1 sample late is within tolerance");
        assert_eq!(due[0].timing, 0);
        assert_eq!(schedule.len(), 1);
    }

    #[test]
    fn zero_length_notes_last_one_sample() {
        let mut schedule = Schedule::new(8);
        schedule.insert(note(EventTime::Clock(511), EventTime::Clock(511)));
        let mut due = schedule.new_due_list();
        schedule.collect_due(&clock(0, 512), &mut due);
        assert_eq!(due.len(), 1);
        assert!(due[0].is_on);
        let slot = due[0].slot;
        schedule.get_mut(slot).unwrap().state = NoteState::Sounding { channel: 0 };
        schedule.collect_due(&clock(512, 512), &mut due);
        assert_eq!((due[0].timing, due[0].is_on), (0, false));
    }

    #[test]
    fn beat_notes_are_late_when_the_transport_stops() {
        let mut schedule = Schedule::new(8);
        schedule.insert(note(EventTime::Beats(4.0), EventTime::Beats(5.0)));
        let mut due = schedule.new_due_list();
        let stats = schedule.collect_due(&clock(0, 512), &mut due);
        assert_eq!(stats.late, 1);
        assert!(schedule.is_empty());
    }

    #[test]
    fn full_schedule_refuses_notes() {
        let mut schedule = Schedule::new(2);
        assert!(schedule.insert(note(EventTime::Clock(1), EventTime::Clock(2))));
        assert!(schedule.insert(note(EventTime::Clock(1), EventTime::Clock(2))));
        assert!(!schedule.insert(note(EventTime::Clock(1), EventTime::Clock(2))));
    }
}
