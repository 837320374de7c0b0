//! Loading weights and configs from bad files gives errors that name the problem, never panics.

mod common;

use common::{golden, tiny_config as config};

use continuo_engine::{Config, Moonbeam, Precision};

fn load_bytes(name: &str, bytes: &[u8]) -> String {
    let path = std::env::temp_dir().join(format!("continuo-weights-{}-{name}", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    let result = Moonbeam::load(&config(), &path, Precision::F32);
    let _ = std::fs::remove_file(&path);
    match result {
        Ok(_) => panic!("{name}: loading should fail"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_and_foreign_files_are_refused() {
    let st = std::fs::read(golden("tiny_model.safetensors")).unwrap();
    for cut in [0, 4, 8, 100, st.len() / 2, st.len() - 1] {
        let err = load_bytes(&format!("cut{cut}.safetensors"), &st[..cut]);
        assert!(!err.is_empty());
    }
    let pt = std::fs::read(golden("tiny_model_release_format_bf16.pt")).unwrap();
    for cut in [10, pt.len() / 3, pt.len() - 10] {
        load_bytes(&format!("cut{cut}.pt"), &pt[..cut]);
    }
    let err = load_bytes(
        "midi.safetensors",
        &std::fs::read(golden("input.mid")).unwrap(),
    );
    assert!(
        err.contains("safetensors") || err.contains("header"),
        "{err}"
    );
    let mut absurd = st.clone();
    absurd[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let err = load_bytes("absurd.safetensors", &absurd);
    assert!(err.contains("header"), "{err}");
}

#[test]
fn a_checkpoint_for_another_shape_names_the_tensor() {
    let mut cfg = config();
    cfg.gru_hidden = 64;
    let err = Moonbeam::load(
        &cfg,
        &golden("tiny_model_release_format_bf16.pt"),
        Precision::F32,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("decoder.gru.weight_ih_l0")
            && err.contains("[192, 64]")
            && err.contains("[96, 32]"),
        "{err}"
    );
}

#[test]
fn configs_are_validated() {
    let text = std::fs::read_to_string(golden("tiny_config.json")).unwrap();
    let bad = text.replace("\"decode_vocab_size\": 849", "\"decode_vocab_size\": 850");
    assert!(Config::from_json(&bad)
        .unwrap_err()
        .to_string()
        .contains("decode_vocab_size"));
    let bad = text.replace("\"num_attention_heads\": 12", "\"num_attention_heads\": 8");
    assert!(Config::from_json(&bad)
        .unwrap_err()
        .to_string()
        .contains("12 attention heads"));
    assert!(Config::from_json("{").is_err());
    // The shipped official configs parse to the spec's shapes.
    let root = common::configs_dir();
    assert_eq!(
        Config::from_file(&root.join("moonbeam_small.json")).unwrap(),
        Config::small()
    );
    assert_eq!(
        Config::from_file(&root.join("moonbeam_medium.json")).unwrap(),
        Config::medium()
    );
}

#[test]
fn non_finite_weights_and_unused_tensors_are_refused_by_name() {
    let cfg = config();
    let model = Moonbeam::load(&cfg, &golden("tiny_model.safetensors"), Precision::F32).unwrap();
    let mut tensors: std::collections::HashMap<String, candle_core::Tensor> =
        model.named_tensors().into_iter().collect();
    let name = "model.layers.1.mlp.up_proj.weight";
    let t = &tensors[name];
    let mut values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    values[7] = f32::NAN;
    let bad = candle_core::Tensor::from_vec(values, t.dims(), &candle_core::Device::Cpu).unwrap();
    let mut with_nan = tensors.clone();
    with_nan.insert(name.into(), bad);
    let err = Moonbeam::from_store(
        &cfg,
        &continuo_engine::model::weights::WeightStore::from_tensors(with_nan),
        Precision::F32,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains(name) && err.contains("non-finite"), "{err}");
    // Weights of two layers with a config of one.
    let mut one_layer = cfg.clone();
    one_layer.n_layers = 1;
    let err = Moonbeam::from_store(
        &one_layer,
        &continuo_engine::model::weights::WeightStore::from_tensors(tensors.clone()),
        Precision::F32,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("model.layers.1.") && err.contains("does not use"),
        "{err}"
    );
    // A stray tensor.
    tensors.insert("extra.weight".into(), tensors["model.norm.weight"].clone());
    let err = Moonbeam::from_store(
        &cfg,
        &continuo_engine::model::weights::WeightStore::from_tensors(tensors),
        Precision::F32,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("extra.weight"), "{err}");
}

#[test]
fn configs_that_make_the_model_meaningless_are_refused() {
    let text = std::fs::read_to_string(golden("tiny_config.json")).unwrap();
    for (from, to, needle) in [
        (
            "\"rms_norm_eps\": 1e-05",
            "\"rms_norm_eps\": -1",
            "rms_norm_eps",
        ),
        (
            "\"rope_theta_onset\": 199999",
            "\"rope_theta_onset\": 0",
            "rope_theta_onset",
        ),
        (
            "\"num_hidden_layers\": 2,\n  \"max_position",
            "\"num_hidden_layers\": 0,\n  \"max_position",
            "layer",
        ),
        ("\"max_len\": 1024", "\"max_len\": 1", "max_len"),
    ] {
        assert!(text.contains(from), "{from}");
        let err = Config::from_json(&text.replace(from, to))
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{to}: {err}");
    }
}

#[test]
fn a_safetensors_header_whose_length_starts_with_0x80_is_not_taken_for_a_pickle() {
    // A legacy pickle opens with 0x80; so does a safetensors file whose header length is
    // 0x80 modulo 256 (the base v3 checkpoint was one). Pad the card until that happens.
    let m = common::tiny_model(Precision::F32);
    let path = std::env::temp_dir().join(format!("continuo-weights-{}-0x80", std::process::id()));
    let mut found = false;
    for pad in 0..256 {
        let card = serde_json::json!({ "pad": "x".repeat(pad) });
        continuo_engine::model::weights::save_weights(&m, &path, &card).unwrap();
        let head = std::fs::read(&path).unwrap();
        if head[0] == 0x80 {
            found = true;
            break;
        }
    }
    assert!(found, "no padding gave a header length of 0x80 modulo 256");
    let loaded = Moonbeam::load(&m.cfg, &path, Precision::F32);
    let _ = std::fs::remove_file(&path);
    assert_eq!(loaded.unwrap().fingerprint(), m.fingerprint());
}
