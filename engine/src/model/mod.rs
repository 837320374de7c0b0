//! The Moonbeam model: FME embeddings, MRA transformer, GRU note head.
//!
//! Two paths share one set of frozen weights:
//! - the batched path ([`Moonbeam::forward`]) runs whole sequences through candle:
//!   prompts (prefill), teacher-forced passes and training;
//! - the single-token path ([`decode`]) runs one note at a time on plain slices with
//!   the kernels in [`crate::kernels`], against a preallocated [`decode::KvCache`].
//!
//! Element-wise tables (FME sinusoids, rotary cos/sin) come from [`tables`] for both,
//! so the two paths differ only in summation order.

pub mod decode;
pub mod forward;
pub mod gru;
pub mod linear;
pub mod tables;
pub mod weights;

use std::path::Path;

use candle_core::Tensor;

use crate::config::Config;
use crate::error::WeightsError;
pub use linear::Linear;
pub use tables::{Precision, Tables};
use weights::WeightStore;

/// One FME attribute embedding: `W (pe(x) + t) + b` (spec §2.1).
#[derive(Debug, Clone)]
pub struct Fme {
    /// `translation_bias`, shape `(1, d)`.
    pub translation_bias: Tensor,
    pub linear: Linear,
}

/// One decoder layer's weights.
#[derive(Debug, Clone)]
pub struct Layer {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
    pub input_norm: Tensor,
    pub post_attention_norm: Tensor,
}

/// One GRU layer (PyTorch layout, gates stacked `[r; z; n]`).
#[derive(Debug, Clone)]
pub struct GruLayer {
    pub ih: Linear,
    pub hh: Linear,
}

/// The frozen base model.
#[derive(Debug, Clone)]
pub struct Moonbeam {
    pub cfg: Config,
    pub tables: Tables,
    /// Onset, duration, octave, pitch class, velocity.
    pub fme: [Fme; 5],
    /// `instrument_embedding.embedding.weight`, `(instrument vocab, d)`.
    pub instrument: Tensor,
    /// `supplementary_embedding.weight`, `(2, hidden)`: row 0 SOS, row 1 EOS.
    pub supplementary: Tensor,
    pub mlp_in: Linear,
    pub mlp_out: Linear,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    pub summary_projection: Linear,
    pub gru: Vec<GruLayer>,
    pub fc_out: Linear,
    /// `decoder_embedding.weight`, `(decode vocab, Dg)`.
    pub decoder_embedding: Tensor,
    pub lm_head: Linear,
}

const FME_NAMES: [&str; 5] = ["onset", "dur", "octave", "pitch", "velocity"];

impl Moonbeam {
    /// Loads a checkpoint (`.safetensors` or the official `.pt`) for `cfg`.
    pub fn load(cfg: &Config, path: &Path, precision: Precision) -> Result<Self, WeightsError> {
        let ws = WeightStore::open(path)?;
        Self::from_store(cfg, &ws, precision)
    }

