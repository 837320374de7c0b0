//! `continuo eval` and `continuo demo`: the baselines are proper distributions, the
//! statistics behave as distances, and both commands run end to end.

mod common;

use common::{folk_dir, golden, tiny_config};

use std::path::PathBuf;
use std::process::Command;

use continuo_engine::eval::{
    coherence, repeat_last_bar, Baselines, CoherenceReport, Profile, Stats, COHERENCE,
};
use continuo_engine::{midi, Note};

fn tmp(name: &str) -> PathBuf {
    common::tmp("evaldemo", name)
}

fn folk() -> Vec<Vec<Note>> {
    let dir = folk_dir();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "mid"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| midi::read_midi_file(f).unwrap())
        .collect()
}

#[test]
fn baseline_losses_are_proper_and_markov_fits_its_data_better() {
    let cfg = tiny_config();
    let pieces = folk();
    let b = Baselines::fit(&cfg, &pieces);
    // A uniform model over the vocabularies bounds a smoothed unigram from above.
    let uniform: f64 = cfg.vocab.iter().map(|&v| (v as f64).ln()).sum();
    let unigram = b.loss(&cfg, &pieces, false);
    let markov = b.loss(&cfg, &pieces, true);
    assert!(
        unigram.per_note < uniform,
        "{} vs uniform {uniform}",
        unigram.per_note
    );
    // Folk tunes are predictable from the previous note; on its own training data the Markov model must win.
    assert!(
        markov.per_note < unigram.per_note,
        "markov {} vs unigram {}",
        markov.per_note,
        unigram.per_note
    );
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
    let cont = b.generate(&pieces[0][..16], 64, true, &mut rng);
    assert_eq!(cont.len(), 64);
    assert!(cont
        .iter()
        .all(|n| n.duration >= 1 && n.velocity >= 1 && n.onset >= pieces[0][15].onset));
}

#[test]
fn statistics_are_distances() {
    let pieces = folk();
    let a = Stats::of(&pieces[..4]);
    let b = Stats::of(&pieces[4..]);
    assert!(a.distances(&a).iter().all(|&d| d.abs() < 1e-12));
    let d = a.distances(&b);
    assert_eq!(d.len(), 7);
    assert!(d.iter().all(|&x| (0.0..=1.0).contains(&x)));
    // Transposing by a tritone moves the pitch-class histogram but not the rhythm.
    let shifted: Vec<Vec<Note>> = pieces[..4]
        .iter()
        .map(|p| {
            p.iter()
                .map(|n| {
                    Note::from_pitch(
                        n.onset,
                        n.duration,
                        (n.pitch() + 6) as u8,
                        n.instrument,
                        n.velocity,
                    )
                })
                .collect()
        })
        .collect();
    let s = Stats::of(&shifted).distances(&a);
    assert!(s[0] > 0.1, "pitch classes moved: {}", s[0]);
    assert!(
        s[1] < 1e-12 && s[2] < 1e-12 && s[3] < 1e-12,
        "intervals and rhythm unchanged: {s:?}"
    );
}

#[test]
fn piano_roll_draws_both_parts_with_labels() {
    let notes = midi::read_midi_file(&golden("input.mid")).unwrap();
    let path = tmp("roll.png");
    continuo_engine::pianoroll::render(&notes[..12], &notes[12..], "golden prompt", &path).unwrap();
    let png = tiny_skia::Pixmap::load_png(&path).unwrap();
    assert_eq!(png.width(), 1600);
    let layout = continuo_engine::pianoroll::RollLayout::of(&notes[..12], &notes[12..]);
    assert_eq!((png.width(), png.height()), (layout.width, layout.height));
    let split = layout.x(layout.answer_start.unwrap()) as u32;
    // Below the title and legend (34 px), left of the answer: blue notes; right: orange.
    let count = |x0: u32, x1: u32, hue: fn(u8, u8, u8) -> bool| {
        (34..png.height())
            .flat_map(|y| (x0..x1).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let p = png.pixel(x, y).unwrap();
                hue(p.red(), p.green(), p.blue())
            })
            .count()
    };
    let blue = count(48, split, |r, _, b| i32::from(b) > i32::from(r) + 40);
    let orange = count(split + 2, png.width(), |r, _, b| {
        i32::from(r) > i32::from(b) + 80
    });
    assert!(orange > 50 && blue > 50, "orange {orange}, blue {blue}");
    // The pitch labels: dark text in the left margin.
    let labels = count(0, 46, |r, g, b| r < 140 && g < 140 && b < 140);
    assert!(labels > 20, "{labels} label pixels");
}

