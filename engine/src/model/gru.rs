//! The GRU note head (spec §4): from one hidden state to the six attributes of the next note.

use std::ops::Range;

use candle_core::{Result, Tensor, D};

use super::{GruLayer, Linear, Moonbeam};
use crate::kernels::with_f32;
use crate::kernels::{sigmoid, tanh};
use crate::lora::{Style, Target};

/// Picks one token among an attribute's allowed ids.
pub trait Chooser {
    /// Whether [`Chooser::choose`] needs the logits of the whole flat vocabulary
    /// (top-p over the full vocabulary) or only the allowed slice (greedy).
    fn full_vocab(&self) -> bool;

    /// `logits` is the full vocabulary when [`Chooser::full_vocab`] is true, else just
    /// `allowed`. Returns the chosen id relative to `allowed.start`.
    fn choose(&mut self, attr: usize, allowed: Range<usize>, logits: &[f32]) -> usize;
}

/// Scratch buffers for the single-note GRU head, allocated once per session.
pub struct GruScratch {
    x: Vec<f32>,
    h: Vec<Vec<f32>>,
    gi: Vec<f32>,
    gh: Vec<f32>,
    y: Vec<f32>,
    logits: Vec<f32>,
    summary: Vec<f32>,
}

impl GruScratch {
    pub fn new(model: &Moonbeam) -> Self {
        let g = model.cfg.gru_hidden;
        GruScratch {
            x: vec![0.0; g],
            h: vec![vec![0.0; g]; model.cfg.gru_layers],
            gi: vec![0.0; 3 * g],
            gh: vec![0.0; 3 * g],
            y: vec![0.0; g],
            logits: vec![0.0; model.cfg.decode_vocab_size],
            summary: vec![0.0; g],
        }
    }
}

impl Moonbeam {
    /// Decodes one note from the final normed hidden state of the last position.
    /// Returns the six attribute values (timeshift, duration, octave, pitch class, instrument, velocity).
    pub fn decode_note(
        &self,
        hidden: &[f32],
        scratch: &mut GruScratch,
        chooser: &mut dyn Chooser,
        style: &Style,
    ) -> Result<[i64; 6]> {
        let offsets = self.cfg.decode_offsets();
        let g = self.cfg.gru_hidden;
        self.summary_projection.matvec_styled(
            hidden,
            &mut scratch.summary,
            style,
            Target::SummaryProjection,
        )?;
        for h in scratch.h.iter_mut() {
            h.copy_from_slice(&scratch.summary);
        }
        let mut token = 0usize; // sos_out
        let mut values = [0i64; 6];
        for (attr, value) in values.iter_mut().enumerate() {
            with_f32(&self.decoder_embedding, |e| {
                scratch.x.copy_from_slice(&e[token * g..(token + 1) * g]);
                Ok(())
            })?;
            style.add_embedding(token, &mut scratch.x)?;
            for (layer, h) in self.gru.iter().zip(scratch.h.iter_mut()) {
                layer.step(&scratch.x, h, &mut scratch.gi, &mut scratch.gh)?;
                scratch.x.copy_from_slice(h);
            }
            self.fc_out
                .matvec_styled(&scratch.x, &mut scratch.y, style, Target::FcOut)?;
            let allowed = offsets[attr]..offsets[attr] + self.cfg.vocab[attr];
            let choice = if chooser.full_vocab() {
                self.lm_head.matvec(&scratch.y, &mut scratch.logits)?;
                style.add_matvec(
                    Target::LmHead,
                    &scratch.y,
                    0..self.cfg.decode_vocab_size,
                    &mut scratch.logits,
                )?;
                chooser.choose(attr, allowed.clone(), &scratch.logits)
            } else {
                let n = allowed.len();
                self.lm_head.matvec_rows_styled(
                    &scratch.y,
                    allowed.clone(),
                    &mut scratch.logits[..n],
                    style,
                    Target::LmHead,
                )?;
                chooser.choose(attr, allowed.clone(), &scratch.logits[..n])
            };
            let choice = choice.min(allowed.len() - 1);
            token = allowed.start + choice;
            *value = choice as i64;
        }
        Ok(values)
    }

