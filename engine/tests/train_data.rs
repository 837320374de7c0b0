//! Tests of the training data pipeline (`continuo_engine::train::data`): packing invariants,
//! the hash split, augmentation, gap splitting, windowing, and the real MIDI samples in
//! `shared/midi-samples` (skipped with a note when that folder is absent).

mod common;

use common::{midi_samples_dir as samples_dir, tiny_config};

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use continuo_engine::train::data::{
    build_dataset, find_midi_files, load_pieces, pack, preprocess, relative_key, split_by_hash,
    split_hash, windows, windows_with, windows_with_stride, Augment, DataError, DatasetOptions,
    LoadOptions, Packed, Piece,
};
use continuo_engine::vocab::{input_rows, out_of_range};
use continuo_engine::{Config, Note};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn note(onset: i64, duration: i64, pitch: u8, instrument: i64, velocity: i64) -> Note {
    Note::from_pitch(onset, duration, pitch, instrument, velocity)
}

/// A sample of `len` notes whose rows are recognisable: the duration encodes (sample, index).
fn marked_sample(id: usize, len: usize) -> Vec<Note> {
    (0..len)
        .map(|i| note(i as i64 * 5, (id * 1000 + i + 1) as i64, 60, 0, 80))
        .collect()
}

/// Every invariant a packed sequence must satisfy, and that the samples come back intact.
fn check_packs(packs: &[Packed], samples: &[Vec<Note>], ctx: usize) {
    let mut seen = Vec::new();
    for p in packs {
        assert_eq!(p.rows.len(), ctx);
        assert_eq!(p.segments.len(), ctx);
        assert_eq!(p.loss_mask.len(), ctx - 1);
        assert!(p.n_samples >= 1);
        let pad = p.pad_id();
        // Sample ids: 0, 1, ... in order, each a contiguous block starting with SOS and ending
        // with EOS, then only padding.
        let mut expected_id = 0u32;
        let mut i = 0;
        while i < ctx && p.segments[i] != pad {
            assert_eq!(p.segments[i], expected_id, "segment ids must count up");
            assert_eq!(p.rows[i], [-1; 6], "a sample starts with SOS");
            let start = i;
            while i < ctx && p.segments[i] == expected_id {
                i += 1;
            }
            assert_eq!(p.rows[i - 1], [-2; 6], "a sample ends with EOS");
            let notes: Vec<Note> = p.rows[start + 1..i - 1]
                .iter()
                .map(|r| Note::from_row(*r))
                .collect();
            seen.push(notes);
            expected_id += 1;
        }
        assert_eq!(expected_id as usize, p.n_samples);
        for j in i..ctx {
            assert_eq!(p.segments[j], pad, "only padding after the samples");
            assert_eq!(p.rows[j], [0; 6], "padding rows are zero rows");
        }
        assert!(
            p.segments[..i].iter().all(|&s| s != pad),
            "padding id is distinct"
        );
        for t in 0..ctx - 1 {
            let want = p.segments[t] == p.segments[t + 1] && p.segments[t] != pad;
            assert_eq!(p.loss_mask[t], want, "loss mask at {t}");
            // Equivalent row-level statement: a target is real iff it is not SOS or padding
            // and the input is not EOS or padding.
            let real = p.rows[t + 1] != [-1; 6] && p.segments[t + 1] != pad && p.rows[t] != [-2; 6];
            assert_eq!(p.loss_mask[t], real);
        }
    }
    // Every non-empty sample appears exactly once.
    let mut want: Vec<Vec<Note>> = samples.iter().filter(|s| !s.is_empty()).cloned().collect();
    want.sort_by_key(|s| s.iter().map(|n| n.to_row()).collect::<Vec<_>>());
    seen.sort_by_key(|s| s.iter().map(|n| n.to_row()).collect::<Vec<_>>());
    assert_eq!(seen, want);
}

// ---------------------------------------------------------------------------------------------
// Packing
// ---------------------------------------------------------------------------------------------

