//! Multinomial logistic regression fit to convergence by L-BFGS on standardised features (the
//! linear-probe recipe). The L2 strength is chosen along a path, strongest first, each fit
//! warm-started from the previous one: on the validation split, or in every fold of a
//! cross-validation. The chosen strength is then refitted on every labelled example,
//! warm-started from the chosen solution (the mean of the folds' solutions).
//!
//! Objective: mean (class-weighted, optionally smoothed) cross-entropy + `l2 / 2 · ‖W‖²`; the
//! bias is not penalised. scikit-learn's `C` on `n` examples is `1 / (l2 · n)`.
//!
//! With an initial head (a CLIP zero-shot classifier, [`super::HeadStart::ZeroShot`]) the
//! features are used as they are (not standardised: the start lives in their space, and a few
//! examples' statistics are noise), the penalty is `l2 / 2 · ‖θ − θ₀‖²` over weight and bias,
//! every fit starts at `θ₀`, and the strengths run from `θ₀` itself (kept as it is) to nearly
//! unconstrained ([`ANCHORED_GRID`]): a few labelled examples move the zero-shot head only as
//! far as held-out examples say they should: the strongest pull within one standard error of
//! the best held-out accuracy is chosen. With nothing held out (one example per class) the
//! start is kept unless a strength is given.

use tch::{Kind, Tensor};

use super::select::{stratified_folds, Plan};
use super::{finite, lbfgs, loss_acc, EpochRecord, Fitted, Head, HeadKind, HeadSpec, Split, TrainConfig};
use crate::error::Result;

/// Candidate L2 strengths.
pub const L2_GRID: [f64; 8] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 1.0];
/// Candidate strengths of the pull toward an initial head, strongest first.
/// The first, [`KEEP_START`], is the initial head itself: a move away from it must do better
/// on held-out examples than not moving.
pub const ANCHORED_GRID: [f64; 8] = [KEEP_START, 1e2, 1e1, 1.0, 1e-1, 1e-2, 1e-3, 1e-4];
/// A pull so strong that the initial head is kept as it is (no fit is run).
pub const KEEP_START: f64 = 1e12;
const MAX_ITER: usize = 500;
/// Converged when no gradient entry exceeds this (the objective is a mean over examples; the
/// features standardised), scikit-learn's `tol` in the same units.
const GTOL: f64 = 1e-6;

/// Per-feature mean and standard deviation of the rows a fit sees.
struct Standardiser {
    mu: Tensor,
    sd: Tensor,
}

impl Standardiser {
    fn of(x: &Tensor) -> Standardiser {
        let mu = x.mean_dim(&[0i64][..], true, Kind::Double);
        let sd = x.std_dim(&[0i64][..], false, true) + 1e-6;
        Standardiser { mu, sd }
    }

    /// No standardisation: a fit pulled toward an initial head works on the features as they
    /// are (the head's own space), not on statistics of a handful of examples.
    fn identity(d: i64) -> Standardiser {
        let opts = (Kind::Double, tch::Device::Cpu);
        Standardiser { mu: Tensor::zeros([1, d], opts), sd: Tensor::ones([1, d], opts) }
    }

    fn apply(&self, x: &Tensor) -> Tensor {
        (x - &self.mu) / &self.sd
    }

    /// Weight `[k, d]` and bias `[k]` on raw features of a standardised-space solution:
    /// `W' = W / sd`, `b' = b − W'·mu`.
    fn to_raw(&self, theta: &Tensor, d: i64, k: i64) -> (Tensor, Tensor) {
        let wm = theta.narrow(0, 0, d * k).view([k, d]) / self.sd.view([1, d]);
        let b = theta.narrow(0, d * k, k) - wm.matmul(&self.mu.view([d]));
        (wm, b)
    }

    /// The standardised-space solution of raw-space weight and bias (inverse of `to_raw`).
    fn standardised(&self, w: &Tensor, b: &Tensor, d: i64) -> Tensor {
        let wz = w * self.sd.view([1, d]);
        let bz = b + w.matmul(&self.mu.view([d]));
        Tensor::cat(&[wz.flatten(0, -1), bz], 0)
    }
}

fn logits_of(theta: &Tensor, z: &Tensor, d: i64, k: i64) -> Tensor {
    let wm = theta.narrow(0, 0, d * k).view([k, d]);
    let b = theta.narrow(0, d * k, k);
    z.matmul(&wm.tr()) + b
}

