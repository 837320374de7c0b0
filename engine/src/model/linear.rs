//! A frozen linear layer with both a batched (candle) and a single-vector (kernel) path.

use candle_core::{Result, Tensor};

use crate::error::WeightsError;
use crate::kernels;
use crate::lora::{Style, Target};
use crate::model::weights::WeightStore;

/// `y = x W^T + b` with `W` stored `(out, in)` as in PyTorch.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub out_dim: usize,
    pub in_dim: usize,
}

impl Linear {
    pub fn load(
        ws: &WeightStore,
        name: &str,
        out_dim: usize,
        in_dim: usize,
        bias: bool,
    ) -> std::result::Result<Self, WeightsError> {
        let weight = ws.get(&format!("{name}.weight"), &[out_dim, in_dim])?;
        let bias = if bias {
            Some(ws.get(&format!("{name}.bias"), &[out_dim])?)
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias,
            out_dim,
            in_dim,
        })
    }

    /// Batched forward for `x` of shape `(..., in)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.broadcast_matmul(&self.weight.t()?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// Batched forward plus the style's low-rank side path for `target`.
    pub fn forward_styled(&self, x: &Tensor, style: &Style, target: Target) -> Result<Tensor> {
        let y = self.forward(x)?;
        match style.linear_delta(target, x)? {
            Some(d) => y + d,
            None => Ok(y),
        }
    }

    /// [`Linear::matvec`] plus the style's side path for `target`.
    pub fn matvec_styled(
        &self,
        x: &[f32],
        out: &mut [f32],
        style: &Style,
        target: Target,
    ) -> Result<()> {
        self.matvec(x, out)?;
        style.add_matvec(target, x, 0..self.out_dim, out)
    }

    /// [`Linear::matvec_rows`] plus the style's side path for `target`.
    pub fn matvec_rows_styled(
        &self,
        x: &[f32],
        rows: std::ops::Range<usize>,
        out: &mut [f32],
        style: &Style,
        target: Target,
    ) -> Result<()> {
        self.matvec_rows(x, rows.clone(), out)?;
        style.add_matvec(target, x, rows, out)
    }

    /// Single-vector forward on the decode path: `out = W x + b`.
    pub fn matvec(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        with_f32(&self.weight, |w| match &self.bias {
            Some(b) => with_f32(b, |b| {
                kernels::matvec(w, x, Some(b), out);
                Ok(())
            }),
            None => {
                kernels::matvec(w, x, None, out);
                Ok(())
            }
        })
    }

    /// Only the output rows in `rows` (used where only one attribute's logits are needed).
    pub fn matvec_rows(
        &self,
        x: &[f32],
        rows: std::ops::Range<usize>,
        out: &mut [f32],
    ) -> Result<()> {
        with_f32(&self.weight, |w| {
            kernels::matvec_rows(w, x, rows.clone(), out);
            Ok(())
        })?;
        if let Some(b) = &self.bias {
            with_f32(b, |b| {
                for (o, bv) in out.iter_mut().zip(&b[rows]) {
                    *o += bv;
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}

/// Runs `f` on the contiguous f32 data of a CPU tensor without copying it.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("the decode path needs CPU tensors");
    };
    let data = cpu.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => f(&data[start..end]),
        None => candle_core::bail!("the decode path needs contiguous tensors"),
    }
}
