//! Trainable parameters: fresh LoRA pairs over a frozen base, or every tensor of a base.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};

use crate::lora::{Adapter, LoraPair, Style, Target};
use crate::model::weights::WeightStore;
use crate::model::Moonbeam;

/// LoRA pairs on every official target, initialised as peft does: for linears A is
/// Kaiming-uniform (`U(-1/sqrt(in), 1/sqrt(in))`) and B zero; for the embedding A is zero
/// and B standard normal. The style therefore starts as exactly the base.
pub fn new_lora(
    model: &Moonbeam,
    rank: usize,
    alpha: f64,
    seed: u64,
) -> Result<(Vec<(String, Var)>, Style)> {
    let cfg = &model.cfg;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dev = Device::Cpu;
    let mut vars = Vec::new();
    let mut pairs = HashMap::new();
    for target in Target::all(cfg) {
        let (a_shape, b_shape) = target.pair_shapes(cfg, rank);
        let n_a: usize = a_shape.iter().product();
        let n_b: usize = b_shape.iter().product();
        let (a, b): (Vec<f32>, Vec<f32>) = match target {
            Target::DecoderEmbedding => {
                (vec![0.0; n_a], (0..n_b).map(|_| normal(&mut rng)).collect())
            }
            _ => {
                let bound = 1.0 / (a_shape[1] as f32).sqrt();
                (
                    (0..n_a).map(|_| rng.random_range(-bound..bound)).collect(),
                    vec![0.0; n_b],
                )
            }
        };
        let a = Var::from_tensor(&Tensor::from_vec(a, a_shape, &dev)?)?;
        let b = Var::from_tensor(&Tensor::from_vec(b, b_shape, &dev)?)?;
        let m = target.module_name();
        pairs.insert(
            target,
            LoraPair {
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
            },
        );
        vars.push((format!("{m}.lora_A"), a));
        vars.push((format!("{m}.lora_B"), b));
    }
    let adapter = Adapter {
        rank,
        alpha,
        pairs,
        lm_head_base: None,
    };
    Ok((vars, Style::single(Arc::new(adapter), 1.0)))
}

/// The adapter whose pairs are the current values of the trainable variables.
pub fn adapter_of(style: &Style) -> Option<Adapter> {
    style.parts.first().map(|(a, _)| Adapter {
        rank: a.rank,
        alpha: a.alpha,
        pairs: a
            .pairs
            .iter()
            .map(|(t, p)| {
                (
                    *t,
                    LoraPair {
                        a: p.a.copy().unwrap_or_else(|_| p.a.clone()),
                        b: p.b.copy().unwrap_or_else(|_| p.b.clone()),
                    },
                )
            })
            .collect(),
        lm_head_base: None,
    })
}

/// A copy of `model` whose every tensor is a trainable variable.
pub fn full(
    model: &Moonbeam,
) -> std::result::Result<(Vec<(String, Var)>, Moonbeam), crate::error::WeightsError> {
    let mut vars = Vec::new();
    let mut tensors = HashMap::new();
    for (name, t) in model.named_tensors() {
        let var = Var::from_tensor(&t.to_dtype(DType::F32)?.copy()?)?;
        tensors.insert(name.clone(), var.as_tensor().clone());
        vars.push((name, var));
    }
    let trained = Moonbeam::from_store(
        &model.cfg,
        &WeightStore::from_tensors(tensors),
        model.tables.precision,
    )?;
    Ok((vars, trained))
}

fn normal(rng: &mut impl Rng) -> f32 {
    let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

/// The LoRA pairs held by variables named `<module>.lora_A` / `<module>.lora_B`.
pub fn pairs_of(
    model: &Moonbeam,
    vars: &[(String, Var)],
    rank: usize,
) -> Result<HashMap<Target, LoraPair>> {
    let mut pairs = HashMap::new();
    for target in Target::all(&model.cfg) {
        let m = target.module_name();
        let find = |suffix: &str| {
            vars.iter()
                .find(|(n, _)| *n == format!("{m}.{suffix}"))
                .map(|(_, v)| v.as_tensor().clone())
        };
        if let (Some(a), Some(b)) = (find("lora_A"), find("lora_B")) {
            if a.dim(0)? != rank && !matches!(target, Target::DecoderEmbedding) {
                candle_core::bail!("{m}: rank {} instead of {rank}", a.dim(0)?);
            }
            pairs.insert(target, LoraPair { a, b });
        }
    }
    Ok(pairs)
}
