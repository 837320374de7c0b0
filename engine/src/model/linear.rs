//! A frozen linear layer with both a batched (candle) and a single-vector (kernel) path.

use candle_core::{Result, Tensor};

use crate::config::Config;
use crate::error::WeightsError;
use crate::kernels::{self, with_f32};
use crate::lora::{Style, Target};
use crate::model::weights::WeightStore;
use crate::model::Module;

/// `y = x W^T + b` with `W` stored `(out, in)` as in PyTorch.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub out_dim: usize,
    pub in_dim: usize,
}

impl Linear {
    /// The linear module `module` of a checkpoint for `cfg`.
    pub fn load(
        ws: &WeightStore,
        module: Module,
        cfg: &Config,
    ) -> std::result::Result<Self, WeightsError> {
        let mut tensors = ws.module(module, cfg)?.into_iter();
        let weight = tensors.next().ok_or_else(|| WeightsError::Format {
            path: Default::default(),
            reason: format!("internal: {} has no weight", module.name()),
        })?;
        Ok(Linear::new(weight, tensors.next())?)
    }

    /// A layer from its `(out, in)` weight and optional `(out)` bias.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        Ok(Linear {
            weight,
            bias,
            out_dim,
            in_dim,
        })
    }

    /// The weight, then the bias if any (checkpoint order).
    pub fn tensors(&self) -> Vec<Tensor> {
        std::iter::once(self.weight.clone())
            .chain(self.bias.clone())
            .collect()
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