#[test]
fn a_long_prompt_leaves_the_answer_half_of_the_picture() {
    use continuo_engine::pianoroll::{note_name, RollLayout};
    // 40 s of prompt, a 3 s answer.
    let prompt: Vec<Note> = (0..200)
        .map(|i| Note::from_pitch(i * 20, 20, 60 + (i % 12) as u8, 0, 80))
        .collect();
    let answer: Vec<Note> = (0..15)
        .map(|i| Note::from_pitch(4000 + i * 20, 20, 64, 0, 80))
        .collect();
    let layout = RollLayout::of(&prompt, &answer);
    let share =
        (layout.x(layout.t1) - layout.x(4000)) / (layout.x(layout.t1) - layout.x(layout.t0));
    assert!(share >= 0.5 - 1e-3, "the answer gets {share} of the width");
    assert!(layout.prompt_notes_hidden > 150);
    // A short prompt is shown whole.
    let soon: Vec<Note> = answer
        .iter()
        .map(|n| Note {
            onset: n.onset - 3800,
            ..*n
        })
        .collect();
    let layout = RollLayout::of(&prompt[..10], &soon);
    assert_eq!((layout.t0, layout.prompt_notes_hidden), (0, 0));
    assert_eq!(
        (note_name(60), note_name(21), note_name(61)),
        ("C4".into(), "A0".into(), "C#4".into())
    );
}

