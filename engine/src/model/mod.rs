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
use crate::quant::QFormat;
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
    /// How the linear layers are quantized, `None` for f32 weights.
    pub quantization: Option<Quantization>,
}

/// The safetensors metadata key of a quantized checkpoint: a JSON [`Quantization`].
pub const QUANT_METADATA_KEY: &str = "continuo.quant";

/// How a model's linear layers are quantized.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Quantization {
    pub format: QFormat,
    /// Weights per scale ([`crate::quant::GROUP`]).
    pub group: usize,
    /// [`Moonbeam::fingerprint`] of the f32 weights quantized: the quantized model answers to
    /// it, so styles made for the original base load on it and are refused on any other.
    pub base_fingerprint: String,
}

/// A linear layer's parts: its weight, then its bias if any.
fn linear_parts(l: &Linear) -> Vec<Part<'_>> {
    std::iter::once(Part::Weight(l))
        .chain(l.bias.iter().map(Part::Tensor))
        .collect()
}

/// One stored part of a module, in checkpoint order.
enum Part<'a> {
    Tensor(&'a Tensor),
    Weight(&'a Linear),
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
    /// Decoder layer `i`, each projection passed through `finish` as soon as it is read (to
    /// quantize it while the next one loads).
    fn load(
        ws: &WeightStore,
        cfg: &Config,
        i: usize,
        finish: &dyn Fn(Linear) -> Result<Linear, WeightsError>,
    ) -> Result<Self, WeightsError> {
        let linear = |proj| finish(Linear::load(ws, Module::Proj(i, proj), cfg)?);
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

    /// The seven projections, in checkpoint order.
    pub fn projections(&self) -> [&Linear; 7] {
        [
            &self.q_proj,
            &self.k_proj,
            &self.v_proj,
            &self.o_proj,
            &self.gate_proj,
            &self.up_proj,
            &self.down_proj,
        ]
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
        let [w_ih, w_hh, b_ih, b_hh]: [(String, Vec<usize>); 4] = Module::Gru(l)
            .tensors(cfg)
            .try_into()
            .map_err(|_| internal("a GRU layer has four tensors"))?;
        let g = cfg.gru_hidden;
        let linear = |(w, shape): (String, Vec<usize>), (b, b_shape): (String, Vec<usize>)| {
            Ok::<_, WeightsError>(Linear::with_weight(
                ws.weight(&w, &shape)?,
                Some(ws.get(&b, &b_shape)?),
                3 * g,
                g,
            ))
        };
        Ok(GruLayer {
            ih: linear(w_ih, b_ih)?,
            hh: linear(w_hh, b_hh)?,
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

    /// Loads an f32 (or bf16) checkpoint and quantizes it to `format` layer by layer as it is
    /// read, so the f32 weights are never all in memory at once: the peak is the quantized
    /// model plus one layer in f32. The same model as [`Self::load`] then [`Self::quantize`],
    /// with the same base fingerprint.
    pub fn load_quantized(
        cfg: &Config,
        path: &Path,
        precision: Precision,
        format: QFormat,
    ) -> Result<Self, WeightsError> {
        let ws = WeightStore::open(path)?;
        Self::build(cfg, &ws, precision, Some(format))
    }

    /// Builds the model from named tensors, checking every name and shape in checkpoint
    /// order ([`Module::all`]), so the first mismatch reported is the first in the file.
    pub fn from_store(
        cfg: &Config,
        ws: &WeightStore,
        precision: Precision,
    ) -> Result<Self, WeightsError> {
        Self::build(cfg, ws, precision, None)
    }

    /// [`Self::from_store`], quantizing every linear layer that [`Self::quantize`] would
    /// quantize as soon as it is read when `quantize` is given.
    fn build(
        cfg: &Config,
        ws: &WeightStore,
        precision: Precision,
        quantize: Option<QFormat>,
    ) -> Result<Self, WeightsError> {
        Self::check_unused(cfg, ws)?;
        if let Some(format) = quantize {
            let codes = ws.names().any(|n| n.ends_with(".q8") || n.ends_with(".q4"));
            if codes && ws.metadata(QUANT_METADATA_KEY).is_none() {
                return Err(WeightsError::Format {
                    path: Default::default(),
                    reason: "it holds quantized weights but no `continuo.quant` metadata".into(),
                });
            }
            if let Some(existing) = ws.metadata(QUANT_METADATA_KEY) {
                return Err(WeightsError::Format {
                    path: Default::default(),
                    reason: format!(
                        "the weights are already quantized ({existing}); cannot quantize them \
                         to {format}"
                    ),
                });
            }
            ws.record_fingerprint();
        }
        let q = |mut linear: Linear| -> Result<Linear, WeightsError> {
            if let Some(format) = quantize {
                linear.quantize(format)?;
            }
            Ok(linear)
        };
        let fme: [Fme; 5] = (0..FME_NAMES.len())
            .map(|k| Fme::load(ws, cfg, k))
            .collect::<Result<Vec<_>, WeightsError>>()?
            .try_into()
            .map_err(|_| internal("FME count"))?;
        let layers = (0..cfg.n_layers)
            .map(|i| Layer::load(ws, cfg, i, &q))
            .collect::<Result<_, WeightsError>>()?;
        let gru = (0..cfg.gru_layers)
            .map(|l| {
                let mut gru = GruLayer::load(ws, cfg, l)?;
                gru.ih = q(gru.ih)?;
                gru.hh = q(gru.hh)?;
                Ok(gru)
            })
            .collect::<Result<_, WeightsError>>()?;
        let mut model = Moonbeam {
            cfg: cfg.clone(),
            tables: Tables::new(cfg, precision),
            fme,
            instrument: ws.tensor(Module::Instrument, cfg)?,
            supplementary: ws.tensor(Module::Supplementary, cfg)?,
            mlp_in: q(Linear::load(ws, Module::MlpIn, cfg)?)?,
            mlp_out: q(Linear::load(ws, Module::MlpOut, cfg)?)?,
            layers,
            norm: ws.tensor(Module::Norm, cfg)?,
            gru,
            fc_out: q(Linear::load(ws, Module::FcOut, cfg)?)?,
            decoder_embedding: ws.tensor(Module::DecoderEmbedding, cfg)?,
            summary_projection: q(Linear::load(ws, Module::SummaryProjection, cfg)?)?,
            lm_head: q(Linear::load(ws, Module::LmHead, cfg)?)?,
            quantization: None,
        };
        match quantize {
            // The file holds no quantization (checked above): the model's is the one made here.
            Some(format) => {
                model.quantization = Some(Quantization {
                    format,
                    group: crate::quant::GROUP,
                    base_fingerprint: ws
                        .recorded_fingerprint()
                        .ok_or_else(|| internal("fingerprint not recorded"))?,
                });
                Ok(model)
            }
            None => model.with_quantization(ws),
        }
    }

    /// Refuses a file with tensors the config does not use (a config with fewer layers than
    /// the weights, say), naming them.
    fn check_unused(cfg: &Config, ws: &WeightStore) -> Result<(), WeightsError> {
        let mut known = std::collections::HashSet::new();
        for (name, _) in Self::expected_tensors(cfg) {
            for format in [QFormat::Q8, QFormat::Q4] {
                known.insert(format!("{name}.{format}"));
            }
            known.insert(format!("{name}.scales"));
            known.insert(name);
        }
        // Non-parameter buffers a PyTorch state dict may carry.
        let mut unused: Vec<&str> = ws
            .names()
            .filter(|n| !known.contains(*n) && !n.ends_with("inv_freq"))
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        unused.sort_unstable();
        let shown = unused
            .iter()
            .take(5)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        Err(WeightsError::Format {
            path: Default::default(),
            reason: format!(
                "it holds {} tensors this config does not use ({shown}{}): is the config the \
                 one these weights were made with?",
                unused.len(),
                if unused.len() > 5 { ", ..." } else { "" }
            ),
        })
    }

    /// Takes the quantization from the file's metadata, and checks it agrees with the tensors.
    fn with_quantization(mut self, ws: &WeightStore) -> Result<Self, WeightsError> {
        let bad = |reason: String| WeightsError::Format {
            path: Default::default(),
            reason,
        };
        self.quantization = ws
            .metadata(QUANT_METADATA_KEY)
            .map(serde_json::from_str::<Quantization>)
            .transpose()
            .map_err(|e| {
                bad(format!(
                    "its `{QUANT_METADATA_KEY}` metadata is invalid: {e}"
                ))
            })?;
        let formats: Vec<QFormat> = self
            .linears()
            .filter_map(|l| l.quantized().map(|q| q.format()))
            .collect();
        match &self.quantization {
            None if !formats.is_empty() => Err(bad(format!(
                "it holds quantized weights but no `{QUANT_METADATA_KEY}` metadata"
            ))),
            Some(q) if q.group != crate::quant::GROUP => Err(bad(format!(
                "its weights are quantized in groups of {}; this build reads groups of {}",
                q.group,
                crate::quant::GROUP
            ))),
            Some(q) if formats.iter().any(|f| *f != q.format) || formats.is_empty() => {
                Err(bad(format!(
                    "its metadata says {} but its weights do not all agree",
                    q.format
                )))
            }
            _ => Ok(self),
        }
    }

    /// Every linear layer, FME maps included.
    pub(crate) fn linears(&self) -> impl Iterator<Item = &Linear> {
        let layers = self.layers.iter().flat_map(Layer::projections);
        let gru = self.gru.iter().flat_map(|g| [&g.ih, &g.hh]);
        self.fme
            .iter()
            .map(|f| &f.linear)
            .chain([&self.mlp_in, &self.mlp_out])
            .chain(layers)
            .chain(gru)
            .chain([&self.fc_out, &self.summary_projection, &self.lm_head])
    }

    /// Quantizes every linear layer of the transformer and the note head in place (the FME
    /// maps, embeddings and norms stay f32; so does any layer whose input size is not a multiple
    /// of [`crate::quant::GROUP`]). Returns how many layers were quantized.
    pub fn quantize(&mut self, format: QFormat) -> Result<usize, WeightsError> {
        if let Some(q) = &self.quantization {
            return Err(WeightsError::Format {
                path: Default::default(),
                reason: format!("the model is already quantized ({})", q.format),
            });
        }
        let base_fingerprint = self.fingerprint();
        let layers = self.layers.iter_mut().flat_map(|l| {
            [
                &mut l.q_proj,
                &mut l.k_proj,
                &mut l.v_proj,
                &mut l.o_proj,
                &mut l.gate_proj,
                &mut l.up_proj,
                &mut l.down_proj,
            ]
        });
        let gru = self.gru.iter_mut().flat_map(|g| [&mut g.ih, &mut g.hh]);
        let mut quantized = 0;
        for linear in [&mut self.mlp_in, &mut self.mlp_out]
            .into_iter()
            .chain(layers)
            .chain(gru)
            .chain([
                &mut self.fc_out,
                &mut self.summary_projection,
                &mut self.lm_head,
            ])
        {
            quantized += usize::from(linear.quantize(format)?);
        }
        self.quantization = Some(Quantization {
            format,
            group: crate::quant::GROUP,
            base_fingerprint,
        });
        Ok(quantized)
    }

    /// How many linear layers hold quantized weights.
    pub fn quantized_layers(&self) -> usize {
        self.linears().filter(|l| l.quantized().is_some()).count()
    }

    /// The stored parts of `module`, in [`Module::tensors`] order.
    fn module_parts(&self, module: Module) -> Vec<Part<'_>> {
        let one = |t| vec![Part::Tensor(t)];
        match module {
            Module::FmeBias(k) => one(&self.fme[k].translation_bias),
            Module::FmeLinear(k) => linear_parts(&self.fme[k].linear),
            Module::Instrument => one(&self.instrument),
            Module::Supplementary => one(&self.supplementary),
            Module::MlpIn => linear_parts(&self.mlp_in),
            Module::MlpOut => linear_parts(&self.mlp_out),
            Module::Proj(i, proj) => linear_parts(self.layers[i].proj(proj)),
            Module::InputNorm(i) => one(&self.layers[i].input_norm),
            Module::PostAttentionNorm(i) => one(&self.layers[i].post_attention_norm),
            Module::Norm => one(&self.norm),
            Module::Gru(l) => {
                let (ih, hh) = (&self.gru[l].ih, &self.gru[l].hh);
                let mut parts = vec![Part::Weight(ih), Part::Weight(hh)];
                parts.extend(ih.bias.iter().chain(&hh.bias).map(Part::Tensor));
                parts
            }
            Module::FcOut => linear_parts(&self.fc_out),
            Module::DecoderEmbedding => one(&self.decoder_embedding),
            Module::SummaryProjection => linear_parts(&self.summary_projection),
            Module::LmHead => linear_parts(&self.lm_head),
        }
    }

    /// The tensors of `module`, in [`Module::tensors`] order, quantized weights dequantized.
    pub fn module_tensors(&self, module: Module) -> Vec<Tensor> {
        self.module_parts(module)
            .into_iter()
            .map(|part| match part {
                Part::Tensor(t) => t.clone(),
                Part::Weight(l) => l.f32_weight(),
            })
            .collect()
    }

    /// The tensors to write to a checkpoint: [`Moonbeam::named_tensors`] for f32 weights;
    /// a quantized weight `W` is written as `W.q8` or `W.q4` (U8 codes, one row of codes per
    /// weight row) and `W.scales` (f16, `(rows, cols / GROUP)`), see [`crate::quant`].
    pub fn stored_tensors(&self) -> candle_core::Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for m in Module::all(&self.cfg) {
            for ((name, _), part) in m.tensors(&self.cfg).into_iter().zip(self.module_parts(m)) {
                match part {
                    Part::Tensor(t) => out.push((name, t.clone())),
                    Part::Weight(l) => match l.quantized() {
                        None => out.push((name, l.f32_weight())),
                        Some(q) => {
                            let cpu = &candle_core::Device::Cpu;
                            let row_bytes = q.codes().len() / q.rows();
                            let codes = Tensor::from_slice(q.codes(), (q.rows(), row_bytes), cpu)?;
                            let scales = Tensor::from_slice(
                                q.scales(),
                                (q.rows(), q.cols() / crate::quant::GROUP),
                                cpu,
                            )?;
                            out.push((format!("{name}.scales"), scales));
                            out.push((format!("{name}.{}", q.format()), codes));
                        }
                    },
                }
            }
        }
        Ok(out)
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
