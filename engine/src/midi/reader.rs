//! Standard MIDI File → compound notes, bit-exact with the reference
//! (`MusicTokenizer.midi_to_compound` on top of mido 1.3.3, spec §1.1).
//!
//! This is a small hand-written SMF parser rather than `midly`, because the
//! reference's numbers depend on details of mido that a general parser does
//! not reproduce (which events count, how their delta times are kept).
//!
//! # Timing (mido 1.3.3 `merge_tracks` + `MidiFile.__iter__`)
//!
//! 1. Every track is turned into absolute ticks. Quirk reproduced: mido 1.3.3
//!    builds *unknown* meta events (types other than 0x00-0x07, 0x09, 0x20,
//!    0x21, 0x2F, 0x51, 0x54, 0x58, 0x59, 0x7F) without their delta time
//!    (`build_meta_message` drops it), so their delta is lost and every later
//!    event of that track comes earlier by that amount.
//! 2. The tracks are concatenated in file order and stably sorted by absolute
//!    tick, so simultaneous events keep (track order, in-track order).
//! 3. End-of-track events are removed (`fix_end_of_track` adds their delta to
//!    the next event, which leaves absolute ticks unchanged).
//! 4. Every remaining event, meta and sysex included, gets
//!    `delta_s = delta_ticks * (tempo * 1e-6 / ticks_per_beat)` (0.0 when
//!    `delta_ticks` is 0) with the tempo in force *before* it; a `set_tempo`
//!    changes the tempo after it. `time += delta_s` in `f64`, in event order.
//!
//! Because every event splits the delta, the float result depends on all
//! events, not only notes; that is why the parser keeps them all.
//!
//! # Decisions where mido does something else (all documented, none affects
//! files mido reads correctly)
//!
//! - **Format 2** is rejected ([`MidiError::UnsupportedFormat`]), as mido
//!   refuses to merge it; formats above 2 are rejected too (mido would read
//!   them like format 1). Format 0 files with several tracks are merged like
//!   format 1, as mido does.
//! - **SMPTE division** (negative high byte): mido reads the division as a
//!   negative ticks-per-beat and produces negative times. Here it is
//!   supported properly: one tick is `1 / (fps * ticks_per_frame)` seconds
//!   with fps 24, 25, 29.97 (code -29) or 30, and tempo events are ignored.
//!   Any other frame code, or 0 ticks per frame, is an error.
//! - **0 ticks per beat** is an error (mido divides by zero).
//! - **Track count**: the header's 16-bit count is trusted only as far as the
//!   data goes. Nothing is allocated from it; each track chunk needs at least
//!   8 bytes of input, so 10,000 (or 65,535) tracks cost time and memory in
//!   proportion to the file size. Fewer `MTrk` chunks than announced is an
//!   error, as in mido; data after the announced tracks is ignored.
//! - **Unknown chunks** between tracks are skipped, as the SMF standard says
//!   (mido raises).
//! - **Chunk lengths** past the end of the data, and events that run past the
//!   end of their track chunk, are errors (mido would read on into the next
//!   chunk). Events after an end-of-track event inside the chunk are kept, as
//!   mido keeps them.
//! - **Variable-length numbers** longer than 4 bytes are an error (mido reads
//!   any length).
//! - **Running status** persists across meta events (as in mido) but is
//!   cancelled by sysex and system messages, as the MIDI standard says (mido
//!   would reinterpret the following data bytes as a new sysex).
//! - A `set_tempo` shorter than 3 bytes is ignored (mido raises); longer ones
//!   use their first 3 bytes, as mido does. Other malformed meta events that
//!   make mido raise (bad key signature, short time signature, ...) are
//!   ignored.
//! - Undefined status bytes 0xF4, 0xF5, 0xF9, 0xFD and data bytes >= 0x80 are
//!   errors, as in mido.
//!
//! Nothing here panics on any input; see [`MidiError`] for what can go wrong.

use std::path::Path;

use super::error::MidiError;
use super::timing::{FileDivision, Timing};
use super::tracker::{NoteTracker, TimeUnit, UNCLOSED_DURATION};
use crate::Note;

/// Tempo before any `set_tempo`: 500,000 µs per beat (120 BPM).
pub const DEFAULT_TEMPO_US_PER_BEAT: u32 = 500_000;

/// A channel event that matters to the tokenizer, at the time (in seconds
/// from the start of the file) that mido 1.3.3 gives it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimedEvent {
    /// Seconds from the start, accumulated exactly as the reference does.
    pub time_s: f64,
    /// MIDI channel index 0..=15 (9 is General MIDI drums).
    pub channel: u8,
    pub kind: EventKind,
}

