//! Heads trained on features: multinomial logistic regression fit to convergence (L-BFGS,
//! L2 chosen on the validation split: the linear-probe recipe), a linear layer trained with
//! Adam/AdamW (the classic recipe) and an MLP. Every epoch is measured; the best epoch's head is
//! the one kept; a non-finite loss stops the run before anything is saved.

mod lbfgs;
pub mod finetune;
pub mod optim;
pub mod schedule;

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Kind, Reduction, Tensor};

use crate::data::Rng;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    Logistic,
    Linear,
    Mlp,
}

/// What the head is, enough to rebuild it from its tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadSpec {
    pub kind: HeadKind,
    pub in_features: i64,
    pub num_classes: i64,
    /// Hidden width of the MLP head.
    pub hidden: Option<i64>,
    pub dropout: f64,
}

/// A trained head: its spec and named tensors (`weight`, `bias`; MLP: `fc1.*`, `fc2.*`).
pub struct Head {
    pub spec: HeadSpec,
    pub tensors: Vec<(String, Tensor)>,
}

impl Head {
    fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t).ok_or_else(|| Error::Model(format!("head tensor `{name}` missing")))
    }

    /// Logits for features `x` `[B, in_features]` (eval behaviour).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_kind(Kind::Float);
        Ok(match self.spec.kind {
            HeadKind::Logistic | HeadKind::Linear => x.linear(self.get("weight")?, Some(self.get("bias")?)),
            HeadKind::Mlp => x.linear(self.get("fc1.weight")?, Some(self.get("fc1.bias")?)).relu().linear(self.get("fc2.weight")?, Some(self.get("fc2.bias")?)),
        })
    }

    /// A linear head holding a copy of `lin`'s weight and bias (a fine-tuned model's head).
    pub fn from_linear(lin: &tch::nn::Linear) -> Result<Head> {
        let bias = lin.bs.as_ref().ok_or_else(|| Error::Model("the model's head has no bias".into()))?;
        let (num_classes, in_features) = lin.ws.size2()?;
        let spec = HeadSpec { kind: HeadKind::Linear, in_features, num_classes, hidden: None, dropout: 0.0 };
        Ok(Head { spec, tensors: vec![("weight".into(), lin.ws.detach().copy()), ("bias".into(), bias.detach().copy())] })
    }

    /// Copies a linear or logistic head's weight and bias into `lin` (a model's own head).
    pub fn copy_into(&self, lin: &tch::nn::Linear) -> Result<()> {
        let bias = lin.bs.as_ref().ok_or_else(|| Error::Model("the model's head has no bias".into()))?;
        tch::no_grad(|| -> Result<()> {
            lin.ws.shallow_clone().f_copy_(self.get("weight")?)?;
            bias.shallow_clone().f_copy_(self.get("bias")?)?;
            Ok(())
        })
    }

    /// Checks every tensor has the shape the spec implies.
    pub fn validate(&self) -> Result<()> {
        let (d, c) = (self.spec.in_features, self.spec.num_classes);
        let want: Vec<(&str, Vec<i64>)> = match self.spec.kind {
            HeadKind::Logistic | HeadKind::Linear => vec![("weight", vec![c, d]), ("bias", vec![c])],
            HeadKind::Mlp => {
                let h = self.spec.hidden.ok_or_else(|| Error::Model("MLP head without a hidden size".into()))?;
                vec![("fc1.weight", vec![h, d]), ("fc1.bias", vec![h]), ("fc2.weight", vec![c, h]), ("fc2.bias", vec![c])]
            }
        };
        for (name, shape) in want {
            let t = self.get(name)?;
            if t.size() != shape {
                return Err(Error::Model(format!("head tensor `{name}` is {:?}, expected {shape:?}", t.size())));
            }
            if !bool::try_from(t.isfinite().all()).unwrap_or(false) {
                return Err(Error::Model(format!("head tensor `{name}` holds non-finite values")));
            }
        }
        Ok(())
    }
}

/// How classes are weighted in the loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeights {
    /// Balanced when the largest class is at least 1.5× the smallest, else none.
    Auto,
    None,
    /// `n / (k · n_c)`, as scikit-learn's `class_weight="balanced"`.
    Balanced,
    Manual(Vec<f64>),
}

