//! Properties of sampling and the continuation loop, on tiny random models.

mod common;

use common::{golden_prompt as prompt, tiny_config as config};

use continuo_engine::generate::{
    continue_notes, GenerateOptions, Greedy, Sampling, StopReason, TopP,
};
use continuo_engine::lora::Style;
use continuo_engine::model::gru::Chooser;
use continuo_engine::{midi, Moonbeam, Note, Precision};

#[test]
fn only_playable_notes_reach_the_midi_output() {
    let cfg = config();
    let mut saw_invalid = 0;
    for seed in 0..6u64 {
        let model = Moonbeam::random(&cfg, seed, Precision::F32).unwrap();
        let opts = GenerateOptions {
            allow_stacked: false,
            endless: false,
            max_notes: 48,
            max_duration_ticks: None,
            sampling: Sampling::TopP {
                temperature: 1.5,
                top_p: 1.0,
                seed,
            },
        };
        let gen = continue_notes(&model, &Style::base(), &prompt(), &opts, |_, _| {}).unwrap();
        for (i, row) in gen.rows.iter().enumerate() {
            assert_eq!(
                gen.invalid.contains(&i),
                !row.is_valid_midi(),
                "row {i}: {row:?}"
            );
            for a in 0..6 {
                assert_ne!(row.to_row()[a], cfg.eos_code(a), "an EOS row was returned");
            }
        }
        saw_invalid += gen.invalid.len();
        let valid = gen.valid_notes();
        assert!(valid.iter().all(Note::is_valid_midi));
        let mut all = prompt();
        all.extend(valid);
        midi::notes_to_midi(&all).expect("playable notes always write");
        match gen.stop {
            StopReason::MaxNotes => assert_eq!(gen.rows.len(), 48),
            StopReason::Eos => assert!(gen.rows.len() < 48),
            other => panic!("unexpected stop {other:?}"),
        }
    }
    // Random weights at a high temperature produce SOS codes and pitches above 127.
    assert!(saw_invalid > 0, "the test should exercise invalid rows");
}

#[test]
fn max_duration_stops_in_time() {
    let cfg = config();
    let model = Moonbeam::random(&cfg, 3, Precision::F32).unwrap();
    let p = prompt();
    let last = p.last().unwrap().onset;
    let opts = GenerateOptions {
        allow_stacked: false,
        endless: false,
        max_notes: 200,
        max_duration_ticks: Some(100),
        sampling: Sampling::TopP {
            temperature: 1.0,
            top_p: 0.9,
            seed: 5,
        },
    };
    let gen = continue_notes(&model, &Style::base(), &p, &opts, |_, _| {}).unwrap();
    assert!(gen.rows.iter().all(|n| n.onset - last <= 100));
    assert!(matches!(
        gen.stop,
        StopReason::MaxDuration | StopReason::Eos | StopReason::MaxNotes
    ));
}

#[test]
fn context_limit_is_respected() {
    let mut cfg = config();
    cfg.max_len = 30;
    let model = Moonbeam::random(&cfg, 1, Precision::F32).unwrap();
    let opts = GenerateOptions {
        allow_stacked: false,
        endless: false,
        max_notes: 100,
        max_duration_ticks: None,
        sampling: Sampling::Greedy,
    };
    let gen = continue_notes(&model, &Style::base(), &prompt(), &opts, |_, _| {}).unwrap();
    // 22 prompt notes + SOS leave room for 7 rows.
    assert!(gen.rows.len() <= 7);
    if gen.stop != StopReason::Eos {
        assert_eq!(gen.stop, StopReason::ContextFull);
    }
}

fn logits() -> Vec<f32> {
    (0..40)
        .map(|i| ((i * 37 % 17) as f32) * 0.3 - 2.0)
        .collect()
}

#[test]
fn top_p_zero_is_greedy_when_the_global_best_is_allowed() {
    let l = logits();
    let best = (0..l.len()).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap();
    let allowed = best.saturating_sub(3)..(best + 3).min(l.len());
    let mut greedy = Greedy;
    let want = greedy.choose(0, allowed.clone(), &l[allowed.clone()]);
    for seed in 0..20 {
        let mut c = TopP::new(1.0, 0.0, seed);
        assert_eq!(c.choose(0, allowed.clone(), &l), want);
    }
}