/// The channel messages the tokenizer reads; everything else is skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A note-on as written in the file; velocity 0 means note-off.
    NoteOn {
        key: u8,
        velocity: u8,
    },
    NoteOff {
        key: u8,
        velocity: u8,
    },
    ProgramChange {
        program: u8,
    },
}

/// Reads a Standard MIDI File into compound notes, in the reference's order
/// (the order of the note-ons in mido's merged stream; no re-sorting).
///
/// Notes still sounding at the end of the file get duration 25 (250 ms), as
/// in the reference.
pub fn midi_to_notes(bytes: &[u8]) -> Result<Vec<Note>, MidiError> {
    let events = midi_to_events(bytes)?;
    let mut tracker = NoteTracker::new(TimeUnit::Seconds);
    for event in &events {
        match event.kind {
            EventKind::NoteOn { key, velocity } => {
                tracker.note_on(event.time_s, event.channel, key, velocity)
            }
            EventKind::NoteOff { key, .. } => tracker.note_off(event.time_s, event.channel, key),
            EventKind::ProgramChange { program } => tracker.program_change(event.channel, program),
        }
    }
    tracker.close_all_with_duration(UNCLOSED_DURATION);
    Ok(tracker.into_notes())
}

/// [`midi_to_notes`] on the contents of a file.
pub fn read_midi_file(path: &Path) -> Result<Vec<Note>, MidiError> {
    midi_to_notes(&read_midi_bytes(path)?)
}

/// The bytes of a MIDI file, checked as every input is (regular file, size cap).
fn read_midi_bytes(path: &Path) -> Result<Vec<u8>, MidiError> {
    crate::files::read_input(path, Some(crate::files::MAX_MIDI_BYTES), "MIDI").map_err(|source| {
        MidiError::Io {
            path: path.to_owned(),
            source,
        }
    })
}

/// The note-on, note-off and program-change events of a Standard MIDI File
/// in mido's merged order, with mido's float times in seconds (module docs).
pub fn midi_to_events(bytes: &[u8]) -> Result<Vec<TimedEvent>, MidiError> {
    let (division, mut events) = parse(bytes)?;
    // Stable: equal ticks keep (track order, in-track order), like Python's sort.
    events.sort_by_key(|event| event.tick);

    let mut out = Vec::new();
    let mut time_s = 0.0_f64;
    let mut previous_tick = 0_u64;
    let mut tempo = DEFAULT_TEMPO_US_PER_BEAT;
    for event in events {
        let delta_ticks = event.tick - previous_tick;
        previous_tick = event.tick;
        if delta_ticks > 0 {
            let seconds_per_tick = match division {
                Division::TicksPerBeat(ticks_per_beat) => {
                    // mido's `tick2second`: scale = tempo * 1e-6 / ticks_per_beat.
                    f64::from(tempo) * 1e-6 / f64::from(ticks_per_beat)
                }
                Division::Smpte { seconds_per_tick } => seconds_per_tick,
            };
            time_s += delta_ticks as f64 * seconds_per_tick;
        }
        match event.kind {
            RawKind::Channel {
                status,
                data1,
                data2,
            } => {
                let channel = status & 0x0f;
                let kind = match status & 0xf0 {
                    0x80 => EventKind::NoteOff {
                        key: data1,
                        velocity: data2,
                    },
                    0x90 => EventKind::NoteOn {
                        key: data1,
                        velocity: data2,
                    },
                    0xc0 => EventKind::ProgramChange { program: data1 },
                    _ => continue,
                };
                out.push(TimedEvent {
                    time_s,
                    channel,
                    kind,
                });
            }
            RawKind::Tempo(new_tempo) => tempo = new_tempo,
            RawKind::TimeSignature(_) | RawKind::KeySignature(_) | RawKind::Other => {}
        }
    }
    Ok(out)
}

/// The grid of a Standard MIDI File: its division, tempo changes and time and
/// key signatures, at the ticks the note times are measured from (mido's
/// merged ticks). Errors are those of [`midi_to_notes`] on the same bytes.
pub fn midi_timing(bytes: &[u8]) -> Result<Timing, MidiError> {
    let (division, mut events) = parse(bytes)?;
    events.sort_by_key(|event| event.tick);
    let field = be_u16(&bytes[12..]);
    let mut timing = Timing {
        division: match division {
            Division::TicksPerBeat(ticks) => FileDivision::TicksPerBeat(ticks),
            Division::Smpte { seconds_per_tick } => FileDivision::Smpte {
                raw: field,
                seconds_per_tick,
            },
        },
        ..Timing::reference()
    };
    for event in events {
        match event.kind {
            RawKind::Tempo(tempo) => timing.tempos.push((event.tick, tempo)),
            RawKind::TimeSignature(sig) => timing.time_signatures.push((event.tick, sig)),
            RawKind::KeySignature(key) => timing.key_signatures.push((event.tick, key)),
            RawKind::Channel { .. } | RawKind::Other => {}
        }
    }
    Ok(timing)
}