impl ClassWeights {
    pub fn resolve(&self, counts: &[usize]) -> Result<Option<Vec<f64>>> {
        let balanced = || {
            let n: usize = counts.iter().sum();
            counts.iter().map(|&c| if c == 0 { 0.0 } else { n as f64 / (counts.len() as f64 * c as f64) }).collect()
        };
        Ok(match self {
            ClassWeights::None => None,
            ClassWeights::Balanced => Some(balanced()),
            ClassWeights::Auto => {
                let nz: Vec<usize> = counts.iter().copied().filter(|&c| c > 0).collect();
                let (lo, hi) = (nz.iter().min().copied().unwrap_or(1), nz.iter().max().copied().unwrap_or(1));
                (hi as f64 >= 1.5 * lo as f64).then(balanced)
            }
            ClassWeights::Manual(w) => {
                if w.len() != counts.len() || w.iter().any(|x| !x.is_finite() || *x < 0.0) {
                    return Err(Error::Model(format!("{} class weights given for {} classes (non-negative numbers)", w.len(), counts.len())));
                }
                Some(w.clone())
            }
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub head: HeadKind,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Epochs without validation-loss improvement before stopping.
    pub patience: usize,
    pub hidden: i64,
    pub dropout: f64,
    pub label_smoothing: f64,
    pub class_weights: ClassWeights,
    pub seed: u64,
    /// Fixed L2 strength for the logistic head; `None` chooses it on the validation split.
    pub l2: Option<f64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            head: HeadKind::Logistic,
            epochs: 30,
            batch_size: 32,
            lr: 1e-3,
            weight_decay: 0.0,
            patience: 5,
            hidden: 512,
            dropout: 0.2,
            label_smoothing: 0.0,
            class_weights: ClassWeights::Auto,
            seed: 0,
            l2: None,
        }
    }
}

/// One line of `metrics.jsonl`: an epoch (linear, MLP) or an L2 candidate (logistic).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: Option<f64>,
    pub val_acc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l2: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iterations: Option<usize>,
}

pub struct Fitted {
    pub head: Head,
    pub history: Vec<EpochRecord>,
    pub best_epoch: usize,
    pub l2: Option<f64>,
    pub class_weights: Option<Vec<f64>>,
}

/// Features and integer labels.
pub struct Split<'a> {
    pub x: &'a Tensor,
    pub y: &'a Tensor,
}

fn loss_acc(logits: &Tensor, y: &Tensor) -> (f64, f64) {
    let loss = logits.cross_entropy_for_logits(y).double_value(&[]);
    let acc = logits.argmax(-1, false).eq_tensor(y).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
    (loss, acc)
}

fn finite(v: f64, what: &str) -> Result<f64> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(Error::Model(format!("{what} is not finite ({v}); stopping before anything is saved (try a lower learning rate)")))
    }
}

impl TrainConfig {
    /// Rejects settings that cannot train, naming the option.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Model(m));
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr <= 10.0) {
            return bad(format!("learning rate must be in (0, 10], not {}", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("weight decay must be ≥ 0, not {}", self.weight_decay));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), not {}", self.dropout));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(format!("label smoothing must be in [0, 1), not {}", self.label_smoothing));
        }
        if self.batch_size == 0 || self.hidden <= 0 {
            return bad("batch size and hidden size must be positive".into());
        }
        if let Some(l2) = self.l2 {
            if !(l2.is_finite() && l2 >= 0.0) {
                return bad(format!("l2 must be ≥ 0, not {l2}"));
            }
        }
        Ok(())
    }
}

/// Fits a head on `train`, measuring `val` (may be empty) every epoch.
pub fn fit(cfg: &TrainConfig, train: Split, val: Split, num_classes: i64, on_epoch: &mut dyn FnMut(&EpochRecord)) -> Result<Fitted> {
    cfg.validate()?;
    let n = train.x.size()[0];
    if n == 0 {
        return Err(Error::Model("no training examples".into()));
    }
    if !bool::try_from(train.x.isfinite().all()).unwrap_or(false) {
        return Err(Error::Model("training features contain non-finite values".into()));
    }
    let counts: Vec<usize> = {
        let y: Vec<i64> = Vec::try_from(train.y).map_err(Error::from)?;
        let mut c = vec![0; num_classes as usize];
        for l in y {
            c[l as usize] += 1;
        }
        c
    };
    let weights = cfg.class_weights.resolve(&counts)?;
    tch::manual_seed(cfg.seed as i64);
    match cfg.head {
        HeadKind::Logistic => fit_logistic(cfg, train, val, num_classes, weights, on_epoch),
        HeadKind::Linear | HeadKind::Mlp => fit_sgd(cfg, train, val, num_classes, weights, on_epoch),
    }
}