/// The objective on standardised features `z` in closed form, value and gradient without
/// autograd: `−Σ q·log softmax(logits) + l2/2 ‖W‖²`, where the target weights `q` reproduce
/// torch's `cross_entropy` (class weights, label smoothing, mean reduction):
/// `q_ic = ((1−ε)·w_{y_i}·[c = y_i] + ε·w_c/k) / Σ_i w_{y_i}`. Gradient in the logits:
/// `softmax · Σ_c q_ic − q`.
pub(super) struct Objective {
    z: Tensor,
    q: Tensor,
    q_rows: Tensor,
    d: i64,
    k: i64,
    /// The penalty's centre over weight and bias (standardised space); `None`: zero weight.
    anchor: Option<Tensor>,
}

impl Objective {
    pub(super) fn new(z: &Tensor, y: &Tensor, weights: Option<&Tensor>, smoothing: f64, k: i64) -> Objective {
        let opts = (Kind::Double, tch::Device::Cpu);
        let w = weights.map_or_else(|| Tensor::ones([k], opts), |w| w.to_kind(Kind::Double));
        let wy = w.index_select(0, y);
        let onehot = Tensor::zeros([y.size()[0], k], opts).scatter_value(1, &y.unsqueeze(1), 1.0);
        let q = (onehot * wy.unsqueeze(1) * (1.0 - smoothing) + w.unsqueeze(0) * (smoothing / k as f64)) / wy.sum(Kind::Double);
        let q_rows = q.sum_dim_intlist(&[1i64][..], true, Kind::Double);
        Objective { z: z.shallow_clone(), q, q_rows, d: z.size()[1], k, anchor: None }
    }

    /// Value and gradient at `theta` (`[W.flatten(), b]`) with L2 strength `l2`.
    pub(super) fn value_grad(&self, theta: &Tensor, l2: f64) -> Result<(f64, Tensor)> {
        let (d, k) = (self.d, self.k);
        let w = theta.narrow(0, 0, d * k).view([k, d]);
        let logp = logits_of(theta, &self.z, d, k).log_softmax(-1, Kind::Double);
        let g = logp.exp() * &self.q_rows - &self.q;
        let gb = g.sum_dim_intlist(&[0i64][..], false, Kind::Double);
        if let Some(a) = &self.anchor {
            let delta = theta - a;
            let penalty = delta.square().sum(Kind::Double) * (l2 / 2.0);
            let value = (penalty - (&self.q * &logp).sum(Kind::Double)).f_double_value(&[])?;
            let grad = Tensor::cat(&[g.tr().matmul(&self.z).flatten(0, -1), gb], 0) + delta * l2;
            return Ok((value, grad));
        }
        let penalty = w.square().sum(Kind::Double) * (l2 / 2.0);
        let value = (penalty - (&self.q * &logp).sum(Kind::Double)).f_double_value(&[])?;
        let gw = g.tr().matmul(&self.z) + w * l2;
        Ok((value, Tensor::cat(&[gw.flatten(0, -1), gb], 0)))
    }
}

/// One point of a path: the solution (raw space), its training loss and accuracy, the logits
/// of the judged rows, L-BFGS iterations.
struct Point {
    w: Tensor,
    b: Tensor,
    train_loss: f64,
    train_acc: f64,
    judged: Option<Tensor>,
    iterations: usize,
}

