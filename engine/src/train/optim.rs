//! AdamW whose moments can be saved and restored, so training resumes exactly.

use std::collections::HashMap;

use candle_core::{Result, Tensor, Var};

/// Decoupled-weight-decay Adam (PyTorch's `AdamW` defaults: betas 0.9/0.999, eps 1e-8).
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub step: u64,
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, lr: f64, weight_decay: f64) -> Result<Self> {
        let m = vars
            .iter()
            .map(|(_, v)| v.as_tensor().zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let v = vars
            .iter()
            .map(|(_, v)| v.as_tensor().zeros_like())
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            step: 0,
            vars,
            m,
            v,
        })
    }

    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// One update from the gradients of `loss`.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let m = ((&self.m[i] * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + self.eps)?)?;
            let theta = var.as_tensor();
            let decayed = (theta * (1.0 - self.lr * self.weight_decay))?;
            var.set(&(decayed - (update * self.lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// Parameters and moments as named tensors (`param/`, `adam_m/`, `adam_v/` prefixes).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(3 * self.vars.len());
        for (i, (name, var)) in self.vars.iter().enumerate() {
            out.push((format!("param/{name}"), var.as_tensor().clone()));
            out.push((format!("adam_m/{name}"), self.m[i].clone()));
            out.push((format!("adam_v/{name}"), self.v[i].clone()));
        }
        out
    }

    /// Restores parameters and moments saved by [`AdamW::state`].
    pub fn restore(&mut self, state: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            let get = |prefix: &str| {
                state
                    .get(&format!("{prefix}/{name}"))
                    .cloned()
                    .ok_or_else(|| {
                        candle_core::Error::Msg(format!("checkpoint lacks {prefix}/{name}"))
                    })
            };
            let p = get("param")?;
            if p.dims() != var.as_tensor().dims() {
                candle_core::bail!(
                    "checkpoint tensor {name} has shape {:?}, expected {:?}",
                    p.dims(),
                    var.as_tensor().dims()
                );
            }
            var.set(&p)?;
            self.m[i] = get("adam_m")?;
            self.v[i] = get("adam_v")?;
        }
        self.step = step;
        Ok(())
    }
}