#[test]
fn top_p_one_samples_the_restricted_softmax() {
    let l = logits();
    let allowed = 5..15;
    let mut c = TopP::new(0.8, 1.0, 11);
    let n = 40_000;
    let mut counts = vec![0usize; allowed.len()];
    for _ in 0..n {
        counts[c.choose(0, allowed.clone(), &l)] += 1;
    }
    let z: f64 = allowed.clone().map(|i| ((l[i] / 0.8) as f64).exp()).sum();
    for (k, i) in allowed.clone().enumerate() {
        let p = ((l[i] / 0.8) as f64).exp() / z;
        let f = counts[k] as f64 / n as f64;
        let sd = (p * (1.0 - p) / n as f64).sqrt();
        assert!(
            (f - p).abs() < 5.0 * sd + 1e-4,
            "id {i}: frequency {f} vs probability {p}"
        );
    }
}

#[test]
fn top_p_falls_back_when_the_nucleus_misses_the_range() {
    // All mass sits outside the allowed range: the reference's fallback samples inside it.
    let mut l = vec![-30.0f32; 20];
    l[0] = 30.0;
    let allowed = 10..20;
    let mut c = TopP::new(1.0, 0.5, 3);
    for _ in 0..50 {
        let pick = c.choose(0, allowed.clone(), &l);
        assert!(pick < allowed.len());
    }
}

/// Truncating a session after an answer leaves it as if only the kept rows had been given:
/// the same rows, the same last hidden state and the same next greedy note as a session
/// prefilled with them.
#[test]
fn truncate_returns_to_the_kept_context() {
    use continuo_engine::generate::Session;
    let cfg = config();
    let model = Moonbeam::random(&cfg, 11, Precision::F32).unwrap();
    let notes: Vec<Note> = prompt().into_iter().take(12).collect();
    let mut fresh = Session::new(&model, 64);
    fresh.prefill(&notes).unwrap();

    let mut session = Session::new(&model, 64);
    session.prefill(&notes).unwrap();
    // An "answer": a few decoded rows pushed on top.
    for _ in 0..5 {
        let values = session.next_values(&mut Greedy).unwrap();
        let prev = session.rows().last().unwrap()[0];
        session
            .push(Note::from_decoded(prev, values).to_row())
            .unwrap();
    }
    assert_eq!(session.rows().len(), notes.len() + 6);
    session.truncate(notes.len() + 1).unwrap();
    assert_eq!(session.rows(), fresh.rows());
    for (a, b) in session.last_hidden().iter().zip(fresh.last_hidden()) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    assert_eq!(
        session.next_values(&mut Greedy).unwrap(),
        fresh.next_values(&mut Greedy).unwrap()
    );
    // Longer than the context: nothing changes; zero: empty.
    session.truncate(1000).unwrap();
    assert_eq!(session.rows().len(), notes.len() + 1);
    session.truncate(0).unwrap();
    assert!(session.rows().is_empty());
}

#[test]
fn a_batch_of_rows_gives_the_state_of_pushing_them_one_by_one() {
    use continuo_engine::lora::Adapter;
    use continuo_engine::quant::QFormat;
    let f32_model = common::tiny_model(Precision::F32);
    let mut q8 = f32_model.clone();
    q8.quantize(QFormat::Q8).unwrap();
    let adapter = std::sync::Arc::new(
        Adapter::from_peft_dir(&common::golden("lora_adapter"), &f32_model.cfg).unwrap(),
    );
    let notes = prompt();
    for (model, label) in [(&f32_model, "f32"), (&q8, "q8")] {
        for style in [Style::base(), Style::single(adapter.clone(), 1.0)] {
            for (before, batch) in [(0, 5), (3, 2), (4, 12), (10, 11)] {
                let run = |batched: bool| {
                    let mut s = continuo_engine::Session::new(model, 64);
                    s.set_style(style.clone());
                    s.prefill(&notes[..before]).unwrap();
                    let rows: Vec<_> = notes[before..before + batch]
                        .iter()
                        .map(|n| n.to_row())
                        .collect();
                    if batched {
                        s.extend(&rows).unwrap();
                    } else {
                        for r in &rows {
                            s.push(*r).unwrap();
                        }
                    }
                    let after_batch = s.last_hidden().to_vec();
                    // One more row reads the cache the batch wrote.
                    s.push(notes[before + batch].to_row()).unwrap();
                    (after_batch, s.last_hidden().to_vec(), s.rows().len())
                };
                let (one_by_one, batched) = (run(false), run(true));
                assert_eq!(one_by_one.2, batched.2);
                for (a, b) in [(&one_by_one.0, &batched.0), (&one_by_one.1, &batched.1)] {
                    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    for (x, y) in a.iter().zip(b.iter()) {
                        assert!(
                            (x - y).abs() <= 1e-4 * scale,
                            "{label}, {before} + {batch}: {x} vs {y}"
                        );
                    }
                }
            }
        }
    }
}

