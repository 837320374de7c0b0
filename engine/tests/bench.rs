//! The figures `continuo bench` derives from a model's shape.

mod common;

use common::tiny_config;
use continuo_engine::bench::prefill_macs;
use continuo_engine::{Moonbeam, Precision};

#[test]
fn prefill_macs_count_every_projection_weight_once_per_row() {
    let cfg = tiny_config();
    let model = Moonbeam::random(&cfg, 1, Precision::F32).unwrap();
    // From the config alone: q and o are hidden x hidden, k and v hidden x (kv heads x head
    // dim), gate, up and down hidden x intermediate.
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let kv = cfg.n_kv_heads * cfg.head_dim();
    let per_layer = 2 * h * h + 2 * h * kv + 3 * h * i;
    let rows = 17;
    assert_eq!(
        prefill_macs(&model, rows),
        (cfg.n_layers * per_layer * rows) as f64
    );
}

#[test]
fn the_weight_stream_rate_is_measured_for_f32_and_quantized_models() {
    use continuo_engine::bench::{measure_weight_stream_gb_s, weight_bytes};
    use continuo_engine::quant::QFormat;
    let cfg = tiny_config();
    let mut model = Moonbeam::random(&cfg, 1, Precision::F32).unwrap();
    let f32_rate = measure_weight_stream_gb_s(&model);
    let f32_bytes = weight_bytes(&model);
    assert!(model.quantize(QFormat::Q4).unwrap() > 0);
    let q4_rate = measure_weight_stream_gb_s(&model);
    assert!(
        weight_bytes(&model) < f32_bytes,
        "the q4 model has fewer bytes to stream"
    );
    for rate in [f32_rate, q4_rate] {
        // Somewhere between a slow disk and far beyond any memory: a rate, not a count.
        assert!(rate.is_finite() && rate > 0.01 && rate < 1e5, "{rate} GB/s");
    }
}
