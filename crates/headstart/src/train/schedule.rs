//! Learning-rate schedules as multipliers of the base rate, per optimisation step. The state
//! (for reduce-on-plateau) is plain data, saved with checkpoints.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    /// Linear warm-up over `warmup` steps, then cosine decay to zero.
    WarmupCosine {
        warmup: usize,
    },
    /// Linear warm-up over `warmup` steps, then linear decay to zero.
    Linear {
        warmup: usize,
    },
    /// One-cycle (Smith 2018), as `torch.optim.lr_scheduler.OneCycleLR` with cosine annealing.
    OneCycle {
        pct_start: f64,
        div_factor: f64,
        final_div_factor: f64,
    },
    /// Multiply by `gamma` every `every` epochs.
    Step {
        every: usize,
        gamma: f64,
    },
    /// Multiply by `factor` after `patience` epochs without validation-loss improvement.
    Plateau {
        patience: usize,
        factor: f64,
    },
}

impl Schedule {
    /// One-cycle with its usual settings: a quarter of the steps rising, from a 25th of the
    /// rate, ending at a 10⁴th of that.
    pub fn one_cycle() -> Schedule {
        Schedule::OneCycle { pct_start: 0.25, div_factor: 25.0, final_div_factor: 1e4 }
    }
    /// A tenth of the rate every second epoch.
    pub fn step() -> Schedule {
        Schedule::Step { every: 2, gamma: 0.1 }
    }
    /// A tenth of the rate after one epoch without improvement.
    pub fn plateau() -> Schedule {
        Schedule::Plateau { patience: 1, factor: 0.1 }
    }
    /// This schedule with `warmup` warm-up steps (schedules without a warm-up are unchanged).
    pub fn with_warmup(self, warmup: usize) -> Schedule {
        match self {
            Schedule::WarmupCosine { .. } => Schedule::WarmupCosine { warmup },
            Schedule::Linear { .. } => Schedule::Linear { warmup },
            other => other,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scheduler {
    pub schedule: Schedule,
    pub total_steps: usize,
    pub steps_per_epoch: usize,
    /// Reduce-on-plateau bookkeeping.
    pub best: Option<f64>,
    pub bad_epochs: usize,
    pub plateau_mult: f64,
}

fn cos_anneal(from: f64, to: f64, frac: f64) -> f64 {
    to + (from - to) * (1.0 + (std::f64::consts::PI * frac.clamp(0.0, 1.0)).cos()) / 2.0
}

impl Scheduler {
    pub fn new(schedule: Schedule, steps_per_epoch: usize, epochs: usize) -> Scheduler {
        Scheduler { schedule, total_steps: steps_per_epoch * epochs, steps_per_epoch: steps_per_epoch.max(1), best: None, bad_epochs: 0, plateau_mult: 1.0 }
    }

    /// The multiplier for optimisation step `step` (0-based).
    pub fn factor(&self, step: usize) -> f64 {
        let total = self.total_steps.max(1) as f64;
        let s = step as f64;
        match &self.schedule {
            Schedule::Constant => 1.0,
            Schedule::WarmupCosine { warmup } | Schedule::Linear { warmup } => {
                let w = *warmup as f64;
                if s < w {
                    return (s + 1.0) / (w + 1.0);
                }
                let frac = (s - w) / (total - w).max(1.0);
                match self.schedule {
                    Schedule::Linear { .. } => (1.0 - frac).max(0.0),
                    _ => cos_anneal(1.0, 0.0, frac),
                }
            }
            Schedule::OneCycle { pct_start, div_factor, final_div_factor } => {
                let up = (pct_start * total - 1.0).max(1.0);
                let start = 1.0 / div_factor;
                let end = start / final_div_factor;
                if s <= up {
                    cos_anneal(start, 1.0, s / up)
                } else {
                    cos_anneal(1.0, end, (s - up) / (total - 1.0 - up).max(1.0))
                }
            }
            Schedule::Step { every, gamma } => gamma.powi((step / self.steps_per_epoch / (*every).max(1)) as i32),
            Schedule::Plateau { .. } => self.plateau_mult,
        }
    }

    /// Called with the validation loss at the end of each epoch.
    pub fn end_epoch(&mut self, val_loss: Option<f64>) {
        if let (Schedule::Plateau { patience, factor }, Some(l)) = (&self.schedule, val_loss) {
            if self.best.is_none_or(|b| l < b * (1.0 - 1e-4)) {
                self.best = Some(l);
                self.bad_epochs = 0;
            } else {
                self.bad_epochs += 1;
                if self.bad_epochs > *patience {
                    self.plateau_mult *= factor;
                    self.bad_epochs = 0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_have_their_shapes() {
        let s = Scheduler::new(Schedule::WarmupCosine { warmup: 10 }, 10, 10);
        assert!(s.factor(0) < s.factor(5) && s.factor(5) < s.factor(9));
        assert!((s.factor(10) - 1.0).abs() < 1e-3);
        assert!(s.factor(99) < 0.01);
        let l = Scheduler::new(Schedule::Linear { warmup: 0 }, 10, 10);
        assert!((l.factor(50) - 0.5).abs() < 0.01);
        let o = Scheduler::new(Schedule::OneCycle { pct_start: 0.25, div_factor: 25.0, final_div_factor: 1e4 }, 10, 10);
        assert!((o.factor(0) - 0.04).abs() < 1e-9);
        assert!((o.factor(24) - 1.0).abs() < 1e-9);
        assert!(o.factor(99) < 1e-5);
        let st = Scheduler::new(Schedule::Step { every: 2, gamma: 0.1 }, 10, 10);
        assert_eq!((st.factor(19), st.factor(20)), (1.0, 0.1));
        let mut p = Scheduler::new(Schedule::Plateau { patience: 1, factor: 0.5 }, 10, 10);
        for l in [1.0, 0.9, 0.95, 0.96] {
            p.end_epoch(Some(l));
        }
        assert_eq!(p.factor(0), 0.5);
    }
}