/// [`midi_timing`] of a file.
pub fn read_midi_timing(path: &Path) -> Result<Timing, MidiError> {
    midi_timing(&read_midi_bytes(path)?)
}

#[derive(Clone, Copy, Debug)]
enum Division {
    TicksPerBeat(u16),
    Smpte { seconds_per_tick: f64 },
}

#[derive(Clone, Copy, Debug)]
enum RawKind {
    Channel {
        status: u8,
        data1: u8,
        data2: u8,
    },
    Tempo(u32),
    /// A time signature's first 4 payload bytes (kept only for [`midi_timing`]).
    TimeSignature([u8; 4]),
    /// A key signature's first 2 payload bytes (kept only for [`midi_timing`]).
    KeySignature([u8; 2]),
    /// Any other event: it only matters because it splits delta times.
    Other,
}

#[derive(Clone, Copy, Debug)]
struct RawEvent {
    tick: u64,
    kind: RawKind,
}

fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

fn be_u16(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[0], bytes[1]])
}

fn tag(bytes: &[u8]) -> [u8; 4] {
    [bytes[0], bytes[1], bytes[2], bytes[3]]
}

/// Parses the header and every track into raw events with absolute ticks,
/// tracks concatenated in file order. End-of-track events are left out.
fn parse(bytes: &[u8]) -> Result<(Division, Vec<RawEvent>), MidiError> {
    if bytes.len() >= 4 && &bytes[..4] != b"MThd" {
        return Err(MidiError::BadMagic { found: tag(bytes) });
    }
    if bytes.len() < 8 {
        return Err(MidiError::Truncated {
            what: "MThd header chunk",
            offset: 0,
        });
    }
    let header_length = be_u32(&bytes[4..]);
    if header_length < 6 {
        return Err(MidiError::HeaderTooShort {
            length: header_length,
        });
    }
    let available = bytes.len() - 8;
    if header_length as usize > available {
        return Err(MidiError::ChunkBeyondEnd {
            tag: *b"MThd",
            offset: 0,
            length: header_length,
            available,
        });
    }
    let format = be_u16(&bytes[8..]);
    let announced_tracks = be_u16(&bytes[10..]);
    let division = parse_division(be_u16(&bytes[12..]))?;
    if format > 1 {
        return Err(MidiError::UnsupportedFormat { format });
    }

    let mut events = Vec::new();
    let mut found_tracks: u16 = 0;
    let mut pos = 8 + header_length as usize;
    while found_tracks < announced_tracks {
        if pos == bytes.len() {
            return Err(MidiError::MissingTracks {
                announced: announced_tracks,
                found: found_tracks,
            });
        }
        if bytes.len() - pos < 8 {
            return Err(MidiError::Truncated {
                what: "chunk header",
                offset: pos,
            });
        }
        let chunk_tag = tag(&bytes[pos..]);
        let length = be_u32(&bytes[pos + 4..]);
        let available = bytes.len() - pos - 8;
        if length as usize > available {
            return Err(MidiError::ChunkBeyondEnd {
                tag: chunk_tag,
                offset: pos,
                length,
                available,
            });
        }
        let body = &bytes[pos + 8..pos + 8 + length as usize];
        if &chunk_tag == b"MTrk" {
            parse_track(body, usize::from(found_tracks), pos + 8, &mut events)?;
            found_tracks += 1;
        }
        pos += 8 + length as usize;
    }
    Ok((division, events))
}

fn parse_division(division: u16) -> Result<Division, MidiError> {
    if division & 0x8000 == 0 {
        if division == 0 {
            return Err(MidiError::ZeroTicksPerBeat);
        }
        return Ok(Division::TicksPerBeat(division));
    }
    let [frame_byte, ticks_per_frame] = division.to_be_bytes();
    let frame_code = frame_byte as i8;
    let frames_per_second = match frame_code {
        -24 => 24.0,
        -25 => 25.0,
        -29 => 30_000.0 / 1001.0,
        -30 => 30.0,
        _ => 0.0,
    };
    if frames_per_second == 0.0 || ticks_per_frame == 0 {
        return Err(MidiError::BadSmpteDivision {
            frame_code,
            ticks_per_frame,
        });
    }
    Ok(Division::Smpte {
        seconds_per_tick: 1.0 / (frames_per_second * f64::from(ticks_per_frame)),
    })
}

