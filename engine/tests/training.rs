//! Training maths: the packed loss against the reference loss, packing independence,
//! and LoRA gradients against finite differences.

mod common;

use common::golden_prompt as notes;

use candle_core::Tensor;
use continuo_engine::lora::Style;
use continuo_engine::model::forward::Row;
use continuo_engine::train::loss::{packed_loss, PackedBatch};
use continuo_engine::train::params;
use continuo_engine::{vocab, Moonbeam, Note, Precision};

fn model() -> Moonbeam {
    common::tiny_model(Precision::F32)
}

/// Packs samples one after another into `len` rows, padding with zero rows.
fn pack(samples: &[Vec<Note>], len: usize) -> (Vec<Row>, Vec<u32>, Vec<bool>) {
    let mut rows = Vec::new();
    let mut segs = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        let r = vocab::input_rows(s, true);
        segs.extend(std::iter::repeat_n(i as u32, r.len()));
        rows.extend(r);
    }
    let pad = samples.len() as u32 * 2 + 7;
    while rows.len() < len {
        rows.push([0; 6]);
        segs.push(pad);
    }
    let mask = (0..len - 1)
        .map(|t| segs[t] == segs[t + 1] && segs[t] != pad)
        .collect();
    (rows, segs, mask)
}

fn loss_of(m: &Moonbeam, style: &Style, samples: &[Vec<Note>], len: usize) -> (f32, usize) {
    let (rows, segs, mask) = pack(samples, len);
    let batch = PackedBatch {
        rows: vec![&rows],
        segments: vec![segs],
        loss_mask: vec![mask],
    };
    let (loss, n) = packed_loss(m, style, &batch).unwrap();
    (loss.to_scalar::<f32>().unwrap(), n)
}

#[test]
fn unpacked_loss_is_the_reference_loss() {
    let m = model();
    let n = notes();
    let (loss, counted) = loss_of(&m, &Style::base(), std::slice::from_ref(&n), n.len() + 2);
    assert_eq!(counted, n.len() + 1);
    assert!((loss - 7.012072).abs() < 1e-4, "loss {loss}");
}

#[test]
fn packing_does_not_change_a_samples_loss() {
    let m = model();
    let n = notes();
    let a: Vec<Note> = n[..10].to_vec();
    // The second sample is re-zeroed, as the data pipeline's windows are.
    let start = n[10].onset;
    let b: Vec<Note> = n[10..]
        .iter()
        .map(|x| Note {
            onset: x.onset - start,
            ..*x
        })
        .collect();
    let (la, na) = loss_of(&m, &Style::base(), std::slice::from_ref(&a), a.len() + 2);
    let (lb, nb) = loss_of(&m, &Style::base(), std::slice::from_ref(&b), b.len() + 2);
    let (lp, np) = loss_of(&m, &Style::base(), &[a, b], 40);
    assert_eq!(np, na + nb);
    let want = (la * na as f32 + lb * nb as f32) / np as f32;
    assert!((lp - want).abs() < 1e-4, "packed {lp} vs separate {want}");
}

#[test]
fn lora_gradients_match_finite_differences() {
    let m = model();
    let (vars, style) = params::new_lora(&m, 4, 8.0, 3).unwrap();
    // Give every zero-initialised matrix (B of the linears, A of the embedding) a non-zero
    // value so that every matrix receives a gradient.
    for (i, (name, var)) in vars.iter().enumerate() {
        let zero_init = if name.starts_with("decoder_embedding") {
            name.ends_with("lora_A")
        } else {
            name.ends_with("lora_B")
        };
        if zero_init {
            let shape = var.as_tensor().dims().to_vec();
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n)
                .map(|k| (((k * 7919 + i * 31) % 97) as f32 / 97.0 - 0.5) * 0.1)
                .collect();
            var.set(&Tensor::from_vec(data, shape, &candle_core::Device::Cpu).unwrap())
                .unwrap();
        }
    }
    let n = notes();
    let len = n.len() + 2;
    let (rows, segs, mask) = pack(std::slice::from_ref(&n), len);
    let batch = PackedBatch {
        rows: vec![&rows],
        segments: vec![segs],
        loss_mask: vec![mask],
    };
    let (loss, _) = packed_loss(&m, &style, &batch).unwrap();
    let grads = loss.backward().unwrap();
    let mut checked = 0;
    for (name, var) in &vars {
        if !(name.contains("layers.1.self_attn.q_proj")
            || name.contains("lm_head")
            || name.contains("decoder_embedding")
            || name.contains("summary_projection"))
        {
            continue;
        }
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"))
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // The coordinate with the largest gradient: finite differences are reliable there.
        let k = (0..g.len())
            .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
            .unwrap();
        let original = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let shape = var.as_tensor().dims().to_vec();
        let eps = 1e-2f32;
        let at = |delta: f32| {
            let mut v = original.clone();
            v[k] += delta;
            var.set(&Tensor::from_vec(v, shape.clone(), &candle_core::Device::Cpu).unwrap())
                .unwrap();
            let (l, _) = packed_loss(&m, &style, &batch).unwrap();
            l.to_scalar::<f32>().unwrap() as f64
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
        var.set(&Tensor::from_vec(original, shape.clone(), &candle_core::Device::Cpu).unwrap())
            .unwrap();
        let an = g[k] as f64;
        assert!(an.abs() > 1e-5, "{name}: gradient vanished");
        assert!(
            (fd - an).abs() <= 0.03 * an.abs() + 2e-4,
            "{name}[{k}]: analytic {an} vs finite difference {fd}"
        );
        checked += 1;
    }
    assert!(checked >= 6, "checked {checked} tensors");
}

