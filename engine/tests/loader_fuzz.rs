//! A deterministic mutation fuzz of the four loaders: MIDI files, safetensors weights, the
//! official `.pt` release container, and styles (native style files and peft folders).
//!
//! Every mutant of a valid file (bit flips, bytes set to edge values, truncation, insertion,
//! deletion, 32-bit edge values written over length fields), mostly in the part of the file
//! that holds its structure, must load or be refused with an error: never a panic. The seed is
//! fixed, so a failure names a mutant that can be replayed. The README ("Fuzzing the loaders")
//! says how to run a longer campaign with `CONTINUO_FUZZ_MUTANTS`.

mod common;

use std::path::{Path, PathBuf};

use common::{golden, tiny_config};
use continuo_engine::{midi, style, Moonbeam, Precision};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Mutants per loader in CI; `CONTINUO_FUZZ_MUTANTS` sets another count.
fn mutants(default: usize) -> usize {
    std::env::var("CONTINUO_FUZZ_MUTANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One mutant of `src`: 1-4 edits, each at a position in the first `hot` bytes 70 % of the
/// time (where headers and indexes live), anywhere otherwise.
fn mutate(rng: &mut StdRng, src: &[u8], hot: usize) -> Vec<u8> {
    let mut b = src.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        if b.is_empty() {
            break;
        }
        let len = b.len();
        let pos = if rng.random_bool(0.7) {
            rng.random_range(0..hot.clamp(1, len))
        } else {
            rng.random_range(0..len)
        };
        match rng.random_range(0..6) {
            0 => b[pos] ^= 1 << rng.random_range(0..8),
            1 => b[pos] = [0x00, 0xff, 0x7f, 0x80, rng.random()][rng.random_range(0..5)],
            2 => b.truncate(pos),
            3 => {
                let extra: Vec<u8> = (0..rng.random_range(1..=8)).map(|_| rng.random()).collect();
                b.splice(pos..pos, extra);
            }
            4 => {
                let end = (pos + rng.random_range(1..=8)).min(len);
                b.drain(pos..end);
            }
            _ => {
                let value: u32 =
                    [0, u32::MAX, 0x7fff_ffff, 0x8000_0000, len as u32][rng.random_range(0..5)];
                let bytes = if rng.random_bool(0.5) {
                    value.to_le_bytes()
                } else {
                    value.to_be_bytes()
                };
                for (i, byte) in bytes.into_iter().enumerate() {
                    if let Some(slot) = b.get_mut(pos + i) {
                        *slot = byte;
                    }
                }
            }
        }
    }
    b
}

/// Runs `load` on `count` mutants of `src`; panics (failing the test) with the mutant's index
/// if any load panics, and returns how many mutants loaded without an error.
fn fuzz(
    what: &str,
    seed: u64,
    src: &[u8],
    hot: usize,
    count: usize,
    mut load: impl FnMut(&[u8]) -> bool,
) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut loaded = 0;
    for i in 0..count {
        let mutant = mutate(&mut rng, src, hot);
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| load(&mutant))) {
            Ok(ok) => loaded += usize::from(ok),
            Err(_) => panic!("{what}: mutant {i} of seed {seed} made the loader panic"),
        }
    }
    eprintln!("{what}: {count} mutants, {loaded} loaded, the rest refused, none panicked");
    loaded
}

/// The safetensors header's end: 8 bytes of length, then the JSON.
fn safetensors_header_end(bytes: &[u8]) -> usize {
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

fn scratch(name: &str) -> PathBuf {
    common::tmp("loader-fuzz", name)
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn midi_mutants_never_panic() {
    let mut sources = vec![std::fs::read(golden("input.mid")).unwrap()];
    for entry in std::fs::read_dir(common::folk_dir()).unwrap().take(2) {
        sources.push(std::fs::read(entry.unwrap().path()).unwrap());
    }
    for (k, src) in sources.iter().enumerate() {
        fuzz("MIDI", 100 + k as u64, src, 64, mutants(1500), |b| {
            let notes = midi::midi_to_notes(b).is_ok();
            let timing = midi::midi_timing(b).is_ok();
            assert_eq!(notes, timing, "the notes and the grid of a file disagree");
            notes
        });
    }
}

#[test]
fn safetensors_weight_mutants_never_panic() {
    let cfg = tiny_config();
    let src = std::fs::read(golden("tiny_model.safetensors")).unwrap();
    let path = scratch("weights.safetensors");
    let hot = safetensors_header_end(&src);
    fuzz("safetensors weights", 200, &src, hot, mutants(300), |b| {
        write(&path, b);
        Moonbeam::load(&cfg, &path, Precision::F32).is_ok()
    });
}

#[test]
fn release_container_mutants_never_panic() {
    let cfg = tiny_config();
    let src = std::fs::read(golden("tiny_model_release_format_bf16.pt")).unwrap();
    let path = scratch("release.pt");
    // A zip: local headers and the pickle first, the central directory last. Mutate the
    // first 4 KiB or, one time in three, the last 4 KiB (by mutating the reversed file).
    let tail: Vec<u8> = src.iter().rev().copied().collect();
    fuzz("release .pt (head)", 300, &src, 4096, mutants(200), |b| {
        write(&path, b);
        Moonbeam::load(&cfg, &path, Precision::F32).is_ok()
    });
    fuzz("release .pt (tail)", 301, &tail, 4096, mutants(100), |b| {
        let b: Vec<u8> = b.iter().rev().copied().collect();
        write(&path, &b);
        Moonbeam::load(&cfg, &path, Precision::F32).is_ok()
    });
}

#[test]
fn style_and_peft_mutants_never_panic() {
    let cfg = tiny_config();
    let peft = golden("lora_adapter");
    let adapter = continuo_engine::lora::Adapter::from_peft_dir(&peft, &cfg).unwrap();

    // A native style file.
    let style_path = scratch("style.safetensors");
    style::save_style(
        &style_path,
        &adapter,
        &style::StyleCard::new("Fuzz", "a style to mutate"),
    )
    .unwrap();
    let src = std::fs::read(&style_path).unwrap();
    let hot = safetensors_header_end(&src);
    let path = scratch("mutant-style.safetensors");
    fuzz("style file", 400, &src, hot, mutants(300), |b| {
        write(&path, b);
        let loaded = style::load_style(&path, &cfg, None).is_ok();
        // The card reader sees the same file as the loader.
        let _ = style::read_card(&path);
        loaded
    });

    // A peft folder: its config JSON, then its adapter weights.
    let dir = scratch("peft");
    std::fs::create_dir_all(&dir).unwrap();
    let config = std::fs::read(peft.join("adapter_config.json")).unwrap();
    let weights = std::fs::read(peft.join("adapter_model.safetensors")).unwrap();
    write(&dir.join("adapter_model.safetensors"), &weights);
    fuzz(
        "peft adapter_config.json",
        500,
        &config,
        config.len(),
        mutants(150),
        |b| {
            write(&dir.join("adapter_config.json"), b);
            style::load_any(&dir, &cfg, None).is_ok()
        },
    );
    write(&dir.join("adapter_config.json"), &config);
    let hot = safetensors_header_end(&weights);
    fuzz(
        "peft adapter_model.safetensors",
        501,
        &weights,
        hot,
        mutants(150),
        |b| {
            write(&dir.join("adapter_model.safetensors"), b);
            style::load_any(&dir, &cfg, None).is_ok()
        },
    );
}
