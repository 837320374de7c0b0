//! What the engine's integration tests share: the golden files (copied from the reference run
//! into `engine/testdata/golden`), the tiny golden model, the project's test corpora and
//! scratch paths. Each test binary uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use continuo_engine::{midi, Config, Moonbeam, Note, Precision};

/// The engine crate's folder.
pub fn engine_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A golden file.
pub fn golden(name: &str) -> PathBuf {
    engine_dir().join("testdata/golden").join(name)
}

/// A golden JSON file, parsed.
pub fn golden_json(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(golden(name))
        .unwrap_or_else(|e| panic!("cannot read golden file {name}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("golden file {name}: {e}"))
}

/// The tiny golden model's config.
pub fn tiny_config() -> Config {
    Config::from_file(&golden("tiny_config.json")).expect("the tiny golden config")
}

/// The tiny golden model.
pub fn tiny_model(precision: Precision) -> Moonbeam {
    Moonbeam::load(&tiny_config(), &golden("tiny_model.safetensors"), precision)
        .expect("the tiny golden model")
}

/// The golden prompt's notes (`input.mid`).
pub fn golden_prompt() -> Vec<Note> {
    midi::read_midi_file(&golden("input.mid")).expect("the golden input.mid")
}

/// The small folk corpus shipped for tests (`engine/testdata/folk`).
pub fn folk_dir() -> PathBuf {
    engine_dir().join("testdata/folk")
}

/// The shipped configs (`assets/configs`).
pub fn configs_dir() -> PathBuf {
    engine_dir().join("../assets/configs")
}

/// The real MIDI samples beside the checkout (`../shared/midi-samples`), which only some
/// machines have: `None`, with a note on stderr, where it is absent.
pub fn midi_samples_dir() -> Option<PathBuf> {
    let dir = engine_dir().join("../../shared/midi-samples");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "NOTE: {} is absent; skipping the real-data test",
            dir.display()
        );
        None
    }
}

/// A scratch path for `name`, in a folder of this test binary's own (`suite`) and process.
pub fn tmp(suite: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("continuo-{suite}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    dir.join(name)
}

/// The `(absolute tick, key)` of every note-on with a velocity above 0 in a Standard MIDI
/// File, track by track, and the header's division: a small reader written for the tests,
/// independent of the engine's (it knows running status, meta and sysex events and nothing
/// more).
pub fn note_on_ticks(bytes: &[u8]) -> (u16, Vec<(u64, u8)>) {
    fn var(b: &[u8], pos: &mut usize) -> u64 {
        let mut v = 0;
        loop {
            let byte = b[*pos];
            *pos += 1;
            v = (v << 7) | u64::from(byte & 0x7f);
            if byte < 0x80 {
                return v;
            }
        }
    }
    assert_eq!(&bytes[..4], b"MThd");
    let division = u16::from_be_bytes([bytes[12], bytes[13]]);
    let mut pos = 14;
    let mut out = Vec::new();
    while pos + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let body = &bytes[pos + 8..pos + 8 + len];
        pos += 8 + len;
        let (mut p, mut tick, mut status) = (0, 0_u64, 0_u8);
        while p < body.len() {
            tick += var(body, &mut p);
            if body[p] >= 0x80 {
                status = body[p];
                p += 1;
            }
            match status {
                0xff => {
                    p += 1;
                    let n = var(body, &mut p) as usize;
                    p += n;
                }
                0xf0 | 0xf7 => {
                    let n = var(body, &mut p) as usize;
                    p += n;
                }
                s if s & 0xf0 == 0xc0 || s & 0xf0 == 0xd0 => p += 1,
                s => {
                    if s & 0xf0 == 0x90 && body[p + 1] > 0 {
                        out.push((tick, body[p]));
                    }
                    p += 2;
                }
            }
        }
    }
    out.sort();
    (division, out)
}
