//! Quantized models: the file round trip, the base fingerprint styles are checked against, and the
//! accuracy cost on the bundled (trained) model through the batched and the decode path.

mod common;

use common::{golden, tiny_model};
use continuo_engine::quant::QFormat;
use continuo_engine::style::{self, StyleCard};
use continuo_engine::train::data::{pack, windows};
use continuo_engine::train::run::evaluate;
use continuo_engine::{
    midi, vocab, Adapter, Chooser, Config, Moonbeam, Note, Precision, Session, Style,
};

fn bits(model: &Moonbeam) -> Vec<(String, Vec<u8>)> {
    model
        .stored_tensors()
        .unwrap()
        .into_iter()
        .map(|(name, t)| {
            let bytes = match t.dtype() {
                candle_core::DType::U8 => t.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
                // f32 and the f16 scales (widened exactly).
                _ => t
                    .to_dtype(candle_core::DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            };
            (name, bytes)
        })
        .collect()
}

#[test]
fn a_quantized_file_loads_back_identical_and_answers_to_its_f32_fingerprint() {
    for format in [QFormat::Q8, QFormat::Q4] {
        let f32_model = tiny_model(Precision::F32);
        let mut q = f32_model.clone();
        let layers = q.quantize(format).unwrap();
        // 7 projections per layer, the supplementary MLP, 2 matrices per GRU layer, fc_out,
        // summary_projection and lm_head.
        let cfg = &f32_model.cfg;
        assert_eq!(
            layers,
            cfg.n_layers * 7 + 2 + cfg.gru_layers * 2 + 3,
            "{format}"
        );
        assert_eq!(q.fingerprint(), f32_model.fingerprint());
        assert!(q.quantize(format).is_err(), "quantizing twice is refused");

        let path = common::tmp("quantized", &format!("tiny_{format}.safetensors"));
        continuo_engine::model::weights::save_weights(&q, &path, &serde_json::json!({})).unwrap();
        let loaded = Moonbeam::load(&f32_model.cfg, &path, Precision::F32).unwrap();
        assert_eq!(loaded.quantization, q.quantization);
        assert_eq!(loaded.fingerprint(), f32_model.fingerprint());
        assert!(
            bits(&loaded) == bits(&q),
            "{format}: the file changed a weight"
        );
        let codes_bytes: u64 = std::fs::metadata(&path).unwrap().len();
        let f32_path = common::tmp("quantized", "tiny_f32.safetensors");
        continuo_engine::model::weights::save_weights(
            &f32_model,
            &f32_path,
            &serde_json::json!({}),
        )
        .unwrap();
        assert!(codes_bytes < std::fs::metadata(&f32_path).unwrap().len());

        // A style made for the f32 base loads on the quantized one, and not on another base.
        let adapter = Adapter::from_peft_dir(&golden("lora_adapter"), &f32_model.cfg).unwrap();
        let style_path = common::tmp("quantized", "golden_style.safetensors");
        let card = StyleCard {
            base_fingerprint: f32_model.fingerprint(),
            ..StyleCard::new("golden", "the golden adapter")
        };
        style::save_style(&style_path, &adapter, &card).unwrap();
        style::load_style(&style_path, &loaded.cfg, Some(&loaded.fingerprint())).unwrap();
        let other = Moonbeam::random(&f32_model.cfg, 99, Precision::F32).unwrap();
        assert!(style::load_style(&style_path, &other.cfg, Some(&other.fingerprint())).is_err());
    }
}

/// Quantizing while loading (layer by layer, so the f32 weights are never all in memory) gives
/// the very model that quantizing after loading gives: the same codes, scales and other
/// tensors, and the same f32 base fingerprint, from safetensors and from the release `.pt`.
#[test]
fn quantizing_while_loading_gives_the_model_quantized_after_loading() {
    let root = common::engine_dir().join("..");
    let bundled_cfg = Config::from_file(&root.join("assets/configs/continuo_base.json")).unwrap();
    let cases = [
        (common::tiny_config(), golden("tiny_model.safetensors")),
        (
            common::tiny_config(),
            golden("tiny_model_release_format_bf16.pt"),
        ),
        (bundled_cfg, root.join("assets/continuo_base.safetensors")),
    ];
    for (cfg, path) in &cases {
        let f32_model = Moonbeam::load(cfg, path, Precision::F32).unwrap();
        for format in [QFormat::Q8, QFormat::Q4] {
            let mut after = f32_model.clone();
            let layers = after.quantize(format).unwrap();
            let streamed = Moonbeam::load_quantized(cfg, path, Precision::F32, format).unwrap();
            let what = format!("{} {format}", path.display());
            assert_eq!(streamed.quantized_layers(), layers, "{what}");
            assert_eq!(streamed.quantization, after.quantization, "{what}");
            assert_eq!(streamed.fingerprint(), f32_model.fingerprint(), "{what}");
            assert!(bits(&streamed) == bits(&after), "{what}: a tensor differs");
        }
    }
    // A file that is quantized already is not quantized again.
    let mut q = tiny_model(Precision::F32);
    q.quantize(QFormat::Q8).unwrap();
    let path = common::tmp("quantized", "tiny_q8_again.safetensors");
    continuo_engine::model::weights::save_weights(&q, &path, &serde_json::json!({})).unwrap();
    let err = Moonbeam::load_quantized(&q.cfg, &path, Precision::F32, QFormat::Q4)
        .expect_err("refused")
        .to_string();
    assert!(err.contains("already quantized"), "{err}");
}

#[test]
fn files_whose_quantization_disagrees_are_refused() {
    let mut q = tiny_model(Precision::F32);
    q.quantize(QFormat::Q8).unwrap();
    let mut tensors = q.stored_tensors().unwrap();
    // Codes without the metadata that says what they are.
    let path = common::tmp("quantized", "no_metadata.safetensors");
    safetensors::serialize_to_file(tensors.iter().map(|(n, t)| (n.as_str(), t)), None, &path)
        .unwrap();
    let err = Moonbeam::load(&q.cfg, &path, Precision::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("continuo.quant"), "{err}");
    // A scale tensor of the wrong shape names the tensor.
    let at = tensors
        .iter()
        .position(|(n, _)| n.ends_with("q_proj.weight.scales"))
        .unwrap();
    tensors[at].1 = tensors[at].1.narrow(1, 0, 1).unwrap();
    let meta = [(
        "continuo.quant".to_string(),
        serde_json::to_string(q.quantization.as_ref().unwrap()).unwrap(),
    )]
    .into();
    let path = common::tmp("quantized", "bad_scales.safetensors");
    safetensors::serialize_to_file(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        Some(meta),
        &path,
    )
    .unwrap();
    let err = Moonbeam::load(&q.cfg, &path, Precision::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("q_proj.weight.scales"), "{err}");
}

/// Files written before the scales became f16 hold them as f32: they still load, to the same
/// model (each scale rounded to the nearest f16, which these f16-exact values already are).
#[test]
fn files_with_f32_scales_still_load() {
    for format in [QFormat::Q8, QFormat::Q4] {
        let mut q = tiny_model(Precision::F32);
        q.quantize(format).unwrap();
        let tensors: Vec<(String, candle_core::Tensor)> = q
            .stored_tensors()
            .unwrap()
            .into_iter()
            .map(|(n, t)| {
                if n.ends_with(".scales") {
                    assert_eq!(t.dtype(), candle_core::DType::F16, "{n}");
                    (n, t.to_dtype(candle_core::DType::F32).unwrap())
                } else {
                    (n, t)
                }
            })
            .collect();
        let meta = [(
            "continuo.quant".to_string(),
            serde_json::to_string(q.quantization.as_ref().unwrap()).unwrap(),
        )]
        .into();
        let path = common::tmp("quantized", &format!("f32_scales_{format}.safetensors"));
        safetensors::serialize_to_file(
            tensors.iter().map(|(n, t)| (n.as_str(), t)),
            Some(meta),
            &path,
        )
        .unwrap();
        let loaded = Moonbeam::load(&q.cfg, &path, Precision::F32).unwrap();
        assert!(bits(&loaded) == bits(&q), "{format}: a tensor differs");
    }
}

/// The bundled model and the two bundled example pieces.
fn bundled() -> (Moonbeam, Vec<Vec<continuo_engine::Note>>) {
    let root = common::engine_dir().join("..");
    let cfg = Config::from_file(&root.join("assets/configs/continuo_base.json")).unwrap();
    let model = Moonbeam::load(
        &cfg,
        &root.join("assets/continuo_base.safetensors"),
        Precision::F32,
    )
    .unwrap();
    let pieces = ["joplin_the_entertainer.mid", "satie_gymnopedie_no1.mid"]
        .iter()
        .map(|f| midi::read_midi_file(&root.join("assets/examples").join(f)).unwrap())
        .collect();
    (model, pieces)
}

#[test]
fn quantization_costs_the_bundled_model_little_loss() {
    let (model, pieces) = bundled();
    let windows: Vec<_> = pieces.iter().flat_map(|p| windows(p, 256)).collect();
    let packed = pack(&windows, 256, None).unwrap();
    let f32_loss = evaluate(&model, &Style::base(), &packed, 4).unwrap();
    for (format, budget) in [(QFormat::Q8, 0.005), (QFormat::Q4, 0.03)] {
        let mut q = model.clone();
        q.quantize(format).unwrap();
        let loss = evaluate(&q, &Style::base(), &packed, 4).unwrap();
        let change = (loss - f32_loss) / f32_loss;
        eprintln!(
            "{format}: loss {loss:.4} against f32 {f32_loss:.4} ({:+.2} %)",
            change * 100.0
        );
        assert!(
            change.abs() <= budget,
            "{format}: {loss} against {f32_loss}"
        );
    }
}

/// Teacher forcing through the decode path's note head: chooses the true value of each
/// attribute and adds its negative log-probability over the whole output vocabulary.
struct Teacher {
    /// The true note's six flat output ids.
    target: [u32; 7],
    nll: f64,
}

impl Chooser for Teacher {
    fn full_vocab(&self) -> bool {
        true
    }

    fn choose(&mut self, attr: usize, allowed: std::ops::Range<usize>, logits: &[f32]) -> usize {
        let id = self.target[attr + 1] as usize;
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let lse = f64::from(max)
            + logits
                .iter()
                .map(|&v| f64::from(v - max).exp())
                .sum::<f64>()
                .ln();
        self.nll += lse - f64::from(logits[id]);
        id - allowed.start
    }
}

/// Mean negative log-likelihood per note of `pieces` through the single-token decode path
/// (the path the plugin plays with), one note after the other.
fn decode_path_nll(model: &Moonbeam, pieces: &[Vec<Note>]) -> f64 {
    let (mut total, mut notes) = (0.0, 0usize);
    for piece in pieces {
        let rows = vocab::input_rows(piece, false);
        let labels = vocab::labels(&model.cfg, &rows).unwrap();
        let mut session = Session::new(model, rows.len());
        session.prefill(&[]).unwrap();
        for (i, note) in piece.iter().enumerate() {
            let mut teacher = Teacher {
                target: labels[i + 1],
                nll: 0.0,
            };
            session.next_values(&mut teacher).unwrap();
            total += teacher.nll;
            notes += 1;
            session.push(note.to_row()).unwrap();
        }
    }
    total / notes as f64
}

#[test]
fn quantization_costs_the_decode_path_little_loss() {
    // The decode path runs the quantized kernels (with int8 inputs where the CPU has them),
    // unlike the batched path of the test above.
    let (model, pieces) = bundled();
    let pieces: Vec<Vec<Note>> = pieces
        .iter()
        .map(|p| windows(p, 202).swap_remove(0))
        .filter(|w| vocab::out_of_range(&model.cfg, &vocab::input_rows(w, false)).is_empty())
        .collect();
    assert_eq!(pieces.len(), 2);
    let f32_nll = decode_path_nll(&model, &pieces);
    for (format, budget) in [(QFormat::Q8, 0.005), (QFormat::Q4, 0.03)] {
        let mut q = model.clone();
        q.quantize(format).unwrap();
        let nll = decode_path_nll(&q, &pieces);
        let change = (nll - f32_nll) / f32_nll;
        eprintln!(
            "{format} ({:?}): {nll:.4} nats per note against f32 {f32_nll:.4} ({:+.2} %)",
            continuo_engine::quant::Kernel::best(),
            change * 100.0
        );
        assert!(change.abs() <= budget, "{format}: {nll} against {f32_nll}");
    }
}
