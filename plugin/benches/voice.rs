//! The built-in voice alone: one 512-sample stereo block of 32 sounding voices, for every
//! synthesis kernel this CPU has. `process()` with the voice on (benches/process.rs) is this
//! plus the MIDI path.
//!
//! Run with `cargo bench -p continuo --bench voice`.

use std::hint::black_box;

use continuo::audio::voice::{Kernel, PianoVoice, VoiceSource, MAX_VOICES};
use criterion::{criterion_group, criterion_main, Criterion};

const SAMPLE_RATE_HZ: f32 = 48_000.0;
const BLOCK: usize = 512;

/// 32 voices sounding, past their attacks.
fn held_voices(kernel: Kernel) -> PianoVoice {
    let mut synth = PianoVoice::new(SAMPLE_RATE_HZ);
    assert!(synth.set_kernel(kernel));
    for key in 0..MAX_VOICES as u8 {
        synth.note_on(VoiceSource::Player, 0, 36 + key, 0.7);
    }
    let (mut left, mut right) = ([0.0; BLOCK], [0.0; BLOCK]);
    synth.render(&mut [&mut left[..], &mut right[..]], 0, BLOCK);
    synth
}

fn voice_block(c: &mut Criterion) {
    for kernel in Kernel::ALL.into_iter().filter(|k| k.is_available()) {
        let (mut left, mut right) = ([0.0f32; BLOCK], [0.0f32; BLOCK]);
        let mut synth = held_voices(kernel);
        c.bench_function(&format!("voice_512/32_held/{kernel:?}"), |b| {
            b.iter(|| {
                // Restart the notes every so often, so they do not decay into silence.
                if synth.active_voices() < MAX_VOICES {
                    synth = held_voices(kernel);
                }
                synth.render(&mut [&mut left[..], &mut right[..]], 0, BLOCK);
                black_box(&left);
            })
        });
        // Every block starts four new notes (stealing the oldest voices), cut at their sample
        // offsets as `process()` does, so some voices are always in their attack.
        let mut synth = held_voices(kernel);
        let mut key = 0u8;
        c.bench_function(&format!("voice_512/32_with_4_attacks/{kernel:?}"), |b| {
            b.iter(|| {
                let mut at = 0;
                for k in 0..4 {
                    let to = (k + 1) * BLOCK / 4;
                    synth.note_on(VoiceSource::Generated, 0, 36 + key % 48, 0.8);
                    key = key.wrapping_add(5);
                    synth.render(&mut [&mut left[..], &mut right[..]], at, to);
                    at = to;
                }
                black_box(&left);
            })
        });
    }
}

criterion_group!(benches, voice_block);
criterion_main!(benches);