/// Meta event types that mido 1.3.3 knows. Unknown ones lose their delta time.
fn is_known_meta(meta_type: u8) -> bool {
    matches!(
        meta_type,
        0x00..=0x07 | 0x09 | 0x20 | 0x21 | 0x2f | 0x51 | 0x54 | 0x58 | 0x59 | 0x7f
    )
}

/// Reads bytes of one track chunk; errors carry absolute file offsets.
struct TrackReader<'a> {
    data: &'a [u8],
    pos: usize,
    track: usize,
    base_offset: usize,
    event_start: usize,
}

impl TrackReader<'_> {
    fn past_end(&self) -> MidiError {
        MidiError::EventPastTrackEnd {
            track: self.track,
            offset: self.base_offset + self.event_start,
        }
    }

    fn byte(&mut self) -> Result<u8, MidiError> {
        let byte = *self.data.get(self.pos).ok_or_else(|| self.past_end())?;
        self.pos += 1;
        Ok(byte)
    }

    fn data_byte(&mut self) -> Result<u8, MidiError> {
        let offset = self.base_offset + self.pos;
        let byte = self.byte()?;
        if byte >= 0x80 {
            return Err(MidiError::BadDataByte {
                track: self.track,
                offset,
                byte,
            });
        }
        Ok(byte)
    }

    /// A variable-length number of at most 4 bytes.
    fn var_int(&mut self) -> Result<u32, MidiError> {
        let offset = self.base_offset + self.pos;
        let mut value = 0_u32;
        for _ in 0..4 {
            let byte = self.byte()?;
            value = (value << 7) | u32::from(byte & 0x7f);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(MidiError::VarIntTooLong {
            track: self.track,
            offset,
        })
    }

    fn skip(&mut self, n: u32) -> Result<&[u8], MidiError> {
        let n = n as usize;
        if n > self.data.len() - self.pos {
            return Err(self.past_end());
        }
        let start = self.pos;
        self.pos += n;
        Ok(&self.data[start..self.pos])
    }
}

fn parse_track(
    data: &[u8],
    track: usize,
    base_offset: usize,
    out: &mut Vec<RawEvent>,
) -> Result<(), MidiError> {
    let mut reader = TrackReader {
        data,
        pos: 0,
        track,
        base_offset,
        event_start: 0,
    };
    let mut tick = 0_u64;
    let mut running_status: Option<u8> = None;
    while reader.pos < data.len() {
        reader.event_start = reader.pos;
        let delta = u64::from(reader.var_int()?);
        let status_offset = base_offset + reader.pos;
        let first = reader.byte()?;
        let (status, peeked) = if first < 0x80 {
            match running_status {
                Some(status) => (status, Some(first)),
                None => {
                    return Err(MidiError::NoRunningStatus {
                        track,
                        offset: status_offset,
                    })
                }
            }
        } else {
            (first, None)
        };
        let kind = match status {
            0xff => {
                // Meta events leave running status alone (as in mido).
                let meta_type = reader.byte()?;
                let length = reader.var_int()?;
                let payload = reader.skip(length)?;
                if is_known_meta(meta_type) {
                    tick += delta;
                }
                match meta_type {
                    0x2f => continue,
                    0x51 if payload.len() >= 3 => {
                        RawKind::Tempo(u32::from_be_bytes([0, payload[0], payload[1], payload[2]]))
                    }
                    0x58 if payload.len() >= 4 => {
                        RawKind::TimeSignature([payload[0], payload[1], payload[2], payload[3]])
                    }
                    0x59 if payload.len() >= 2 => RawKind::KeySignature([payload[0], payload[1]]),
                    _ => RawKind::Other,
                }
            }
            0xf0 | 0xf7 => {
                let length = reader.var_int()?;
                reader.skip(length)?;
                running_status = None;
                tick += delta;
                RawKind::Other
            }
            0x80..=0xef => {
                running_status = Some(status);
                let data1 = match peeked {
                    Some(byte) => byte,
                    None => reader.data_byte()?,
                };
                let data2 = match status & 0xf0 {
                    0xc0 | 0xd0 => 0,
                    _ => reader.data_byte()?,
                };
                tick += delta;
                RawKind::Channel {
                    status,
                    data1,
                    data2,
                }
            }
            0xf1 | 0xf2 | 0xf3 | 0xf6 | 0xf8 | 0xfa | 0xfb | 0xfc | 0xfe => {
                let n_data = match status {
                    0xf1 | 0xf3 => 1,
                    0xf2 => 2,
                    _ => 0,
                };
                for _ in 0..n_data {
                    reader.data_byte()?;
                }
                running_status = None;
                tick += delta;
                RawKind::Other
            }
            _ => {
                return Err(MidiError::UndefinedStatus {
                    track,
                    offset: status_offset,
                    status,
                })
            }
        };
        out.push(RawEvent { tick, kind });
    }
    Ok(())
}
