//! The batched path: whole sequences through candle (prefill, teacher forcing, training).

use candle_core::{DType, Device, Result, Tensor, D};

use super::tables::{
    embedding_input, fme_sinusoid, mra_position, rope_cos_sin, GROUP_TABLE, TABLE_COLUMN,
};
use super::{Layer, Moonbeam};
use crate::config::Config;
use crate::error::ModelError;
use crate::lora::{Style, Target};

/// Rows of one sequence: `[onset, duration, octave, pitch_class, instrument, velocity]`,
/// with `[-1; 6]` for SOS and `[-2; 6]` for EOS.
pub type Row = [i64; 6];

/// Optional intermediate tensors, recorded for tests against the reference.
#[derive(Default)]
pub struct Trace {
    pub attr_embeddings: Vec<Tensor>,
    pub embed_output: Option<Tensor>,
    pub hidden_after_layer0: Option<Tensor>,
    /// Per layer: q, k, v as they enter attention (q, k rotated; k, v expanded to all heads).
    pub qkv: Vec<(Tensor, Tensor, Tensor)>,
}

/// What a batched pass returns.
pub struct ForwardOutput {
    /// Final normed hidden states, `(B, L, hidden)`.
    pub hidden: Tensor,
    /// Per layer, the rotated keys and the values, `(B, n_kv_heads, L, head_dim)`: the KV cache content.
    pub kv: Vec<(Tensor, Tensor)>,
}

/// Which positions may attend to which.
pub enum Mask<'a> {
    /// Plain causal attention over one sequence per batch row.
    Causal,
    /// Block-diagonal causal attention for packed samples: `segments[b][i]` is the sample id of position i.
    Packed(&'a [Vec<u32>]),
}

impl Moonbeam {
    /// Checks that rows can be embedded (spec §1.2): special rows are whole, values non-negative
    /// and the instrument inside the table.
    pub fn validate_rows(&self, rows: &[Row]) -> std::result::Result<(), ModelError> {
        for (i, row) in rows.iter().enumerate() {
            if row[0] == -1 || row[0] == -2 {
                continue;
            }
            if let Some(c) = row.iter().position(|&v| v < 0) {
                return Err(ModelError::BadInput {
                    row: i,
                    reason: format!("column {c} is negative ({})", row[c]),
                });
            }
            if row[4] >= self.cfg.vocab[4] as i64 {
                return Err(ModelError::BadInput {
                    row: i,
                    reason: format!("instrument {} is outside 0..{}", row[4], self.cfg.vocab[4]),
                });
            }
            if row[0] > 1 << 24 || row[1] > 1 << 24 {
                return Err(ModelError::BadInput {
                    row: i,
                    reason: "onset or duration beyond 2^24 ticks cannot be represented exactly"
                        .into(),
                });
            }
        }
        Ok(())
    }

    /// Input embedding for a batch of equally long sequences: `(B, L, hidden)` (spec §2).
    pub fn embed(&self, batch: &[&[Row]], mut trace: Option<&mut Trace>) -> Result<Tensor> {
        let dev = Device::Cpu;
        let b = batch.len();
        let l = batch.first().map_or(0, |s| s.len());
        let d = self.cfg.attr_dim();
        let precision = self.tables.precision;
        let mut parts = Vec::with_capacity(6);
        for attr in 0..6 {
            let e = if attr == 4 {
                let ids: Vec<u32> = batch
                    .iter()
                    .flat_map(|s| s.iter().map(|r| embedding_input(r, 4) as u32))
                    .collect();
                let ids = Tensor::from_vec(ids, b * l, &dev)?;
                self.instrument.index_select(&ids, 0)?.reshape((b, l, d))?
            } else {
                let table = TABLE_COLUMN.iter().position(|&c| c == attr).unwrap_or(0);
                let fme = &self.fme[table];
                let mut pe = vec![0f32; b * l * d];
                for (chunk, row) in pe.chunks_mut(d).zip(batch.iter().flat_map(|s| s.iter())) {
                    fme_sinusoid(
                        embedding_input(row, attr),
                        &self.tables.fme_angles[table],
                        precision,
                        chunk,
                    );
                }
                let pe = Tensor::from_vec(pe, (b, l, d), &dev)?;
                let x = pe.broadcast_add(&fme.translation_bias)?;
                let x = self.round_if_bf16(x)?;
                let y = fme.linear.forward(&x)?;
                self.round_if_bf16(y)?
            };
            if let Some(t) = trace.as_deref_mut() {
                t.attr_embeddings.push(e.clone());
            }
            parts.push(e);
        }
        let x = Tensor::cat(&parts, D::Minus1)?;
        // Replace SOS and EOS rows by the learned vectors.
        let flag = |code: i64| -> Result<Tensor> {
            let m: Vec<f32> = batch
                .iter()
                .flat_map(|s| s.iter().map(|r| if r[0] == code { 1.0 } else { 0.0 }))
                .collect();
            Tensor::from_vec(m, (b, l, 1), &dev)
        };
        let is_sos = flag(-1)?;
        let is_eos = flag(-2)?;
        let keep = (1.0 - (&is_sos + &is_eos)?)?;
        let sos = self.supplementary.get(0)?;
        let eos = self.supplementary.get(1)?;
        let x = (x.broadcast_mul(&keep)?
            + is_sos.broadcast_mul(&sos)?
            + is_eos.broadcast_mul(&eos)?)?;
        let x = self.mlp_out.forward(&self.mlp_in.forward(&x)?.relu()?)?;
        Ok(x)
    }

