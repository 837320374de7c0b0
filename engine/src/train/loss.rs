//! The teacher-forced training loss over packed sequences (spec §4 and §6.2).
//!
//! Unlike the reference, positions whose target is not a real in-sample note (packing
//! padding, and the jump from one packed sample's EOS to the next sample's SOS) are
//! masked out of the mean instead of being trained to predict id 0.

use candle_core::{Device, Result, Tensor, D};

use crate::lora::Style;
use crate::model::forward::{Mask, Row};
use crate::model::Moonbeam;
use crate::vocab;

/// One batch of packed sequences, all `L` rows long.
pub struct PackedBatch<'a> {
    pub rows: Vec<&'a [Row]>,
    /// Per sequence, the sample id of every row.
    pub segments: Vec<Vec<u32>>,
    /// Per sequence, `L - 1` flags: whether position t's prediction of row t+1 counts.
    pub loss_mask: Vec<Vec<bool>>,
}

/// Mean cross-entropy over the six attributes of every counted position, and the number
/// of counted positions (notes).
pub fn packed_loss(
    model: &Moonbeam,
    style: &Style,
    batch: &PackedBatch<'_>,
) -> Result<(Tensor, usize)> {
    let dev = Device::Cpu;
    let b = batch.rows.len();
    let l = batch.rows[0].len();
    let out = model.forward(&batch.rows, Mask::Packed(&batch.segments), style, None)?;
    let mut inputs = Vec::with_capacity(b * (l - 1) * 6);
    let mut targets = Vec::with_capacity(b * (l - 1) * 6);
    let mut mask = Vec::with_capacity(b * (l - 1) * 6);
    let mut counted = 0usize;
    for (seq, (segs, lm)) in batch
        .rows
        .iter()
        .zip(batch.segments.iter().zip(&batch.loss_mask))
    {
        let labels = sequence_labels(model, seq, segs);
        for t in 0..l - 1 {
            let next = labels[t + 1];
            inputs.extend_from_slice(&next[0..6]);
            targets.extend_from_slice(&next[1..7]);
            let m = if lm[t] { 1f32 } else { 0f32 };
            counted += lm[t] as usize;
            mask.extend(std::iter::repeat_n(m, 6));
        }
    }
    let inputs = Tensor::from_vec(inputs, (b, l - 1, 6), &dev)?;
    let targets = Tensor::from_vec(targets, (b, l - 1, 6, 1), &dev)?;
    let mask = Tensor::from_vec(mask, (b, l - 1, 6), &dev)?;
    let logits = model.gru_logits(&out.hidden, &inputs, style)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let nll = logp
        .gather(&targets, D::Minus1)?
        .squeeze(D::Minus1)?
        .neg()?;
    let denom = (counted.max(1) * 6) as f64;
    let loss = ((nll * mask)?.sum_all()? / denom)?;
    Ok((loss, counted))
}

/// Labels for a packed sequence: each sample's rows get their own labels (timeshifts restart
/// at every sample); padding rows get `[0; 7]`, as in the reference's packing.
fn sequence_labels(model: &Moonbeam, rows: &[Row], segments: &[u32]) -> Vec<[u32; 7]> {
    let mut out = Vec::with_capacity(rows.len());
    let mut start = 0;
    while start < rows.len() {
        let mut end = start + 1;
        while end < rows.len() && segments[end] == segments[start] {
            end += 1;
        }
        let chunk = &rows[start..end];
        if chunk[0][0] == -1 {
            match vocab::labels(&model.cfg, chunk) {
                Ok(l) => out.extend(l),
                Err(_) => out.extend(std::iter::repeat_n([0u32; 7], chunk.len())),
            }
        } else {
            out.extend(std::iter::repeat_n([0u32; 7], chunk.len()));
        }
        start = end;
    }
    out
}
