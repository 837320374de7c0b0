//! `continuo eval` and `continuo demo`: the baselines are proper distributions, the
//! statistics behave as distances, and both commands run end to end.

mod common;

use common::{folk_dir, golden, tiny_config};

use std::path::PathBuf;
use std::process::Command;

use continuo_engine::eval::{Baselines, Stats};
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
fn piano_roll_draws_both_parts() {
    let notes = midi::read_midi_file(&golden("input.mid")).unwrap();
    let path = tmp("roll.png");
    continuo_engine::pianoroll::render(&notes[..12], &notes[12..], &path).unwrap();
    let png = tiny_skia::Pixmap::load_png(&path).unwrap();
    assert_eq!(png.width(), 1600);
    let orange = png
        .pixels()
        .iter()
        .filter(|p| p.red() == 230 && p.green() == 120 && p.blue() == 30)
        .count();
    let blue = png
        .pixels()
        .iter()
        .filter(|p| p.red() == 52 && p.green() == 101 && p.blue() == 164)
        .count();
    assert!(orange > 50 && blue > 50, "orange {orange}, blue {blue}");
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