/// Fits every strength of `grid` in order on (`x`, `y`), warm-starting each from the previous
/// solution (or from `start`, raw weight and bias), and scores `judge` rows.
fn path(cfg: &TrainConfig, x: &Tensor, y: &Tensor, judge: Option<&Tensor>, k: i64, grid: &[f64], start: Option<(&Tensor, &Tensor)>) -> Result<Vec<Point>> {
    let x = x.to_kind(Kind::Double);
    let st = if cfg.init.is_some() { Standardiser::identity(x.size()[1]) } else { Standardiser::of(&x) };
    let z = st.apply(&x);
    let zj = judge.map(|j| st.apply(&j.to_kind(Kind::Double)));
    let d = z.size()[1];
    let counts = super::select::class_counts(&Vec::<i64>::try_from(y)?, k as usize);
    let w = cfg.class_weights.resolve(&counts)?.map(|w| Tensor::from_slice(&w).to_kind(Kind::Double));
    let anchor = cfg.init.as_ref().map(|i| st.standardised(&i.weight.to_kind(Kind::Double), &i.bias.to_kind(Kind::Double), d));
    let mut theta = match (start, &anchor) {
        (Some((w0, b0)), _) => st.standardised(w0, b0, d),
        (None, Some(a)) => a.copy(),
        (None, None) => Tensor::zeros([d * k + k], (Kind::Double, tch::Device::Cpu)),
    };
    // The penalised entries: the weight, and with an anchor the bias too.
    let penalised = if anchor.is_some() { d * k + k } else { d * k };
    let mut points = vec![];
    let mut objective = Objective::new(&z, y, w.as_ref(), cfg.label_smoothing, k);
    objective.anchor = anchor;
    let mut memory = lbfgs::Memory::default();
    let mut previous: Option<f64> = None;
    for &l2 in grid {
        let keep = l2 >= KEEP_START && objective.anchor.is_some();
        if let Some(p) = previous.filter(|&p| p < KEEP_START) {
            memory.shift_l2(l2 - p, penalised);
        }
        previous = Some(l2);
        let iterations = if keep {
            0
        } else {
            let (t, iterations) = lbfgs::minimize_with(&|t: &Tensor| objective.value_grad(t, l2), &theta, MAX_ITER, GTOL, &mut memory)?;
            theta = t;
            iterations
        };
        let (train_loss, train_acc) = loss_acc(&logits_of(&theta, &z, d, k), y);
        finite(train_loss, "training loss")?;
        let judged = zj.as_ref().map(|zj| logits_of(&theta, zj, d, k));
        let (w, b) = st.to_raw(&theta, d, k);
        points.push(Point { w, b, train_loss, train_acc, judged, iterations });
    }
    Ok(points)
}

fn head_of(w: &Tensor, b: &Tensor) -> Result<Head> {
    let (k, d) = w.size2()?;
    let spec = HeadSpec { kind: HeadKind::Logistic, in_features: d, num_classes: k, hidden: None, dropout: 0.0, layers: None };
    let head = Head { spec, tensors: vec![("weight".into(), w.to_kind(Kind::Float)), ("bias".into(), b.to_kind(Kind::Float))] };
    head.validate()?;
    Ok(head)
}

/// What each candidate scored, over every fold.
struct Candidate {
    rec: EpochRecord,
    /// Held-out logits (validation rows, or every example out of fold).
    judged: Option<Tensor>,
    /// Solutions of each fold (one without cross-validation).
    solutions: Vec<(Tensor, Tensor)>,
}

/// The candidates' paths: on the training rows judged by the validation rows, or per fold.
fn candidates(cfg: &TrainConfig, train: &Split, val: &Split, all: &Split, k: i64, plan: Plan, grid: &[f64]) -> Result<Vec<Candidate>> {
    let folds = match plan {
        Plan::Folds(f) => f,
        Plan::None | Plan::Holdout => {
            let judge = (plan == Plan::Holdout).then_some(val.x);
            let pts = path(cfg, train.x, train.y, judge, k, grid, None)?;
            return pts
                .into_iter()
                .enumerate()
                .map(|(i, p)| {
                    let (val_loss, val_acc) = p.judged.as_ref().map(|l| loss_acc(l, val.y)).unzip();
                    let rec = EpochRecord {
                        epoch: i + 1,
                        train_loss: p.train_loss,
                        train_acc: p.train_acc,
                        val_loss,
                        val_acc,
                        l2: Some(grid[i]),
                        iterations: Some(p.iterations),
                        ..Default::default()
                    };
                    Ok(Candidate { rec, judged: p.judged, solutions: vec![(p.w, p.b)] })
                })
                .collect();
        }
    };
    let y: Vec<i64> = Vec::try_from(all.y)?;
    let n = y.len() as i64;
    let fold_of = stratified_folds(&y, k as usize, folds, cfg.seed);
    let mut oof: Vec<Tensor> = grid.iter().map(|_| Tensor::zeros([n, k], (Kind::Double, tch::Device::Cpu))).collect();
    let mut sums = vec![(0.0, 0.0, 0usize); grid.len()]; // (train loss · n, train acc · n, iterations)
    let mut solutions: Vec<Vec<(Tensor, Tensor)>> = grid.iter().map(|_| vec![]).collect();
    for f in 0..folds {
        let rows = |inside: bool| Tensor::from_slice(&(0..n).filter(|&i| (fold_of[i as usize] == f) != inside).collect::<Vec<i64>>());
        let (fit_rows, held_rows) = (rows(true), rows(false));
        let xf = all.x.index_select(0, &fit_rows);
        let yf = all.y.index_select(0, &fit_rows);
        let nf = fit_rows.size()[0] as f64;
        let pts = path(cfg, &xf, &yf, Some(&all.x.index_select(0, &held_rows)), k, grid, None)?;
        for (i, p) in pts.into_iter().enumerate() {
            oof[i] = oof[i].index_copy(0, &held_rows, p.judged.as_ref().expect("judged"));
            sums[i].0 += p.train_loss * nf;
            sums[i].1 += p.train_acc * nf;
            sums[i].2 += p.iterations;
            solutions[i].push((p.w, p.b));
        }
    }
    let total_fit = (folds - 1) as f64 * n as f64;
    let mut out = vec![];
    for (i, (logits, sol)) in oof.into_iter().zip(solutions).enumerate() {
        let (vl, va) = loss_acc(&logits, all.y);
        let rec = EpochRecord {
            epoch: i + 1,
            train_loss: sums[i].0 / total_fit,
            train_acc: sums[i].1 / total_fit,
            val_loss: Some(vl),
            val_acc: Some(va),
            l2: Some(grid[i]),
            iterations: Some(sums[i].2),
            folds: Some(folds),
            ..Default::default()
        };
        out.push(Candidate { rec, judged: Some(logits), solutions: sol });
    }
    Ok(out)
}

