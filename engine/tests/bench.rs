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
