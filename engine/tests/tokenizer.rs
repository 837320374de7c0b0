//! Tests of the MIDI tokenizer (`continuo_engine::midi`) at its boundaries:
//! golden vectors from the reference implementation, hand-built MIDI files
//! whose expected notes are worked out from the reference algorithm (spec
//! §1.1) in the test itself, malformed input, and properties (round trip,
//! writer validation, live tokenizer = file tokenizer).

mod common;

use common::{golden, golden_json};

use std::path::{Path, PathBuf};

use continuo_engine::midi::{
    midi_timing, midi_to_events, midi_to_notes, notes_to_midi, notes_to_midi_timed, read_midi_file,
    write_midi_file, EventKind, FileDivision, LiveNote, LiveTokenizer, MidiError, NoteProblem,
    Timing, MAX_WRITABLE_TICK,
};
use continuo_engine::Note;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn golden_bytes(name: &str) -> Vec<u8> {
    std::fs::read(golden(name)).unwrap_or_else(|e| panic!("cannot read golden file {name}: {e}"))
}

fn golden_rows(name: &str, key: &str) -> Vec<Note> {
    serde_json::from_value(golden_json(name)[key].clone()).unwrap()
}

fn n(onset: i64, duration: i64, pitch: u8, instrument: i64, velocity: i64) -> Note {
    Note::from_pitch(onset, duration, pitch, instrument, velocity)
}