/// Chooses the L2 strength and, per `cfg.refit`, refits it on every labelled example.
pub(super) fn fit_logistic(cfg: &TrainConfig, train: Split, val: Split, k: i64, plan: Plan, on_epoch: &mut dyn FnMut(&EpochRecord)) -> Result<Fitted> {
    let grid: Vec<f64> = match cfg.l2 {
        Some(l) => vec![l],
        // Nothing held out to judge a move by (one example per class): the start is kept.
        None if plan == Plan::None && cfg.init.is_some() => vec![KEEP_START],
        None if plan == Plan::None => vec![1e-4],
        None if cfg.init.is_some() => ANCHORED_GRID.to_vec(),
        // Strongest regularisation first, each fit warm-started from the previous one.
        None => L2_GRID.iter().rev().copied().collect(),
    };
    let xall = Tensor::cat(&[train.x.shallow_clone(), val.x.to_kind(train.x.kind())], 0);
    let yall = Tensor::cat(&[train.y, val.y], 0);
    let all = Split { x: &xall, y: &yall };
    let cands = candidates(cfg, &train, &val, &all, k, plan, &grid)?;
    let mut best: Option<(f64, f64, usize)> = None; // (acc, loss, index)
    for (i, c) in cands.iter().enumerate() {
        on_epoch(&c.rec);
        let (acc, loss) = (c.rec.val_acc.unwrap_or(c.rec.train_acc), c.rec.val_loss.unwrap_or(c.rec.train_loss));
        let better = match best {
            None => true,
            Some((ba, bl, _)) => acc > ba + 1e-12 || ((acc - ba).abs() <= 1e-12 && loss < bl),
        };
        if better {
            best = Some((acc, loss, i));
        }
    }
    let (best_acc, _, mut bi) = best.expect("at least one candidate");
    if cfg.init.is_some() && plan != Plan::None {
        // One-standard-error rule toward the start: the strongest pull whose held-out accuracy
        // is within one standard error of the best, so a move must beat staying by more than
        // the noise of a few held-out examples.
        let n = match plan {
            Plan::Folds(_) => xall.size()[0],
            _ => val.x.size()[0],
        } as f64;
        let se = (best_acc * (1.0 - best_acc) / n.max(1.0)).sqrt();
        bi = cands.iter().position(|c| c.rec.val_acc.unwrap_or(c.rec.train_acc) >= best_acc - se - 1e-12).unwrap_or(bi);
    }
    let chosen = &cands[bi];
    let l2 = grid[bi];
    let first = head_of(&chosen.solutions[0].0, &chosen.solutions[0].1)?;
    let judged = match plan {
        Plan::None => None,
        // The chosen head as it will be used (fp32), on the validation rows.
        Plan::Holdout => Some((first.forward(val.x)?, val.y.shallow_clone())),
        Plan::Folds(_) => chosen.judged.as_ref().map(|l| (l.shallow_clone(), yall.shallow_clone())),
    };
    let refit = cfg.refit && plan != Plan::None;
    let mut history: Vec<EpochRecord> = cands.iter().map(|c| c.rec.clone()).collect();
    let (head, fit_x, fit_y) = if refit {
        // Warm start: the chosen solution (the mean over the folds), in raw feature space.
        let m = chosen.solutions.len() as f64;
        let w0 = chosen.solutions.iter().map(|s| s.0.shallow_clone()).reduce(|a, b| a + b).expect("a solution") / m;
        let b0 = chosen.solutions.iter().map(|s| s.1.shallow_clone()).reduce(|a, b| a + b).expect("a solution") / m;
        let p = path(cfg, &xall, &yall, None, k, &[l2], Some((&w0, &b0)))?.pop().expect("one point");
        let rec = EpochRecord {
            epoch: bi + 1,
            train_loss: p.train_loss,
            train_acc: p.train_acc,
            l2: Some(l2),
            iterations: Some(p.iterations),
            phase: Some("refit".into()),
            n: Some(xall.size()[0] as usize),
            folds: chosen.rec.folds,
            selection_estimate: chosen.rec.val_acc,
            ..Default::default()
        };
        on_epoch(&rec);
        history.push(rec);
        (head_of(&p.w, &p.b)?, &xall, &yall)
    } else {
        (first, train.x, train.y)
    };
    let train_accuracy = super::accuracy(&head.forward(fit_x)?, fit_y);
    let counts = super::select::class_counts(&Vec::<i64>::try_from(fit_y)?, k as usize);
    let selection = super::Selection {
        method: plan.method(),
        folds: chosen.rec.folds,
        reason: String::new(),
        n_judged: judged.as_ref().map_or(0, |(l, _)| l.size()[0] as usize),
        estimate: chosen.rec.val_acc,
        estimate_loss: chosen.rec.val_loss,
        refit,
        n_fit: fit_x.size()[0] as usize,
        l2: Some(l2),
        epochs: None,
    };
    Ok(Fitted { head, history, best_epoch: bi + 1, l2: Some(l2), class_weights: cfg.class_weights.resolve(&counts)?, selection, train_accuracy, judged })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Reduction;

    /// The closed form matches torch's cross_entropy + penalty and its autograd gradient, with
    /// class weights and label smoothing.
    #[test]
    fn closed_form_objective_matches_torch_cross_entropy() {
        tch::manual_seed(3);
        let (n, d, k) = (13, 4, 3);
        let z = Tensor::randn([n, d], (Kind::Double, tch::Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 2, 2, 1, 0, 0, 2, 1, 1, 0, 2, 2]);
        let theta = Tensor::randn([d * k + k], (Kind::Double, tch::Device::Cpu));
        for (weights, eps) in [(None, 0.0), (Some(Tensor::from_slice(&[0.5f64, 2.0, 1.5])), 0.1), (None, 0.2)] {
            let l2 = 0.03;
            let (v, g) = Objective::new(&z, &y, weights.as_ref(), eps, k).value_grad(&theta, l2).unwrap();
            let t = theta.detach().set_requires_grad(true);
            let ce = logits_of(&t, &z, d, k).cross_entropy_loss::<&Tensor>(&y, weights.as_ref(), Reduction::Mean, -100, eps);
            let loss = ce + t.narrow(0, 0, d * k).square().sum(Kind::Double) * (l2 / 2.0);
            let ga = Tensor::run_backward(&[&loss], &[&t], false, false).pop().unwrap();
            assert!((v - loss.double_value(&[])).abs() < 1e-12, "{v} vs {}", loss.double_value(&[]));
            assert!((&g - ga).abs().max().double_value(&[]) < 1e-12);
        }
    }

    /// With an anchor the penalty is `l2/2 ‖θ − θ₀‖²` over weight and bias, gradient included.
    #[test]
    fn anchored_objective_matches_autograd() {
        tch::manual_seed(4);
        let (n, d, k) = (11, 5, 3);
        let opts = (Kind::Double, tch::Device::Cpu);
        let z = Tensor::randn([n, d], opts);
        let y = Tensor::from_slice(&[0i64, 1, 2, 2, 1, 0, 0, 2, 1, 1, 0]);
        let (theta, anchor) = (Tensor::randn([d * k + k], opts), Tensor::randn([d * k + k], opts));
        let mut o = Objective::new(&z, &y, None, 0.0, k);
        o.anchor = Some(anchor.shallow_clone());
        let l2 = 0.7;
        let (v, g) = o.value_grad(&theta, l2).unwrap();
        let t = theta.detach().set_requires_grad(true);
        let ce = logits_of(&t, &z, d, k).cross_entropy_loss::<&Tensor>(&y, None::<&Tensor>, Reduction::Mean, -100, 0.0);
        let loss = ce + (&t - &anchor).square().sum(Kind::Double) * (l2 / 2.0);
        let ga = Tensor::run_backward(&[&loss], &[&t], false, false).pop().unwrap();
        assert!((v - loss.double_value(&[])).abs() < 1e-12);
        assert!((&g - ga).abs().max().double_value(&[]) < 1e-12);
    }
}
