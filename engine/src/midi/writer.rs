//! Compound notes → Standard MIDI File, byte-identical with the reference's
//! `MusicTokenizer.compound_to_midi` saved by mido 1.3.3 (spec §1.5).
//!
//! Layout and quirks reproduced:
//!
//! - Format 1, 50 ticks per beat and no tempo event, so at the default
//!   120 BPM one tick is 10 ms: onsets and durations are written unchanged.
//! - One track per instrument, in order of first appearance while the events
//!   are written (see below). Each track starts with a program change at
//!   delta 0: the instrument's program, or program 0 on channel 9 for drums
//!   (instrument 128).
//! - Channels: a new melodic instrument gets the number of tracks created so
//!   far, where that count skips 9 and drums count too. So the 16th
//!   instrument needs channel 16 and is rejected
//!   ([`MidiError::TooManyInstruments`]; mido raises there), unless it is
//!   drums, which always go to channel 9.
//! - Events are written in the order of `(tick, kind, note index)` with kind
//!   0 = note-on before kind 1 = note-off, so at equal ticks every onset
//!   comes before every offset (a same-pitch note that starts where another
//!   ends is cut at once by a synthesiser, quirk (a) of the spec).
//! - Note-offs are `note_off` messages with velocity 64 (mido's default).
//! - mido's file layout: running status for consecutive channel messages
//!   with the same status byte, shortest variable-length delta times, and one
//!   end-of-track meta event with delta 0 closing every track.
//!
//! Invalid notes are never written: every note is checked first (see
//! [`note_problem`]) and the first bad one is reported with its index. Ends
//! later than [`MAX_WRITABLE_TICK`] are rejected so that every delta time
//! fits the standard's 4-byte limit (the reference would write longer ones).
//!
//! # Round trip
//!
//! `midi_to_notes(notes_to_midi(notes))` returns `notes` exactly when the
//! list is in the writer's canonical order and has no nested same-key notes:
//!
//! 1. onsets are non-decreasing;
//! 2. among notes with equal onsets, the notes of each instrument are
//!    contiguous and the instruments appear in the order of their first
//!    appearance in the whole list (their track order);
//! 3. among notes with the same instrument and pitch, the end
//!    (`onset + duration`) is non-decreasing in list order, because the
//!    reader closes such notes first-in first-out.
//!
//! Other valid lists come back reordered by rules 1-2 with the ends of each
//! (instrument, pitch) re-paired in FIFO order.

use std::path::Path;

use super::error::{MidiError, NoteProblem};
use super::reader::DEFAULT_TEMPO_US_PER_BEAT;
use super::timing::{FileDivision, Timing};
use super::tracker::{DRUMS, DRUM_CHANNEL};
use crate::Note;

/// The file resolution of the writer: 50 ticks per beat at 120 BPM = 10 ms.
pub const WRITER_TICKS_PER_BEAT: u16 = 50;

/// The last tick a note may end on when written: the largest delta time a
/// 4-byte variable-length number holds (about 31 days of 10 ms ticks).
pub const MAX_WRITABLE_TICK: i64 = 0x0fff_ffff;

/// The velocity of written note-offs (mido's default).
const NOTE_OFF_VELOCITY: u8 = 64;

/// Why `note` cannot be written, or `None` if it can. Uses no arithmetic that
/// can overflow, whatever the field values are.
pub fn note_problem(note: &Note) -> Option<NoteProblem> {
    if note.onset < 0 {
        return Some(NoteProblem::NegativeOnset(note.onset));
    }
    if note.duration <= 0 {
        return Some(NoteProblem::NonPositiveDuration(note.duration));
    }
    if !(0..12).contains(&note.pitch_class) {
        return Some(NoteProblem::PitchClassOutOfRange(note.pitch_class));
    }
    let pitch = i128::from(note.octave) * 12 + i128::from(note.pitch_class);
    if !(0..=127).contains(&pitch) {
        return Some(NoteProblem::PitchOutOfRange {
            octave: note.octave,
            pitch_class: note.pitch_class,
        });
    }
    if !(1..=127).contains(&note.velocity) {
        return Some(NoteProblem::VelocityOutOfRange(note.velocity));
    }
    if !(0..=DRUMS).contains(&note.instrument) {
        return Some(NoteProblem::InstrumentOutOfRange(note.instrument));
    }
    let end = i128::from(note.onset) + i128::from(note.duration);
    if end > i128::from(MAX_WRITABLE_TICK) {
        return Some(NoteProblem::EndTooLate {
            end,
            max: MAX_WRITABLE_TICK,
        });
    }
    None
}

/// One track being written.
struct TrackWriter {
    channel: u8,
    last_tick: i64,
    running_status: Option<u8>,
    data: Vec<u8>,
}