/// A chooser that always takes the first (or, `last`, the last) token the logits do not rule
/// out. The first: left to itself it strikes the same key at the same onset again and again,
/// the worst greedy collapse. The last: the attribute's EOS code when nothing masks it.
struct EdgeAllowed {
    last: bool,
}

impl Chooser for EdgeAllowed {
    fn full_vocab(&self) -> bool {
        false
    }

    fn choose(&mut self, _attr: usize, _allowed: std::ops::Range<usize>, logits: &[f32]) -> usize {
        let open = |l: &f32| l.is_finite();
        let at = if self.last {
            logits.iter().rposition(open)
        } else {
            logits.iter().position(open)
        };
        at.unwrap_or(0)
    }
}

#[test]
fn a_note_cannot_strike_a_key_already_struck_at_its_onset() {
    let cfg = config();
    let model = Moonbeam::random(&cfg, 3, Precision::F32).unwrap();
    let decode = |unstacked: bool| {
        let mut session = continuo_engine::generate::Session::new(&model, 64);
        session.prefill(&prompt()).unwrap();
        let mut keys = Vec::new();
        for _ in 0..14 {
            let v = if unstacked {
                session
                    .next_values_unstacked(&mut EdgeAllowed { last: false })
                    .unwrap()
            } else {
                session
                    .next_values(&mut EdgeAllowed { last: false })
                    .unwrap()
            };
            let onset = session.rows().last().unwrap()[0] + v[0];
            keys.push((v[0], v[2] * 12 + v[3]));
            session.push([onset, v[1], v[2], v[3], v[4], v[5]]).unwrap();
        }
        keys
    };
    // Unguarded, every note is timeshift 0 on key 0: stacked.
    assert!(decode(false).iter().all(|&k| k == (0, 0)));
    // Guarded, new keys are struck at that onset (0, 1, 2, ...) until ten notes start there,
    // prompt notes included; then the next note has to move on, and at its new onset key 0 is
    // free again.
    let p = prompt();
    let last = p.last().unwrap().onset;
    let at_last = p.iter().filter(|n| n.onset == last).count();
    let k = 10 - at_last;
    let keys = decode(true);
    assert_eq!(
        keys[..k],
        (0..k as i64).map(|key| (0, key)).collect::<Vec<_>>()[..]
    );
    assert!(keys[k].0 > 0, "{keys:?}");
    assert_eq!(keys[k].1, 0);
    assert!(keys[k + 1..].iter().all(|&(ts, _)| ts == 0));
}

#[test]
fn an_endless_answer_never_ends_the_piece() {
    let cfg = config();
    let model = Moonbeam::random(&cfg, 3, Precision::F32).unwrap();
    let mut session = continuo_engine::generate::Session::new(&model, 64);
    session.prefill(&prompt()).unwrap();
    // Unguarded, this chooser ends the piece at once.
    assert!(cfg.is_eos(
        &session
            .next_values_unstacked(&mut EdgeAllowed { last: true })
            .unwrap()
    ));
    for _ in 0..20 {
        let v = session
            .next_values_endless(&mut EdgeAllowed { last: true })
            .unwrap();
        // The last id before SOS (V - 2) and EOS (V - 1).
        let expected: [i64; 6] = std::array::from_fn(|a| cfg.vocab[a] as i64 - 3);
        assert_eq!(v, expected);
        let onset = session.rows().last().unwrap()[0] + v[0];
        session.push([onset, v[1], v[2], v[3], v[4], v[5]]).unwrap();
    }
    // Sampled at a high temperature from random weights, which otherwise end early or emit
    // SOS codes (see `only_playable_notes_reach_the_midi_output`): every row is a note.
    for seed in 0..6u64 {
        let model = Moonbeam::random(&cfg, seed, Precision::F32).unwrap();
        let opts = GenerateOptions {
            allow_stacked: false,
            endless: true,
            max_notes: 48,
            max_duration_ticks: None,
            sampling: Sampling::TopP {
                temperature: 1.5,
                top_p: 1.0,
                seed,
            },
        };
        let gen = continue_notes(&model, &Style::base(), &prompt(), &opts, |_, _| {}).unwrap();
        assert_eq!(gen.stop, StopReason::MaxNotes);
        assert_eq!(gen.rows.len(), 48);
        let mut prev = prompt().last().unwrap().onset;
        for row in &gen.rows {
            // A row holds its onset; the model decoded the timeshift from the previous one.
            let mut values = row.to_row();
            values[0] -= prev;
            prev = row.onset;
            for (a, v) in values.into_iter().enumerate() {
                assert!(v < cfg.sos_code(a), "seed {seed}: {row:?}");
            }
        }
    }
}
