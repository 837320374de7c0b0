//! MIDI ⇄ compound notes: the tokenizer of spec §1, bit-exact with the
//! reference (`MusicTokenizer` on top of mido 1.3.3).
//!
//! - [`midi_to_notes`] / [`read_midi_file`]: Standard MIDI File → notes
//!   (`reader.rs`, mido's merge and float timing).
//! - [`notes_to_midi`] / [`write_midi_file`]: notes → Standard MIDI File,
//!   byte-identical with the reference writer (`writer.rs`);
//!   [`notes_to_midi_timed`] writes them on another file's grid ([`Timing`],
//!   read by [`midi_timing`]: its ticks per beat, tempo map and signatures).
//! - [`LiveTokenizer`]: live note events in milliseconds → notes, for the
//!   plugin's inference thread (`live.rs`).
//! - [`MidiError`]: what can go wrong; no input makes any of this panic.
//!
//! The note-matching rules shared by the file and live paths are in
//! `tracker.rs`.

mod error;
mod live;
mod reader;
mod timing;
mod tracker;
mod writer;

pub use error::{MidiError, NoteProblem};
pub use live::{LiveNote, LiveTokenizer};
pub use reader::{
    midi_timing, midi_to_events, midi_to_notes, read_midi_file, read_midi_timing, EventKind,
    TimedEvent, DEFAULT_TEMPO_US_PER_BEAT,
};
pub use timing::{FileDivision, Timing};
pub use writer::{
    note_problem, notes_to_midi, notes_to_midi_timed, write_midi_file, write_midi_file_timed,
    MAX_WRITABLE_TICK, WRITER_TICKS_PER_BEAT,
};