#[test]
fn packing_is_greedy_and_keeps_its_invariants() {
    let lens = [3, 5, 1, 10, 0, 7, 14, 2, 2, 2];
    let samples: Vec<Vec<Note>> = lens
        .iter()
        .enumerate()
        .map(|(i, &l)| marked_sample(i, l))
        .collect();
    let ctx = 16;
    let packs = pack(&samples, ctx, None).unwrap();
    check_packs(&packs, &samples, ctx);
    // Rows: 5, 7, 3, 12, -, 9, 16, 4, 4, 4. Greedy in order: [5+7+3=15] [12] [9] [16] [4+4+4].
    let counts: Vec<usize> = packs.iter().map(|p| p.n_samples).collect();
    assert_eq!(counts, vec![3, 1, 1, 1, 3]);
    assert_eq!(packs[0].loss_mask.iter().filter(|&&m| m).count(), 4 + 6 + 2);
    // A sample of exactly context_rows - 2 notes fills a sequence with no padding.
    assert!(packs[3].segments.iter().all(|&s| s == 0));
    assert!(packs[3].loss_mask.iter().all(|&m| m));
}

#[test]
fn packing_rejects_samples_longer_than_the_context() {
    let samples = vec![marked_sample(0, 3), marked_sample(1, 15)];
    match pack(&samples, 16, None) {
        Err(DataError::SampleTooLong {
            index: 1,
            rows: 17,
            context_rows: 16,
        }) => {}
        other => panic!("expected SampleTooLong, got {other:?}"),
    }
    assert!(matches!(
        pack(&samples, 2, None),
        Err(DataError::ContextTooSmall(2))
    ));
    // Windowing first always fits.
    let windowed: Vec<Vec<Note>> = samples.iter().flat_map(|s| windows(s, 16)).collect();
    check_packs(&pack(&windowed, 16, None).unwrap(), &windowed, 16);
}

#[test]
fn shuffled_packing_is_deterministic_and_a_permutation() {
    let samples: Vec<Vec<Note>> = (0..40)
        .map(|i| marked_sample(i, 1 + (i * 7) % 13))
        .collect();
    let a = pack(&samples, 32, Some(9)).unwrap();
    let b = pack(&samples, 32, Some(9)).unwrap();
    let c = pack(&samples, 32, Some(10)).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    check_packs(&a, &samples, 32);
    check_packs(&c, &samples, 32);
}