    /// Builds the model from named tensors, checking every name and shape.
    pub fn from_store(
        cfg: &Config,
        ws: &WeightStore,
        precision: Precision,
    ) -> Result<Self, WeightsError> {
        let h = cfg.hidden_size;
        let d = cfg.attr_dim();
        let kv = cfg.n_kv_heads * cfg.head_dim();
        let g = cfg.gru_hidden;
        let v = cfg.decode_vocab_size;
        let fme = FME_NAMES
            .iter()
            .map(|name| {
                let p = format!("model.{name}_embedding");
                Ok(Fme {
                    translation_bias: ws.get(&format!("{p}.translation_bias"), &[1, d])?,
                    linear: Linear::load(ws, &format!("{p}.linear_fme"), d, d, true)?,
                })
            })
            .collect::<Result<Vec<_>, WeightsError>>()?;
        let fme: [Fme; 5] = fme.try_into().map_err(|_| WeightsError::Format {
            path: Default::default(),
            reason: "internal: FME count".into(),
        })?;
        let layers = (0..cfg.n_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                Ok(Layer {
                    q_proj: Linear::load(ws, &format!("{p}.self_attn.q_proj"), h, h, false)?,
                    k_proj: Linear::load(ws, &format!("{p}.self_attn.k_proj"), kv, h, false)?,
                    v_proj: Linear::load(ws, &format!("{p}.self_attn.v_proj"), kv, h, false)?,
                    o_proj: Linear::load(ws, &format!("{p}.self_attn.o_proj"), h, h, false)?,
                    gate_proj: Linear::load(
                        ws,
                        &format!("{p}.mlp.gate_proj"),
                        cfg.intermediate_size,
                        h,
                        false,
                    )?,
                    up_proj: Linear::load(
                        ws,
                        &format!("{p}.mlp.up_proj"),
                        cfg.intermediate_size,
                        h,
                        false,
                    )?,
                    down_proj: Linear::load(
                        ws,
                        &format!("{p}.mlp.down_proj"),
                        h,
                        cfg.intermediate_size,
                        false,
                    )?,
                    input_norm: ws.get(&format!("{p}.input_layernorm.weight"), &[h])?,
                    post_attention_norm: ws
                        .get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                })
            })
            .collect::<Result<Vec<_>, WeightsError>>()?;
        let gru = (0..cfg.gru_layers)
            .map(|l| {
                let w = |kind: &str, shape: &[usize]| {
                    ws.get(&format!("decoder.gru.{kind}_l{l}"), shape)
                };
                Ok(GruLayer {
                    ih: Linear {
                        weight: w("weight_ih", &[3 * g, g])?,
                        bias: Some(w("bias_ih", &[3 * g])?),
                        out_dim: 3 * g,
                        in_dim: g,
                    },
                    hh: Linear {
                        weight: w("weight_hh", &[3 * g, g])?,
                        bias: Some(w("bias_hh", &[3 * g])?),
                        out_dim: 3 * g,
                        in_dim: g,
                    },
                })
            })
            .collect::<Result<Vec<_>, WeightsError>>()?;
        Ok(Moonbeam {
            cfg: cfg.clone(),
            tables: Tables::new(cfg, precision),
            fme,
            instrument: ws.get(
                "model.instrument_embedding.embedding.weight",
                &[cfg.vocab[4], d],
            )?,
            supplementary: ws.get("model.supplementary_embedding.weight", &[2, h])?,
            mlp_in: Linear::load(ws, "model.supplementary_MLP.0", h / 2, h, true)?,
            mlp_out: Linear::load(ws, "model.supplementary_MLP.2", h, h / 2, true)?,
            layers,
            norm: ws.get("model.norm.weight", &[h])?,
            summary_projection: Linear::load(ws, "summary_projection", g, h, false)?,
            gru,
            fc_out: Linear::load(ws, "decoder.fc_out", g, g, true)?,
            decoder_embedding: ws.get("decoder_embedding.weight", &[v, g])?,
            lm_head: Linear::load(ws, "lm_head", v, g, false)?,
        })
    }

    /// Switches between plain f32 and bf16-faithful element-wise numerics.
    pub fn set_precision(&mut self, precision: Precision) {
        self.tables = Tables::new(&self.cfg, precision);
    }

    /// The expected name and shape of every tensor of a checkpoint for `cfg`.
    pub fn expected_tensors(cfg: &Config) -> Vec<(String, Vec<usize>)> {
        let h = cfg.hidden_size;
        let d = cfg.attr_dim();
        let kv = cfg.n_kv_heads * cfg.head_dim();
        let g = cfg.gru_hidden;
        let v = cfg.decode_vocab_size;
        let mut out = Vec::new();
        for name in FME_NAMES {
            let p = format!("model.{name}_embedding");
            out.push((format!("{p}.translation_bias"), vec![1, d]));
            out.push((format!("{p}.linear_fme.weight"), vec![d, d]));
            out.push((format!("{p}.linear_fme.bias"), vec![d]));
        }
        out.push((
            "model.instrument_embedding.embedding.weight".into(),
            vec![cfg.vocab[4], d],
        ));
        out.push(("model.supplementary_embedding.weight".into(), vec![2, h]));
        out.push(("model.supplementary_MLP.0.weight".into(), vec![h / 2, h]));
        out.push(("model.supplementary_MLP.0.bias".into(), vec![h / 2]));
        out.push(("model.supplementary_MLP.2.weight".into(), vec![h, h / 2]));
        out.push(("model.supplementary_MLP.2.bias".into(), vec![h]));
        for i in 0..cfg.n_layers {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.self_attn.q_proj.weight"), vec![h, h]));
            out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
            out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
            out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, h]));
            out.push((
                format!("{p}.mlp.gate_proj.weight"),
                vec![cfg.intermediate_size, h],
            ));
            out.push((
                format!("{p}.mlp.up_proj.weight"),
                vec![cfg.intermediate_size, h],
            ));
            out.push((
                format!("{p}.mlp.down_proj.weight"),
                vec![h, cfg.intermediate_size],
            ));
            out.push((format!("{p}.input_layernorm.weight"), vec![h]));
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        }
        out.push(("model.norm.weight".into(), vec![h]));
        for l in 0..cfg.gru_layers {
            out.push((format!("decoder.gru.weight_ih_l{l}"), vec![3 * g, g]));
            out.push((format!("decoder.gru.weight_hh_l{l}"), vec![3 * g, g]));
            out.push((format!("decoder.gru.bias_ih_l{l}"), vec![3 * g]));
            out.push((format!("decoder.gru.bias_hh_l{l}"), vec![3 * g]));
        }
        out.push(("decoder.fc_out.weight".into(), vec![g, g]));
        out.push(("decoder.fc_out.bias".into(), vec![g]));
        out.push(("decoder_embedding.weight".into(), vec![v, g]));
        out.push(("summary_projection.weight".into(), vec![g, h]));
        out.push(("lm_head.weight".into(), vec![v, g]));
        out
    }

    /// A model with random weights at the shapes of `cfg` (for benchmarks and tests):
    /// matrices uniform with the variance of `N(0,1)/sqrt(fan_in)`, norms near 1, small
    /// biases, translation biases in `[0, 1)`. Filled in parallel, so the 839M shapes take seconds.
    pub fn random(cfg: &Config, seed: u64, precision: Precision) -> Result<Self, WeightsError> {
        use rayon::prelude::*;
        let mut tensors = std::collections::HashMap::new();
        for (k, (name, shape)) in Self::expected_tensors(cfg).into_iter().enumerate() {
            let n: usize = shape.iter().product();
            let fan_in = *shape.last().unwrap_or(&1) as f32;
            // (low, high) of a uniform distribution.
            let (low, high) = if name.ends_with("translation_bias") {
                (0.0, 1.0)
            } else if name.contains("norm") {
                (0.9, 1.1)
            } else if shape.len() == 1 {
                (-0.1, 0.1)
            } else {
                let a = 3f32.sqrt() / fan_in.sqrt();
                (-a, a)
            };
            let mut data = vec![0f32; n];
            data.par_chunks_mut(1 << 16)
                .enumerate()
                .for_each(|(c, chunk)| {
                    let mut state =
                        seed ^ ((k as u64) << 40) ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    for v in chunk.iter_mut() {
                        // splitmix64: cheap, and plenty for benchmark weights.
                        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                        let mut z = state;
                        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                        z ^= z >> 31;
                        let u = (z >> 40) as f32 / (1u64 << 24) as f32;
                        *v = low + (high - low) * u;
                    }
                });
            tensors.insert(
                name,
                Tensor::from_vec(data, shape, &candle_core::Device::Cpu)?,
            );
        }
        Self::from_store(cfg, &WeightStore::from_tensors(tensors), precision)
    }

    /// A fresh model to train from: like [`Moonbeam::random`] but with norms at exactly 1
    /// and linear biases at 0, as PyTorch initialises them.
    pub fn init_for_training(cfg: &Config, seed: u64) -> Result<Self, WeightsError> {
        let random = Self::random(cfg, seed, Precision::F32)?;
        let mut tensors = std::collections::HashMap::new();
        for (name, t) in random.named_tensors() {
            let t = if name.contains("norm") {
                t.ones_like()?
            } else if t.rank() == 1 {
                t.zeros_like()?
            } else {
                t
            };
            tensors.insert(name, t);
        }
        Self::from_store(cfg, &WeightStore::from_tensors(tensors), Precision::F32)
    }

    /// All weights as named tensors (the official names), e.g. to save a checkpoint.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (name, f) in FME_NAMES.iter().zip(&self.fme) {
            let p = format!("model.{name}_embedding");
            out.push((format!("{p}.translation_bias"), f.translation_bias.clone()));
            push_linear(&mut out, &format!("{p}.linear_fme"), &f.linear);
        }
        out.push((
            "model.instrument_embedding.embedding.weight".into(),
            self.instrument.clone(),
        ));
        out.push((
            "model.supplementary_embedding.weight".into(),
            self.supplementary.clone(),
        ));
        push_linear(&mut out, "model.supplementary_MLP.0", &self.mlp_in);
        push_linear(&mut out, "model.supplementary_MLP.2", &self.mlp_out);
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            push_linear(&mut out, &format!("{p}.self_attn.q_proj"), &l.q_proj);
            push_linear(&mut out, &format!("{p}.self_attn.k_proj"), &l.k_proj);
            push_linear(&mut out, &format!("{p}.self_attn.v_proj"), &l.v_proj);
            push_linear(&mut out, &format!("{p}.self_attn.o_proj"), &l.o_proj);
            push_linear(&mut out, &format!("{p}.mlp.gate_proj"), &l.gate_proj);
            push_linear(&mut out, &format!("{p}.mlp.up_proj"), &l.up_proj);
            push_linear(&mut out, &format!("{p}.mlp.down_proj"), &l.down_proj);
            out.push((format!("{p}.input_layernorm.weight"), l.input_norm.clone()));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                l.post_attention_norm.clone(),
            ));
        }
        out.push(("model.norm.weight".into(), self.norm.clone()));
        for (l, layer) in self.gru.iter().enumerate() {
            out.push((
                format!("decoder.gru.weight_ih_l{l}"),
                layer.ih.weight.clone(),
            ));
            out.push((
                format!("decoder.gru.weight_hh_l{l}"),
                layer.hh.weight.clone(),
            ));
            if let (Some(bi), Some(bh)) = (&layer.ih.bias, &layer.hh.bias) {
                out.push((format!("decoder.gru.bias_ih_l{l}"), bi.clone()));
                out.push((format!("decoder.gru.bias_hh_l{l}"), bh.clone()));
            }
        }
        push_linear(&mut out, "decoder.fc_out", &self.fc_out);
        out.push((
            "decoder_embedding.weight".into(),
            self.decoder_embedding.clone(),
        ));
        push_linear(&mut out, "summary_projection", &self.summary_projection);
        push_linear(&mut out, "lm_head", &self.lm_head);
        out
    }
}

fn push_linear(out: &mut Vec<(String, Tensor)>, name: &str, l: &Linear) {
    out.push((format!("{name}.weight"), l.weight.clone()));
    if let Some(b) = &l.bias {
        out.push((format!("{name}.bias"), b.clone()));
    }
}