struct KeepBest(Option<continuo_engine::lora::Adapter>);

impl continuo_engine::train::run::Sink for KeepBest {
    fn save_best(
        &mut self,
        _m: &Moonbeam,
        style: &Style,
        _s: &continuo_engine::train::run::TrainSummary,
    ) -> anyhow::Result<()> {
        self.0 = params::adapter_of(style);
        Ok(())
    }
}

#[test]
fn a_short_style_training_lowers_validation_loss_and_leaves_the_base_untouched() {
    use continuo_engine::train::data::{build_dataset, Augment, DatasetOptions};
    use continuo_engine::train::run::{train, TrainConfig, Trainable};
    let m = model();
    let before: Vec<Vec<u32>> = m
        .named_tensors()
        .into_iter()
        .map(|(_, t)| {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(f32::to_bits)
                .collect()
        })
        .collect();
    let dir = common::folk_dir();
    let options = DatasetOptions {
        context_rows: 96,
        val_fraction: 0.25,
        seed: 1,
        augment: Some(Augment::default()),
        augment_copies: 1,
        instrument: None,
    };
    let data = build_dataset(&dir, &m.cfg, options).unwrap();
    assert!(!data.val_samples.is_empty());
    let checkpoint =
        std::env::temp_dir().join(format!("continuo-train-test-{}.resume", std::process::id()));
    let cfg = TrainConfig {
        trainable: Trainable::Lora {
            rank: 4,
            alpha: 16.0,
        },
        epochs: 2,
        lr: 3e-3,
        gamma: 1.0,
        batch_size: 4,
        context_rows: 96,
        seed: 5,
        checkpoint: checkpoint.clone(),
        resume: false,
        progress: false,
        recipe: Default::default(),
        stop: None,
        checkpoint_every: None,
    };
    let mut sink = KeepBest(None);
    let summary = train(
        &m,
        &cfg,
        |e| data.epoch_samples(e as u64),
        &data.val_samples,
        &mut sink,
    )
    .unwrap();
    let initial = summary.initial_val_loss.unwrap();
    let best = summary.best_val_loss.unwrap();
    assert!(best < initial - 0.5, "validation loss {initial} -> {best}");
    assert!(sink.0.is_some());
    let after: Vec<Vec<u32>> = m
        .named_tensors()
        .into_iter()
        .map(|(_, t)| {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(f32::to_bits)
                .collect()
        })
        .collect();
    assert!(before == after, "the base weights changed");

    // Resume: one more epoch continues from the saved state instead of starting over.
    let cfg3 = TrainConfig {
        epochs: 3,
        resume: true,
        ..cfg
    };
    let resumed = train(
        &m,
        &cfg3,
        |e| data.epoch_samples(e as u64),
        &data.val_samples,
        &mut sink,
    )
    .unwrap();
    assert_eq!(resumed.epochs.len(), 3);
    assert_eq!(
        resumed.epochs[..2]
            .iter()
            .map(|e| e.train_loss)
            .collect::<Vec<_>>(),
        summary
            .epochs
            .iter()
            .map(|e| e.train_loss)
            .collect::<Vec<_>>()
    );
    assert!(resumed.epochs[2].train_loss < summary.epochs[0].train_loss);
    let _ = std::fs::remove_file(checkpoint);
}

struct Bits(Vec<(String, Vec<u32>)>);