const L2_GRID: [f64; 8] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 1.0];

fn fit_logistic(
    cfg: &TrainConfig,
    train: Split,
    val: Split,
    k: i64,
    weights: Option<Vec<f64>>,
    on_epoch: &mut dyn FnMut(&EpochRecord),
) -> Result<Fitted> {
    let x = train.x.to_kind(Kind::Double);
    let mu = x.mean_dim(&[0i64][..], true, Kind::Double);
    let sd = x.std_dim(&[0i64][..], false, true) + 1e-6;
    let z = (&x - &mu) / &sd;
    let zv = (val.x.to_kind(Kind::Double) - &mu) / &sd;
    let d = z.size()[1];
    let w = weights.as_ref().map(|w| Tensor::from_slice(w).to_kind(Kind::Double));
    let grid: Vec<f64> = match cfg.l2 {
        Some(l) => vec![l],
        None if val.x.size()[0] == 0 => vec![1e-4],
        // Strongest regularisation first, each fit warm-started from the previous one.
        None => L2_GRID.iter().rev().copied().collect(),
    };
    let mut theta = Tensor::zeros([d * k + k], (Kind::Double, tch::Device::Cpu));
    let mut history = vec![];
    let mut best: Option<(f64, f64, usize, Tensor, f64)> = None; // (acc, loss, epoch, theta, l2)
    let logits_of = |theta: &Tensor, z: &Tensor| {
        let wm = theta.narrow(0, 0, d * k).view([k, d]);
        let b = theta.narrow(0, d * k, k);
        z.matmul(&wm.tr()) + b
    };
    for (i, &l2) in grid.iter().enumerate() {
        let objective = |t: &Tensor| {
            let logits = logits_of(t, &z);
            let ce = logits.cross_entropy_loss::<&Tensor>(train.y, w.as_ref(), Reduction::Mean, -100, cfg.label_smoothing);
            ce + t.narrow(0, 0, d * k).square().sum(Kind::Double) * (l2 / 2.0)
        };
        let (t, iterations) = lbfgs::minimize(&objective, &theta, 500, 1e-7)?;
        theta = t;
        let (train_loss, train_acc) = loss_acc(&logits_of(&theta, &z), train.y);
        finite(train_loss, "training loss")?;
        let (val_loss, val_acc) = if val.x.size()[0] > 0 {
            let (l, a) = loss_acc(&logits_of(&theta, &zv), val.y);
            (Some(l), Some(a))
        } else {
            (None, None)
        };
        let rec = EpochRecord { epoch: i + 1, train_loss, train_acc, val_loss, val_acc, l2: Some(l2), iterations: Some(iterations) };
        on_epoch(&rec);
        history.push(rec);
        let (acc, loss) = (val_acc.unwrap_or(train_acc), val_loss.unwrap_or(train_loss));
        let better = match &best {
            None => true,
            Some((ba, bl, ..)) => acc > *ba + 1e-12 || ((acc - ba).abs() <= 1e-12 && loss < *bl),
        };
        if better {
            best = Some((acc, loss, i + 1, theta.copy(), l2));
        }
    }
    let (_, _, best_epoch, theta, l2) = best.expect("at least one candidate");
    // Fold the standardisation into the weights: W' = W / sd, b' = b − W'·mu.
    let wm = theta.narrow(0, 0, d * k).view([k, d]) / sd.view([1, d]);
    let b = theta.narrow(0, d * k, k) - wm.matmul(&mu.view([d]));
    let spec = HeadSpec { kind: HeadKind::Logistic, in_features: d, num_classes: k, hidden: None, dropout: 0.0 };
    let head = Head { spec, tensors: vec![("weight".into(), wm.to_kind(Kind::Float)), ("bias".into(), b.to_kind(Kind::Float))] };
    head.validate()?;
    Ok(Fitted { head, history, best_epoch, l2: Some(l2), class_weights: weights })
}