#[test]
fn packed_labels_restart_the_timeshift_per_sample() {
    let cfg = tiny_config();
    let s0 = vec![note(0, 10, 60, 0, 80), note(50, 10, 62, 0, 80)];
    let s1 = vec![note(0, 10, 64, 0, 80), note(20, 10, 65, 0, 80)];
    let packs = pack(&[s0, s1], 12, None).unwrap();
    assert_eq!(packs.len(), 1);
    let labels = packs[0].labels(&cfg).unwrap();
    let ts = |row: usize| labels[row][1] as i64 - cfg.decode_offsets()[0] as i64;
    // Rows: SOS n n EOS SOS n n EOS pad pad pad pad.
    assert_eq!((ts(1), ts(2)), (0, 50));
    assert_eq!(
        (ts(5), ts(6)),
        (0, 20),
        "second sample's first timeshift is against 0, not 50"
    );
    assert_eq!(labels[8], [0; 7]);
    assert_eq!(packs[0].sample_ranges(), vec![0..4, 4..8]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn packing_invariants_hold_for_any_lengths(lens in prop::collection::vec(0usize..30, 0..25), ctx in 3usize..40, seed in any::<u64>()) {
        let samples: Vec<Vec<Note>> = lens
            .iter()
            .enumerate()
            .flat_map(|(i, &l)| windows(&marked_sample(i, l), ctx))
            .collect();
        let packs = pack(&samples, ctx, Some(seed)).unwrap();
        check_packs(&packs, &samples, ctx);
    }
}

// ---------------------------------------------------------------------------------------------
// Split
// ---------------------------------------------------------------------------------------------

fn fake_pieces(n_files: usize, chunks: usize) -> Vec<Piece> {
    (0..n_files)
        .flat_map(|f| {
            (0..chunks).map(move |c| Piece {
                source: PathBuf::from(format!("/data/set/dir{}/song{f}.mid", f % 3)),
                notes: marked_sample(f * 10 + c, 3),
            })
        })
        .collect()
}

fn sources(ps: &[Piece]) -> BTreeSet<String> {
    ps.iter()
        .map(|p| relative_key(&p.source, Path::new("/data/set")))
        .collect()
}

#[test]
fn split_is_deterministic_disjoint_and_per_file() {
    let root = Path::new("/data/set");
    let key = |p: &Piece| relative_key(&p.source, root);
    let pieces = fake_pieces(20, 3);
    let (t1, v1) = split_by_hash(pieces.clone(), key, 0.2, 42);
    let (t2, v2) = split_by_hash(pieces.clone(), key, 0.2, 42);
    assert_eq!((&t1, &v1), (&t2, &v2));
    assert_eq!(t1.len() + v1.len(), pieces.len());
    let (ts, vs) = (sources(&t1), sources(&v1));
    assert!(
        ts.is_disjoint(&vs),
        "a file's chunks never straddle the split"
    );
    assert_eq!(vs.len(), 4, "round(0.2 × 20) validation files");
    assert_eq!(v1.len(), 12);

    // The order of the input does not matter.
    let mut reversed = pieces.clone();
    reversed.reverse();
    let (_, v3) = split_by_hash(reversed, key, 0.2, 42);
    assert_eq!(sources(&v3), vs);

    // Another seed gives another split; the keys are relative, so another root gives the same.
    let (_, v4) = split_by_hash(pieces.clone(), key, 0.2, 43);
    assert_ne!(sources(&v4), vs);
    let moved: Vec<Piece> = pieces
        .iter()
        .map(|p| Piece {
            source: Path::new("/elsewhere").join(p.source.strip_prefix(root).unwrap()),
            notes: p.notes.clone(),
        })
        .collect();
    let (_, v5) = split_by_hash(
        moved,
        |p: &Piece| relative_key(&p.source, Path::new("/elsewhere")),
        0.2,
        42,
    );
    assert_eq!(
        v5.iter()
            .map(|p| relative_key(&p.source, Path::new("/elsewhere")))
            .collect::<BTreeSet<_>>(),
        vs
    );
}

#[test]
fn split_keeps_at_least_one_validation_and_one_training_file() {
    let key = |p: &Piece| relative_key(&p.source, Path::new("/data/set"));
    let (t, v) = split_by_hash(fake_pieces(2, 2), key, 0.01, 1);
    assert_eq!((sources(&t).len(), sources(&v).len()), (1, 1));
    let (t, v) = split_by_hash(fake_pieces(3, 1), key, 0.99, 1);
    assert_eq!((t.len(), v.len()), (1, 2));
    let (t, v) = split_by_hash(fake_pieces(1, 4), key, 0.5, 1);
    assert_eq!((t.len(), v.len()), (4, 0), "one file cannot be split");
    let (t, v) = split_by_hash(fake_pieces(10, 1), key, 0.0, 1);
    assert_eq!((t.len(), v.len()), (10, 0));
}

#[test]
fn split_hash_is_pinned() {
    // FNV-1a + SplitMix64 (values checked against an independent Python implementation):
    // must never change, or splits would silently move.
    assert_eq!(
        split_hash("ragtime/maple_leaf.mid", 42),
        split_hash("ragtime/maple_leaf.mid", 42)
    );
    assert_eq!(split_hash("", 0), 0x813f_0174_a236_7c13);
    assert_eq!(split_hash("a/b.mid", 42), 0x96bb_287a_e443_2dc8);
}

// ---------------------------------------------------------------------------------------------
// Augmentation
// ---------------------------------------------------------------------------------------------

fn melody_with_drums() -> Vec<Note> {
    let mut notes = Vec::new();
    for i in 0..40u8 {
        notes.push(note(
            i64::from(i) * 20,
            15,
            30 + i * 2 % 70,
            0,
            20 + i64::from(i) * 2,
        ));
        notes.push(note(i64::from(i) * 20, 5, 36, 128, 100));
    }
    notes
}

#[test]
fn transposition_stays_on_the_piano_and_never_moves_drums() {
    let cfg = Config::small();
    let aug = Augment {
        transpose: 5,
        tempo: (1.0, 1.0),
        velocity: (1.0, 1.0),
        velocity_shift: 0,
    };
    let piece = melody_with_drums();
    let mut shifts = HashSet::new();
    for seed in 0..200 {
        let out = aug.apply(&piece, &cfg, &mut StdRng::seed_from_u64(seed));
        assert_eq!(out.len(), piece.len());
        let mut shift = None;
        for (a, b) in piece.iter().zip(&out) {
            assert_eq!(b.pitch_class, b.pitch().rem_euclid(12));
            assert!((0..12).contains(&b.pitch_class));
            if a.instrument == 128 {
                assert_eq!(a, b, "drums are untouched");
            } else {
                assert!(
                    (21..=108).contains(&b.pitch()),
                    "pitch {} off the piano",
                    b.pitch()
                );
                let s = b.pitch() - a.pitch();
                assert_eq!(*shift.get_or_insert(s), s, "one shift per piece");
                assert_eq!(
                    (a.onset, a.duration, a.velocity),
                    (b.onset, b.duration, b.velocity)
                );
            }
        }
        shifts.insert(shift.unwrap());
    }
    // Lowest melody note is 30: only 9 semitones of room below, plenty of room above.
    assert_eq!(shifts, (-5..=5).collect::<HashSet<i64>>());

    // A piece spanning the whole piano cannot move; one too wide for it is left alone.
    let full = vec![
        note(0, 10, 21, 0, 80),
        note(10, 10, 108, 0, 80),
        note(20, 10, 10, 128, 80),
    ];
    let wide = vec![note(0, 10, 15, 0, 80), note(10, 10, 120, 0, 80)];
    let edge = vec![note(0, 10, 105, 0, 80)];
    for seed in 0..50 {
        let mut rng = StdRng::seed_from_u64(seed);
        assert_eq!(aug.apply(&full, &cfg, &mut rng), full);
        assert_eq!(aug.apply(&wide, &cfg, &mut rng), wide);
        let up = aug.apply(&edge, &cfg, &mut rng)[0].pitch();
        assert!((100..=108).contains(&up));
    }
}

#[test]
fn tempo_stretch_scales_onsets_and_durations() {
    let cfg = Config::small();
    let aug = Augment {
        transpose: 0,
        tempo: (1.5, 1.5),
        velocity: (1.0, 1.0),
        velocity_shift: 0,
    };
    let piece: Vec<Note> = (0..20)
        .map(|i| note(i * 7 + i * i, 1 + i % 5, 60, 0, 80))
        .collect();
    let out = aug.apply(&piece, &cfg, &mut StdRng::seed_from_u64(3));
    for (a, b) in piece.iter().zip(&out) {
        assert_eq!(b.onset, (a.onset as f64 * 1.5).round_ties_even() as i64);
        assert_eq!(
            b.duration,
            ((a.duration as f64 * 1.5).round_ties_even() as i64).max(1)
        );
        assert_eq!(b.pitch(), a.pitch());
    }
    // Round half to even: 1 × 1.5 = 1.5 -> 2, 3 × 1.5 = 4.5 -> 4.
    let halves = vec![
        note(0, 1, 60, 0, 80),
        note(1, 3, 60, 0, 80),
        note(3, 5, 60, 0, 80),
    ];
    let out = aug.apply(&halves, &cfg, &mut StdRng::seed_from_u64(0));
    assert_eq!(
        out.iter()
            .map(|n| (n.onset, n.duration))
            .collect::<Vec<_>>(),
        vec![(0, 2), (2, 4), (4, 8)]
    );

    // Stretching never leaves the vocabulary: gaps <= 297 and durations <= 257 in the tiny config.
    let tiny = tiny_config();
    let slow = Augment {
        transpose: 0,
        tempo: (1.3, 1.3),
        velocity: (1.0, 1.0),
        velocity_shift: 0,
    };
    let edge = vec![
        note(0, 257, 60, 0, 80),
        note(290, 200, 60, 0, 80),
        note(300, 1, 60, 0, 80),
    ];
    let out = slow.apply(&edge, &tiny, &mut StdRng::seed_from_u64(0));
    assert_eq!(
        out.iter()
            .map(|n| (n.onset, n.duration))
            .collect::<Vec<_>>(),
        vec![(0, 257), (297, 257), (310, 1)]
    );
    let fast = Augment {
        transpose: 0,
        tempo: (0.1, 0.1),
        velocity: (1.0, 1.0),
        velocity_shift: 0,
    };
    assert!(fast
        .apply(&edge, &tiny, &mut StdRng::seed_from_u64(0))
        .iter()
        .all(|n| n.duration >= 1));
}

#[test]
fn velocity_scaling_stays_in_midi_range() {
    let cfg = Config::small();
    let aug = Augment {
        transpose: 0,
        tempo: (1.0, 1.0),
        velocity: (0.01, 5.0),
        velocity_shift: 0,
    };
    let piece: Vec<Note> = (1..=127).map(|v| note(v, 10, 60, 0, v)).collect();
    let mut changed = false;
    for seed in 0..30 {
        let out = aug.apply(&piece, &cfg, &mut StdRng::seed_from_u64(seed));
        assert!(out.iter().all(|n| (1..=127).contains(&n.velocity)));
        changed |= out != piece;
    }
    assert!(changed);
    let double = Augment {
        transpose: 0,
        tempo: (1.0, 1.0),
        velocity: (2.0, 2.0),
        velocity_shift: 0,
    };
    let out = double.apply(&piece, &cfg, &mut StdRng::seed_from_u64(0));
    assert_eq!(out[9].velocity, 20);
    assert_eq!(out[100].velocity, 127);
    assert!(Augment {
        transpose: 0,
        tempo: (1.1, 0.9),
        velocity: (1.0, 1.0),
        velocity_shift: 0,
    }
    .validate()
    .is_err());
}

// ---------------------------------------------------------------------------------------------
// Preprocessing and windows
// ---------------------------------------------------------------------------------------------

#[test]
fn gaps_split_pieces_and_chunks_restart_at_zero() {
    let cfg = tiny_config(); // timeshift limit 300 - 3 = 297, duration limit 257
    let mut notes = Vec::new();
    // Chunk A: onsets 100..=170, one duration over the limit, one of 0.
    for i in 0..8 {
        notes.push(note(
            100 + i * 10,
            if i == 2 {
                400
            } else if i == 3 {
                0
            } else {
                20
            },
            60,
            0,
            80,
        ));
    }
    // Gap of 400 > 297: chunk B at 570..=640, then a gap of exactly 297 (no split).
    for i in 0..8 {
        notes.push(note(570 + i * 10, 20, 62, 0, 80));
    }
    notes.push(note(640 + 297, 20, 64, 0, 80));
    // Gap of 298: chunk C of only 3 notes, dropped as too short; then an impossible note.
    for i in 0..3 {
        notes.push(note(640 + 297 + 298 + i, 20, 65, 0, 80));
    }
    notes.push(Note {
        onset: 2000,
        duration: 5,
        octave: 3,
        pitch_class: 12,
        instrument: 0,
        velocity: 80,
    });

    let (chunks, stats) = preprocess(&notes, &cfg, &LoadOptions::default());
    assert_eq!(chunks.len(), 2);
    assert_eq!(stats.split_gaps, 2);
    assert_eq!(stats.clipped_durations, 2);
    assert_eq!(stats.dropped_notes, 1);
    assert_eq!((stats.short_chunks, stats.short_chunk_notes), (1, 3));
    assert_eq!(
        chunks[0].iter().map(|n| n.onset).collect::<Vec<_>>(),
        (0..8).map(|i| i * 10).collect::<Vec<_>>()
    );
    assert_eq!((chunks[0][2].duration, chunks[0][3].duration), (257, 1));
    assert_eq!(chunks[1].len(), 9);
    assert_eq!(chunks[1][0].onset, 0);
    assert_eq!(chunks[1][8].onset, 70 + 297);
    for c in &chunks {
        assert!(out_of_range(&cfg, &input_rows(c, true)).is_empty());
    }
    // The Small vocabulary (limit 1023) does not split at all.
    let (chunks, stats) = preprocess(
        &notes,
        &Config::small(),
        &LoadOptions {
            min_notes: 1,
            max_timeshift: None,
        },
    );
    assert_eq!(
        (chunks.len(), stats.split_gaps, stats.clipped_durations),
        (1, 0, 1)
    );
    assert_eq!(chunks[0][0].onset, 0);
}

#[test]
fn windows_cover_every_note() {
    let piece: Vec<Note> = (0..1000)
        .map(|i| note(100 + i * 3, i + 1, 60, 0, 80))
        .collect();
    for (ctx, stride, phase) in [
        (100, 98, 0),
        (100, 49, 0),
        (100, 98, 40),
        (1024, 1022, 0),
        (3, 1, 0),
        (57, 10, 0),
    ] {
        let w = ctx - 2;
        let wins = windows_with(&piece, ctx, stride, phase);
        let mut covered = vec![false; piece.len()];
        for win in &wins {
            assert!(!win.is_empty() && win.len() <= w);
            assert_eq!(win[0].onset, 0, "each window restarts at onset 0");
            let first = (win[0].duration - 1) as usize;
            for (k, n) in win.iter().enumerate() {
                let idx = (n.duration - 1) as usize;
                assert_eq!(idx, first + k, "a window is a contiguous slice");
                assert_eq!(n.onset, piece[idx].onset - piece[first].onset);
                covered[idx] = true;
            }
        }
        let from = if wins.len() > 1 { phase } else { 0 };
        assert!(
            covered[from..].iter().all(|&c| c),
            "ctx {ctx} stride {stride}: a note is in no window"
        );
        assert!(
            wins.iter().all(|w2| w2.len() == w.min(piece.len())),
            "no short leftover window"
        );
    }
    assert_eq!(windows(&piece, 100).len(), 11); // ceil(1000 / 98)
    assert_eq!(windows_with_stride(&piece, 100, 49).len(), 20);
    assert_eq!(
        windows(&piece[..5], 100),
        vec![piece[..5]
            .iter()
            .map(|n| Note {
                onset: n.onset - 100,
                ..*n
            })
            .collect::<Vec<_>>()]
    );
    assert!(windows(&[], 100).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Real files
// ---------------------------------------------------------------------------------------------

#[test]
fn real_samples_load_with_a_sensible_report() {
    let Some(dir) = samples_dir() else { return };
    let files = find_midi_files(&dir).unwrap();
    assert_eq!(files.len(), 63);
    assert!(files.windows(2).all(|w| w[0] < w[1]), "sorted");

    let tiny = tiny_config();
    let (pieces, report) = load_pieces(&files, &tiny);
    eprintln!("tiny config: {report}");
    assert_eq!(report.files.len(), 63);
    assert_eq!(
        report.unreadable,
        0,
        "{:?}",
        report.skipped().collect::<Vec<_>>()
    );
    assert_eq!(report.pieces, pieces.len());
    assert!(
        report.split_gaps > 0 && report.clipped_durations > 0,
        "the tiny vocabulary must split and clip"
    );
    assert!(report.notes_kept > report.notes_read * 9 / 10);
    for p in &pieces {
        assert!(p.notes.len() >= 8 && p.notes[0].onset == 0);
        assert!(
            out_of_range(&tiny, &input_rows(&p.notes, true)).is_empty(),
            "{}",
            p.source.display()
        );
    }
    serde_json::to_string(&report).unwrap();

    let small = Config::small();
    let (pieces_small, report_small) = load_pieces(&files, &small);
    eprintln!("small config: {report_small}");
    assert_eq!(report_small.unreadable, 0);
    assert!(report_small.split_gaps <= report.split_gaps && pieces_small.len() >= 60);
    assert!(report_small.clipped_durations <= report.clipped_durations);
}

#[test]
fn real_dataset_is_deterministic_and_valid() {
    let Some(dir) = samples_dir() else { return };
    let cfg = tiny_config();
    let opts = DatasetOptions {
        context_rows: 256,
        val_fraction: 0.1,
        seed: 7,
        augment: Some(Augment::default()),
        augment_copies: 2,
        instrument: None,
    };
    let ds = build_dataset(&dir, &cfg, opts.clone()).unwrap();
    let ds2 = build_dataset(&dir, &cfg, opts.clone()).unwrap();
    eprintln!("{}", serde_json::to_string(&ds.split).unwrap());
    let train: BTreeSet<&String> = ds.split.train_files.iter().collect();
    let val: BTreeSet<&String> = ds.split.val_files.iter().collect();
    assert!(train.is_disjoint(&val));
    assert_eq!(val.len(), 6, "round(0.1 × 63)");
    assert_eq!(ds.split.val_files, ds2.split.val_files);

    // Validation: the windows of the validation pieces, unaugmented.
    let val_windows: Vec<Vec<Note>> = ds.val.iter().flat_map(|p| windows(&p.notes, 256)).collect();
    assert_eq!(ds.val_samples, val_windows);

    let e1 = ds.epoch_samples(1);
    assert_eq!(
        e1,
        ds2.epoch_samples(1),
        "deterministic given seed and epoch"
    );
    assert_ne!(e1, ds.epoch_samples(2), "augmentation varies by epoch");
    assert!(e1.len() >= 3 * ds.split.train_windows - ds.train.len() * 2);
    assert_eq!(ds.epoch_samples(0).len(), ds.split.train_samples_per_epoch);

    let packs = ds.train_packs(1);
    check_packs(&packs, &e1, 256);
    assert_eq!(packs, ds2.train_packs(1));
    for p in packs.iter().chain(&ds.val_packs()) {
        p.labels(&cfg).unwrap();
        for r in p.sample_ranges() {
            assert!(out_of_range(&cfg, &p.rows[r]).is_empty());
        }
    }
    let fill: f64 = packs
        .iter()
        .map(|p| p.loss_mask.iter().filter(|&&m| m).count())
        .sum::<usize>() as f64
        / (packs.len() * 255) as f64;
    eprintln!(
        "{} train samples in epoch 1 -> {} packs, {:.0}% of positions trained",
        e1.len(),
        packs.len(),
        fill * 100.0
    );
}

#[cfg(unix)]
#[test]
fn finding_files_is_recursive_sorted_case_blind_and_survives_link_loops() {
    let root = std::env::temp_dir().join(format!("continuo-train-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("b/deep")).unwrap();
    std::fs::create_dir_all(root.join("a")).unwrap();
    for f in [
        "b/deep/x.MID",
        "a/y.midi",
        "a/z.Midi",
        "top.mid",
        "a/notes.txt",
        "a/mid",
    ] {
        std::fs::write(root.join(f), b"not really midi").unwrap();
    }
    std::os::unix::fs::symlink(&root, root.join("b/deep/loop")).unwrap();
    std::os::unix::fs::symlink(root.join("gone.mid"), root.join("dangling.mid")).unwrap();
    let found = find_midi_files(&root).unwrap();
    let rel: Vec<String> = found.iter().map(|p| relative_key(p, &root)).collect();
    assert_eq!(rel, vec!["a/y.midi", "a/z.Midi", "b/deep/x.MID", "top.mid"]);

    // Unreadable files are reported with the tokenizer's error, not fatal.
    let (pieces, report) = load_pieces(&found, &Config::small());
    assert!(pieces.is_empty());
    assert_eq!((report.unreadable, report.too_short), (4, 0));
    assert!(
        report.skipped().all(|(_, why)| why.contains("MThd")),
        "{:?}",
        report.skipped().collect::<Vec<_>>()
    );
    let opts = DatasetOptions {
        context_rows: 64,
        val_fraction: 0.1,
        seed: 1,
        augment: None,
        augment_copies: 0,
        instrument: None,
    };
    assert!(matches!(
        build_dataset(&root, &Config::small(), opts.clone()),
        Err(DataError::NoPieces { files: 4, .. })
    ));
    assert!(matches!(
        build_dataset(&root.join("a/mid"), &Config::small(), opts),
        Err(DataError::Io { .. })
    ));
    std::fs::remove_dir_all(&root).unwrap();
}

/// `instrument` puts every pitched note on one program and refuses a program out of range.
#[test]
fn instrument_option_sets_every_pitched_note() {
    let cfg = tiny_config();
    let dir = std::env::temp_dir().join(format!("continuo-instrument-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let notes: Vec<Note> = (0..40)
        .map(|i| {
            Note::from_pitch(
                i * 20,
                15,
                60 + (i % 12) as u8,
                if i % 3 == 0 { 5 } else { 0 },
                80,
            )
        })
        .collect();
    continuo_engine::midi::write_midi_file(&dir.join("a.mid"), &notes).unwrap();
    let opts = DatasetOptions {
        context_rows: 64,
        val_fraction: 0.0,
        seed: 1,
        augment: None,
        augment_copies: 0,
        instrument: Some(0),
    };
    let ds = build_dataset(&dir, &cfg, opts.clone()).unwrap();
    let rows: Vec<i64> = ds
        .train
        .iter()
        .flat_map(|p| p.notes.iter().map(|n| n.instrument))
        .collect();
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|&i| i == 0), "{rows:?}");
    let bad = DatasetOptions {
        instrument: Some(128),
        ..opts
    };
    assert!(build_dataset(&dir, &cfg, bad).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wide_augmentation_spans_half_to_double_speed_the_keyboard_and_the_dynamics() {
    let cfg = Config::small();
    // The default leaves dynamics as played.
    let plain = Augment::wide();
    assert_eq!((plain.velocity, plain.velocity_shift), ((1.0, 1.0), 0));
    let loud = note(0, 20, 60, 0, 99);
    for seed in 0..20 {
        let out = plain.apply(&[loud], &cfg, &mut StdRng::seed_from_u64(seed));
        assert_eq!(out[0].velocity, 99);
    }
    // v3's dynamics, as `--velocity-range 0.6:1.5 --velocity-shift 20` asks for.
    let aug = Augment {
        velocity: (0.6, 1.5),
        velocity_shift: 20,
        ..Augment::wide()
    };
    aug.validate().unwrap();
    // Lowest pitch 60, highest 71: shifts -39..=37 keep it on the 88 keys.
    let piece: Vec<Note> = (0..40)
        .map(|i| note(i * 25, 20, 60 + (i % 12) as u8, 0, 64))
        .collect();
    let last = piece.last().unwrap().onset as f64;
    let (mut tempos, mut lows, mut vels) = (Vec::new(), Vec::new(), Vec::new());
    for seed in 0..400 {
        let out = aug.apply(&piece, &cfg, &mut StdRng::seed_from_u64(seed));
        assert!(out
            .iter()
            .all(|n| (21..=108).contains(&n.pitch()) && (1..=127).contains(&n.velocity)));
        tempos.push(out.last().unwrap().onset as f64 / last);
        lows.push(out.iter().map(Note::pitch).min().unwrap());
        vels.push(out[0].velocity);
    }
    tempos.sort_by(f64::total_cmp);
    assert!(tempos[0] >= 0.49 && tempos[0] < 0.56, "{}", tempos[0]);
    assert!(tempos[399] <= 2.01 && tempos[399] > 1.8, "{}", tempos[399]);
    let slower = tempos.iter().filter(|&&t| t > 1.0).count();
    assert!(
        (150..250).contains(&slower),
        "log-uniform: about as many slower copies as faster ones ({slower} of 400)"
    );
    assert!(*lows.iter().min().unwrap() <= 25 && *lows.iter().max().unwrap() >= 93);
    // 64 × 0.6 - 20 = 18 up to 64 × 1.5 + 20 = 116.
    assert!(*vels.iter().min().unwrap() <= 30 && *vels.iter().max().unwrap() >= 105);
    assert!(Augment {
        velocity_shift: -1,
        ..Augment::wide()
    }
    .validate()
    .is_err());
}
