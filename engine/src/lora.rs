//! LoRA style adapters, applied unmerged as a low-rank side path (spec §6.3).
//!
//! The base weights are never touched: a [`Style`] is a list of adapters with
//! strengths, passed into every forward call, so switching style is swapping one
//! small value between two decode steps. An [`Adapter`] holds the A/B pairs of the
//! official targets: q/k/v/o of every layer, `decoder_embedding`, `summary_projection`,
//! `lm_head` and `decoder.fc_out`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::checkpoint::{Module, Proj, Shape};
use crate::config::Config;
use crate::error::AdapterError;
use crate::kernels::matvec;
use crate::kernels::with_f32;

/// One low-rank pair: `delta(x) = scale * B (A x)` with `A: (r, in)` and `B: (out, r)`.
/// For the embedding target, `A: (r, vocab)` and `B: (dim, r)` and `delta(id) = scale * B A[:, id]`.
#[derive(Debug, Clone)]
pub struct LoraPair {
    pub a: Tensor,
    pub b: Tensor,
}

/// Which module of the base an adapter pair belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Q(usize),
    K(usize),
    V(usize),
    O(usize),
    DecoderEmbedding,
    SummaryProjection,
    LmHead,
    FcOut,
}

impl Target {
    /// The base module the target adapts.
    pub fn module(self) -> Module {
        match self {
            Target::Q(i) => Module::Proj(i, Proj::Q),
            Target::K(i) => Module::Proj(i, Proj::K),
            Target::V(i) => Module::Proj(i, Proj::V),
            Target::O(i) => Module::Proj(i, Proj::O),
            Target::DecoderEmbedding => Module::DecoderEmbedding,
            Target::SummaryProjection => Module::SummaryProjection,
            Target::LmHead => Module::LmHead,
            Target::FcOut => Module::FcOut,
        }
    }

    /// The module's name as in the base checkpoint (without `.weight`), as peft names it.
    pub fn module_name(self) -> String {
        let name = self.module().name();
        match self {
            // The one tensor module: peft names the module, not its `.weight`.
            Target::DecoderEmbedding => name.trim_end_matches(".weight").to_owned(),
            _ => name,
        }
    }

    /// The target whose [`Target::module_name`] is `name`, if any.
    pub fn from_module_name(name: &str) -> Option<Target> {
        let layer = name.split('.').find_map(|part| part.parse::<usize>().ok());
        let layer_targets = layer
            .map(|i| [Target::Q(i), Target::K(i), Target::V(i), Target::O(i)])
            .into_iter()
            .flatten();
        let model_targets = [
            Target::DecoderEmbedding,
            Target::SummaryProjection,
            Target::LmHead,
            Target::FcOut,
        ];
        layer_targets
            .chain(model_targets)
            .find(|t| t.module_name() == name)
    }

    /// `(out, in)` of a linear target, `(vocab, dim)` of the embedding.
    pub fn shape(self, cfg: &Config) -> (usize, usize) {
        match self.module().shape(cfg) {
            Shape::Linear { out, input, .. } => (out, input),
            Shape::Tensor(shape) => (shape[0], shape[1]),
            Shape::Gru { .. } => unreachable!("no LoRA target is a GRU layer"),
        }
    }

    /// Every target of the official recipe for a config.
    pub fn all(cfg: &Config) -> Vec<Target> {
        let mut out = Vec::new();
        for i in 0..cfg.n_layers {
            out.extend([Target::Q(i), Target::K(i), Target::V(i), Target::O(i)]);
        }
        out.extend([
            Target::DecoderEmbedding,
            Target::SummaryProjection,
            Target::LmHead,
            Target::FcOut,
        ]);
        out
    }

    /// `(A shape, B shape)` for rank `r`.
    pub fn pair_shapes(self, cfg: &Config, r: usize) -> (Vec<usize>, Vec<usize>) {
        let (out, inp) = self.shape(cfg);
        match self {
            Target::DecoderEmbedding => (vec![r, out], vec![inp, r]),
            _ => (vec![r, inp], vec![out, r]),
        }
    }
}

/// A loaded adapter: rank, alpha and its pairs.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub rank: usize,
    pub alpha: f64,
    pub pairs: HashMap<Target, LoraPair>,
    /// The base `lm_head` copy peft stores next to the adapter, if any: it tells which base it was made for.
    pub lm_head_base: Option<Tensor>,
}

