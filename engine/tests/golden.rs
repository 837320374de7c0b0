//! Equivalence with the official implementation, through the golden vectors in
//! `testdata/golden/` (made by running the reference code on a tiny random model).
//! Tolerances are the ones the golden README suggests for an f32 port.

mod common;

use common::{golden, golden_json as json, tiny_config as config, tiny_model as model};

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use continuo_engine::generate::{continue_notes, GenerateOptions, Sampling, Session};
use continuo_engine::lora::{Adapter, Style};
use continuo_engine::model::forward::{Mask, Row, Trace};
use continuo_engine::model::tables::{fme_angles, mra_position, rope_cos_sin, rope_inv_freq};
use continuo_engine::{vocab, Moonbeam, Note, Precision};
use serde_json::Value;
use std::sync::Arc;

fn outputs() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(golden("forward_outputs.safetensors"), &Device::Cpu)
        .expect("golden outputs")
}

fn rows_of(v: &Value) -> Vec<Row> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let r: Vec<i64> = r
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect();
            [r[0], r[1], r[2], r[3], r[4], r[5]]
        })
        .collect()
}

fn input_rows() -> Vec<Row> {
    rows_of(&json("tokens.json")["input_ids_with_sos_eos"])
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[track_caller]
fn assert_close(name: &str, got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    let (g, w) = (flat(got), flat(want));
    let max = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(max <= tol, "{name}: max |diff| {max} > {tol}");
}

/// Distance in units in the last place between two positive floats.
fn ulps(a: f32, b: f32) -> u32 {
    a.to_bits().abs_diff(b.to_bits())
}

#[test]
fn constants_match_the_reference() {
    let out = outputs();
    let cfg = config();
    let names = ["onset", "dur", "octave", "pitch", "velocity"];
    for (i, name) in names.iter().enumerate() {
        let want = flat(&out[&format!("const/fme_angles_{name}")]);
        let got = fme_angles(cfg.fme_base[i], cfg.attr_dim(), Precision::F32);
        for (g, w) in got.iter().zip(&want) {
            // torch and libm `powf` differ by 2 ulps on one angle (octave, j = 26, 27).
            assert!(ulps(*g, *w) <= 2, "fme angles {name}: {g} vs {w}");
        }
        let want = flat(&out[&format!("const/rope_inv_freq_{name}")]);
        let got = rope_inv_freq(cfg.rope_theta[i], cfg.head_dim(), Precision::F32);
        for (g, w) in got.iter().zip(&want) {
            assert!(ulps(*g, *w) <= 1, "inv_freq {name}: {g} vs {w}");
        }
    }
}

#[test]
fn mra_positions_and_rotary_tables_match() {
    let out = outputs();
    let cfg = config();
    let rows = input_rows();
    let positions = out["const/mra_positions"]
        .to_dtype(candle_core::DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap();
    for (row, want) in rows.iter().zip(&positions) {
        let got: Vec<i64> = (0..6).map(|c| mra_position(row, c)).collect();
        assert_eq!(&got, want);
    }
    let names = ["onset", "dur", "octave", "pitch", "velocity"];
    let cols = [0, 1, 2, 3, 5];
    for (precision, prefix, tol) in [
        (Precision::F32, "f32", 2e-6f32),
        (Precision::Bf16Faithful, "bf16", 0.0),
    ] {
        for (t, name) in names.iter().enumerate() {
            let inv = rope_inv_freq(cfg.rope_theta[t], cfg.head_dim(), precision);
            let want_cos = out[&format!("{prefix}/rope_cos_{name}")]
                .to_vec2::<f32>()
                .unwrap();
            let want_sin = out[&format!("{prefix}/rope_sin_{name}")]
                .to_vec2::<f32>()
                .unwrap();
            for (i, row) in rows.iter().enumerate() {
                let half = cfg.head_dim() / 2;
                let (mut c, mut s) = (vec![0.0; half], vec![0.0; half]);
                rope_cos_sin(mra_position(row, cols[t]), &inv, precision, &mut c, &mut s);
                for j in 0..cfg.head_dim() {
                    let (wc, ws) = (want_cos[i][j], want_sin[i][j]);
                    // bf16 tables may differ by one bf16 ulp where libm and torch round differently.
                    let tol = if tol == 0.0 {
                        wc.abs().max(ws.abs()).max(1e-3) / 128.0
                    } else {
                        tol
                    };
                    assert!(
                        (c[j % half] - wc).abs() <= tol,
                        "{prefix} cos {name} [{i},{j}]: {} vs {wc}",
                        c[j % half]
                    );
                    assert!(
                        (s[j % half] - ws).abs() <= tol,
                        "{prefix} sin {name} [{i},{j}]: {} vs {ws}",
                        s[j % half]
                    );
                }
            }
        }
    }
}

#[test]
fn teacher_forced_pass_matches_tensor_for_tensor() {
    let out = outputs();
    let m = model(Precision::F32);
    let rows = input_rows();
    let mut trace = Trace::default();
    let fwd = m
        .forward(&[&rows], Mask::Causal, &Style::base(), Some(&mut trace))
        .unwrap();
    let names = ["onset", "dur", "octave", "pitch", "instrument", "velocity"];
    for (i, name) in names.iter().enumerate() {
        let got = trace.attr_embeddings[i].squeeze(0).unwrap();
        assert_close(
            name,
            &got,
            &out[&format!("base/attr_embedding_{name}")],
            1e-4,
        );
    }
    assert_close(
        "embed",
        &trace.embed_output.unwrap().squeeze(0).unwrap(),
        &out["base/embed_tokens_output"],
        1e-4,
    );
    assert_close(
        "layer0",
        &trace.hidden_after_layer0.unwrap().squeeze(0).unwrap(),
        &out["base/hidden_after_layer0"],
        1e-4,
    );
    for (layer, (q, k, v)) in trace.qkv.iter().enumerate() {
        assert_close(
            "q",
            &q.squeeze(0).unwrap(),
            &out[&format!("base/sdpa_q_layer{layer}")],
            1e-4,
        );
        assert_close(
            "k",
            &k.squeeze(0).unwrap(),
            &out[&format!("base/sdpa_k_layer{layer}")],
            1e-4,
        );
        assert_close(
            "v",
            &v.squeeze(0).unwrap(),
            &out[&format!("base/sdpa_v_layer{layer}")],
            1e-4,
        );
    }
    assert_close(
        "final hidden",
        &fwd.hidden.squeeze(0).unwrap(),
        &out["base/final_hidden_normed"],
        1e-4,
    );
    let summary = m
        .summary_projection
        .forward(&fwd.hidden)
        .unwrap()
        .squeeze(0)
        .unwrap();
    assert_close("summary", &summary, &out["base/summary_projection"], 1e-4);

    let labels = vocab::labels(&m.cfg, &rows).unwrap();
    let want_labels = json("tokens.json")["labels_language_tokens"].clone();
    let want_labels: Vec<Vec<u32>> = serde_json::from_value(want_labels).unwrap();
    assert_eq!(
        labels.iter().map(|l| l.to_vec()).collect::<Vec<_>>(),
        want_labels
    );
    let inputs: Vec<u32> = labels[1..].iter().flat_map(|l| l[0..6].to_vec()).collect();
    let inputs = Tensor::from_vec(inputs, (1, rows.len() - 1, 6), &Device::Cpu).unwrap();
    let logits = m
        .gru_logits(&fwd.hidden, &inputs, &Style::base())
        .unwrap()
        .squeeze(0)
        .unwrap();
    assert_close(
        "gru logits",
        &logits,
        &out["base/gru_logits_teacher_forced"],
        5e-4,
    );
    let targets: Vec<u32> = labels[1..].iter().flat_map(|l| l[1..7].to_vec()).collect();
    let n = targets.len();
    let targets = Tensor::from_vec(targets, n, &Device::Cpu).unwrap();
    let loss = candle_nn::loss::cross_entropy(
        &logits.reshape((n, m.cfg.decode_vocab_size)).unwrap(),
        &targets,
    )
    .unwrap();
    let want = flat(&out["base/loss"])[0];
    let got = loss.to_scalar::<f32>().unwrap();
    assert!((got - want).abs() < 1e-4, "loss {got} vs {want}");
}

#[test]
fn single_token_path_matches_the_batched_path() {
    let m = model(Precision::F32);
    let rows = input_rows();
    let fwd = m
        .forward(&[&rows], Mask::Causal, &Style::base(), None)
        .unwrap();
    let want = fwd.hidden.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
    let mut session = Session::new(&m, rows.len());
    for (i, row) in rows.iter().enumerate() {
        session.push(*row).unwrap();
        let max = session
            .last_hidden()
            .iter()
            .zip(&want[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max < 1e-4, "position {i}: max |diff| {max}");
    }
}

fn greedy_case(file: &str, m: &Moonbeam, style: &Style) {
    let g = json(file);
    let prompt: Vec<Note> = rows_of(&g["prompt_with_sos"])[1..]
        .iter()
        .map(|r| Note::from_row(*r))
        .collect();
    let want: Vec<Note> = rows_of(&g["generated_only"])
        .into_iter()
        .map(Note::from_row)
        .collect();
    let opts = GenerateOptions {
        allow_stacked: true,
        endless: false,
        max_notes: g["max_gen_len"].as_u64().unwrap() as usize,
        max_duration_ticks: None,
        sampling: Sampling::Greedy,
    };
    let gen = continue_notes(m, style, &prompt, &opts, |_, _| {}).unwrap();
    assert_eq!(gen.rows, want, "{file}");
}

#[test]
fn greedy_continuation_is_identical() {
    greedy_case("greedy_base.json", &model(Precision::F32), &Style::base());
}

#[test]
fn greedy_step_logits_match() {
    let out = outputs();
    let want = out["base/greedy_step_logits_last_position"]
        .to_vec3::<f32>()
        .unwrap();
    let m = model(Precision::F32);
    let g = json("greedy_base.json");
    let prompt: Vec<Note> = rows_of(&g["prompt_with_sos"])[1..]
        .iter()
        .map(|r| Note::from_row(*r))
        .collect();
    let generated: Vec<Note> = rows_of(&g["generated_only"])
        .into_iter()
        .map(Note::from_row)
        .collect();
    // A chooser that records full logits and replays the reference's choices.
    struct Replay {
        values: [i64; 6],
        logits: Vec<Vec<f32>>,
    }
    impl continuo_engine::model::gru::Chooser for Replay {
        fn full_vocab(&self) -> bool {
            true
        }
        fn choose(
            &mut self,
            attr: usize,
            _allowed: std::ops::Range<usize>,
            logits: &[f32],
        ) -> usize {
            self.logits.push(logits.to_vec());
            self.values[attr] as usize
        }
    }
    let mut session = Session::new(&m, prompt.len() + 1 + generated.len());
    session.prefill(&prompt).unwrap();
    let mut prev = prompt.last().unwrap().onset;
    for (i, note) in generated.iter().enumerate() {
        let mut values = note.to_row();
        values[0] = note.onset - prev;
        prev = note.onset;
        let mut replay = Replay {
            values,
            logits: Vec::new(),
        };
        session.next_values(&mut replay).unwrap();
        for (a, want_a) in want[i].iter().enumerate().take(6) {
            let max = replay.logits[a]
                .iter()
                .zip(want_a)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(max < 5e-4, "note {i} attr {a}: max |diff| {max}");
        }
        session.push(note.to_row()).unwrap();
    }
}

#[test]
fn release_container_loads_with_bf16_weights() {
    let cfg = config();
    let pt = Moonbeam::load(
        &cfg,
        &golden("tiny_model_release_format_bf16.pt"),
        Precision::F32,
    )
    .unwrap();
    let f32m = model(Precision::F32);
    let a: HashMap<String, Tensor> = pt.named_tensors().into_iter().collect();
    assert_eq!(a.len(), 53);
    for (name, t) in f32m.named_tensors() {
        let want = t
            .to_dtype(candle_core::DType::BF16)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        assert_close(&name, &a[&name], &want, 0.0);
    }
}

#[test]
fn bf16_faithful_mode_matches_the_reference_tables() {
    let out = outputs();
    let cfg = config();
    let pt = Moonbeam::load(
        &cfg,
        &golden("tiny_model_release_format_bf16.pt"),
        Precision::Bf16Faithful,
    )
    .unwrap();
    let rows = input_rows();
    let mut trace = Trace::default();
    pt.embed(&[&rows], Some(&mut trace)).unwrap();
    let names = ["onset", "dur", "octave", "pitch", "instrument", "velocity"];
    for (i, name) in names.iter().enumerate() {
        let got = trace.attr_embeddings[i].squeeze(0).unwrap();
        // Two bf16 roundings of the linear output can fall on either side: allow a few bf16 ulps.
        assert_close(
            name,
            &got,
            &out[&format!("bf16/attr_embedding_{name}")],
            0.05,
        );
    }
    // The onset probe: large onsets are rounded to bf16 before the sinusoid.
    let values = out["probe/onset_values"]
        .to_dtype(candle_core::DType::I64)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap();
    let probe_rows: Vec<Row> = values.iter().map(|&v| [v, 1, 5, 0, 0, 64]).collect();
    for (precision, model, key) in [
        (Precision::F32, model(Precision::F32), "probe/f32_fme_onset"),
        (Precision::Bf16Faithful, pt, "probe/bf16_fme_onset"),
    ] {
        let mut trace = Trace::default();
        model.embed(&[&probe_rows], Some(&mut trace)).unwrap();
        let tol = if precision == Precision::F32 {
            1e-4
        } else {
            0.05
        };
        assert_close(
            key,
            &trace.attr_embeddings[0].squeeze(0).unwrap(),
            &out[key],
            tol,
        );
    }
}

#[test]
fn wrong_weights_name_the_tensor_and_shape() {
    let mut cfg = config();
    cfg.intermediate_size = 256;
    let err = Moonbeam::load(&cfg, &golden("tiny_model.safetensors"), Precision::F32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.layers.0.mlp.gate_proj.weight")
            && err.contains("[256, 192]")
            && err.contains("[128, 192]"),
        "{err}"
    );
    let mut cfg = config();
    cfg.n_layers = 3;
    let err = Moonbeam::load(&cfg, &golden("tiny_model.safetensors"), Precision::F32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.layers.2.self_attn.q_proj.weight") && err.contains("missing"),
        "{err}"
    );
}

fn golden_style(m: &Moonbeam) -> Style {
    let adapter = Adapter::from_peft_dir(&golden("lora_adapter"), &m.cfg).expect("golden adapter");
    assert_eq!(adapter.pairs.len(), 4 * m.cfg.n_layers + 4);
    Style::single(Arc::new(adapter), 1.0)
}

#[test]
fn lora_teacher_forced_pass_matches() {
    let out = outputs();
    let m = model(Precision::F32);
    let style = golden_style(&m);
    let rows = input_rows();
    let mut trace = Trace::default();
    let fwd = m
        .forward(&[&rows], Mask::Causal, &style, Some(&mut trace))
        .unwrap();
    assert_close(
        "lora embed",
        &trace.embed_output.unwrap().squeeze(0).unwrap(),
        &out["lora/hidden_embeddings"],
        1e-4,
    );
    assert_close(
        "lora layer0",
        &trace.hidden_after_layer0.unwrap().squeeze(0).unwrap(),
        &out["lora/hidden_after_layer0"],
        1e-4,
    );
    assert_close(
        "lora final",
        &fwd.hidden.squeeze(0).unwrap(),
        &out["lora/final_hidden_normed"],
        1e-4,
    );
    let summary = m
        .summary_projection
        .forward_styled(
            &fwd.hidden,
            &style,
            continuo_engine::lora::Target::SummaryProjection,
        )
        .unwrap();
    assert_close(
        "lora summary",
        &summary.squeeze(0).unwrap(),
        &out["lora/summary_projection"],
        1e-4,
    );
    let labels = vocab::labels(&m.cfg, &rows).unwrap();
    let inputs: Vec<u32> = labels[1..].iter().flat_map(|l| l[0..6].to_vec()).collect();
    let inputs = Tensor::from_vec(inputs, (1, rows.len() - 1, 6), &Device::Cpu).unwrap();
    let logits = m
        .gru_logits(&fwd.hidden, &inputs, &style)
        .unwrap()
        .squeeze(0)
        .unwrap();
    assert_close(
        "lora gru logits",
        &logits,
        &out["lora/gru_logits_teacher_forced"],
        5e-4,
    );
    // Strength 0 is the base model exactly.
    let off = Style::single(style.parts[0].0.clone(), 0.0);
    let base = m.forward(&[&rows], Mask::Causal, &off, None).unwrap();
    assert_close(
        "strength 0",
        &base.hidden.squeeze(0).unwrap(),
        &out["base/final_hidden_normed"],
        1e-4,
    );
}

#[test]
fn lora_greedy_continuation_is_identical() {
    let m = model(Precision::F32);
    let style = golden_style(&m);
    greedy_case("greedy_lora.json", &m, &style);
}