fn fit_sgd(
    cfg: &TrainConfig,
    train: Split,
    val: Split,
    k: i64,
    weights: Option<Vec<f64>>,
    on_epoch: &mut dyn FnMut(&EpochRecord),
) -> Result<Fitted> {
    let d = train.x.size()[1];
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let root = vs.root();
    let (spec, model): (HeadSpec, Box<dyn Fn(&Tensor, bool) -> Tensor>) = match cfg.head {
        HeadKind::Mlp => {
            let fc1 = nn::linear(&root / "fc1", d, cfg.hidden, Default::default());
            let fc2 = nn::linear(&root / "fc2", cfg.hidden, k, Default::default());
            let p = cfg.dropout;
            let spec = HeadSpec { kind: HeadKind::Mlp, in_features: d, num_classes: k, hidden: Some(cfg.hidden), dropout: p };
            (spec, Box::new(move |x: &Tensor, train: bool| fc2.forward(&fc1.forward(x).relu().dropout(p, train))))
        }
        _ => {
            let lin = nn::linear(&root, d, k, Default::default());
            let spec = HeadSpec { kind: HeadKind::Linear, in_features: d, num_classes: k, hidden: None, dropout: 0.0 };
            (spec, Box::new(move |x: &Tensor, _| lin.forward(x)))
        }
    };
    let mut opt = if cfg.weight_decay > 0.0 {
        nn::AdamW { wd: cfg.weight_decay, ..Default::default() }.build(&vs, cfg.lr)?
    } else {
        nn::Adam::default().build(&vs, cfg.lr)?
    };
    let w = weights.as_ref().map(|w| Tensor::from_slice(w).to_kind(Kind::Float));
    let x = train.x.to_kind(Kind::Float);
    let xv = val.x.to_kind(Kind::Float);
    let n = x.size()[0] as usize;
    let mut rng = Rng(cfg.seed ^ 0x5eed);
    let mut history = vec![];
    let mut best: Option<(f64, usize, Vec<(String, Tensor)>)> = None;
    let mut since_best = 0;
    let snapshot = crate::models::snapshot;
    for epoch in 1..=cfg.epochs.max(1) {
        let mut order: Vec<i64> = (0..n as i64).collect();
        rng.shuffle(&mut order);
        for (step, chunk) in order.chunks(cfg.batch_size.max(1)).enumerate() {
            let idx = Tensor::from_slice(chunk);
            let (xb, yb) = (x.index_select(0, &idx), train.y.index_select(0, &idx));
            let logits = model(&xb, true);
            let loss = logits.cross_entropy_loss::<&Tensor>(&yb, w.as_ref(), Reduction::Mean, -100, cfg.label_smoothing);
            finite(loss.double_value(&[]), &format!("training loss at epoch {epoch}, step {}", step + 1))?;
            opt.backward_step(&loss);
        }
        let (train_loss, train_acc) = tch::no_grad(|| loss_acc(&model(&x, false), train.y));
        finite(train_loss, &format!("training loss after epoch {epoch}"))?;
        let (val_loss, val_acc) = if xv.size()[0] > 0 {
            let (l, a) = tch::no_grad(|| loss_acc(&model(&xv, false), val.y));
            (Some(l), Some(a))
        } else {
            (None, None)
        };
        let rec = EpochRecord { epoch, train_loss, train_acc, val_loss, val_acc, l2: None, iterations: None };
        on_epoch(&rec);
        history.push(rec);
        let score = val_loss.unwrap_or(train_loss);
        if best.as_ref().is_none_or(|(b, ..)| score < *b) {
            best = Some((score, epoch, snapshot(&vs)));
            since_best = 0;
        } else {
            since_best += 1;
            if val_loss.is_some() && since_best >= cfg.patience {
                break;
            }
        }
    }
    let (_, best_epoch, tensors) = best.expect("at least one epoch");
    let head = Head { spec, tensors };
    head.validate()?;
    Ok(Fitted { head, history, best_epoch, l2: None, class_weights: weights })
}