    /// Teacher-forced GRU logits (spec §4, training path).
    ///
    /// `hidden` is `(B, L, hidden)`; `inputs` holds, for every batch row and every position
    /// `t < L-1`, the six GRU input ids `labels[t+1][0..6]`. Returns `(B, L-1, 6, V)`.
    pub fn gru_logits(&self, hidden: &Tensor, inputs: &Tensor, style: &Style) -> Result<Tensor> {
        let (b, l, _) = hidden.dims3()?;
        let g = self.cfg.gru_hidden;
        let n = b * (l - 1);
        let s = self
            .summary_projection
            .forward_styled(
                &hidden.narrow(1, 0, l - 1)?,
                style,
                Target::SummaryProjection,
            )?
            .reshape((n, g))?;
        let ids = inputs.reshape(n * 6)?;
        let mut x = self.decoder_embedding.index_select(&ids, 0)?;
        if let Some(d) = style.embedding_delta(&ids)? {
            x = (x + d)?;
        }
        let mut x = x.reshape((n, 6, g))?;
        for layer in &self.gru {
            x = layer.forward(&x, &s)?;
        }
        let logits = self.lm_head.forward_styled(
            &self.fc_out.forward_styled(&x, style, Target::FcOut)?,
            style,
            Target::LmHead,
        )?;
        logits.reshape((b, l - 1, 6, self.cfg.decode_vocab_size))
    }
}

impl GruLayer {
    /// The layer over the six steps of `x` `(n, 6, g)`, from the hidden state `h0` `(n, g)`:
    /// returns every step's hidden state, `(n, 6, g)`.
    fn forward(&self, x: &Tensor, h0: &Tensor) -> Result<Tensor> {
        let g = self.hh.in_dim;
        let gi_all = self.ih.forward(x)?; // (n, 6, 3g)
        let mut h = h0.clone();
        let mut outs = Vec::with_capacity(6);
        for step in 0..6 {
            let gi = gi_all.narrow(1, step, 1)?.squeeze(1)?;
            let gh = self.hh.forward(&h)?;
            let r = candle_nn::ops::sigmoid(
                &(gi.narrow(D::Minus1, 0, g)? + gh.narrow(D::Minus1, 0, g)?)?,
            )?;
            let z = candle_nn::ops::sigmoid(
                &(gi.narrow(D::Minus1, g, g)? + gh.narrow(D::Minus1, g, g)?)?,
            )?;
            let nn = (gi.narrow(D::Minus1, 2 * g, g)? + (r * gh.narrow(D::Minus1, 2 * g, g)?)?)?
                .tanh()?;
            h = ((&nn - (&z * &nn)?)? + (&z * &h)?)?;
            outs.push(h.clone());
        }
        Tensor::stack(&outs, 1)
    }

    /// One step on one vector: `h` becomes the new hidden state for input `x`; `gi` and `gh`
    /// (`3g` each) are scratch.
    fn step(&self, x: &[f32], h: &mut [f32], gi: &mut [f32], gh: &mut [f32]) -> Result<()> {
        Linear::matvec_many([(&self.ih, x, gi), (&self.hh, &*h, gh)])?;
        gru_cell(gi, gh, h);
        Ok(())
    }
}

/// One PyTorch GRU cell update in place: `h' = (1 - z) * n + z * h`.
fn gru_cell(gi: &[f32], gh: &[f32], h: &mut [f32]) {
    let g = h.len();
    for j in 0..g {
        let r = sigmoid(gi[j] + gh[j]);
        let z = sigmoid(gi[g + j] + gh[g + j]);
        let n = tanh(gi[2 * g + j] + r * gh[2 * g + j]);
        h[j] = (1.0 - z) * n + z * h[j];
    }
}
