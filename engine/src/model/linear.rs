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

    /// [`Linear::matvec`] for several layers: `out = W x + b` for each `(layer, x, out)`. Where
    /// every layer is quantized they run in one parallel dispatch ([`QMatrix::matvec_many`]),
    /// which saves a fork and join per layer on the decode path; the results are the same
    /// bits as one call each.
    pub fn matvec_many<const N: usize>(
        mut products: [(&Linear, &[f32], &mut [f32]); N],
    ) -> Result<()> {
        if products
            .iter()
            .any(|(layer, _, _)| layer.quantized().is_none())
        {
            for (layer, x, out) in products {
                layer.matvec(x, out)?;
            }
            return Ok(());
        }
        for (layer, x, out) in &products {
            if x.len() != layer.in_dim || out.len() != layer.out_dim {
                candle_core::bail!(
                    "matvec: ({}, {}) layer given {} inputs and {} outputs",
                    layer.out_dim,
                    layer.in_dim,
                    x.len(),
                    out.len()
                );
            }
        }
        QMatrix::matvec_many(products.each_mut().map(|(layer, x, out)| {
            crate::quant::Matvec {
                matrix: layer
                    .quantized()
                    .expect("every layer is quantized (checked above)"),
                x,
                out,
            }
        }));
        for (layer, _, out) in products {
            layer.add_bias(0..layer.out_dim, out)?;
        }
        Ok(())
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
        self.add_bias(rows, out)
    }

    /// `out += b[rows]`, where the layer has a bias.
    fn add_bias(&self, rows: std::ops::Range<usize>, out: &mut [f32]) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn layer(rows: usize, cols: usize, seed: usize, bias: bool) -> Linear {
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| (((i + seed) * 2654435761) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let b = bias.then(|| {
            let b: Vec<f32> = (0..rows).map(|r| r as f32 / 10.0 - 3.0).collect();
            Tensor::from_vec(b, rows, &Device::Cpu).unwrap()
        });
        Linear::new(Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap(), b).unwrap()
    }

    /// The GRU's pair (two inputs, biases) and q/k/v (one input) in one call each way.
    #[test]
    fn matvec_many_equals_one_matvec_each_with_biases_and_for_f32_layers() {
        let x: Vec<f32> = (0..1024).map(|i| (i % 13) as f32 / 6.0 - 1.0).collect();
        let h: Vec<f32> = (0..1024).map(|i| (i % 7) as f32 / 3.0 - 1.0).collect();
        for format in [None, Some(QFormat::Q8), Some(QFormat::Q4)] {
            let mut ih = layer(1536, 1024, 1, true);
            let mut hh = layer(1536, 1024, 2, true);
            if let Some(f) = format {
                assert!(ih.quantize(f).unwrap() && hh.quantize(f).unwrap());
            }
            let (mut gi, mut gh) = (vec![0.0; 1536], vec![0.0; 1536]);
            Linear::matvec_many([(&ih, &x, &mut gi), (&hh, &h, &mut gh)]).unwrap();
            let (mut gi1, mut gh1) = (vec![0.0; 1536], vec![0.0; 1536]);
            ih.matvec(&x, &mut gi1).unwrap();
            hh.matvec(&h, &mut gh1).unwrap();
            assert_eq!((gi, gh), (gi1, gh1), "{format:?}");
        }
        let mut q = layer(64, 1024, 3, false);
        assert!(q.quantize(QFormat::Q8).unwrap());
        let mut short = vec![0.0; 63];
        assert!(Linear::matvec_many([(&q, &x, &mut short)]).is_err());
    }
}