impl Adapter {
    /// `alpha / r`.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Reads a peft adapter folder (`adapter_config.json` + `adapter_model.safetensors`).
    pub fn from_peft_dir(dir: &Path, cfg: &Config) -> Result<Self, AdapterError> {
        let config_path = dir.join("adapter_config.json");
        let text = crate::files::read_input(
            &config_path,
            Some(crate::files::MAX_CONFIG_BYTES),
            "adapter config",
        )
        .and_then(|b| {
            String::from_utf8(b).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "it is not UTF-8 text")
            })
        })
        .map_err(|source| AdapterError::Io {
            path: config_path.clone(),
            source,
        })?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| AdapterError::Format(format!("{}: {e}", config_path.display())))?;
        let rank = json["r"]
            .as_u64()
            .ok_or_else(|| AdapterError::Format("adapter_config.json has no integer `r`".into()))?
            as usize;
        let alpha = json["lora_alpha"].as_f64().ok_or_else(|| {
            AdapterError::Format("adapter_config.json has no `lora_alpha`".into())
        })?;
        if json["use_rslora"].as_bool() == Some(true) || json["use_dora"].as_bool() == Some(true) {
            return Err(AdapterError::Format(
                "rsLoRA and DoRA adapters are not supported".into(),
            ));
        }
        let weights = dir.join("adapter_model.safetensors");
        let bytes = crate::files::read_input(&weights, None, "adapter").map_err(|source| {
            AdapterError::Io {
                path: weights.clone(),
                source,
            }
        })?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| AdapterError::Format(format!("{}: {e}", weights.display())))?;
        let mut named = HashMap::new();
        for (name, t) in tensors {
            let key = name
                .strip_prefix("base_model.model.")
                .unwrap_or(&name)
                .to_owned();
            named.insert(key, t);
        }
        let mut pairs = HashMap::new();
        for target in Target::all(cfg) {
            let m = target.module_name();
            let (a_key, b_key) = match target {
                Target::DecoderEmbedding => (
                    format!("{m}.lora_embedding_A"),
                    format!("{m}.lora_embedding_B"),
                ),
                _ => (format!("{m}.lora_A.weight"), format!("{m}.lora_B.weight")),
            };
            match (named.remove(&a_key), named.remove(&b_key)) {
                (Some(a), Some(b)) => {
                    pairs.insert(target, LoraPair { a, b });
                }
                (None, None) => {}
                _ => {
                    return Err(AdapterError::Format(format!(
                        "{m} has only one of its two LoRA matrices"
                    )))
                }
            }
        }
        let lm_head_base = named.remove("lm_head.base_layer.weight");
        if let Some(extra) = named.keys().find(|k| k.contains("lora_")) {
            return Err(AdapterError::Format(format!(
                "LoRA tensor `{extra}` targets a module this model does not have"
            )));
        }
        let adapter = Adapter {
            rank,
            alpha,
            pairs,
            lm_head_base,
        };
        adapter.validated(cfg)
    }

    /// Converts to contiguous f32 and checks every shape against the config.
    pub fn validated(mut self, cfg: &Config) -> Result<Self, AdapterError> {
        if self.rank == 0 {
            return Err(AdapterError::Format("rank 0".into()));
        }
        if self.pairs.is_empty() {
            return Err(AdapterError::Format(
                "the adapter holds no LoRA pairs".into(),
            ));
        }
        for (target, pair) in self.pairs.iter_mut() {
            // The rank side of A is its first dimension, of B its last: a disagreement with
            // the declared rank is an inconsistent file, not another base model.
            let ranks = (
                pair.a.dims().first().copied(),
                pair.b.dims().last().copied(),
            );
            if ranks != (Some(self.rank), Some(self.rank)) {
                return Err(AdapterError::Format(format!(
                    "it declares rank {} but `{}` has LoRA matrices of shapes {:?} and {:?}: \
                     the file is inconsistent",
                    self.rank,
                    target.module_name(),
                    pair.a.dims(),
                    pair.b.dims()
                )));
            }
            let (a_shape, b_shape) = target.pair_shapes(cfg, self.rank);
            for (which, t, want) in [("A", &mut pair.a, a_shape), ("B", &mut pair.b, b_shape)] {
                if t.dims() != want.as_slice() {
                    return Err(AdapterError::Shape {
                        tensor: format!("{}.lora_{which}", target.module_name()),
                        expected: want,
                        got: t.dims().to_vec(),
                    });
                }
                *t = t.to_dtype(DType::F32)?.contiguous()?;
                let finite = t
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .all(|v| v.is_finite());
                if !finite {
                    return Err(AdapterError::Format(format!(
                        "{}.lora_{which} holds non-finite values",
                        target.module_name()
                    )));
                }
            }
        }
        if let Some(t) = &mut self.lm_head_base {
            *t = t.to_dtype(DType::F32)?.contiguous()?;
        }
        Ok(self)
    }
}

