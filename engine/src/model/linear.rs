//! A frozen linear layer with both a batched (candle) and a single-vector (kernel) path.

use std::sync::Arc;

use candle_core::{Result, Tensor};

use crate::config::Config;
use crate::error::WeightsError;
use crate::kernels::{self, with_f32};
use crate::lora::{Style, Target};
use crate::model::weights::WeightStore;
use crate::model::Module;
use crate::quant::{QFormat, QMatrix};

/// A linear layer's weight: plain f32, or quantized ([`crate::quant`]).
#[derive(Debug, Clone)]
pub enum Weight {
    /// `(out, in)`, contiguous f32.
    F32(Tensor),
    Quant(Arc<QMatrix>),
}

/// `y = x W^T + b` with `W` stored `(out, in)` as in PyTorch.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Weight,
    pub bias: Option<Tensor>,
    pub out_dim: usize,
    pub in_dim: usize,
}

impl Linear {
    /// The linear module `module` of a checkpoint for `cfg` (quantized where the file is).
    pub fn load(
        ws: &WeightStore,
        module: Module,
        cfg: &Config,
    ) -> std::result::Result<Self, WeightsError> {
        let tensors = module.tensors(cfg);
        let Some((weight_name, shape)) = tensors.first() else {
            return Err(WeightsError::Format {
                path: Default::default(),
                reason: format!("internal: {} has no weight", module.name()),
            });
        };
        let weight = ws.weight(weight_name, shape)?;
        let bias = match tensors.get(1) {
            Some((name, shape)) => Some(ws.get(name, shape)?),
            None => None,
        };
        Ok(Linear::with_weight(weight, bias, shape[0], shape[1]))
    }

    /// A layer from its `(out, in)` f32 weight and optional `(out)` bias.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        Ok(Linear::with_weight(
            Weight::F32(weight),
            bias,
            out_dim,
            in_dim,
        ))
    }

    pub(crate) fn with_weight(
        weight: Weight,
        bias: Option<Tensor>,
        out_dim: usize,
        in_dim: usize,
    ) -> Self {
        Linear {
            weight,
            bias,
            out_dim,
            in_dim,
        }
    }

    /// The weight as an f32 tensor (dequantized if it is quantized).
    pub fn f32_weight(&self) -> Tensor {
        match &self.weight {
            Weight::F32(t) => t.clone(),
            Weight::Quant(q) => Tensor::from_vec(
                q.dequantize(),
                (q.rows(), q.cols()),
                &candle_core::Device::Cpu,
            )
            .expect("rows x cols values make a (rows, cols) tensor"),
        }
    }

    /// Bytes a matvec reads from the weight: f32, or the codes and scales.
    pub fn weight_bytes(&self) -> f64 {
        match &self.weight {
            Weight::F32(_) => 4.0 * (self.out_dim * self.in_dim) as f64,
            Weight::Quant(q) => q.bytes() as f64,
        }
    }

    /// The quantized weight, if it is.
    pub fn quantized(&self) -> Option<&QMatrix> {
        match &self.weight {
            Weight::F32(_) => None,
            Weight::Quant(q) => Some(q),
        }
    }

    /// Quantizes the weight in place. A layer whose input size is not a multiple of
    /// [`crate::quant::GROUP`] stays f32 and `Ok(false)` is returned.
    pub fn quantize(&mut self, format: QFormat) -> Result<bool> {
        if !self.in_dim.is_multiple_of(crate::quant::GROUP) {
            return Ok(false);
        }
        let q = match &self.weight {
            Weight::F32(t) => with_f32(t, |w| {
                QMatrix::quantize(format, w, self.out_dim, self.in_dim)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))
            })?,
            Weight::Quant(q) if q.format() == format => return Ok(true),
            Weight::Quant(_) => candle_core::bail!("the layer is already quantized"),
        };
        self.weight = Weight::Quant(Arc::new(q));
        Ok(true)
    }

    /// The f32 weight (dequantized if need be), then the bias if any (checkpoint order).
    pub fn tensors(&self) -> Vec<Tensor> {
        std::iter::once(self.f32_weight())
            .chain(self.bias.clone())
            .collect()
    }

    /// Batched forward for `x` of shape `(..., in)`.
    ///
    /// A quantized layer runs its own kernel when `x` needs no gradient (prefill, evaluation);
    /// under autograd (training a style on a quantized base) it multiplies by the dequantized
    /// weight, which candle can differentiate.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::Quant(q) if !x.track_op() => {
                let dims = x.dims().to_vec();
                let input = x
                    .flatten_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1::<f32>()?;
                let m = input.len() / self.in_dim;
                let mut out = vec![0.0f32; m * self.out_dim];
                q.matmul(&input, &mut out);
                let mut out_dims = dims;
                if let Some(last) = out_dims.last_mut() {
                    *last = self.out_dim;
                }
                Tensor::from_vec(out, out_dims, x.device())?
            }
            _ => x.broadcast_matmul(&self.f32_weight().t()?)?,
        };
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
        self.matvec_rows(x, 0..self.out_dim, out)
    }

    /// Only the output rows in `rows` (used where only one attribute's logits are needed).
    pub fn matvec_rows(
        &self,
        x: &[f32],
        rows: std::ops::Range<usize>,
        out: &mut [f32],
    ) -> Result<()> {
        match &self.weight {
            Weight::F32(t) => with_f32(t, |w| {
                kernels::matvec_rows(w, x, rows.clone(), out);
                Ok(())
            })?,
            Weight::Quant(q) => q.matvec_rows(x, rows.clone(), out),
        }
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
