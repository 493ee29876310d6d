//! Optimisers with state that can be saved and restored exactly: AdamW (decoupled weight
//! decay, Loshchilov & Hutter 2019) and SGD with momentum / Nesterov, both following the update
//! rules of `torch.optim`. Parameters come in named groups with their own learning-rate
//! multiplier and weight decay (per-stage learning rates; no decay on biases and norms).
//!
//! The optimiser holds the gradients itself: [`Optimizer::backward`] computes them for its
//! parameters only (autograd's `grad`, not `.grad` accumulation), adds them to what earlier
//! micro-batches left, and [`Optimizer::zero_grad`] just drops them. No zeroing pass and no
//! accumulation pass over every gradient on each step, which matters when a step is short.

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
    /// Per parameter: the gradient since the last [`Optimizer::zero_grad`], if any.
    grads: Vec<Option<Tensor>>,
    pub steps: i64,
}

/// True for tensors that conventionally get no weight decay: biases and norm scales (≤ 1-D).
pub fn no_decay(t: &Tensor) -> bool {
    t.dim() <= 1
}

impl Optimizer {
    pub fn new(kind: OptimKind, groups: Vec<Group>) -> Optimizer {
        let n = groups.iter().map(|g| g.params.len()).sum();
        Optimizer { kind, groups, state: (0..n).map(|_| vec![]).collect(), grads: (0..n).map(|_| None).collect(), steps: 0 }
    }

    fn params(&self) -> impl Iterator<Item = &Tensor> {
        self.groups.iter().flat_map(|g| g.params.iter().map(|(_, p)| p))
    }

    /// Gradients of `loss` with respect to the parameters, added to those held.
    pub fn backward(&mut self, loss: &Tensor) -> Result<()> {
        let params: Vec<&Tensor> = self.params().collect();
        let new = Tensor::f_run_backward(&[loss], &params, false, false)?;
        for (held, g) in self.grads.iter_mut().zip(new) {
            if !g.defined() {
                continue;
            }
            match held {
                Some(h) => {
                    let _ = h.f_add_(&g)?;
                }
                None => *held = Some(g),
            }
        }
        Ok(())
    }

    /// Drops the held gradients.
    pub fn zero_grad(&mut self) {
        self.grads.iter_mut().for_each(|g| *g = None);
    }

    /// The held gradient of each parameter, in group order (None: no gradient reached it).
    pub fn grads(&self) -> &[Option<Tensor>] {
        &self.grads
    }

    /// Every parameter (shallow copies) with its held gradient, in group order: for reducing the
    /// gradients over data-parallel ranks before a step.
    pub fn params_and_grads(&mut self) -> (Vec<Tensor>, &mut [Option<Tensor>]) {
        let params = self.params().map(|p| p.shallow_clone()).collect();
        (params, &mut self.grads)
    }

    /// Whether every held gradient is finite: one reduction per gradient and a single read
    /// back (a NaN or ±∞ anywhere makes the total non-finite).
    pub fn grads_finite(&self) -> bool {
        let sums: Vec<Tensor> = self.grads.iter().flatten().map(|g| g.sum(tch::Kind::Double)).collect();
        sums.is_empty() || Tensor::stack(&sums, 0).sum(tch::Kind::Double).double_value(&[]).is_finite()
    }

    /// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let sq: Vec<Tensor> = self.grads.iter().flatten().map(|g| g.square().sum(tch::Kind::Double)).collect();
        if sq.is_empty() {
            return 0.0;
        }
        let total = Tensor::stack(&sq, 0).sum(tch::Kind::Double).double_value(&[]).sqrt();
        if total > max_norm && total.is_finite() {
            let s = max_norm / (total + 1e-6);
            for g in self.grads.iter_mut().flatten() {
                let _ = g.f_mul_scalar_(s);
            }
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
                    let st = &mut self.state[k];
                    let Some(grad) = &self.grads[k] else {
                        k += 1;
                        continue;
                    };
                    k += 1;
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
                            // p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε), in place; the
                            // step size is folded into the denominator to save a temporary.
                            let _ = st[0].f_lerp_(grad, 1.0 - beta1)?;
                            let _ = st[1].f_lerp_(&grad.square(), 1.0 - beta2)?;
                            if lr != 0.0 {
                                let bc1 = 1.0 - beta1.powf(t);
                                let bc2 = 1.0 - beta2.powf(t);
                                let mut denom = st[1].sqrt();
                                let _ = denom.f_div_scalar_(bc2.sqrt())?.f_add_scalar_(eps)?.f_mul_scalar_(-bc1 / lr)?;
                                let _ = p.f_addcdiv_(&st[0], &denom)?;
                            }
                        }
                        OptimKind::Sgd { momentum, nesterov } => {
                            let mut d = if g.weight_decay != 0.0 { grad + &p * g.weight_decay } else { grad.shallow_clone() };
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
        let params: Vec<(String, tch::Device)> = self.groups.iter().flat_map(|g| g.params.iter().map(|(n, t)| (n.clone(), t.device()))).collect();
        for (k, (n, device)) in params.iter().enumerate() {
            let mut st = vec![];
            for i in 0..per_param {
                let key = format!("{n}.{i}");
                if tensors.contains(&key) {
                    // On the parameter's device (a data-parallel rank's GPU).
                    st.push(tensors.tensor(&key)?.to_device(*device));
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