impl TrackWriter {
    fn message(&mut self, tick: i64, status: u8, data: &[u8]) {
        // Ticks are written in non-decreasing order and bounded by
        // MAX_WRITABLE_TICK, so the delta is in 0..=0x0fff_ffff.
        write_var_int(&mut self.data, (tick - self.last_tick) as u32);
        self.last_tick = tick;
        if self.running_status != Some(status) {
            self.data.push(status);
        }
        self.running_status = Some(status);
        self.data.extend_from_slice(data);
    }
}

/// mido's `encode_variable_int`: big-endian groups of 7 bits, high bit set on
/// all but the last byte.
fn write_var_int(out: &mut Vec<u8>, value: u32) {
    let mut groups = [0_u8; 5];
    let mut n = 0;
    let mut rest = value;
    loop {
        groups[n] = (rest & 0x7f) as u8;
        n += 1;
        rest >>= 7;
        if rest == 0 {
            break;
        }
    }
    for i in (0..n).rev() {
        out.push(if i > 0 { groups[i] | 0x80 } else { groups[i] });
    }
}

/// Writes the notes as a Standard MIDI File (module docs for the layout).
pub fn notes_to_midi(notes: &[Note]) -> Result<Vec<u8>, MidiError> {
    validate(notes)?;
    let ticks = notes
        .iter()
        .map(|n| (n.onset, n.onset + n.duration))
        .collect();
    encode(notes, ticks, WRITER_TICKS_PER_BEAT, None)
}

/// Writes the notes on `timing`'s grid: its division in the header, a first
/// (conductor) track with its tempo map and time and key signatures (the
/// tempo in force at tick 0 always written), and every note moved to the
/// nearest tick of the same time in seconds; a note keeps at least one tick.
/// Then the tracks are laid out as in [`notes_to_midi`].
///
/// With [`Timing::reference()`] the bytes are exactly [`notes_to_midi`]'s.
/// Otherwise every onset and end moves by at most half a tick of `timing`'s
/// grid, so it reads back unchanged wherever half a tick is under 5 ms (any
/// grid of 60 ticks per beat or more at 120 BPM), and notes read from a file
/// on that grid go back onto their own ticks.
pub fn notes_to_midi_timed(notes: &[Note], timing: &Timing) -> Result<Vec<u8>, MidiError> {
    if *timing == Timing::reference() {
        return notes_to_midi(notes);
    }
    validate(notes)?;
    let tick = |t: i64| timing.seconds_to_tick(t as f64 * 0.01).round() as i64;
    let mut ticks = Vec::with_capacity(notes.len());
    for (index, note) in notes.iter().enumerate() {
        let on = tick(note.onset);
        let off = tick(note.onset + note.duration).max(on + 1);
        if off > MAX_WRITABLE_TICK {
            return Err(MidiError::InvalidNote {
                index,
                problem: NoteProblem::EndTooLate {
                    end: i128::from(off),
                    max: MAX_WRITABLE_TICK,
                },
            });
        }
        ticks.push((on, off));
    }
    let last = ticks.iter().map(|&(_, off)| off).max().unwrap_or(0);
    let conductor = conductor_track(timing, last as u64);
    encode(
        notes,
        ticks,
        timing.division.header_field(),
        Some(conductor),
    )
}

/// The first track of a timed file: the tempo at tick 0, then every tempo,
/// time signature and key signature up to `last` (the last note's end).
fn conductor_track(timing: &Timing, last: u64) -> Vec<u8> {
    let smpte = matches!(timing.division, FileDivision::Smpte { .. });
    // (tick, order, bytes after the delta); at one tick: signatures, then the tempo.
    let mut events: Vec<(u64, u8, Vec<u8>)> = Vec::new();
    if !smpte {
        let first = timing
            .tempos
            .iter()
            .take_while(|&&(tick, _)| tick == 0)
            .last()
            .map_or(DEFAULT_TEMPO_US_PER_BEAT, |&(_, tempo)| tempo);
        let tempo = |t: u32| {
            let [_, a, b, c] = t.to_be_bytes();
            vec![0xff, 0x51, 0x03, a, b, c]
        };
        events.push((0, 2, tempo(first)));
        for &(tick, t) in &timing.tempos {
            if tick > 0 && tick <= last {
                events.push((tick, 2, tempo(t)));
            }
        }
    }
    for &(tick, [n, d, c, b]) in &timing.time_signatures {
        if tick <= last {
            events.push((tick, 0, vec![0xff, 0x58, 0x04, n, d, c, b]));
        }
    }
    for &(tick, [sf, mi]) in &timing.key_signatures {
        if tick <= last {
            events.push((tick, 1, vec![0xff, 0x59, 0x02, sf, mi]));
        }
    }
    events.sort_by_key(|&(tick, order, _)| (tick, order));
    let mut data = Vec::new();
    let mut previous = 0;
    for (tick, _, bytes) in events {
        write_var_int(&mut data, (tick - previous) as u32);
        previous = tick;
        data.extend_from_slice(&bytes);
    }
    data
}