/// The active style: adapters with strengths (empty = the plain base).
///
/// Strength multiplies each adapter's `alpha / r`; a blend of two styles is two entries
/// (e.g. 0.7 and 0.3).
#[derive(Debug, Clone, Default)]
pub struct Style {
    pub parts: Vec<(Arc<Adapter>, f32)>,
}

impl Style {
    pub fn base() -> Self {
        Style::default()
    }

    pub fn single(adapter: Arc<Adapter>, strength: f32) -> Self {
        Style {
            parts: vec![(adapter, strength)],
        }
    }

    pub fn is_base(&self) -> bool {
        self.parts.iter().all(|(_, s)| *s == 0.0)
    }

    /// The (pair, effective scale) terms acting on `target`.
    pub fn terms(&self, target: Target) -> impl Iterator<Item = (&LoraPair, f64)> {
        self.parts.iter().filter_map(move |(a, strength)| {
            let pair = a.pairs.get(&target)?;
            (*strength != 0.0).then(|| (pair, a.scaling() * *strength as f64))
        })
    }

    /// Batched side path: `sum scale * (x A^T) B^T` for `x` of shape `(..., in)`, or None when no term applies.
    pub fn linear_delta(&self, target: Target, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let mut acc: Option<Tensor> = None;
        for (pair, scale) in self.terms(target) {
            let d = (x
                .broadcast_matmul(&pair.a.t()?)?
                .broadcast_matmul(&pair.b.t()?)?
                * scale)?;
            acc = Some(match acc {
                Some(a) => (a + d)?,
                None => d,
            });
        }
        Ok(acc)
    }

    /// Batched embedding side path for ids `(n,)`: `sum scale * A[:, ids]^T B^T`, shape `(n, dim)`.
    pub fn embedding_delta(&self, ids: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let mut acc: Option<Tensor> = None;
        for (pair, scale) in self.terms(Target::DecoderEmbedding) {
            let cols = pair.a.index_select(ids, 1)?.t()?.contiguous()?; // (n, r)
            let d = (cols.matmul(&pair.b.t()?)? * scale)?;
            acc = Some(match acc {
                Some(a) => (a + d)?,
                None => d,
            });
        }
        Ok(acc)
    }

    /// Single-vector side path: `out += scale * B (A x)`, for output rows `rows` of B.
    pub fn add_matvec(
        &self,
        target: Target,
        x: &[f32],
        rows: std::ops::Range<usize>,
        out: &mut [f32],
    ) -> candle_core::Result<()> {
        for (pair, scale) in self.terms(target) {
            let r = pair.a.dim(0)?;
            let mut tmp = [0f32; 256];
            let mut heap;
            let tmp: &mut [f32] = if r <= tmp.len() {
                &mut tmp[..r]
            } else {
                heap = vec![0f32; r];
                &mut heap
            };
            with_f32(&pair.a, |a| {
                matvec(a, x, None, tmp);
                Ok(())
            })?;
            with_f32(&pair.b, |b| {
                for (o, row) in out.iter_mut().zip(rows.clone()) {
                    let v: f32 = b[row * r..(row + 1) * r]
                        .iter()
                        .zip(tmp.iter())
                        .map(|(p, q)| p * q)
                        .sum();
                    *o += (scale as f32) * v;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Single-token embedding side path: `out += scale * B A[:, id]`.
    pub fn add_embedding(&self, id: usize, out: &mut [f32]) -> candle_core::Result<()> {
        for (pair, scale) in self.terms(Target::DecoderEmbedding) {
            let (r, vocab) = pair.a.dims2()?;
            with_f32(&pair.a, |a| {
                with_f32(&pair.b, |b| {
                    for (j, o) in out.iter_mut().enumerate() {
                        let mut v = 0f32;
                        for k in 0..r {
                            v += b[j * r + k] * a[k * vocab + id];
                        }
                        *o += (scale as f32) * v;
                    }
                    Ok(())
                })
            })?;
        }
        Ok(())
    }
}