    fn round_if_bf16(&self, x: Tensor) -> Result<Tensor> {
        match self.tables.precision {
            super::Precision::F32 => Ok(x),
            super::Precision::Bf16Faithful => x.to_dtype(DType::BF16)?.to_dtype(DType::F32),
        }
    }

    /// Per-head rotary tables `(B, heads, L, head_dim)` for the q heads (12) or the kv heads (6).
    fn rotary_tables(&self, batch: &[&[Row]], heads: usize) -> Result<(Tensor, Tensor)> {
        let b = batch.len();
        let l = batch.first().map_or(0, |s| s.len());
        let hd = self.cfg.head_dim();
        let half = hd / 2;
        // cos/sin per (table, batch, position), half width.
        let mut cos5 = vec![0f32; 5 * b * l * half];
        let mut sin5 = vec![0f32; 5 * b * l * half];
        for (t, &column) in TABLE_COLUMN.iter().enumerate() {
            for (bi, seq) in batch.iter().enumerate() {
                for (i, row) in seq.iter().enumerate() {
                    let off = ((t * b + bi) * l + i) * half;
                    rope_cos_sin(
                        mra_position(row, column),
                        &self.tables.inv_freq[t],
                        self.tables.precision,
                        &mut cos5[off..off + half],
                        &mut sin5[off..off + half],
                    );
                }
            }
        }
        let per_group = heads / 6;
        let mut cos = vec![0f32; b * heads * l * hd];
        let mut sin = vec![0f32; b * heads * l * hd];
        for bi in 0..b {
            for h in 0..heads {
                let t = GROUP_TABLE[h / per_group];
                for i in 0..l {
                    let src = ((t * b + bi) * l + i) * half;
                    let dst = ((bi * heads + h) * l + i) * hd;
                    for j in 0..half {
                        cos[dst + j] = cos5[src + j];
                        cos[dst + half + j] = cos5[src + j];
                        sin[dst + j] = sin5[src + j];
                        sin[dst + half + j] = sin5[src + j];
                    }
                }
            }
        }
        let dev = Device::Cpu;
        Ok((
            Tensor::from_vec(cos, (b, heads, l, hd), &dev)?,
            Tensor::from_vec(sin, (b, heads, l, hd), &dev)?,
        ))
    }

    /// Full forward over a batch of equally long sequences. Returns the final normed hidden
    /// states and every layer's K/V (for seeding the decode cache).
    pub fn forward(
        &self,
        batch: &[&[Row]],
        mask: Mask<'_>,
        style: &Style,
        mut trace: Option<&mut Trace>,
    ) -> Result<ForwardOutput> {
        let b = batch.len();
        let l = batch.first().map_or(0, |s| s.len());
        if b == 0 || l == 0 || batch.iter().any(|s| s.len() != l) {
            candle_core::bail!("forward needs a non-empty batch of equally long sequences");
        }
        let cfg = &self.cfg;
        let (nh, nkv) = (cfg.n_heads, cfg.n_kv_heads);
        let mut x = self.embed(batch, trace.as_deref_mut())?;
        if let Some(t) = trace.as_deref_mut() {
            t.embed_output = Some(x.clone());
        }
        let (cos_q, sin_q) = self.rotary_tables(batch, nh)?;
        let (cos_k, sin_k) = self.rotary_tables(batch, nkv)?;
        let pass = Pass {
            cfg,
            b,
            l,
            rotary_q: (cos_q, sin_q),
            rotary_k: (cos_k, sin_k),
            mask: attention_mask(&mask, b, l)?,
            style,
        };
        let mut kv = Vec::with_capacity(self.layers.len());
        for (li, layer) in self.layers.iter().enumerate() {
            let (next, layer_kv) = layer.forward(li, &x, &pass, trace.as_deref_mut())?;
            x = next;
            kv.push(layer_kv);
            if li == 0 {
                if let Some(t) = trace.as_deref_mut() {
                    t.hidden_after_layer0 = Some(x.clone());
                }
            }
        }
        let hidden = rms_norm(&x, &self.norm, cfg.rms_norm_eps)?;
        Ok(ForwardOutput { hidden, kv })
    }
}