#[test]
fn demo_and_eval_run_end_to_end() {
    // A project tree whose "bundled" model is the tiny golden one, with one shipped style.
    let root = tmp("root");
    for d in ["assets/configs", "assets/examples", "lora-weights/golden"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(
        golden("tiny_config.json"),
        root.join("assets/configs/continuo_base.json"),
    )
    .unwrap();
    std::fs::copy(
        golden("tiny_model.safetensors"),
        root.join("assets/continuo_base.safetensors"),
    )
    .unwrap();
    std::fs::copy(
        golden("input.mid"),
        root.join("assets/examples/satie_gymnopedie_no1.mid"),
    )
    .unwrap();
    let exe = env!("CARGO_BIN_EXE_continuo");
    let style = root.join("lora-weights/golden/golden.safetensors");
    let s = |p: &PathBuf| p.to_str().unwrap().to_owned();
    let out = Command::new(exe)
        .args([
            "style",
            "import",
            &s(&golden("lora_adapter")),
            "-o",
            &s(&style),
            "--config",
            &s(&golden("tiny_config.json")),
            "--weights",
            &s(&golden("tiny_model.safetensors")),
            "--name",
            "Golden Style",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let demo_out = root.join("out");
    let out = Command::new(exe)
        .args([
            "demo",
            "--root",
            &s(&root),
            "--out",
            &s(&demo_out),
            "--prompt-notes",
            "16",
            "--notes",
            "12",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("base")
            && stdout.contains("Golden Style")
            && stdout.contains("ms per note"),
        "{stdout}"
    );
    for f in [
        "base.mid",
        "base.png",
        "golden-style.mid",
        "golden-style.png",
    ] {
        assert!(demo_out.join(f).exists(), "{f}");
    }
    // Every written note is valid and has a positive length (no stuck or zero-length notes).
    let written = midi::read_midi_file(&demo_out.join("golden-style.mid")).unwrap();
    assert!(written.len() > 16 && written.iter().all(Note::is_valid_midi));

    let json = root.join("eval.json");
    let folk = folk_dir();
    let out = Command::new(exe)
        .args([
            "eval",
            "--config",
            &s(&golden("tiny_config.json")),
            "--weights",
            &s(&golden("tiny_model.safetensors")),
            "--data",
            &s(&folk),
            "--prompt-notes",
            "16",
            "--notes",
            "16",
            "--max-prompts",
            "3",
            "--context",
            "128",
            "--json",
            &s(&json),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let systems = report["systems"].as_array().unwrap();
    assert_eq!(
        systems
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["model", "markov", "unigram"]
    );
    for s in systems {
        assert_eq!(s["distances"].as_array().unwrap().len(), 7);
        assert!(s["loss"]["per_note"].as_f64().unwrap() > 0.0);
    }
    let coherence = report["coherence"].as_array().unwrap();
    assert_eq!(
        coherence
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        [
            "model",
            "markov",
            "unigram",
            "repeat_last_bar",
            "other_continuation"
        ]
    );
    for c in coherence {
        assert_eq!(c["medians"].as_array().unwrap().len(), 6);
    }
    // Another piece's true continuation is never scored as a copy of this one.
    let other = &coherence[4]["medians"];
    assert!(
        other
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m.as_f64().unwrap() > 0.0),
        "{other}"
    );
}

fn map_notes(piece: &[Note], f: impl Fn(&Note) -> Note) -> Vec<Note> {
    piece.iter().map(f).collect()
}

#[test]
fn coherence_is_zero_for_the_true_continuation_and_measures_each_change() {
    let piece = &folk()[0];
    let truth = Profile::of(piece).unwrap();
    assert!(coherence(&truth, &truth).iter().all(|&x| x == 0.0));

    // Twice as slow: the notes-per-second ratio is exactly 1/2 and nothing tonal moves.
    let slow = map_notes(piece, |n| Note {
        onset: 2 * n.onset,
        duration: 2 * n.duration,
        ..*n
    });
    let c = coherence(&Profile::of(&slow).unwrap(), &truth);
    assert!((c[0] - 2f64.ln()).abs() < 1e-9, "{c:?}");
    assert_eq!(&c[1..5], &[0.0; 4]);
    assert!(c[5] > 0.1, "the intervals moved up a bin: {c:?}");

    // A fifth up: mean pitch moves by 7, the range and the rhythm do not.
    let up = map_notes(piece, |n| {
        Note::from_pitch(
            n.onset,
            n.duration,
            (n.pitch() + 7) as u8,
            n.instrument,
            n.velocity,
        )
    });
    let c = coherence(&Profile::of(&up).unwrap(), &truth);
    assert!((c[1] - 7.0).abs() < 1e-9, "{c:?}");
    assert_eq!([c[0], c[2], c[4], c[5]], [0.0; 4]);
    assert!(c[3] > 0.1, "the key moved: {c:?}");

    // Louder by 10 (kept in range): only the velocity figure moves, by 10.
    let loud = map_notes(piece, |n| Note {
        velocity: (n.velocity + 10).min(127),
        ..*n
    });
    assert!(piece.iter().all(|n| n.velocity <= 117));
    let c = coherence(&Profile::of(&loud).unwrap(), &truth);
    assert_eq!([c[0], c[1], c[2], c[3], c[5]], [0.0; 5]);
    assert!((c[4] - 10.0).abs() < 1e-9, "{c:?}");
    assert_eq!(COHERENCE.len(), c.len());
}

#[test]
fn a_collapsed_continuation_is_scored_far_off_and_too_few_notes_are_counted() {
    let piece = &folk()[0];
    let truth = Profile::of(piece);
    // Greedy collapse: the same row 16 times at one onset.
    let collapsed = vec![piece[0]; 16];
    let r = CoherenceReport::of("collapsed", &[collapsed], std::slice::from_ref(&truth));
    assert_eq!((r.scored, r.unscored), (1, 0));
    assert_eq!(
        r.stacked,
        15.0 / 16.0,
        "15 of the 16 notes repeat the first"
    );
    assert_eq!(
        CoherenceReport::of(
            "truth",
            std::slice::from_ref(piece),
            std::slice::from_ref(&truth)
        )
        .stacked,
        0.0
    );
    assert!(
        r.medians[0] > 3.0,
        "1500 notes/s is far from a folk tune: {:?}",
        r.medians
    );
    // Every interval is 0: the distance is the share of the true intervals that are not.
    let chords = truth.as_ref().unwrap().inter_onset[0];
    assert!(
        (r.medians[5] - (1.0 - chords)).abs() < 1e-9,
        "{:?}",
        r.medians
    );
    let r = CoherenceReport::of("one note", &[vec![piece[0]]], &[truth]);
    assert_eq!((r.scored, r.unscored), (0, 1));
    assert!(r.medians.iter().all(|m| m.is_nan()));
}

#[test]
fn repeat_last_bar_keeps_the_prompts_last_bar_and_its_pace() {
    let piece = &folk()[0];
    let prompt = &piece[..40];
    let last = prompt.iter().map(|n| n.onset).max().unwrap();
    let bar: Vec<&Note> = prompt.iter().filter(|n| n.onset > last - 200).collect();
    let out = repeat_last_bar(prompt, 3 * bar.len() + 1, 200);
    assert_eq!(out.len(), 3 * bar.len() + 1);
    assert!(out.iter().all(|n| n.onset > last));
    for (i, n) in out.iter().enumerate() {
        let src = bar[i % bar.len()];
        assert_eq!(n.onset, src.onset + 200 * (i / bar.len() + 1) as i64);
        assert_eq!((n.pitch(), n.velocity), (src.pitch(), src.velocity));
    }
    assert!(repeat_last_bar(&[], 5, 200).is_empty());
}

#[test]
fn prompts_take_one_window_per_piece_then_more() {
    use continuo_engine::eval::prompt_windows;
    let piece = |n: usize, tag: i64| -> Vec<Note> {
        (0..n)
            .map(|i| Note::from_pitch(i as i64 * 10 + tag, 5, 60, 0, 64))
            .collect()
    };
    let pieces = vec![piece(25, 1), piece(9, 2), piece(12, 3)];
    // Windows of 10: the first of pieces 1 and 3 (piece 2 is too short), then piece 1's second.
    let windows = prompt_windows(&pieces, 10, 8);
    let firsts: Vec<i64> = windows.iter().map(|w| w[0].onset).collect();
    assert_eq!(firsts, [1, 3, 101]);
    assert!(windows.iter().all(|w| w.len() == 10));
    assert_eq!(prompt_windows(&pieces, 10, 2).len(), 2);
    assert!(prompt_windows(&pieces, 0, 8).is_empty());
}
