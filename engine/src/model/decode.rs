//! The single-token path: one note through the transformer against a preallocated KV cache.
//!
//! Nothing here allocates per step: the cache and every scratch buffer are sized once,
//! from the config and the cache capacity. MRA positions come from the token values,
//! so the cache needs no position bookkeeping beyond its length.

use candle_core::Result;

use super::forward::{ForwardOutput, Row};
use super::tables::{
    embedding_input, fme_sinusoid, mra_position, rope_cos_sin, GROUP_TABLE, TABLE_COLUMN,
};
use super::{Layer, Linear, Moonbeam, Precision};
use crate::config::Config;
use crate::error::ModelError;
use crate::kernels::with_f32;
use crate::kernels::{bf16_round, dot, rms_norm, silu, softmax_in_place};
use crate::lora::{Style, Target};

/// Post-rotary keys and values of every layer, preallocated to a fixed capacity.
pub struct KvCache {
    capacity: usize,
    len: usize,
    n_kv: usize,
    head_dim: usize,
    /// Per layer, `[n_kv][capacity][head_dim]`.
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl KvCache {
    pub fn new(model: &Moonbeam, capacity: usize) -> Self {
        let cfg = &model.cfg;
        let per_layer = cfg.n_kv_heads * capacity * cfg.head_dim();
        KvCache {
            capacity,
            len: 0,
            n_kv: cfg.n_kv_heads,
            head_dim: cfg.head_dim(),
            k: vec![vec![0.0; per_layer]; cfg.n_layers],
            v: vec![vec![0.0; per_layer]; cfg.n_layers],
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every token (the buffers are kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Keeps only the first `len` tokens.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    fn index(&self, head: usize, pos: usize) -> usize {
        (head * self.capacity + pos) * self.head_dim
    }

    /// Stores one position's rotated keys `k` and values `v` (every kv head) for `layer`.
    fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let hd = self.head_dim;
        for head in 0..self.n_kv {
            let at = self.index(head, pos);
            self.k[layer][at..at + hd].copy_from_slice(&k[head * hd..(head + 1) * hd]);
            self.v[layer][at..at + hd].copy_from_slice(&v[head * hd..(head + 1) * hd]);
        }
    }

    /// Attention of the rotated query `q` (every query head, grouped onto the kv heads) over
    /// positions `..t_len` of `layer`, written to `out` (every head); `scores` is scratch.
    fn attend(&self, layer: usize, q: &[f32], t_len: usize, scores: &mut [f32], out: &mut [f32]) {
        let hd = self.head_dim;
        let n_rep = q.len() / hd / self.n_kv;
        let scale = 1.0 / (hd as f32).sqrt();
        let scores = &mut scores[..t_len];
        for (head, (q, out)) in q.chunks_exact(hd).zip(out.chunks_exact_mut(hd)).enumerate() {
            let kv_head = head / n_rep;
            for (j, s) in scores.iter_mut().enumerate() {
                let at = self.index(kv_head, j);
                *s = dot(q, &self.k[layer][at..at + hd]) * scale;
            }
            softmax_in_place(scores);
            out.fill(0.0);
            for (j, &p) in scores.iter().enumerate() {
                let at = self.index(kv_head, j);
                for (o, &v) in out.iter_mut().zip(&self.v[layer][at..at + hd]) {
                    *o += p * v;
                }
            }
        }
    }

    /// Bytes held by the cache buffers.
    pub fn bytes(&self) -> usize {
        2 * self.k.len() * self.n_kv * self.capacity * self.head_dim * 4
    }
}

/// Per-session scratch buffers for [`Moonbeam::step`].
pub struct DecodeScratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    mlp_hidden: Vec<f32>,
    pe: Vec<f32>,
    part: Vec<f32>,
    scores: Vec<f32>,
    cos: [Vec<f32>; 5],
    sin: [Vec<f32>; 5],
    /// Final normed hidden state of the last token stepped.
    pub hidden: Vec<f32>,
}

impl DecodeScratch {
    pub fn new(model: &Moonbeam, capacity: usize) -> Self {
        let cfg = &model.cfg;
        let h = cfg.hidden_size;
        let kv = cfg.n_kv_heads * cfg.head_dim();
        let half = cfg.head_dim() / 2;
        DecodeScratch {
            x: vec![0.0; h],
            xn: vec![0.0; h],
            q: vec![0.0; h],
            k: vec![0.0; kv],
            v: vec![0.0; kv],
            attn: vec![0.0; h],
            proj: vec![0.0; h],
            gate: vec![0.0; cfg.intermediate_size],
            up: vec![0.0; cfg.intermediate_size],
            mlp_hidden: vec![0.0; h / 2],
            pe: vec![0.0; cfg.attr_dim()],
            part: vec![0.0; cfg.attr_dim()],
            scores: vec![0.0; capacity],
            cos: std::array::from_fn(|_| vec![0.0; half]),
            sin: std::array::from_fn(|_| vec![0.0; half]),
            hidden: vec![0.0; h],
        }
    }
}

impl Moonbeam {
    /// Seeds an empty cache with the K/V of a batched pass over one sequence
    /// (batch row 0) and leaves that pass's last hidden state in `scratch.hidden`.
    pub fn load_prefill(
        &self,
        out: &ForwardOutput,
        cache: &mut KvCache,
        scratch: &mut DecodeScratch,
    ) -> std::result::Result<(), ModelError> {
        let l = out.hidden.dim(1)?;
        if l > cache.capacity {
            return Err(ModelError::TooLong {
                len: l,
                max: cache.capacity,
            });
        }
        for (layer, (k, v)) in out.kv.iter().enumerate() {
            // (B, n_kv, L, hd) -> batch row 0.
            let k = k.get(0)?.contiguous()?;
            let v = v.get(0)?.contiguous()?;
            for (src, dst) in [(&k, &mut cache.k[layer]), (&v, &mut cache.v[layer])] {
                with_f32(src, |data| {
                    for head in 0..cache.n_kv {
                        let s = head * l * cache.head_dim;
                        let d = head * cache.capacity * cache.head_dim;
                        dst[d..d + l * cache.head_dim]
                            .copy_from_slice(&data[s..s + l * cache.head_dim]);
                    }
                    Ok(())
                })?;
            }
        }
        cache.len = l;
        let last = out.hidden.get(0)?.get(l - 1)?.contiguous()?;
        with_f32(&last, |data| {
            scratch.hidden.copy_from_slice(data);
            Ok(())
        })?;
        Ok(())
    }

    /// Runs a whole prompt through the batched path and seeds `cache` with it (clearing it first).
    pub fn prefill(
        &self,
        rows: &[Row],
        cache: &mut KvCache,
        scratch: &mut DecodeScratch,
        style: &Style,
    ) -> std::result::Result<(), ModelError> {
        if rows.is_empty() {
            return Err(ModelError::EmptyPrompt);
        }
        if rows.len() > cache.capacity {
            return Err(ModelError::TooLong {
                len: rows.len(),
                max: cache.capacity,
            });
        }
        self.validate_rows(rows)?;
        cache.clear();
        let out = self.forward(&[rows], super::forward::Mask::Causal, style, None)?;
        self.load_prefill(&out, cache, scratch)
    }

    /// Appends one token to the cache and leaves its final normed hidden state in `scratch.hidden`.
    pub fn step(
        &self,
        row: &Row,
        cache: &mut KvCache,
        scratch: &mut DecodeScratch,
        style: &Style,
    ) -> std::result::Result<(), ModelError> {
        if cache.len >= cache.capacity {
            return Err(ModelError::TooLong {
                len: cache.len + 1,
                max: cache.capacity,
            });
        }
        self.validate_rows(std::slice::from_ref(row))?;
        self.embed_one(row, scratch)?;
        let cfg = &self.cfg;
        let precision = self.tables.precision;
        for (t, &column) in TABLE_COLUMN.iter().enumerate() {
            rope_cos_sin(
                mra_position(row, column),
                &self.tables.inv_freq[t],
                precision,
                &mut scratch.cos[t],
                &mut scratch.sin[t],
            );
        }
        for (li, layer) in self.layers.iter().enumerate() {
            layer.step(li, cfg, cache, scratch, style)?;
        }
        with_f32(&self.norm, |w| {
            rms_norm(&scratch.x, w, cfg.rms_norm_eps, &mut scratch.hidden);
            Ok(())
        })?;
        cache.len += 1;
        Ok(())
    }

    /// Appends several rows to the cache in one pass and leaves the last one's final normed
    /// hidden state in `scratch.hidden`: the same result as [`Moonbeam::step`] on each row in
    /// turn (up to summation order), but every linear layer multiplies all the rows at once, so
    /// its weights are read once instead of once per row. Allocates its working buffers (like
    /// a prefill); [`Moonbeam::step`] stays the allocation-free path for one row.
    pub fn extend(
        &self,
        rows: &[Row],
        cache: &mut KvCache,
        scratch: &mut DecodeScratch,
        style: &Style,
    ) -> std::result::Result<(), ModelError> {
        match rows {
            [] => return Ok(()),
            [row] => return self.step(row, cache, scratch, style),
            _ => {}
        }
        if cache.len + rows.len() > cache.capacity {
            return Err(ModelError::TooLong {
                len: cache.len + rows.len(),
                max: cache.capacity,
            });
        }
        self.validate_rows(rows)?;
        let cfg = &self.cfg;
        let (h, half) = (cfg.hidden_size, cfg.head_dim() / 2);
        let mut x = vec![0.0f32; rows.len() * h];
        let mut rotary = Vec::with_capacity(rows.len());
        for (row, x) in rows.iter().zip(x.chunks_exact_mut(h)) {
            self.embed_one(row, scratch)?;
            x.copy_from_slice(&scratch.x);
            let mut cos: [Vec<f32>; 5] = std::array::from_fn(|_| vec![0.0; half]);
            let mut sin: [Vec<f32>; 5] = std::array::from_fn(|_| vec![0.0; half]);
            for (t, &column) in TABLE_COLUMN.iter().enumerate() {
                rope_cos_sin(
                    mra_position(row, column),
                    &self.tables.inv_freq[t],
                    self.tables.precision,
                    &mut cos[t],
                    &mut sin[t],
                );
            }
            rotary.push((cos, sin));
        }
        for (li, layer) in self.layers.iter().enumerate() {
            layer.extend(li, cfg, cache, &mut x, &rotary, &mut scratch.scores, style)?;
        }
        with_f32(&self.norm, |w| {
            rms_norm(
                &x[(rows.len() - 1) * h..],
                w,
                cfg.rms_norm_eps,
                &mut scratch.hidden,
            );
            Ok(())
        })?;
        cache.len += rows.len();
        Ok(())
    }

    /// The input embedding of one row into `scratch.x`.
    fn embed_one(&self, row: &Row, scratch: &mut DecodeScratch) -> Result<()> {
        let d = self.cfg.attr_dim();
        let precision = self.tables.precision;
        let special = match row[0] {
            -1 => Some(0),
            -2 => Some(1),
            _ => None,
        };
        if let Some(which) = special {
            with_f32(&self.supplementary, |s| {
                let h = self.cfg.hidden_size;
                scratch.proj.copy_from_slice(&s[which * h..(which + 1) * h]);
                Ok(())
            })?;
        } else {
            for attr in 0..6 {
                let value = embedding_input(row, attr);
                let dst = attr * d..(attr + 1) * d;
                if attr == 4 {
                    with_f32(&self.instrument, |table| {
                        let r = value as usize;
                        scratch.proj[dst.clone()].copy_from_slice(&table[r * d..(r + 1) * d]);
                        Ok(())
                    })?;
                    continue;
                }
                let table = TABLE_COLUMN.iter().position(|&c| c == attr).unwrap_or(0);
                let fme = &self.fme[table];
                fme_sinusoid(
                    value,
                    &self.tables.fme_angles[table],
                    precision,
                    &mut scratch.pe,
                );
                with_f32(&fme.translation_bias, |t| {
                    for (p, tv) in scratch.pe.iter_mut().zip(t) {
                        *p += tv;
                        if precision == Precision::Bf16Faithful {
                            *p = bf16_round(*p);
                        }
                    }
                    Ok(())
                })?;
                fme.linear.matvec(&scratch.pe, &mut scratch.part)?;
                if precision == Precision::Bf16Faithful {
                    scratch.part.iter_mut().for_each(|v| *v = bf16_round(*v));
                }
                scratch.proj[dst].copy_from_slice(&scratch.part);
            }
        }
        self.mlp_in.matvec(&scratch.proj, &mut scratch.mlp_hidden)?;
        scratch.mlp_hidden.iter_mut().for_each(|v| *v = v.max(0.0));
        self.mlp_out.matvec(&scratch.mlp_hidden, &mut scratch.x)?;
        Ok(())
    }
}

impl Layer {
    /// Decoder layer `li` on the row in `scratch.x` (updated in place); its rotated key and
    /// its value go into `cache` at position `cache.len()`.
    fn step(
        &self,
        li: usize,
        cfg: &Config,
        cache: &mut KvCache,
        scratch: &mut DecodeScratch,
        style: &Style,
    ) -> Result<()> {
        let hd = cfg.head_dim();
        let pos = cache.len;
        with_f32(&self.input_norm, |w| {
            rms_norm(&scratch.x, w, cfg.rms_norm_eps, &mut scratch.xn);
            Ok(())
        })?;
        Linear::matvec_many([
            (&self.q_proj, &scratch.xn, &mut scratch.q),
            (&self.k_proj, &scratch.xn, &mut scratch.k),
            (&self.v_proj, &scratch.xn, &mut scratch.v),
        ])?;
        for (target, out) in [
            (Target::Q(li), &mut scratch.q),
            (Target::K(li), &mut scratch.k),
            (Target::V(li), &mut scratch.v),
        ] {
            let rows = 0..out.len();
            style.add_matvec(target, &scratch.xn, rows, out)?;
        }
        rotate_heads(&mut scratch.q, hd, &scratch.cos, &scratch.sin);
        rotate_heads(&mut scratch.k, hd, &scratch.cos, &scratch.sin);
        cache.store(li, pos, &scratch.k, &scratch.v);
        cache.attend(
            li,
            &scratch.q,
            pos + 1,
            &mut scratch.scores,
            &mut scratch.attn,
        );
        self.o_proj
            .matvec_styled(&scratch.attn, &mut scratch.proj, style, Target::O(li))?;
        for (x, p) in scratch.x.iter_mut().zip(&scratch.proj) {
            *x += p;
        }
        with_f32(&self.post_attention_norm, |w| {
            rms_norm(&scratch.x, w, cfg.rms_norm_eps, &mut scratch.xn);
            Ok(())
        })?;
        Linear::matvec_many([
            (&self.gate_proj, &scratch.xn, &mut scratch.gate),
            (&self.up_proj, &scratch.xn, &mut scratch.up),
        ])?;
        for (g, u) in scratch.gate.iter_mut().zip(&scratch.up) {
            *g = silu(*g) * u;
        }
        self.down_proj.matvec(&scratch.gate, &mut scratch.proj)?;
        for (x, p) in scratch.x.iter_mut().zip(&scratch.proj) {
            *x += p;
        }
        Ok(())
    }
}

/// Row and head cos/sin tables of one row, per rotary table.
type RowRotary = ([Vec<f32>; 5], [Vec<f32>; 5]);

/// `l` applied to the `n` rows of `x` at once (with the style's side path for `target`).
fn linear_rows(l: &Linear, x: &[f32], style: &Style, target: Option<Target>) -> Result<Vec<f32>> {
    let input = candle_core::Tensor::from_slice(
        x,
        (x.len() / l.in_dim, l.in_dim),
        &candle_core::Device::Cpu,
    )?;
    let y = match target {
        Some(target) => l.forward_styled(&input, style, target)?,
        None => l.forward(&input)?,
    };
    y.flatten_all()?.to_vec1::<f32>()
}

impl Layer {
    /// Decoder layer `li` on the rows of `x` (`n × hidden`, updated in place), which take cache
    /// positions `cache.len()..cache.len() + n`; `rotary[i]` holds row i's tables. The cache
    /// length itself is moved on by the caller, after the last layer.
    #[allow(clippy::too_many_arguments)]
    fn extend(
        &self,
        li: usize,
        cfg: &Config,
        cache: &mut KvCache,
        x: &mut [f32],
        rotary: &[RowRotary],
        scores: &mut [f32],
        style: &Style,
    ) -> Result<()> {
        let hd = cfg.head_dim();
        let (h, kvd) = (cfg.hidden_size, cfg.n_kv_heads * hd);
        let pos0 = cache.len;
        let norm = |w: &candle_core::Tensor, x: &[f32]| -> Result<Vec<f32>> {
            let mut out = vec![0.0; x.len()];
            with_f32(w, |w| {
                for (o, r) in out.chunks_exact_mut(h).zip(x.chunks_exact(h)) {
                    rms_norm(r, w, cfg.rms_norm_eps, o);
                }
                Ok(())
            })?;
            Ok(out)
        };
        let xn = norm(&self.input_norm, x)?;
        let mut q = linear_rows(&self.q_proj, &xn, style, Some(Target::Q(li)))?;
        let mut k = linear_rows(&self.k_proj, &xn, style, Some(Target::K(li)))?;
        let v = linear_rows(&self.v_proj, &xn, style, Some(Target::V(li)))?;
        let rows = q
            .chunks_exact_mut(h)
            .zip(k.chunks_exact_mut(kvd))
            .zip(v.chunks_exact(kvd));
        for (i, (((q, k), v), (cos, sin))) in rows.zip(rotary).enumerate() {
            rotate_heads(q, hd, cos, sin);
            rotate_heads(k, hd, cos, sin);
            cache.store(li, pos0 + i, k, v);
        }
        let mut attn = vec![0.0f32; x.len()];
        for (i, (q, out)) in q.chunks_exact(h).zip(attn.chunks_exact_mut(h)).enumerate() {
            cache.attend(li, q, pos0 + i + 1, scores, out);
        }
        let o = linear_rows(&self.o_proj, &attn, style, Some(Target::O(li)))?;
        for (x, p) in x.iter_mut().zip(&o) {
            *x += p;
        }
        let xn = norm(&self.post_attention_norm, x)?;
        let mut gate = linear_rows(&self.gate_proj, &xn, style, None)?;
        let up = linear_rows(&self.up_proj, &xn, style, None)?;
        for (g, u) in gate.iter_mut().zip(&up) {
            *g = silu(*g) * u;
        }
        let down = linear_rows(&self.down_proj, &gate, style, None)?;
        for (x, p) in x.iter_mut().zip(&down) {
            *x += p;
        }
        Ok(())
    }
}

/// Rotates every head of `v` (heads of `hd` values) with the rotary table of its attribute
/// group (heads are split into 6 contiguous groups, spec §3.2).
fn rotate_heads(v: &mut [f32], hd: usize, cos: &[Vec<f32>; 5], sin: &[Vec<f32>; 5]) {
    let heads = v.len() / hd;
    for (head, v) in v.chunks_exact_mut(hd).enumerate() {
        let t = GROUP_TABLE[head / (heads / 6)];
        rotate(v, &cos[t], &sin[t], hd / 2);
    }
}

/// HF half-split rotary on one head, in place.
fn rotate(x: &mut [f32], cos: &[f32], sin: &[f32], half: usize) {
    for i in 0..half {
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = b * cos[i] + a * sin[i];
    }
}