impl Bits {
    fn of(adapter: &continuo_engine::lora::Adapter) -> Self {
        let mut v: Vec<(String, Vec<u32>)> = adapter
            .pairs
            .iter()
            .flat_map(|(name, pair)| {
                [("a", &pair.a), ("b", &pair.b)].map(|(k, t)| {
                    let bits = t
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .into_iter()
                        .map(f32::to_bits)
                        .collect();
                    (format!("{name:?}.{k}"), bits)
                })
            })
            .collect();
        v.sort();
        Bits(v)
    }
}

#[test]
fn a_run_stopped_at_any_step_and_resumed_matches_the_run_that_never_stopped() {
    use continuo_engine::train::data::{build_dataset, Augment, DatasetOptions};
    use continuo_engine::train::run::{train, Interrupted, TrainConfig, Trainable};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let m = model();
    let options = DatasetOptions {
        context_rows: 96,
        val_fraction: 0.25,
        seed: 2,
        augment: Some(Augment::default()),
        augment_copies: 1,
        instrument: None,
    };
    let data = build_dataset(&common::folk_dir(), &m.cfg, options).unwrap();
    let dir = common::tmp("training", "stop-resume");
    std::fs::create_dir_all(&dir).unwrap();
    let recipe: std::collections::BTreeMap<String, String> =
        [("--lr".to_string(), "0.003".to_string())].into();
    let cfg = TrainConfig {
        trainable: Trainable::Lora {
            rank: 4,
            alpha: 16.0,
        },
        epochs: 2,
        lr: 3e-3,
        gamma: 0.9,
        batch_size: 4,
        context_rows: 96,
        seed: 9,
        checkpoint: dir.join("never-stopped.resume"),
        resume: false,
        progress: false,
        recipe: recipe.clone(),
        stop: None,
        checkpoint_every: None,
    };
    let run = |cfg: &TrainConfig, sink: &mut KeepBest| {
        train(
            &m,
            cfg,
            |e| data.epoch_samples(e as u64),
            &data.val_samples,
            sink,
        )
    };
    let mut whole_sink = KeepBest(None);
    let whole = run(&cfg, &mut whole_sink).unwrap();

    // The same run, stopped after its first step, then after one more, then resumed to the end.
    let stop = Arc::new(AtomicBool::new(true));
    let stopped = TrainConfig {
        checkpoint: dir.join("stopped.resume"),
        stop: Some(stop.clone()),
        ..cfg.clone()
    };
    let mut sink = KeepBest(None);
    let e = run(&stopped, &mut sink).unwrap_err();
    let i = e
        .downcast_ref::<Interrupted>()
        .expect("an Interrupted error");
    assert_eq!((i.epoch, i.step), (1, 1));
    assert!(stopped.checkpoint.is_file());

    // Resuming with another learning rate is refused, naming it; the checkpoint stays.
    let other_lr = TrainConfig {
        resume: true,
        stop: None,
        recipe: [("--lr".to_string(), "0.001".to_string())].into(),
        ..stopped.clone()
    };
    let e = run(&other_lr, &mut sink).unwrap_err().to_string();
    assert!(
        e.contains("--lr: 0.003 in the checkpoint, 0.001 now"),
        "{e}"
    );

    let again = TrainConfig {
        resume: true,
        ..stopped.clone()
    };
    let e = run(&again, &mut sink).unwrap_err();
    let i = e.downcast_ref::<Interrupted>().unwrap();
    assert_eq!((i.epoch, i.step), (1, 2));
    stop.store(false, Ordering::Relaxed);
    let resumed = run(&again, &mut sink).unwrap();

    let losses = |s: &continuo_engine::train::run::TrainSummary| {
        s.epochs
            .iter()
            .map(|e| {
                (
                    e.train_loss.to_bits(),
                    e.val_loss.map(f64::to_bits),
                    e.notes,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(losses(&resumed), losses(&whole));
    assert_eq!(resumed.notes_seen, whole.notes_seen);
    let (a, b) = (whole_sink.0.unwrap(), sink.0.unwrap());
    assert!(Bits::of(&a).0 == Bits::of(&b).0, "the weights differ");

    // Stopped at an epoch's end (a run of one epoch, extended): the second epoch shuffles
    // and augments as the run that never stopped did.
    let first = TrainConfig {
        epochs: 1,
        checkpoint: dir.join("by-epoch.resume"),
        ..cfg.clone()
    };
    let mut sink = KeepBest(None);
    run(&first, &mut sink).unwrap();
    let extended = TrainConfig {
        epochs: 2,
        resume: true,
        ..first
    };
    assert_eq!(losses(&run(&extended, &mut sink).unwrap()), losses(&whole));
    let _ = std::fs::remove_dir_all(&dir);
}
