//! The last few answers, kept so the user can export them as MIDI files.
//!
//! FL Studio (and some other hosts) cannot record a plugin's MIDI output, so Continuo keeps
//! what it generated itself. The generator thread records every note it sends for an answer
//! and files the answer here when it ends; the editor lists them and asks the loader thread
//! ([`crate::library`]) to write one as a `.mid` file into the user's folder. The audio thread
//! never touches any of this.
//!
//! Times are in beats from the answer's first beat, so an exported file lines up with the
//! host's grid when dropped at that beat. The file carries the tempo the answer was made at
//! (480 ticks per quarter note, one track, the generated channel).

use std::path::{Path, PathBuf};

use continuo_engine::style::file_slug;
use midly::num::{u15, u24, u28, u4, u7};
use midly::{Format, Header, MetaMessage, MidiMessage, Smf, Timing, TrackEvent, TrackEventKind};

use crate::status::{CapturedAnswer, CapturedNote};

/// Ticks per quarter note of exported files.
pub const EXPORT_TICKS_PER_BEAT: u16 = 480;

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot create the folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode the MIDI file: {0}")]
    Encode(String),
}

fn ticks(beats: f64) -> u64 {
    (beats.max(0.0) * f64::from(EXPORT_TICKS_PER_BEAT)).round() as u64
}

/// The answer as a Standard MIDI File (format 0). Every note gets a note-off after its
/// note-on, at least one tick later; a note that starts again while sounding on the same key
/// is ended there first, so no note is stuck or of zero length.
pub fn answer_to_midi(answer: &CapturedAnswer) -> Result<Vec<u8>, ExportError> {
    let channel = u4::new(answer.channel.min(15));
    // (tick, order, key, velocity): order 0 = note-off, 1 = note-on, so an off at the same tick
    // as an on of the same key comes first.
    let mut events: Vec<(u64, u8, u8, u8)> = Vec::with_capacity(answer.notes.len() * 2);
    let mut notes: Vec<&CapturedNote> = answer.notes.iter().filter(|n| n.key < 128).collect();
    notes.sort_by(|a, b| a.start_beats.total_cmp(&b.start_beats));
    // (start, end) in ticks of the latest note of each key.
    let mut sounding = [None::<(u64, u64)>; 128];
    for note in notes {
        let start = ticks(note.start_beats);
        let end = ticks(note.end_beats).max(start + 1);
        let key = usize::from(note.key);
        if let Some((since, until)) = sounding[key] {
            if since == start {
                // The same key struck twice at once: one note.
                continue;
            }
            if until > start {
                // Cut the earlier note short: move its note-off to this start.
                if let Some(off) = events
                    .iter_mut()
                    .rev()
                    .find(|e| e.1 == 0 && e.2 == note.key && e.0 == until)
                {
                    off.0 = start;
                }
            }
        }
        let velocity = (note.velocity * 127.0).round().clamp(1.0, 127.0) as u8;
        events.push((start, 1, note.key, velocity));
        events.push((end, 0, note.key, 0));
        sounding[key] = Some((start, end));
    }
    events.sort_by_key(|&(tick, order, key, _)| (tick, order, key));

    let tempo_bpm = if answer.tempo_bpm.is_finite() && answer.tempo_bpm > 0.0 {
        answer.tempo_bpm
    } else {
        120.0
    };
    let us_per_beat = (60_000_000.0 / tempo_bpm)
        .round()
        .clamp(1.0, f64::from(0xff_ffff)) as u32;
    let mut track = Vec::with_capacity(events.len() + 3);
    track.push(TrackEvent {
        delta: u28::new(0),
        kind: TrackEventKind::Meta(MetaMessage::TrackName(b"Continuo answer")),
    });
    track.push(TrackEvent {
        delta: u28::new(0),
        kind: TrackEventKind::Meta(MetaMessage::Tempo(u24::new(us_per_beat))),
    });
    let mut last = 0_u64;
    for (tick, order, key, velocity) in events {
        let delta = u28::try_from((tick - last) as u32).ok_or_else(|| {
            ExportError::Encode(format!("a gap of {} ticks is too long", tick - last))
        })?;
        last = tick;
        let message = if order == 1 {
            MidiMessage::NoteOn {
                key: u7::new(key),
                vel: u7::new(velocity),
            }
        } else {
            MidiMessage::NoteOff {
                key: u7::new(key),
                vel: u7::new(0),
            }
        };
        track.push(TrackEvent {
            delta,
            kind: TrackEventKind::Midi { channel, message },
        });
    }
    track.push(TrackEvent {
        delta: u28::new(0),
        kind: TrackEventKind::Meta(MetaMessage::EndOfTrack),
    });
    let smf = Smf {
        header: Header::new(
            Format::SingleTrack,
            Timing::Metrical(u15::new(EXPORT_TICKS_PER_BEAT)),
        ),
        tracks: vec![track],
    };
    let mut bytes = Vec::new();
    smf.write_std(&mut bytes)
        .map_err(|e| ExportError::Encode(e.to_string()))?;
    Ok(bytes)
}

