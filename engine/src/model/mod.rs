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

pub use crate::checkpoint::{Module, Proj, Shape, FME_NAMES};
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

impl Fme {
    /// FME attribute `k` (0 onset, 1 duration, 2 octave, 3 pitch class, 4 velocity).
    fn load(ws: &WeightStore, cfg: &Config, k: usize) -> Result<Self, WeightsError> {
        Ok(Fme {
            translation_bias: ws.tensor(Module::FmeBias(k), cfg)?,
            linear: Linear::load(ws, Module::FmeLinear(k), cfg)?,
        })
    }
}

impl Layer {
    /// Decoder layer `i`.
    fn load(ws: &WeightStore, cfg: &Config, i: usize) -> Result<Self, WeightsError> {
        let linear = |proj| Linear::load(ws, Module::Proj(i, proj), cfg);
        Ok(Layer {
            q_proj: linear(Proj::Q)?,
            k_proj: linear(Proj::K)?,
            v_proj: linear(Proj::V)?,
            o_proj: linear(Proj::O)?,
            gate_proj: linear(Proj::Gate)?,
            up_proj: linear(Proj::Up)?,
            down_proj: linear(Proj::Down)?,
            input_norm: ws.tensor(Module::InputNorm(i), cfg)?,
            post_attention_norm: ws.tensor(Module::PostAttentionNorm(i), cfg)?,
        })
    }

    /// The projection `proj`.
    pub fn proj(&self, proj: Proj) -> &Linear {
        match proj {
            Proj::Q => &self.q_proj,
            Proj::K => &self.k_proj,
            Proj::V => &self.v_proj,
            Proj::O => &self.o_proj,
            Proj::Gate => &self.gate_proj,
            Proj::Up => &self.up_proj,
            Proj::Down => &self.down_proj,
        }
    }
}

impl GruLayer {
    /// GRU layer `l` of the note head.
    fn load(ws: &WeightStore, cfg: &Config, l: usize) -> Result<Self, WeightsError> {
        let [w_ih, w_hh, b_ih, b_hh]: [Tensor; 4] = ws
            .module(Module::Gru(l), cfg)?
            .try_into()
            .map_err(|_| internal("a GRU layer has four tensors"))?;
        Ok(GruLayer {
            ih: Linear::new(w_ih, Some(b_ih))?,
            hh: Linear::new(w_hh, Some(b_hh))?,
        })
    }
}

fn internal(what: &str) -> WeightsError {
    WeightsError::Format {
        path: Default::default(),
        reason: format!("internal: {what}"),
    }
}

impl WeightStore {
    /// The tensors of `module` for `cfg`, in [`Module::tensors`] order, each checked.
    pub fn module(&self, module: Module, cfg: &Config) -> Result<Vec<Tensor>, WeightsError> {
        module
            .tensors(cfg)
            .iter()
            .map(|(name, shape)| self.get(name, shape))
            .collect()
    }

    /// A module that is one tensor.
    pub fn tensor(&self, module: Module, cfg: &Config) -> Result<Tensor, WeightsError> {
        let mut t = self.module(module, cfg)?;
        match t.len() {
            1 => Ok(t.remove(0)),
            _ => Err(internal(&format!(
                "{} is not a single tensor",
                module.name()
            ))),
        }
    }
}

impl Moonbeam {
    /// Loads a checkpoint (`.safetensors` or the official `.pt`) for `cfg`.
    pub fn load(cfg: &Config, path: &Path, precision: Precision) -> Result<Self, WeightsError> {
        let ws = WeightStore::open(path)?;
        Self::from_store(cfg, &ws, precision)
    }

    /// Builds the model from named tensors, checking every name and shape in checkpoint
    /// order ([`Module::all`]), so the first mismatch reported is the first in the file.
    pub fn from_store(
        cfg: &Config,
        ws: &WeightStore,
        precision: Precision,
    ) -> Result<Self, WeightsError> {
        let fme: [Fme; 5] = (0..FME_NAMES.len())
            .map(|k| Fme::load(ws, cfg, k))
            .collect::<Result<Vec<_>, WeightsError>>()?
            .try_into()
            .map_err(|_| internal("FME count"))?;
        Ok(Moonbeam {
            cfg: cfg.clone(),
            tables: Tables::new(cfg, precision),
            fme,
            instrument: ws.tensor(Module::Instrument, cfg)?,
            supplementary: ws.tensor(Module::Supplementary, cfg)?,
            mlp_in: Linear::load(ws, Module::MlpIn, cfg)?,
            mlp_out: Linear::load(ws, Module::MlpOut, cfg)?,
            layers: (0..cfg.n_layers)
                .map(|i| Layer::load(ws, cfg, i))
                .collect::<Result<_, _>>()?,
            norm: ws.tensor(Module::Norm, cfg)?,
            gru: (0..cfg.gru_layers)
                .map(|l| GruLayer::load(ws, cfg, l))
                .collect::<Result<_, _>>()?,
            fc_out: Linear::load(ws, Module::FcOut, cfg)?,
            decoder_embedding: ws.tensor(Module::DecoderEmbedding, cfg)?,
            summary_projection: Linear::load(ws, Module::SummaryProjection, cfg)?,
            lm_head: Linear::load(ws, Module::LmHead, cfg)?,
        })
    }

    /// The tensors of `module`, in [`Module::tensors`] order.
    pub fn module_tensors(&self, module: Module) -> Vec<Tensor> {
        let one = |t: &Tensor| vec![t.clone()];
        match module {
            Module::FmeBias(k) => one(&self.fme[k].translation_bias),
            Module::FmeLinear(k) => self.fme[k].linear.tensors(),
            Module::Instrument => one(&self.instrument),
            Module::Supplementary => one(&self.supplementary),
            Module::MlpIn => self.mlp_in.tensors(),
            Module::MlpOut => self.mlp_out.tensors(),
            Module::Proj(i, proj) => self.layers[i].proj(proj).tensors(),
            Module::InputNorm(i) => one(&self.layers[i].input_norm),
            Module::PostAttentionNorm(i) => one(&self.layers[i].post_attention_norm),
            Module::Norm => one(&self.norm),
            Module::Gru(l) => {
                let (ih, hh) = (&self.gru[l].ih, &self.gru[l].hh);
                let mut t = vec![ih.weight.clone(), hh.weight.clone()];
                t.extend(ih.bias.iter().chain(&hh.bias).cloned());
                t
            }
            Module::FcOut => self.fc_out.tensors(),
            Module::DecoderEmbedding => one(&self.decoder_embedding),
            Module::SummaryProjection => self.summary_projection.tensors(),
            Module::LmHead => self.lm_head.tensors(),
        }
    }

    /// Switches between plain f32 and bf16-faithful element-wise numerics.
    pub fn set_precision(&mut self, precision: Precision) {
        self.tables = Tables::new(&self.cfg, precision);
    }

    /// The expected name and shape of every tensor of a checkpoint for `cfg`.
    pub fn expected_tensors(cfg: &Config) -> Vec<(String, Vec<usize>)> {
        Module::all(cfg)
            .into_iter()
            .flat_map(|m| m.tensors(cfg))
            .collect()
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
        Module::all(&self.cfg)
            .into_iter()
            .flat_map(|m| {
                let names = m.tensors(&self.cfg).into_iter().map(|(name, _)| name);
                names.zip(self.module_tensors(m)).collect::<Vec<_>>()
            })
            .collect()
    }
}