/// The first invalid note, as an error.
fn validate(notes: &[Note]) -> Result<(), MidiError> {
    match notes
        .iter()
        .enumerate()
        .find_map(|(i, n)| note_problem(n).map(|p| (i, p)))
    {
        Some((index, problem)) => Err(MidiError::InvalidNote { index, problem }),
        None => Ok(()),
    }
}

/// The file: `ticks[i]` is note `i`'s (onset, end) in file ticks, non-negative,
/// end after onset and at most [`MAX_WRITABLE_TICK`]; `conductor` is the body
/// of a first track (without its end-of-track event).
fn encode(
    notes: &[Note],
    ticks: Vec<(i64, i64)>,
    division: u16,
    conductor: Option<Vec<u8>>,
) -> Result<Vec<u8>, MidiError> {
    // (tick, kind, note index); kind 0 = onset, 1 = offset. Keys are unique.
    let mut events: Vec<(i64, u8, usize)> = Vec::with_capacity(2 * notes.len());
    for (index, &(on, off)) in ticks.iter().enumerate() {
        events.push((on, 0, index));
        events.push((off, 1, index));
    }
    events.sort_unstable();

    let mut tracks: Vec<TrackWriter> = Vec::new();
    // Track index per instrument 0..=128.
    let mut track_of = [None::<usize>; 129];
    let mut n_tracks_for_channels: u8 = 0;
    for &(tick, kind, index) in &events {
        let note = &notes[index];
        // Validated above: all of these are in range.
        let instrument = note.instrument as usize;
        let key = (note.octave * 12 + note.pitch_class) as u8;
        let track_index = match (kind, track_of[instrument]) {
            (_, Some(track_index)) => track_index,
            // An offset always follows its own onset, so this does not happen.
            (1, None) => continue,
            (_, None) => {
                let (channel, program) = if note.instrument == DRUMS {
                    (DRUM_CHANNEL, 0)
                } else {
                    (n_tracks_for_channels, instrument as u8)
                };
                if channel > 15 {
                    return Err(MidiError::TooManyInstruments {
                        index,
                        instrument: note.instrument,
                    });
                }
                let mut track = TrackWriter {
                    channel,
                    last_tick: 0,
                    running_status: None,
                    data: Vec::new(),
                };
                track.message(0, 0xc0 | channel, &[program]);
                tracks.push(track);
                track_of[instrument] = Some(tracks.len() - 1);
                n_tracks_for_channels += 1;
                if n_tracks_for_channels == DRUM_CHANNEL {
                    n_tracks_for_channels += 1;
                }
                tracks.len() - 1
            }
        };
        let track = &mut tracks[track_index];
        let channel = track.channel;
        if kind == 0 {
            track.message(tick, 0x90 | channel, &[key, note.velocity as u8]);
        } else {
            track.message(tick, 0x80 | channel, &[key, NOTE_OFF_VELOCITY]);
        }
    }

    let mut bodies: Vec<Vec<u8>> = conductor.into_iter().collect();
    bodies.extend(tracks.into_iter().map(|t| t.data));
    let mut out = Vec::new();
    out.extend_from_slice(b"MThd");
    out.extend_from_slice(&6_u32.to_be_bytes());
    out.extend_from_slice(&1_u16.to_be_bytes());
    // At most 17 tracks (a conductor and one per channel).
    out.extend_from_slice(&(bodies.len() as u16).to_be_bytes());
    out.extend_from_slice(&division.to_be_bytes());
    for mut data in bodies {
        // End of track, delta 0.
        data.extend_from_slice(&[0x00, 0xff, 0x2f, 0x00]);
        out.extend_from_slice(b"MTrk");
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(&data);
    }
    Ok(out)
}

/// [`notes_to_midi_timed`] written to a file.
pub fn write_midi_file_timed(
    path: &Path,
    notes: &[Note],
    timing: &Timing,
) -> Result<(), MidiError> {
    let bytes = notes_to_midi_timed(notes, timing)?;
    crate::files::write_atomic(path, &bytes).map_err(|source| MidiError::Io {
        path: path.to_owned(),
        source,
    })
}

/// [`notes_to_midi`] written to a file.
pub fn write_midi_file(path: &Path, notes: &[Note]) -> Result<(), MidiError> {
    write_midi_file_timed(path, notes, &Timing::reference())
}