/// When an export happens, for its file name: `2026-12-04_19-55-12` in local time, or with a
/// `UTC` suffix where the operating system cannot say the local offset safely (Linux hosts
/// run many threads, and the `time` crate refuses to read the offset there).
pub fn export_stamp() -> String {
    let (now, suffix) = match time::OffsetDateTime::now_local() {
        Ok(local) => (local, ""),
        Err(_) => (time::OffsetDateTime::now_utc(), "UTC"),
    };
    format!(
        "{:04}-{:02}-{:02}_{:02}-{:02}-{:02}{suffix}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// Writes the answer into `folder` (created if needed) as
/// `continuo_<style>_<stamp>_answer-<number>.mid` (the stamp from [`export_stamp`]), never
/// overwriting a file: an existing name gets `-2`, `-3`, ... Returns the path written.
pub fn export_answer(
    answer: &CapturedAnswer,
    folder: &Path,
    stamp: &str,
) -> Result<PathBuf, ExportError> {
    let bytes = answer_to_midi(answer)?;
    std::fs::create_dir_all(folder).map_err(|source| ExportError::Folder {
        path: folder.to_owned(),
        source,
    })?;
    let stem = format!(
        "continuo_{}_{stamp}_answer-{}",
        file_slug(&answer.style),
        answer.number
    );
    for n in 1.. {
        let name = if n == 1 {
            format!("{stem}.mid")
        } else {
            format!("{stem}-{n}.mid")
        };
        let path = folder.join(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut file) => {
                use std::io::Write;
                file.write_all(&bytes)
                    .map_err(|source| ExportError::Write {
                        path: path.clone(),
                        source,
                    })?;
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(ExportError::Write { path, source }),
        }
    }
    unreachable!("the loop only ends by returning")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{answer, temp_path};

    #[test]
    fn midi_has_the_tempo_channel_and_beat_times() {
        let bytes = answer_to_midi(&answer(&[(0.0, 1.0, 60), (1.5, 2.0, 64)])).unwrap();
        let smf = Smf::parse(&bytes).unwrap();
        assert_eq!(smf.header.timing, Timing::Metrical(u15::new(480)));
        let mut tick = 0_u64;
        let mut seen = Vec::new();
        for event in &smf.tracks[0] {
            tick += u64::from(event.delta.as_int());
            match event.kind {
                TrackEventKind::Meta(MetaMessage::Tempo(t)) => {
                    assert_eq!(t.as_int(), 666_667);
                }
                TrackEventKind::Midi { channel, message } => {
                    assert_eq!(channel.as_int(), 2);
                    seen.push((tick, message));
                }
                _ => {}
            }
        }
        assert_eq!(
            seen,
            vec![
                (
                    0,
                    MidiMessage::NoteOn {
                        key: u7::new(60),
                        vel: u7::new(64)
                    }
                ),
                (
                    480,
                    MidiMessage::NoteOff {
                        key: u7::new(60),
                        vel: u7::new(0)
                    }
                ),
                (
                    720,
                    MidiMessage::NoteOn {
                        key: u7::new(64),
                        vel: u7::new(64)
                    }
                ),
                (
                    960,
                    MidiMessage::NoteOff {
                        key: u7::new(64),
                        vel: u7::new(0)
                    }
                ),
            ]
        );
    }

    /// Every note-on is closed by a later note-off of the same key, with nothing stuck, whatever
    /// the notes overlap: checked with the engine's own MIDI reader.
    #[test]
    fn overlapping_and_zero_length_notes_give_no_stuck_notes() {
        let bytes = answer_to_midi(&answer(&[
            (0.0, 2.0, 60),
            (1.0, 3.0, 60),
            (1.0, 1.0, 62),
            (2.0, 1.5, 64),
            (2.5, 2.5, 60),
            (4.0, 5.0, 67),
            (4.0, 4.5, 67),
        ]))
        .unwrap();
        let notes = continuo_engine::midi::midi_to_notes(&bytes).unwrap();
        assert_eq!(notes.len(), 6);
        assert!(notes.iter().all(|n| n.duration > 0), "{notes:?}");
        let mut depth = [0_i32; 128];
        let smf = Smf::parse(&bytes).unwrap();
        for event in &smf.tracks[0] {
            if let TrackEventKind::Midi { message, .. } = event.kind {
                match message {
                    MidiMessage::NoteOn { key, .. } => depth[key.as_int() as usize] += 1,
                    MidiMessage::NoteOff { key, .. } => depth[key.as_int() as usize] -= 1,
                    _ => {}
                }
                assert!(depth.iter().all(|&d| (0..=1).contains(&d)), "{depth:?}");
            }
        }
        assert!(depth.iter().all(|&d| d == 0));
    }

    #[test]
    fn the_export_stamp_is_a_date_and_time_fit_for_a_file_name() {
        let stamp = export_stamp();
        let digits: String = stamp.chars().filter(char::is_ascii_digit).collect();
        assert_eq!(digits.len(), 14, "{stamp}");
        assert!(stamp.starts_with("20"), "{stamp}");
        assert!(!stamp.contains([':', '/', '\\', ' ']), "{stamp}");
    }

    #[test]
    fn export_never_overwrites() {
        let dir = temp_path("capture");
        let a = answer(&[(0.0, 1.0, 60)]);
        let stamp = "2026-12-04_19-55-12";
        let first = export_answer(&a, &dir, stamp).unwrap();
        let second = export_answer(&a, &dir, stamp).unwrap();
        assert_eq!(
            first.file_name().unwrap(),
            "continuo_irish-folk-tune_2026-12-04_19-55-12_answer-3.mid"
        );
        assert_eq!(
            second.file_name().unwrap(),
            "continuo_irish-folk-tune_2026-12-04_19-55-12_answer-3-2.mid"
        );
        assert_eq!(
            std::fs::read(&first).unwrap(),
            std::fs::read(&second).unwrap()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