/// Variable-length number as the SMF standard defines it (written here
/// independently of the writer under test).
fn vlq(value: u32) -> Vec<u8> {
    let mut bytes = vec![(value & 0x7f) as u8];
    let mut rest = value >> 7;
    while rest > 0 {
        bytes.insert(0, (rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    bytes
}

/// A track body from (delta, raw event bytes) pairs, closed by end-of-track.
fn track(events: &[(u32, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (delta, bytes) in events {
        body.extend(vlq(*delta));
        body.extend_from_slice(bytes);
    }
    body.extend([0x00, 0xff, 0x2f, 0x00]);
    body
}

/// A complete file: header (format, track count, division) + `MTrk` chunks.
fn smf(format: u16, division: u16, tracks: &[Vec<u8>]) -> Vec<u8> {
    let mut file = b"MThd\x00\x00\x00\x06".to_vec();
    file.extend(format.to_be_bytes());
    file.extend((tracks.len() as u16).to_be_bytes());
    file.extend(division.to_be_bytes());
    for body in tracks {
        file.extend(b"MTrk");
        file.extend((body.len() as u32).to_be_bytes());
        file.extend(body);
    }
    file
}

fn tempo_event(us_per_beat: u32) -> Vec<u8> {
    let b = us_per_beat.to_be_bytes();
    vec![0xff, 0x51, 0x03, b[1], b[2], b[3]]
}

/// Python's `round()` on a float: round half to even (what the reference uses).
fn py_round(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// The order `midi_to_notes(notes_to_midi(notes))` gives back, worked out from
/// the writer's file layout (spec §1.5) and the reader's FIFO matching (spec
/// §1.1), for valid notes:
/// 1. stable sort by onset; among equal onsets, the instruments come in the
///    order of their first appearance (their track order), each instrument's
///    notes keeping their relative order;
/// 2. per (instrument, pitch), the k-th note in that order gets the k-th
///    smallest end (the reader closes same-key notes first-in first-out).
fn expected_round_trip(notes: &[Note]) -> Vec<Note> {
    let mut by_onset: Vec<Note> = notes.to_vec();
    by_onset.sort_by_key(|note| note.onset);
    let mut first_seen: Vec<i64> = Vec::new();
    for note in &by_onset {
        if !first_seen.contains(&note.instrument) {
            first_seen.push(note.instrument);
        }
    }
    let rank = |instrument: i64| first_seen.iter().position(|&i| i == instrument).unwrap();
    let mut canonical = by_onset;
    canonical.sort_by_key(|note| (note.onset, rank(note.instrument)));

    let mut keys: Vec<(i64, i64)> = canonical
        .iter()
        .map(|note| (note.instrument, note.pitch()))
        .collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let members: Vec<usize> = (0..canonical.len())
            .filter(|&i| (canonical[i].instrument, canonical[i].pitch()) == key)
            .collect();
        let mut ends: Vec<i64> = members
            .iter()
            .map(|&i| canonical[i].onset + canonical[i].duration)
            .collect();
        ends.sort();
        for (&i, end) in members.iter().zip(ends) {
            canonical[i].duration = end - canonical[i].onset;
        }
    }
    canonical
}

/// Whether a note is writable, decided without the code under test and
/// without any arithmetic that could overflow.
fn writable(note: &Note) -> bool {
    let pitch = i128::from(note.octave) * 12 + i128::from(note.pitch_class);
    let end = i128::from(note.onset) + i128::from(note.duration);
    note.onset >= 0
        && note.duration >= 1
        && (0..12).contains(&note.pitch_class)
        && (0..=127).contains(&pitch)
        && (1..=127).contains(&note.velocity)
        && (0..=128).contains(&note.instrument)
        && end <= 0x0fff_ffff
}

fn samples_dir() -> PathBuf {
    common::engine_dir().join("../../shared/midi-samples")
}

fn sample_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("mid"))
            {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&samples_dir(), &mut files);
    files.sort();
    files
}

// ---------------------------------------------------------------------------------------------
// Golden vectors (reference implementation output)
// ---------------------------------------------------------------------------------------------

#[test]
fn golden_input_gives_reference_compounds() {
    let expected = golden_rows("tokens.json", "compounds");
    assert_eq!(expected.len(), 22);
    let notes = read_midi_file(&golden("input.mid")).unwrap();
    assert_eq!(notes, expected);
}

#[test]
fn golden_writer_is_byte_identical_and_round_trips() {
    let compounds = golden_rows("tokens.json", "compounds");
    let bytes = notes_to_midi(&compounds).unwrap();
    assert_eq!(bytes, golden_bytes("input_roundtrip.mid"));

    let back = midi_to_notes(&golden_bytes("input_roundtrip.mid")).unwrap();
    assert_eq!(
        back,
        golden_rows("tokens.json", "compound_to_midi_then_midi_to_compound")
    );
    assert_eq!(back, compounds);
}

#[test]
fn golden_greedy_files_are_byte_identical_and_round_trip() {
    for name in ["greedy_base", "greedy_lora"] {
        let json = format!("{name}.json");
        // The .mid files were written from the prompt + generated rows (38 notes).
        let rows = golden_rows(&json, "output_tokens_prompt_plus_generated_no_sos");
        assert_eq!(rows.len(), 38, "{name}");
        assert_eq!(
            &rows[22..],
            &golden_rows(&json, "generated_only")[..],
            "{name}"
        );
        assert_eq!(
            &rows[..22],
            &golden_rows("tokens.json", "compounds")[..],
            "{name}"
        );

        let mid = golden_bytes(&format!("{name}.mid"));
        assert_eq!(notes_to_midi(&rows).unwrap(), mid, "{name}");
        let back = midi_to_notes(&mid).unwrap();
        assert_eq!(back, expected_round_trip(&rows), "{name}");
        // These rows are already in canonical order, so the round trip is the identity.
        assert_eq!(back, rows, "{name}");
    }
}

#[test]
fn write_and_read_files_on_disk() {
    let dir = std::env::temp_dir().join(format!("continuo-tokenizer-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("roundtrip.mid");
    let compounds = golden_rows("tokens.json", "compounds");
    write_midi_file(&path, &compounds).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        golden_bytes("input_roundtrip.mid")
    );
    assert_eq!(read_midi_file(&path).unwrap(), compounds);
    std::fs::remove_dir_all(&dir).unwrap();

    let missing = dir.join("does-not-exist.mid");
    let err = read_midi_file(&missing).unwrap_err();
    assert!(matches!(err, MidiError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("does-not-exist.mid"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Hand-built files: timing and note matching (spec §1.1)
// ---------------------------------------------------------------------------------------------

#[test]
fn tempo_changes_follow_the_mido_formula() {
    let tpb = 480_u16;
    let conductor = track(&[
        (0, &tempo_event(600_000)),
        (960, &tempo_event(300_000)),
        (480, &tempo_event(1_000_000)), // at tick 1440
    ]);
    let notes = track(&[
        (0, &[0x90, 60, 100]),  // tick 0
        (480, &[0x80, 60, 0]),  // tick 480
        (480, &[0x90, 62, 90]), // tick 960
        (240, &[0x80, 62, 0]),  // tick 1200
        (240, &[0x90, 64, 80]), // tick 1440
        (60, &[0x90, 65, 70]),  // tick 1500
        (420, &[0x80, 64, 0]),  // tick 1920
        (0, &[0x80, 65, 0]),    // tick 1920
    ]);
    let file = smf(1, tpb, &[conductor, notes]);

    // mido: delta_s = delta_ticks * (tempo * 1e-6 / tpb), with the tempo in force before the
    // event; a set_tempo applies from the next event on. Merged order (ticks):
    // 0 tempo, 0 on60, 480 off60, 960 tempo, 960 on62, 1200 off62, 1440 tempo, 1440 on64,
    // 1500 on65, 1920 off64, 1920 off65.
    let s1 = 600_000.0 * 1e-6 / 480.0;
    let s2 = 300_000.0 * 1e-6 / 480.0;
    let s3 = 1_000_000.0 * 1e-6 / 480.0;
    let t_off60 = 0.0 + 480.0 * s1;
    let t_tempo2 = t_off60 + 480.0 * s1; // the tempo event itself still uses s1
    let t_on62 = t_tempo2;
    let t_off62 = t_on62 + 240.0 * s2;
    let t_tempo3 = t_off62 + 240.0 * s2;
    let t_on64 = t_tempo3;
    let t_on65 = t_on64 + 60.0 * s3;
    let t_off = t_on65 + 420.0 * s3;
    let expected = vec![
        n(0, py_round(100.0 * t_off60), 60, 0, 100),
        n(
            py_round(100.0 * t_on62),
            py_round(100.0 * (t_off62 - t_on62)),
            62,
            0,
            90,
        ),
        n(
            py_round(100.0 * t_on64),
            py_round(100.0 * (t_off - t_on64)),
            64,
            0,
            80,
        ),
        n(
            py_round(100.0 * t_on65),
            py_round(100.0 * (t_off - t_on65)),
            65,
            0,
            70,
        ),
    ];
    // The same expression evaluated by Python (the reference's arithmetic) gives these rows;
    // note 162.49999999999997 -> 162 and 87.50000000000003 -> 88.
    let from_python = vec![
        n(0, 60, 60, 0, 100),
        n(120, 15, 62, 0, 90),
        n(150, 100, 64, 0, 80),
        n(162, 88, 65, 0, 70),
    ];
    assert_eq!(expected, from_python);
    assert_eq!(midi_to_notes(&file).unwrap(), expected);
}

#[test]
fn rounding_is_half_to_even_on_mido_floats() {
    // tpb 100 at the default tempo: 5 ms per tick. The values below are what Python
    // computes for the reference: round(100 * t) with t accumulated as mido does
    // (0.005 -> 0.5 -> 0, 0.025 -> 2.5 -> 2, 0.07500000000000001 -> 7.500000000000001 -> 8).
    let body = track(&[
        (1, &[0x90, 60, 100]),
        (4, &[0x90, 61, 100]),
        (10, &[0x90, 62, 100]),
        (5, &[0x80, 60, 0]),
        (0, &[0x80, 61, 0]),
        (0, &[0x80, 62, 0]),
    ]);
    let notes = midi_to_notes(&smf(0, 100, &[body])).unwrap();
    let onsets: Vec<i64> = notes.iter().map(|note| note.onset).collect();
    assert_eq!(onsets, vec![0, 2, 8]);
    // Durations: t_end = 0.1 (20 ticks); 100 * (t_end - t_on) rounded half to even.
    let s = 500_000.0 * 1e-6 / 100.0;
    let t_on = [s, s + 4.0 * s, s + 4.0 * s + 10.0 * s];
    let t_end = t_on[2] + 5.0 * s;
    let durations: Vec<i64> = notes.iter().map(|note| note.duration).collect();
    assert_eq!(
        durations,
        t_on.iter()
            .map(|t| py_round(100.0 * (t_end - t)))
            .collect::<Vec<_>>()
    );
}

#[test]
fn same_pitch_overlaps_close_first_in_first_out() {
    // 1 tick = 10 ms (tpb 50, default tempo). Two overlapping C4s: the first note-off closes
    // the first note-on even though musically it may belong to the second.
    let body = track(&[
        (0, &[0x90, 60, 100]), // A on at 0
        (10, &[0x90, 60, 90]), // B on at 10
        (10, &[0x80, 60, 64]), // off at 20 -> closes A (FIFO)
        (30, &[0x90, 60, 0]),  // off (velocity 0) at 50 -> closes B
    ]);
    let notes = midi_to_notes(&smf(0, 50, &[body])).unwrap();
    assert_eq!(notes, vec![n(0, 20, 60, 0, 100), n(10, 40, 60, 0, 90)]);
}

#[test]
fn unmatched_note_off_is_ignored_and_open_notes_get_250_ms() {
    let body = track(&[
        (0, &[0x80, 64, 64]), // note-off before any note-on: ignored
        (5, &[0x90, 64, 0]),  // velocity-0 note-on with nothing open: ignored
        (5, &[0x90, 64, 70]), // on at 10
        (7, &[0x80, 64, 64]), // off at 17
        (3, &[0x80, 64, 64]), // extra off: ignored
        (0, &[0x90, 67, 80]), // on at 20, never closed -> 25 (TIME_RESOLUTION // 4)
        (0, &[0x90, 69, 80]), // on at 20
        (0, &[0x80, 69, 64]), // off at the same tick: duration 0 -> 1
    ]);
    let notes = midi_to_notes(&smf(0, 50, &[body])).unwrap();
    assert_eq!(
        notes,
        vec![
            n(10, 7, 64, 0, 70),
            n(20, 25, 67, 0, 80),
            n(20, 1, 69, 0, 80)
        ]
    );
}

#[test]
fn drums_program_changes_and_channels() {
    let body = track(&[
        (0, &[0xc1, 33]),      // channel 1 -> bass (33)
        (0, &[0xc9, 40]),      // a program change on channel 9 does not matter: drums
        (0, &[0x99, 36, 120]), // kick on channel 9 -> instrument 128
        (0, &[0x91, 40, 90]),  // bass
        (0, &[0x90, 72, 80]),  // channel 0, no program change -> 0
        (10, &[0x89, 36, 64]),
        (0, &[0xc0, 40]),     // channel 0 -> violin (40) mid-file
        (0, &[0x90, 74, 60]), // violin note
        // Off for the piano note, but channel 0 is now 40: key (40, 72, 0) has nothing open.
        (10, &[0x80, 72, 64]),
        (0, &[0x80, 74, 64]),
        (0, &[0x81, 40, 64]),
    ]);
    let notes = midi_to_notes(&smf(0, 50, &[body])).unwrap();
    assert_eq!(
        notes,
        vec![
            n(0, 10, 36, 128, 120),
            n(0, 20, 40, 33, 90),
            n(0, 25, 72, 0, 80), // never matched -> 25
            n(10, 10, 74, 40, 60),
        ]
    );
}

#[test]
fn same_key_on_different_channels_is_matched_per_channel() {
    // Both channels play program 0; the note-off on channel 1 must not close channel 0's note.
    let body = track(&[
        (0, &[0x90, 60, 100]),
        (0, &[0x91, 60, 90]),
        (10, &[0x81, 60, 64]),
        (10, &[0x80, 60, 64]),
    ]);
    let notes = midi_to_notes(&smf(0, 50, &[body])).unwrap();
    assert_eq!(notes, vec![n(0, 20, 60, 0, 100), n(0, 10, 60, 0, 90)]);
}

#[test]
fn running_status_is_decoded() {
    // 90 3c 64, then running status: 3e 64, 3c 00 (note-off), then 80 with running status.
    let mut body = Vec::new();
    body.extend([0x00, 0x90, 0x3c, 0x64]);
    body.extend([0x00, 0x3e, 0x64]);
    body.extend([0x0a, 0x3c, 0x00]);
    body.extend([0x00, 0xff, 0x01, 0x01, b'x']); // a meta event keeps running status
    body.extend([0x0a, 0x3e, 0x00]);
    body.extend([0x00, 0xff, 0x2f, 0x00]);
    let notes = midi_to_notes(&smf(0, 50, &[body])).unwrap();
    assert_eq!(notes, vec![n(0, 10, 60, 0, 100), n(0, 20, 62, 0, 100)]);
}

#[test]
fn type_0_and_type_1_files_give_the_same_notes() {
    let type0 = smf(
        0,
        96,
        &[track(&[
            (0, &tempo_event(400_000)),
            (0, &[0xc0, 5]),
            (0, &[0x90, 60, 100]),
            (0, &[0x91, 48, 80]),
            (48, &[0x80, 60, 64]),
            (48, &[0x81, 48, 64]),
        ])],
    );
    let type1 = smf(
        1,
        96,
        &[
            track(&[(0, &tempo_event(400_000))]),
            track(&[
                (0, &[0xc0, 5]),
                (0, &[0x90, 60, 100]),
                (48, &[0x80, 60, 64]),
            ]),
            track(&[(0, &[0x91, 48, 80]), (96, &[0x81, 48, 64])]),
        ],
    );
    // 96 ticks per beat at 0.4 s per beat: 48 ticks = 0.2 s = 20 ticks of 10 ms.
    let expected = vec![n(0, 20, 60, 5, 100), n(0, 40, 48, 0, 80)];
    assert_eq!(midi_to_notes(&type0).unwrap(), expected);
    assert_eq!(midi_to_notes(&type1).unwrap(), expected);
}

#[test]
fn simultaneous_events_keep_track_order() {
    // Same tick in two tracks: the merged stream keeps track order, so track 0's note comes
    // first even though track 1 is listed with the lower pitch.
    let file = smf(
        1,
        50,
        &[
            track(&[(5, &[0x90, 70, 100]), (5, &[0x80, 70, 64])]),
            track(&[(5, &[0x91, 40, 100]), (5, &[0x81, 40, 64])]),
        ],
    );
    assert_eq!(
        midi_to_notes(&file).unwrap(),
        vec![n(5, 5, 70, 0, 100), n(5, 5, 40, 0, 100)]
    );
}

#[test]
fn unknown_meta_events_lose_their_delta_like_mido_1_3_3() {
    // mido 1.3.3 builds unknown meta messages without their delta time. A known meta event
    // (text, 0x01) keeps its delta; an unknown one (0x60) does not.
    let file = smf(
        0,
        50,
        &[track(&[
            (10, &[0xff, 0x01, 0x00]),       // tick 10
            (0, &[0x90, 60, 100]),           // on at 10
            (30, &[0xff, 0x60, 0x01, 0x00]), // unknown: its 30 ticks are dropped
            (20, &[0x80, 60, 64]),           // off at 10 + 20 = 30 (not 60)
            (0, &[0xff, 0x08, 0x00]),        // 0x08 (program name) is unknown to mido 1.3.3 too
        ])],
    );
    assert_eq!(midi_to_notes(&file).unwrap(), vec![n(10, 20, 60, 0, 100)]);
}

#[test]
fn events_after_end_of_track_are_kept_and_unknown_chunks_skipped() {
    let mut body = track(&[(0, &[0x90, 60, 100])]); // ends with end-of-track at delta 0
    body.extend([0x0a, 0x80, 60, 64]); // mido keeps reading until the chunk length is used up
    let mut file = b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x00\x32".to_vec();
    file.extend(b"XFIH\x00\x00\x00\x03abc"); // an alien chunk: skipped
    file.extend(b"MTrk");
    file.extend((body.len() as u32).to_be_bytes());
    file.extend(&body);
    file.extend(b"trailing garbage is ignored");
    assert_eq!(midi_to_notes(&file).unwrap(), vec![n(0, 10, 60, 0, 100)]);
}

#[test]
fn smpte_division_is_real_time() {
    // 25 fps x 40 ticks per frame = 1000 ticks per second; tempo events do not matter.
    let division = u16::from_be_bytes([(-25_i8) as u8, 40]);
    let file = smf(
        0,
        division,
        &[track(&[
            (0, &tempo_event(100_000)),
            (1000, &[0x90, 60, 100]),
            (250, &[0x80, 60, 64]),
        ])],
    );
    assert_eq!(midi_to_notes(&file).unwrap(), vec![n(100, 25, 60, 0, 100)]);

    // 29.97 fps: 30000/1001 frames per second.
    let division = u16::from_be_bytes([(-29_i8) as u8, 100]);
    let file = smf(
        0,
        division,
        &[track(&[(2997, &[0x90, 60, 100]), (2997, &[0x80, 60, 64])])],
    );
    let t = 2997.0 * (1.0 / (30_000.0 / 1001.0 * 100.0));
    assert_eq!(
        midi_to_notes(&file).unwrap(),
        vec![n(py_round(100.0 * t), py_round(100.0 * t), 60, 0, 100)]
    );

    let bad = u16::from_be_bytes([(-26_i8) as u8, 40]);
    assert!(matches!(
        midi_to_notes(&smf(0, bad, &[])),
        Err(MidiError::BadSmpteDivision {
            frame_code: -26,
            ..
        })
    ));
    let zero = u16::from_be_bytes([(-25_i8) as u8, 0]);
    assert!(matches!(
        midi_to_notes(&smf(0, zero, &[])),
        Err(MidiError::BadSmpteDivision {
            ticks_per_frame: 0,
            ..
        })
    ));
}

#[test]
fn events_are_exposed_with_mido_times() {
    let events = midi_to_events(&golden_bytes("input.mid")).unwrap();
    let n_on = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::NoteOn { velocity, .. } if velocity > 0))
        .count();
    assert_eq!(n_on, 22);
    assert!(events.windows(2).all(|w| w[0].time_s <= w[1].time_s));
}

// ---------------------------------------------------------------------------------------------
// Malformed input: errors, never panics
// ---------------------------------------------------------------------------------------------

#[track_caller]
fn assert_error_message(err: &MidiError) {
    let message = err.to_string();
    assert!(
        !message.is_empty() && !message.ends_with('.'),
        "{message:?}"
    );
}

#[test]
fn empty_and_truncated_files_are_errors() {
    let err = midi_to_notes(&[]).unwrap_err();
    assert!(
        matches!(err, MidiError::Truncated { offset: 0, .. }),
        "{err:?}"
    );
    assert_error_message(&err);

    let input = golden_bytes("input.mid");
    for len in 0..input.len() {
        match midi_to_notes(&input[..len]) {
            Ok(notes) => panic!("prefix of {len} bytes parsed into {} notes", notes.len()),
            Err(err) => assert_error_message(&err),
        }
    }
    assert!(midi_to_notes(&input).is_ok());
}

#[test]
fn bad_headers_are_errors() {
    let good = smf(1, 480, &[track(&[])]);

    let mut wrong_magic = good.clone();
    wrong_magic[..4].copy_from_slice(b"RIFF");
    let err = midi_to_notes(&wrong_magic).unwrap_err();
    assert!(
        matches!(err, MidiError::BadMagic { found } if &found == b"RIFF"),
        "{err:?}"
    );
    assert_error_message(&err);
    assert!(matches!(
        midi_to_notes(b"hello world, not midi"),
        Err(MidiError::BadMagic { .. })
    ));

    let mut zero_tpb = good.clone();
    zero_tpb[12..14].copy_from_slice(&[0, 0]);
    assert!(matches!(
        midi_to_notes(&zero_tpb),
        Err(MidiError::ZeroTicksPerBeat)
    ));

    let mut short_header = good.clone();
    short_header[4..8].copy_from_slice(&5_u32.to_be_bytes());
    assert!(matches!(
        midi_to_notes(&short_header),
        Err(MidiError::HeaderTooShort { length: 5 })
    ));

    let mut huge_header = good.clone();
    huge_header[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        midi_to_notes(&huge_header),
        Err(MidiError::ChunkBeyondEnd {
            length: u32::MAX,
            ..
        })
    ));

    let mut type2 = good.clone();
    type2[8..10].copy_from_slice(&2_u16.to_be_bytes());
    let err = midi_to_notes(&type2).unwrap_err();
    assert!(
        matches!(err, MidiError::UnsupportedFormat { format: 2 }),
        "{err:?}"
    );
    assert_error_message(&err);
    let mut type7 = good.clone();
    type7[8..10].copy_from_slice(&7_u16.to_be_bytes());
    assert!(matches!(
        midi_to_notes(&type7),
        Err(MidiError::UnsupportedFormat { format: 7 })
    ));

    // A longer MThd chunk is fine: the extra bytes are skipped.
    let mut long_header = b"MThd\x00\x00\x00\x08\x00\x00\x00\x01\x00\x32\xaa\xbb".to_vec();
    long_header.extend(&smf(0, 50, &[track(&[(0, &[0x90, 60, 1]), (1, &[0x80, 60, 0])])])[14..]);
    assert_eq!(
        midi_to_notes(&long_header).unwrap(),
        vec![n(0, 1, 60, 0, 1)]
    );
}

#[test]
fn absurd_chunk_lengths_are_errors() {
    let mut file = smf(1, 480, &[track(&[(0, &[0x90, 60, 100])])]);
    file[18..22].copy_from_slice(&0xffff_ffff_u32.to_be_bytes());
    let err = midi_to_notes(&file).unwrap_err();
    assert!(
        matches!(
            err,
            MidiError::ChunkBeyondEnd {
                offset: 14,
                length: 0xffff_ffff,
                ..
            }
        ),
        "{err:?}"
    );
    assert_error_message(&err);
}

#[test]
fn ten_thousand_tracks_are_read_quickly_or_rejected() {
    // Announced but absent: rejected without allocating for them.
    let mut announced = smf(1, 480, &[track(&[])]);
    announced[10..12].copy_from_slice(&10_000_u16.to_be_bytes());
    let err = midi_to_notes(&announced).unwrap_err();
    assert!(
        matches!(
            err,
            MidiError::MissingTracks {
                announced: 10_000,
                found: 1
            }
        ),
        "{err:?}"
    );
    assert_error_message(&err);

    // Present: accepted, and the notes of the last track are found.
    let start = std::time::Instant::now();
    let mut tracks = vec![track(&[]); 9_999];
    tracks.push(track(&[(10, &[0x90, 60, 100]), (10, &[0x80, 60, 64])]));
    let file = smf(1, 50, &tracks);
    assert_eq!(midi_to_notes(&file).unwrap(), vec![n(10, 10, 60, 0, 100)]);
    assert!(
        start.elapsed().as_secs_f64() < 2.0,
        "took {:?}",
        start.elapsed()
    );

    // The largest count the header can hold, all absent.
    announced[10..12].copy_from_slice(&u16::MAX.to_be_bytes());
    assert!(matches!(
        midi_to_notes(&announced),
        Err(MidiError::MissingTracks { .. })
    ));
}

#[test]
fn malformed_track_bodies_are_errors() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("running status at track start", vec![0x00, 0x3c, 0x64]),
        (
            "running status after sysex",
            vec![
                0x00, 0x90, 0x3c, 0x64, 0x00, 0xf0, 0x01, 0xf7, 0x00, 0x3c, 0x00,
            ],
        ),
        ("undefined status", vec![0x00, 0xf4]),
        ("data byte >= 0x80", vec![0x00, 0x90, 0x3c, 0x80]),
        (
            "5-byte delta",
            vec![0x81, 0x80, 0x80, 0x80, 0x00, 0x90, 0x3c, 0x64],
        ),
        ("note cut by chunk end", vec![0x00, 0x90, 0x3c]),
        ("meta longer than chunk", vec![0x00, 0xff, 0x01, 0x7f, b'a']),
        (
            "sysex longer than chunk",
            vec![0x00, 0xf0, 0x8f, 0xff, 0xff, 0x7f],
        ),
        ("delta cut by chunk end", vec![0x80]),
    ];
    for (what, body) in cases {
        let file = smf(0, 96, &[body]);
        match midi_to_notes(&file) {
            Ok(notes) => panic!("{what}: parsed into {notes:?}"),
            Err(err) => assert_error_message(&err),
        }
    }
    let err = midi_to_notes(&smf(0, 96, &[vec![0x00, 0xf4]])).unwrap_err();
    assert!(
        matches!(
            err,
            MidiError::UndefinedStatus {
                track: 0,
                offset: 23,
                status: 0xf4
            }
        ),
        "{err:?}"
    );
}

#[test]
fn system_messages_and_sysex_are_skipped() {
    let body = track(&[
        (0, &[0xf0, 0x03, 0x43, 0x12, 0xf7]),
        (0, &[0x90, 60, 100]),
        (5, &[0xf2, 0x01, 0x02]),
        (0, &[0xf8]),
        (0, &[0xf7, 0x01, 0x00]),
        (5, &[0x80, 60, 64]),
    ]);
    assert_eq!(
        midi_to_notes(&smf(0, 50, &[body])).unwrap(),
        vec![n(0, 10, 60, 0, 100)]
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = midi_to_notes(&bytes);
        let mut with_header = b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0MTrk".to_vec();
        with_header.extend((bytes.len() as u32).to_be_bytes());
        with_header.extend(&bytes);
        let _ = midi_to_notes(&with_header);
    }

    #[test]
    fn mutated_golden_input_never_panics(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = golden_bytes("input.mid");
        for (index, value) in edits {
            let i = index.index(bytes.len());
            bytes[i] = value;
        }
        if let Err(err) = midi_to_notes(&bytes) {
            prop_assert!(!err.to_string().ends_with('.'));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writer: validation and round trip (spec §1.5)
// ---------------------------------------------------------------------------------------------

#[test]
fn invalid_notes_are_rejected_with_their_index() {
    let good = n(0, 10, 60, 0, 100);
    let cases: Vec<(Note, NoteProblem)> = vec![
        (Note { onset: -1, ..good }, NoteProblem::NegativeOnset(-1)),
        (
            Note {
                duration: 0,
                ..good
            },
            NoteProblem::NonPositiveDuration(0),
        ),
        (
            Note {
                pitch_class: 12,
                ..good
            },
            NoteProblem::PitchClassOutOfRange(12),
        ),
        (
            Note {
                octave: 11,
                pitch_class: 0,
                ..good
            },
            NoteProblem::PitchOutOfRange {
                octave: 11,
                pitch_class: 0,
            },
        ),
        (
            Note {
                octave: 10,
                pitch_class: 8,
                ..good
            },
            NoteProblem::PitchOutOfRange {
                octave: 10,
                pitch_class: 8,
            },
        ),
        (
            Note {
                velocity: 0,
                ..good
            },
            NoteProblem::VelocityOutOfRange(0),
        ),
        (
            Note {
                velocity: 128,
                ..good
            },
            NoteProblem::VelocityOutOfRange(128),
        ),
        (
            Note {
                instrument: 129,
                ..good
            },
            NoteProblem::InstrumentOutOfRange(129),
        ),
        (
            Note {
                instrument: -1,
                ..good
            },
            NoteProblem::InstrumentOutOfRange(-1),
        ),
        (
            Note {
                octave: i64::MAX,
                ..good
            },
            NoteProblem::PitchOutOfRange {
                octave: i64::MAX,
                pitch_class: 0,
            },
        ),
        (
            Note {
                onset: MAX_WRITABLE_TICK,
                ..good
            },
            NoteProblem::EndTooLate {
                end: i128::from(MAX_WRITABLE_TICK) + 10,
                max: MAX_WRITABLE_TICK,
            },
        ),
    ];
    for (bad, problem) in cases {
        let err = notes_to_midi(&[good, good, good, bad, good]).unwrap_err();
        match &err {
            MidiError::InvalidNote {
                index: 3,
                problem: got,
            } => assert_eq!(*got, problem),
            other => panic!("{other:?}"),
        }
        let message = err.to_string();
        assert!(message.starts_with("note 3 "), "{message}");
        assert_error_message(&err);
    }
    // The highest valid key and longest valid note are fine.
    let edge = Note {
        octave: 10,
        pitch_class: 7,
        onset: MAX_WRITABLE_TICK - 1,
        duration: 1,
        velocity: 127,
        instrument: 128,
    };
    assert_eq!(
        midi_to_notes(&notes_to_midi(&[edge]).unwrap()).unwrap(),
        vec![edge]
    );
}

#[test]
fn at_most_fifteen_instruments_fit() {
    let melodic = |count: i64| (0..count).map(|i| n(i, 1, 60, i, 100)).collect::<Vec<_>>();

    let fifteen = melodic(15);
    let back = midi_to_notes(&notes_to_midi(&fifteen).unwrap()).unwrap();
    assert_eq!(back, fifteen);

    let err = notes_to_midi(&melodic(16)).unwrap_err();
    assert!(
        matches!(
            err,
            MidiError::TooManyInstruments {
                index: 15,
                instrument: 15
            }
        ),
        "{err:?}"
    );
    assert_error_message(&err);

    // Drums last always fit (channel 9): 16 instruments.
    let mut with_drums = melodic(15);
    with_drums.push(n(20, 1, 36, 128, 100));
    assert_eq!(
        midi_to_notes(&notes_to_midi(&with_drums).unwrap()).unwrap(),
        with_drums
    );

    // Drums first take one of the places: only 14 melodic instruments fit after them.
    let mut drums_first = vec![n(0, 1, 36, 128, 100)];
    drums_first.extend((0..15).map(|i| n(i + 1, 1, 60, i, 100)));
    let err = notes_to_midi(&drums_first).unwrap_err();
    assert!(
        matches!(
            err,
            MidiError::TooManyInstruments {
                index: 15,
                instrument: 14
            }
        ),
        "{err:?}"
    );
}

#[test]
fn writer_layout_matches_mido() {
    // Empty list: header only, no tracks.
    assert_eq!(
        notes_to_midi(&[]).unwrap(),
        b"MThd\x00\x00\x00\x06\x00\x01\x00\x00\x00\x32".to_vec()
    );
    assert_eq!(midi_to_notes(&notes_to_midi(&[]).unwrap()).unwrap(), vec![]);

    // A note of 200 ticks: two-byte delta (0x81 0x48), note-off velocity 64, running status
    // not used across different status bytes, end-of-track at delta 0.
    let bytes = notes_to_midi(&[n(0, 200, 60, 5, 100)]).unwrap();
    let mut expected = b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x00\x32MTrk\x00\x00\x00\x10".to_vec();
    expected.extend([
        0x00, 0xc0, 0x05, 0x00, 0x90, 60, 100, 0x81, 0x48, 0x80, 60, 64, 0x00, 0xff, 0x2f, 0x00,
    ]);
    assert_eq!(bytes, expected);

    // Drums: program change 0 on channel 9.
    let bytes = notes_to_midi(&[n(0, 1, 36, 128, 100)]).unwrap();
    assert_eq!(&bytes[22..28], &[0x00, 0xc9, 0x00, 0x00, 0x99, 36]);

    // Quirk (a): a note ending where a same-pitch note starts is written after that onset.
    let bytes = notes_to_midi(&[n(0, 10, 60, 0, 100), n(10, 10, 60, 0, 90)]).unwrap();
    let body = &bytes[22..];
    assert_eq!(
        &body[..16],
        &[0x00, 0xc0, 0x00, 0x00, 0x90, 60, 100, 0x0a, 60, 90, 0x00, 0x80, 60, 64, 0x0a, 60]
    );
}

fn note_strategy(instruments: Vec<i64>) -> impl Strategy<Value = Vec<Note>> {
    let one = (
        prop_oneof![3 => Just(0_i64), 3 => 0_i64..40, 1 => 0_i64..100_000],
        prop_oneof![3 => 1_i64..60, 1 => 1_i64..5_000],
        prop_oneof![2 => 0_u8..=127, 1 => 59_u8..=61],
        prop::sample::select(instruments),
        1_i64..=127,
    );
    proptest::collection::vec(one, 0..40).prop_map(|raw| {
        let mut onset = 0;
        raw.into_iter()
            .map(|(gap, duration, pitch, instrument, velocity)| {
                onset += gap;
                n(onset, duration, pitch, instrument, velocity)
            })
            .collect()
    })
}

fn instruments_strategy() -> impl Strategy<Value = Vec<i64>> {
    prop::sample::subsequence((0..=128).collect::<Vec<i64>>(), 1..=15)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The writer then the reader is the identity on lists in canonical form: sorted by
    /// onset, equal onsets grouped by instrument in first-appearance order, and per
    /// (instrument, pitch) non-decreasing ends (see `expected_round_trip`).
    #[test]
    fn round_trip_is_identity_in_canonical_form(
        notes in instruments_strategy().prop_flat_map(note_strategy),
        shuffle_seed in any::<u64>(),
    ) {
        // Shuffle the list (deterministically), then put it in canonical form.
        let mut shuffled = notes.clone();
        let mut state = shuffle_seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let canonical = expected_round_trip(&shuffled);
        // Canonical form is a fixed point of the model: sorted, grouped, FIFO-consistent.
        prop_assert_eq!(&expected_round_trip(&canonical), &canonical);
        let bytes = notes_to_midi(&canonical).unwrap();
        prop_assert_eq!(midi_to_notes(&bytes).unwrap(), canonical);
    }

    /// Any valid list comes back in canonical order with FIFO-re-paired ends.
    #[test]
    fn round_trip_of_any_valid_list(
        notes in instruments_strategy().prop_flat_map(note_strategy),
        shuffle_seed in any::<u64>(),
    ) {
        let mut shuffled = notes;
        let mut state = shuffle_seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let bytes = notes_to_midi(&shuffled).unwrap();
        prop_assert_eq!(midi_to_notes(&bytes).unwrap(), expected_round_trip(&shuffled));
    }

    /// The writer accepts exactly the writable notes, reports the first bad one, and never
    /// panics, whatever the field values.
    #[test]
    fn writer_validates_every_field(
        raw in proptest::collection::vec(
            (
                prop_oneof![Just(i64::MIN), Just(-1_i64), 0_i64..1000, Just(MAX_WRITABLE_TICK), Just(i64::MAX)],
                prop_oneof![Just(i64::MIN), Just(0_i64), 1_i64..1000, Just(i64::MAX)],
                prop_oneof![Just(i64::MIN), Just(-1_i64), 0_i64..=12, Just(i64::MAX)],
                prop_oneof![Just(-1_i64), 0_i64..=13],
                prop_oneof![Just(-1_i64), Just(0_i64), Just(1_i64), Just(128_i64), Just(129_i64), Just(i64::MAX)],
                prop_oneof![Just(i64::MIN), Just(0_i64), 1_i64..=127, Just(128_i64), Just(129_i64)],
            ),
            0..6,
        ),
    ) {
        let notes: Vec<Note> = raw.into_iter().map(|(a, b, c, d, e, f)| Note::from_row([a, b, c, d, e, f])).collect();
        let first_bad = notes.iter().position(|note| !writable(note));
        match (notes_to_midi(&notes), first_bad) {
            (Ok(bytes), None) => prop_assert_eq!(midi_to_notes(&bytes).unwrap().len(), notes.len()),
            (Err(MidiError::InvalidNote { index, .. }), Some(bad)) => prop_assert_eq!(index, bad),
            (result, first_bad) => prop_assert!(false, "{:?} with first bad note {:?}", result.map(|b| b.len()), first_bad),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Real files
// ---------------------------------------------------------------------------------------------

#[test]
fn sample_files_parse_and_round_trip() {
    let files = sample_files();
    if files.is_empty() {
        println!(
            "NOTE: no MIDI samples at {}, skipping",
            samples_dir().display()
        );
        return;
    }
    let mut n_repaired = 0;
    for path in &files {
        let notes = read_midi_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!notes.is_empty(), "{}", path.display());
        // Reference order: onsets never decrease (the merged stream is time-sorted).
        assert!(
            notes.windows(2).all(|w| w[0].onset <= w[1].onset),
            "{}",
            path.display()
        );
        assert!(
            notes.iter().all(|note| note.is_valid_midi()),
            "{}",
            path.display()
        );

        let bytes = notes_to_midi(&notes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let back = midi_to_notes(&bytes).unwrap();
        let expected = expected_round_trip(&notes);
        assert_eq!(back, expected, "{}", path.display());
        if expected != notes {
            n_repaired += 1;
        }
        // Writing what was read back gives the same file again.
        assert_eq!(
            notes_to_midi(&back).unwrap(),
            notes_to_midi(&expected).unwrap()
        );
    }
    println!(
        "{} sample files; {n_repaired} needed the canonical reordering or FIFO re-pairing",
        files.len()
    );
    assert_eq!(files.len(), 63, "expected the 63 sample files");
}

// ---------------------------------------------------------------------------------------------
// Live tokenizer
// ---------------------------------------------------------------------------------------------

#[test]
fn live_basic_rules() {
    let mut live = LiveTokenizer::new();
    live.program_change(1, 33);
    live.note_on(0.0, 0, 60, 100);
    live.note_on(4.9, 1, 40, 90); // onset round(0.49) = 0
    live.note_on(15.0, 9, 36, 120); // 1.5 -> 2 (half to even)
    live.note_on(25.0, 0, 60, 80); // 2.5 -> 2; second C4 on channel 0
    live.note_off(30.0, 9, 36); // duration round(1.5) = 2
    live.note_on(100.0, 0, 60, 0); // velocity 0 = off: closes the FIRST C4 (FIFO), 10
    live.note_off(100.0, 3, 50); // nothing open: ignored
    assert_eq!(live.len(), 4);
    assert_eq!(live.n_sounding(), 2);
    assert_eq!(live.finished_prefix_len(), 1);
    assert_eq!(
        live.finished_notes(),
        vec![n(0, 10, 60, 0, 100), n(2, 2, 36, 128, 120)]
    );
    assert_eq!(
        live.sounding_notes(200.0),
        vec![n(0, 20, 40, 33, 90), n(2, 18, 60, 0, 80)]
    );
    let snapshot = live.snapshot(200.0);
    assert_eq!(
        snapshot[1],
        LiveNote {
            note: n(0, 20, 40, 33, 90),
            sounding: true
        }
    );
    assert_eq!(
        snapshot[2],
        LiveNote {
            note: n(2, 2, 36, 128, 120),
            sounding: false
        }
    );

    assert_eq!(live.drain_finished_prefix(), vec![n(0, 10, 60, 0, 100)]);
    assert_eq!(live.len(), 3);
    live.note_off(150.0, 1, 40);
    assert_eq!(
        live.drain_finished_prefix(),
        vec![n(0, 15, 40, 33, 90), n(2, 2, 36, 128, 120)]
    );
    live.close_all(300.0);
    assert_eq!(live.n_sounding(), 0);
    assert_eq!(live.finish(), vec![n(2, 28, 60, 0, 80)]);
}

#[test]
fn live_input_hygiene() {
    let mut live = LiveTokenizer::new();
    live.note_on(f64::NAN, 0, 60, 200); // NaN time -> 0, velocity clamped to 127
    live.note_on(50.0, 16, 60, 100); // channel 16: ignored
    live.note_on(50.0, 0, 128, 100); // key 128: ignored
    live.program_change(0, 200); // ignored
    live.note_on(40.0, 0, 62, 100); // earlier than 50: clamped to 50
    live.note_off(f64::INFINITY, 0, 60); // -> 50
    live.note_off(-5.0, 0, 62); // -> 50, duration 0 -> 1
    assert_eq!(
        live.clone().finish(),
        vec![n(0, 5, 60, 0, 127), n(5, 1, 62, 0, 100)]
    );
    live.note_on(60.0, 2, 64, 10);
    // Open notes at the end get 250 ms, as in the file path.
    assert_eq!(live.finish().last(), Some(&n(6, 25, 64, 0, 10)));

    let mut live = LiveTokenizer::default();
    live.note_on(10.0, 0, 60, 100);
    live.reset();
    assert!(live.is_empty());
}

/// Feeding the live tokenizer a file's events at `1000 * time_s` ms gives the file's notes,
/// except where `100 * time_s` sits within float noise of an exact tie (x.5 ticks): there the
/// two clocks (`100 * s` vs `(1000 * s) / 10`) may round to neighbouring ticks.
#[test]
fn live_matches_file_on_golden_and_sample_files() {
    let mut files = vec![golden("input.mid"), golden("input_roundtrip.mid")];
    let golden_count = files.len();
    files.extend(sample_files());
    let (mut n_notes, mut n_onset_ties, mut n_duration_ties) = (0, 0, 0);
    for (file_index, path) in files.iter().enumerate() {
        let bytes = std::fs::read(path).unwrap();
        let events = midi_to_events(&bytes).unwrap();
        let mut live = LiveTokenizer::new();
        let mut onset_times_s = Vec::new();
        for event in &events {
            let time_ms = event.time_s * 1000.0;
            match event.kind {
                EventKind::NoteOn { key, velocity } => {
                    if velocity > 0 {
                        onset_times_s.push(event.time_s);
                    }
                    live.note_on(time_ms, event.channel, key, velocity);
                }
                EventKind::NoteOff { key, .. } => live.note_off(time_ms, event.channel, key),
                EventKind::ProgramChange { program } => live.program_change(event.channel, program),
            }
        }
        let from_live = live.finish();
        let from_file = midi_to_notes(&bytes).unwrap();
        if file_index < golden_count {
            assert_eq!(from_live, from_file, "{}", path.display());
        }
        assert_eq!(from_live.len(), from_file.len(), "{}", path.display());
        for ((a, b), onset_s) in from_live.iter().zip(&from_file).zip(&onset_times_s) {
            n_notes += 1;
            let same_except_times = Note {
                onset: b.onset,
                duration: b.duration,
                ..*a
            } == *b;
            assert!(same_except_times, "{}: {a:?} vs {b:?}", path.display());
            if a.onset != b.onset {
                let ticks = 100.0 * onset_s;
                assert!(
                    (ticks - ticks.floor() - 0.5).abs() < 1e-6,
                    "{}: onset {ticks} is no tie",
                    path.display()
                );
                assert_eq!((a.onset - b.onset).abs(), 1);
                n_onset_ties += 1;
            }
            if a.duration != b.duration {
                assert!(
                    (a.duration - b.duration).abs() <= 1,
                    "{}: {a:?} vs {b:?}",
                    path.display()
                );
                n_duration_ties += 1;
            }
        }
    }
    println!("{n_notes} notes: {n_onset_ties} onsets and {n_duration_ties} durations differ by a tie's rounding");
}

#[derive(Clone, Debug)]
enum PerfEvent {
    On { key: u8, velocity: u8 },
    Off { key: u8 },
    Program { program: u8 },
    Control,
}

fn perf_strategy() -> impl Strategy<Value = Vec<(u32, u8, usize, PerfEvent)>> {
    let event = prop_oneof![
        4 => (57_u8..64, 0_u8..=127).prop_map(|(key, velocity)| PerfEvent::On { key, velocity }),
        4 => (57_u8..64).prop_map(|key| PerfEvent::Off { key }),
        1 => (0_u8..4).prop_map(|program| PerfEvent::Program { program }),
        1 => Just(PerfEvent::Control),
    ];
    // Times in ms = 10 * a + b with b < 5: neither a time nor a difference of two times is
    // within float noise of a 5 ms tie, where the file and live clocks may round differently.
    let time = (0_u32..300, 0_u32..5).prop_map(|(a, b)| 10 * a + b);
    proptest::collection::vec(
        (
            time,
            prop::sample::select(vec![0_u8, 1, 9]),
            0_usize..3,
            event,
        ),
        0..60,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Feeding a MIDI file's events to the live tokenizer (times in ms) gives the notes of
    /// `midi_to_notes`, for any mix of tracks, channels, programs, velocity-0 note-offs and
    /// unmatched offs.
    #[test]
    fn live_tokenizer_equals_file_tokenizer(mut events in perf_strategy()) {
        // 500 ticks per beat at the default tempo: 1 tick = 1 ms.
        events.sort_by_key(|e| e.0);
        let mut bodies = vec![Vec::new(); 3];
        let mut last_tick = [0_u32; 3];
        for (time, channel, track_index, event) in &events {
            let body = &mut bodies[*track_index];
            body.extend(vlq(time - last_tick[*track_index]));
            last_tick[*track_index] = *time;
            match event {
                PerfEvent::On { key, velocity } => body.extend([0x90 | channel, *key, *velocity]),
                PerfEvent::Off { key } => body.extend([0x80 | channel, *key, 64]),
                PerfEvent::Program { program } => body.extend([0xc0 | channel, *program]),
                PerfEvent::Control => body.extend([0xb0 | channel, 64, 127]),
            }
        }
        for body in &mut bodies {
            body.extend([0x00, 0xff, 0x2f, 0x00]);
        }
        let file = smf(1, 500, &bodies);

        // mido's merged order: by tick, then track, then position in the track.
        let mut order: Vec<usize> = (0..events.len()).collect();
        order.sort_by_key(|&i| (events[i].0, events[i].2, i));
        let mut live = LiveTokenizer::new();
        for i in order {
            let (time, channel, _, event) = &events[i];
            let time_ms = f64::from(*time);
            match event {
                PerfEvent::On { key, velocity } => live.note_on(time_ms, *channel, *key, *velocity),
                PerfEvent::Off { key } => live.note_off(time_ms, *channel, *key),
                PerfEvent::Program { program } => live.program_change(*channel, *program),
                PerfEvent::Control => {}
            }
        }
        prop_assert_eq!(live.finish(), midi_to_notes(&file).unwrap());
    }
}

// ---------------------------------------------------------------------------------------------
// Writing on the input's grid (`notes_to_midi_timed`)
// ---------------------------------------------------------------------------------------------

/// A piece at 96 ticks per beat in 3/4, B-flat major: two bars at 150 BPM, then 100 BPM, with
/// notes on eighths (48 ticks: 200 ms, then 300 ms, whole 10 ms units), in a conductor track
/// and a note track.
fn three_four_piece() -> (Vec<u8>, Vec<(u64, u8)>) {
    let conductor = track(&[
        (0, &[0xff, 0x58, 0x04, 3, 2, 24, 8]),
        (0, &[0xff, 0x59, 0x02, 0xfe, 0]),
        (0, &tempo_event(400_000)),
        (576, &tempo_event(600_000)),
    ]);
    let mut events: Vec<(u32, Vec<u8>)> = vec![(0, vec![0xc0, 0])];
    let mut ticks = Vec::new();
    let mut last = 0;
    for (i, key) in [60_u8, 62, 65, 67, 70, 72, 74, 77, 79, 82, 84, 86]
        .iter()
        .enumerate()
    {
        // Every other eighth, crossing the tempo change at tick 576.
        let on = 96 * i as u64 + 48 * (i as u64 % 2);
        ticks.push((on, *key));
        events.push(((on - last) as u32, vec![0x90, *key, 80]));
        events.push((48, vec![0x80, *key, 0]));
        last = on + 48;
    }
    let refs: Vec<(u32, &[u8])> = events.iter().map(|(d, e)| (*d, e.as_slice())).collect();
    (smf(1, 96, &[conductor, track(&refs)]), ticks)
}

#[test]
fn notes_written_on_their_files_grid_keep_its_ticks_tempo_map_and_metre() {
    let (file, ticks) = three_four_piece();
    let notes = midi_to_notes(&file).unwrap();
    let timing = midi_timing(&file).unwrap();
    assert_eq!(timing.division, FileDivision::TicksPerBeat(96));
    assert_eq!(timing.tempos, vec![(0, 400_000), (576, 600_000)]);
    assert_eq!(timing.time_signatures, vec![(0, [3, 2, 24, 8])]);
    assert_eq!(timing.key_signatures, vec![(0, [0xfe, 0])]);
    // 150 BPM at 96 ticks per beat: tick 48 is 0.2 s; after the change, 48 ticks are 0.3 s.
    assert_eq!(timing.tick_to_seconds(48), 0.2);
    assert!((timing.tick_to_seconds(624) - (576.0 / 96.0 * 0.4 + 0.3)).abs() < 1e-12);
    assert!((timing.seconds_to_tick(2.7) - 624.0).abs() < 1e-9);

    let out = notes_to_midi_timed(&notes, &timing).unwrap();
    assert_eq!(midi_timing(&out).unwrap(), timing);
    assert_eq!(common::note_on_ticks(&out), (96, ticks));
    assert_eq!(midi_to_notes(&out).unwrap(), notes);

    // A continuation past the input's end lands on the same grid: one more eighth at 100 BPM.
    let mut longer = notes.clone();
    let last = *notes.last().unwrap();
    longer.push(Note {
        onset: last.onset + 30,
        ..last
    });
    let (_, got) = common::note_on_ticks(&notes_to_midi_timed(&longer, &timing).unwrap());
    let last_tick = got.iter().map(|&(t, _)| t).max().unwrap();
    assert_eq!(last_tick, 96 * 11 + 48 + 48);
}

#[test]
fn the_reference_grid_writes_the_reference_bytes() {
    let rows = golden_rows(
        "greedy_base.json",
        "output_tokens_prompt_plus_generated_no_sos",
    );
    assert_eq!(
        notes_to_midi_timed(&rows, &Timing::reference()).unwrap(),
        golden_bytes("greedy_base.mid")
    );
    // A file on another grid gets a conductor track: one track more than the reference's.
    let notes = golden_prompt_notes();
    let other = Timing {
        division: FileDivision::TicksPerBeat(480),
        ..Timing::reference()
    };
    let bytes = notes_to_midi_timed(&notes, &other).unwrap();
    let tracks = |b: &[u8]| u16::from_be_bytes([b[10], b[11]]);
    assert_eq!(tracks(&bytes), tracks(&notes_to_midi(&notes).unwrap()) + 1);
    assert_eq!(u16::from_be_bytes([bytes[12], bytes[13]]), 480);
}

fn golden_prompt_notes() -> Vec<Note> {
    midi_to_notes(&golden_bytes("input.mid")).unwrap()
}

/// Per (instrument, pitch): the sorted onsets and the sorted ends (the pairing of overlapping
/// same-key notes is the reader's FIFO rule, not the writer's to keep).
fn onsets_and_ends(notes: &[Note]) -> std::collections::BTreeMap<(i64, i64), (Vec<i64>, Vec<i64>)> {
    let mut map = std::collections::BTreeMap::<_, (Vec<i64>, Vec<i64>)>::new();
    for n in notes {
        let e = map.entry((n.instrument, n.pitch())).or_default();
        e.0.push(n.onset);
        e.1.push(n.onset + n.duration);
    }
    for (on, end) in map.values_mut() {
        on.sort();
        end.sort();
    }
    map
}

#[test]
fn sample_files_written_on_their_own_grid_read_back_within_half_a_tick() {
    let files = sample_files();
    if files.is_empty() {
        println!(
            "NOTE: no MIDI samples at {}, skipping",
            samples_dir().display()
        );
        return;
    }
    for path in &files {
        let bytes = std::fs::read(path).unwrap();
        let notes = midi_to_notes(&bytes).unwrap();
        let timing = midi_timing(&bytes).unwrap();
        let out = notes_to_midi_timed(&notes, &timing).unwrap();
        assert_eq!(
            midi_timing(&out).unwrap().division,
            timing.division,
            "{}",
            path.display()
        );
        // A time of whole 10 ms units moves by at most half of the file's longest tick (at
        // its slowest tempo) on the way to ticks, and reads back rounded to 10 ms units: so
        // it comes back unchanged unless half a tick reaches half a unit.
        let slowest = timing
            .tempos
            .iter()
            .map(|&(_, t)| t)
            .chain([500_000])
            .max()
            .unwrap();
        let tick_s = match timing.division {
            FileDivision::TicksPerBeat(t) => f64::from(slowest) * 1e-6 / f64::from(t),
            FileDivision::Smpte {
                seconds_per_tick, ..
            } => seconds_per_tick,
        };
        let tolerance = (tick_s * 100.0 * 0.5 + 0.5).floor() as i64;
        let (want, got) = (
            onsets_and_ends(&notes),
            onsets_and_ends(&midi_to_notes(&out).unwrap()),
        );
        assert_eq!(want.len(), got.len(), "{}", path.display());
        for (key, (on, end)) in &want {
            let (on2, end2) = &got[key];
            let worst = on
                .iter()
                .zip(on2)
                .chain(end.iter().zip(end2))
                .map(|(a, b)| (a - b).abs())
                .max()
                .unwrap_or(0);
            assert!(
                worst <= tolerance,
                "{}: key {key:?} moved by {worst} (tolerance {tolerance})",
                path.display()
            );
        }
    }
}
