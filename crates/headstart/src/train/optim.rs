//! Optimisers with state that can be saved and restored exactly: AdamW (decoupled weight
//! decay, Loshchilov & Hutter 2019) and SGD with momentum / Nesterov, both following the update
//! rules of `torch.optim`. Parameters come in named groups with their own learning-rate
//! multiplier and weight decay (per-stage learning rates; no decay on biases and norms).

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OptimKind {
    AdamW { beta1: f64, beta2: f64, eps: f64 },
    Sgd { momentum: f64, nesterov: bool },
}

impl OptimKind {
    pub fn adamw() -> OptimKind {
        OptimKind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

pub struct Group {
    pub name: String,
    pub params: Vec<(String, Tensor)>,
    pub lr_mult: f64,
    pub weight_decay: f64,
}

pub struct Optimizer {
    pub kind: OptimKind,
    pub groups: Vec<Group>,
    /// Per parameter (same order as the groups' params): Adam (m, v) or SGD (momentum buffer).
    state: Vec<Vec<Tensor>>,
    pub steps: i64,
}

/// True for tensors that conventionally get no weight decay: biases and norm scales (≤ 1-D).
pub fn no_decay(t: &Tensor) -> bool {
    t.dim() <= 1
}

impl Optimizer {
    pub fn new(kind: OptimKind, groups: Vec<Group>) -> Optimizer {
        let state = groups.iter().flat_map(|g| g.params.iter().map(|_| vec![])).collect();
        Optimizer { kind, groups, state, steps: 0 }
    }

    pub fn zero_grad(&mut self) {
        for g in &self.groups {
            for (_, p) in &g.params {
                let mut grad = p.grad();
                if grad.defined() {
                    let _ = grad.f_zero_();
                }
            }
        }
    }

    /// Whether every gradient is finite (an undefined gradient counts as finite).
    pub fn grads_finite(&self) -> bool {
        self.groups.iter().flat_map(|g| g.params.iter()).all(|(_, p)| {
            let g = p.grad();
            !g.defined() || bool::try_from(g.isfinite().all()).unwrap_or(false)
        })
    }

    /// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let grads: Vec<Tensor> = self.groups.iter().flat_map(|g| g.params.iter()).map(|(_, p)| p.grad()).filter(|g| g.defined()).collect();
        let total: f64 = grads.iter().map(|g| g.square().sum(tch::Kind::Double).double_value(&[])).sum::<f64>().sqrt();
        if total > max_norm && total.is_finite() {
            let s = max_norm / (total + 1e-6);
            tch::no_grad(|| {
                for mut g in grads {
                    let _ = g.f_mul_scalar_(s);
                }
            });
        }
        total
    }

    /// One update with base learning rate `lr`.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.steps += 1;
        let t = self.steps as f64;
        let mut k = 0;
        tch::no_grad(|| -> Result<()> {
            for g in &self.groups {
                let lr = lr * g.lr_mult;
                for (_, p) in &g.params {
                    let grad = p.grad();
                    let st = &mut self.state[k];
                    k += 1;
                    if !grad.defined() {
                        continue;
                    }
                    let mut p = p.shallow_clone();
                    match self.kind {
                        OptimKind::AdamW { beta1, beta2, eps } => {
                            if st.is_empty() {
                                st.push(p.zeros_like());
                                st.push(p.zeros_like());
                            }
                            if g.weight_decay != 0.0 {
                                let _ = p.f_mul_scalar_(1.0 - lr * g.weight_decay)?;
                            }
                            // As torch.optim.AdamW: m ← lerp(m, g, 1 − β1), v ← β2·v + (1 − β2)·g²,
                            // p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε), in place.
                            let _ = st[0].f_lerp_(&grad, 1.0 - beta1)?;
                            let _ = st[1].f_lerp_(&grad.square(), 1.0 - beta2)?;
                            let bc1 = 1.0 - beta1.powf(t);
                            let bc2 = 1.0 - beta2.powf(t);
                            let mut denom = st[1].sqrt();
                            let _ = denom.f_div_scalar_(bc2.sqrt())?.f_add_scalar_(eps)?;
                            let _ = p.f_addcdiv_(&(&st[0] * (-lr / bc1)), &denom)?;
                        }
                        OptimKind::Sgd { momentum, nesterov } => {
                            let mut d = if g.weight_decay != 0.0 { &grad + &p * g.weight_decay } else { grad.shallow_clone() };
                            if momentum != 0.0 {
                                if st.is_empty() {
                                    st.push(d.detach().copy());
                                } else {
                                    let _ = st[0].f_mul_scalar_(momentum)?.f_add_(&d)?;
                                }
                                d = if nesterov { d + &st[0] * momentum } else { st[0].shallow_clone() };
                            }
                            let _ = p.f_sub_(&(d * lr))?;
                        }
                    }
                }
            }
            Ok(())
        })
    }

    /// Named state tensors for a checkpoint (`{param}.{i}`).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let names = self.groups.iter().flat_map(|g| g.params.iter().map(|(n, _)| n.clone()));
        names.zip(&self.state).flat_map(|(n, st)| st.iter().enumerate().map(move |(i, t)| (format!("{n}.{i}"), t.shallow_clone()))).collect()
    }

    /// Restores state saved by [`Optimizer::state_tensors`].
    pub fn load_state(&mut self, steps: i64, tensors: &crate::weights::Weights) -> Result<()> {
        let per_param = match self.kind {
            OptimKind::AdamW { .. } => 2,
            OptimKind::Sgd { momentum, .. } => (momentum != 0.0) as usize,
        };
        let names: Vec<String> = self.groups.iter().flat_map(|g| g.params.iter().map(|(n, _)| n.clone())).collect();
        for (k, n) in names.iter().enumerate() {
            let mut st = vec![];
            for i in 0..per_param {
                let key = format!("{n}.{i}");
                if tensors.contains(&key) {
                    st.push(tensors.tensor(&key)?);
                }
            }
            if !(st.is_empty() || st.len() == per_param) {
                return Err(Error::Model(format!("optimiser state for `{n}` is incomplete")));
            }
            self.state[k] = st;
        }
        self.steps = steps;
        Ok(())
    }
}
