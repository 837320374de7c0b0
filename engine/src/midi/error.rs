//! The error type of the MIDI tokenizer: everything that can go wrong when
//! reading or writing a Standard MIDI File.
//!
//! Reading never panics: every malformed input ends up as one of these
//! variants, with the byte offset where the problem was found. Writing
//! validates every note first, so a bad note is reported with its index and
//! nothing is written.

use std::path::PathBuf;

use thiserror::Error;

/// Why reading or writing a MIDI file failed.
#[derive(Debug, Error)]
pub enum MidiError {
    /// The file could not be read from or written to disk.
    #[error("could not access MIDI file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The data ends in the middle of something (`what`), which started at
    /// byte `offset`. An empty file reports the header at offset 0.
    #[error(
        "truncated MIDI file: the {what} at byte offset {offset} runs past the end of the data"
    )]
    Truncated { what: &'static str, offset: usize },

    /// The first four bytes are not `MThd`.
    #[error("not a Standard MIDI File: expected \"MThd\" at the start, found {}", show_tag(.found))]
    BadMagic { found: [u8; 4] },

    /// The `MThd` chunk is shorter than the 6 bytes it must hold.
    #[error("the MThd header chunk is {length} bytes long, it must be at least 6")]
    HeaderTooShort { length: u32 },

    /// A chunk announces more bytes than remain in the file.
    #[error("the {} chunk at byte offset {offset} announces {length} bytes, but only {available} remain", show_tag(.tag))]
    ChunkBeyondEnd {
        tag: [u8; 4],
        offset: usize,
        length: u32,
        available: usize,
    },

    /// The header announces more `MTrk` chunks than the file holds.
    #[error("the header announces {announced} tracks, but the file holds only {found}")]
    MissingTracks { announced: u16, found: u16 },

    /// The header's division field is 0 ticks per beat (no timing possible).
    #[error("the header gives 0 ticks per beat")]
    ZeroTicksPerBeat,

    /// An SMPTE (timecode) division with a frame rate other than 24, 25,
    /// 29.97 (coded -29) or 30, or with 0 ticks per frame.
    #[error(
        "unsupported SMPTE division: frame code {frame_code}, {ticks_per_frame} ticks per frame"
    )]
    BadSmpteDivision { frame_code: i8, ticks_per_frame: u8 },

    /// Format 2 (independent sequences) or an undefined format number.
    #[error(
        "MIDI file format {format} is not supported, only formats 0 and 1 have one shared timeline"
    )]
    UnsupportedFormat { format: u16 },

    /// A data byte (< 0x80) where a status byte was needed, with no running
    /// status in force (start of a track, or after a system message).
    #[error("track {track}: data byte at byte offset {offset} with no running status in force")]
    NoRunningStatus { track: usize, offset: usize },

    /// A channel or system message carries a data byte >= 0x80.
    #[error("track {track}: data byte 0x{byte:02x} at byte offset {offset} is not below 0x80")]
    BadDataByte {
        track: usize,
        offset: usize,
        byte: u8,
    },

    /// A status byte that MIDI leaves undefined (0xF4, 0xF5, 0xF9, 0xFD).
    #[error("track {track}: undefined status byte 0x{status:02x} at byte offset {offset}")]
    UndefinedStatus {
        track: usize,
        offset: usize,
        status: u8,
    },

    /// A variable-length number longer than the 4 bytes the standard allows.
    #[error(
        "track {track}: variable-length number at byte offset {offset} is longer than 4 bytes"
    )]
    VarIntTooLong { track: usize, offset: usize },

    /// An event that starts inside a track chunk but ends after it.
    #[error(
        "track {track}: the event at byte offset {offset} runs past the end of its track chunk"
    )]
    EventPastTrackEnd { track: usize, offset: usize },

    /// A note that is not playable MIDI (see [`NoteProblem`]); nothing was written.
    #[error("note {index} cannot be written to MIDI: {problem}")]
    InvalidNote { index: usize, problem: NoteProblem },

    /// Writing needs one MIDI channel per instrument and runs out of channels.
    #[error(
        "note {index} brings a 16th instrument ({instrument}): every instrument gets its own MIDI channel, \
         so at most 15 instruments fit in a file (16 when the last new one is drums, 128)"
    )]
    TooManyInstruments { index: usize, instrument: i64 },
}

/// What makes a [`Note`](crate::Note) impossible to write as MIDI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum NoteProblem {
    #[error("the onset {0} is negative")]
    NegativeOnset(i64),
    #[error("the duration {0} is not positive")]
    NonPositiveDuration(i64),
    #[error("the pitch class {0} is outside 0..=11")]
    PitchClassOutOfRange(i64),
    #[error("octave {octave} with pitch class {pitch_class} is not a MIDI key 0..=127")]
    PitchOutOfRange { octave: i64, pitch_class: i64 },
    #[error("the velocity {0} is outside 1..=127")]
    VelocityOutOfRange(i64),
    #[error("the instrument {0} is outside 0..=128")]
    InstrumentOutOfRange(i64),
    #[error("the note ends at tick {end}, after the last writable tick {max}")]
    EndTooLate { end: i128, max: i64 },
}

/// Shows a 4-byte chunk tag as text when it is printable ASCII, else as hex.
fn show_tag(tag: &[u8; 4]) -> String {
    if tag.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("\"{}\"", String::from_utf8_lossy(tag))
    } else {
        format!(
            "bytes {:02x} {:02x} {:02x} {:02x}",
            tag[0], tag[1], tag[2], tag[3]
        )
    }
}