/// What every layer of one batched pass shares.
struct Pass<'a> {
    cfg: &'a Config,
    b: usize,
    l: usize,
    /// Rotary `(cos, sin)` for the query heads and for the key heads.
    rotary_q: (Tensor, Tensor),
    rotary_k: (Tensor, Tensor),
    /// Additive attention mask, `(B, 1, L, L)`.
    mask: Tensor,
    style: &'a Style,
}

impl Layer {
    /// Decoder layer `li` over `x` `(B, L, hidden)`: returns the layer's output and its
    /// rotated keys and values `(B, n_kv_heads, L, head_dim)`.
    fn forward(
        &self,
        li: usize,
        x: &Tensor,
        pass: &Pass<'_>,
        trace: Option<&mut Trace>,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        let (cfg, b, l, style) = (pass.cfg, pass.b, pass.l, pass.style);
        let (nh, nkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim());
        let heads = |t: Tensor, n: usize| -> Result<Tensor> {
            t.reshape((b, l, n, hd))?.transpose(1, 2)?.contiguous()
        };
        let xn = rms_norm(x, &self.input_norm, cfg.rms_norm_eps)?;
        let q = heads(self.q_proj.forward_styled(&xn, style, Target::Q(li))?, nh)?;
        let k = heads(self.k_proj.forward_styled(&xn, style, Target::K(li))?, nkv)?;
        let v = heads(self.v_proj.forward_styled(&xn, style, Target::V(li))?, nkv)?;
        let q = apply_rotary(&q, &pass.rotary_q.0, &pass.rotary_q.1)?;
        let k = apply_rotary(&k, &pass.rotary_k.0, &pass.rotary_k.1)?;
        let kv = (k.clone(), v.clone());
        let k = repeat_kv(&k, nh / nkv)?;
        let v = repeat_kv(&v, nh / nkv)?;
        if let Some(t) = trace {
            t.qkv.push((q.clone(), k.clone(), v.clone()));
        }
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&pass.mask)?;
        // The composed softmax, not `softmax_last_dim`: the fused kernel has no backward pass.
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let attn = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, l, nh * hd))?;
        let x = (x + self.o_proj.forward_styled(&attn, style, Target::O(li))?)?;
        let xn = rms_norm(&x, &self.post_attention_norm, cfg.rms_norm_eps)?;
        let gate = candle_nn::ops::silu(&self.gate_proj.forward(&xn)?)?;
        let up = self.up_proj.forward(&xn)?;
        let x = (&x + self.down_proj.forward(&(gate * up)?)?)?;
        Ok((x, kv))
    }
}

/// RMSNorm over the last dimension, computed in f32 (spec §3.1).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let mean_sq = x.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x.broadcast_div(&(mean_sq + eps)?.sqrt()?)?;
    normed.broadcast_mul(weight)
}

/// `x * cos + rotate_half(x) * sin` with `rotate_half(x) = cat(-x2, x1)`.
fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
    let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    (x * cos)? + (rotated * sin)?
}

/// kv head j serves q heads `n_rep*j .. n_rep*(j+1)`.
fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, n, l, hd) = x.dims4()?;
    x.unsqueeze(2)?
        .expand((b, n, n_rep, l, hd))?
        .reshape((b, n * n_rep, l, hd))
}

/// Additive mask `(B, 1, L, L)`: 0 where attention is allowed, `f32::MIN` elsewhere.
fn attention_mask(mask: &Mask<'_>, b: usize, l: usize) -> Result<Tensor> {
    let mut m = vec![0f32; b * l * l];
    for bi in 0..b {
        for i in 0..l {
            for j in 0..l {
                let allowed = j <= i
                    && match mask {
                        Mask::Causal => true,
                        Mask::Packed(seg) => seg[bi][i] == seg[bi][j],
                    };
                if !allowed {
                    m[(bi * l + i) * l + j] = f32::MIN;
                }
            }
        }
    }
    Tensor::from_vec(m, (b, 1, l, l), &Device::Cpu)
}
