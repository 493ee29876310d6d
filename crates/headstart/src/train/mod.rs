//! Heads trained on features: multinomial logistic regression fit to convergence (L-BFGS, the
//! linear-probe recipe), a linear layer trained with Adam/AdamW (the classic recipe), an MLP,
//! and the layer-sum head on stacked hidden states ([`layersum`]: SUPERB's learned weighted sum
//! of an encoder's layers, then a linear layer).
//! The head's setting (L2 strength, epoch count) is chosen on held-out examples: the validation
//! split, or k-fold cross-validation when the split is small ([`select`]); by default the chosen
//! setting is then refitted on every labelled example. A non-finite loss stops the run before
//! anything is saved.

pub mod ddp;
pub mod finetune;
pub mod layersum;
mod lbfgs;
pub mod logistic;
pub mod optim;
pub mod schedule;
pub mod select;
mod sgd;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
pub use select::{stratified_folds, Cv, Method, Selection};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    Logistic,
    Linear,
    Mlp,
    /// A learned softmax-weighted sum of stacked hidden states, then a linear layer
    /// ([`layersum`]).
    LayerSum,
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
    /// Layer-sum head: the hidden states stacked in each feature row (`in_features` is this
    /// many times their width).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<i64>,
}

/// A trained head: its spec and named tensors (`weight`, `bias`; MLP: `fc1.*`, `fc2.*`;
/// layer sum: also `layer_mean`, `layer_std`, `layer_weights`).
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
            HeadKind::LayerSum => {
                layersum::forward(&x, self.get("layer_mean")?, self.get("layer_std")?, self.get("layer_weights")?, self.get("weight")?, Some(self.get("bias")?))
            }
        })
    }

    /// The layer-sum head's weight of each stacked hidden state (the softmax of its logits);
    /// `None` for other heads.
    pub fn layer_weights(&self) -> Option<Vec<f64>> {
        if self.spec.kind != HeadKind::LayerSum {
            return None;
        }
        let logits = self.get("layer_weights").ok()?;
        Vec::<f64>::try_from(logits.softmax(0, Kind::Double)).ok()
    }

    /// A linear head holding a copy of `lin`'s weight and bias (a fine-tuned model's head).
    pub fn from_linear(lin: &tch::nn::Linear) -> Result<Head> {
        let bias = lin.bs.as_ref().ok_or_else(|| Error::Model("the model's head has no bias".into()))?;
        let (num_classes, in_features) = lin.ws.size2()?;
        let spec = HeadSpec { kind: HeadKind::Linear, in_features, num_classes, hidden: None, dropout: 0.0, layers: None };
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
            HeadKind::LayerSum => {
                let s = self.spec.layers.ok_or_else(|| Error::Model("layer-sum head without its number of layers".into()))?;
                let w = layersum::width(d, s).map_err(|e| Error::Model(e.to_string()))?;
                vec![("layer_mean", vec![s, w]), ("layer_std", vec![s, w]), ("layer_weights", vec![s]), ("weight", vec![c, w]), ("bias", vec![c])]
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
            if name == "layer_std" && !bool::try_from(t.gt(0.0).all()).unwrap_or(false) {
                return Err(Error::Model("head tensor `layer_std` holds deviations that are not positive".into()));
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
                    return Err(Error::Usage(format!("{} class weights given for {} classes (non-negative numbers)", w.len(), counts.len())));
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
    /// Fixed L2 strength for the logistic head; `None` chooses it on held-out examples.
    pub l2: Option<f64>,
    /// After the choice, refit the chosen setting on every labelled example (train +
    /// validation); `false` keeps the head fitted on the training split.
    #[serde(default = "refit_default")]
    pub refit: bool,
    /// Which examples judge the candidate settings (the split, or cross-validation).
    #[serde(default)]
    pub cv: Cv,
    /// Where a linear or logistic head starts (`head_init`): zeros, or a CLIP model's
    /// zero-shot classifier.
    #[serde(default)]
    pub head_init: HeadStart,
    /// The starting weight and bias themselves, supplied by the encoder for
    /// [`HeadStart::ZeroShot`] (not saved with the settings).
    #[serde(skip)]
    pub init: Option<InitialHead>,
    /// The hidden states stacked in each feature row, supplied by the encoder for the
    /// layer-sum head (not saved with the settings).
    #[serde(skip)]
    pub layers: Option<usize>,
}

/// Where a head on features starts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadStart {
    /// The usual start: zeros (logistic) or the seeded initialisation (linear, MLP).
    #[default]
    Default,
    /// A CLIP model's zero-shot classifier: the class names' normalised text embeddings
    /// (prompt-ensembled over `templates`, `a photo of a {}.` when empty) times the logit
    /// scale, zero bias. Training starts there, and the logistic head's L2 penalty pulls toward
    /// it instead of toward zero.
    ZeroShot { templates: Vec<String> },
}

/// A linear head's starting weight `[k, d]` and bias `[k]`.
#[derive(Debug)]
pub struct InitialHead {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Clone for InitialHead {
    fn clone(&self) -> Self {
        InitialHead { weight: self.weight.shallow_clone(), bias: self.bias.shallow_clone() }
    }
}

impl InitialHead {
    /// Checks the shapes against `d` features and `k` classes.
    pub fn check(&self, d: i64, k: i64) -> Result<()> {
        if self.weight.size() != [k, d] || self.bias.size() != [k] {
            return Err(Error::Model(format!("the initial head is {:?} + {:?}, the features need [{k}, {d}] + [{k}]", self.weight.size(), self.bias.size())));
        }
        Ok(())
    }
}

fn refit_default() -> bool {
    true
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
            refit: true,
            cv: Cv::Auto,
            head_init: HeadStart::Default,
            init: None,
            layers: None,
        }
    }
}

/// One line of `metrics.jsonl`: an epoch (linear, MLP) or an L2 candidate (logistic), and last
/// the refit of the chosen setting on every labelled example (`phase: "refit"`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: Option<f64>,
    pub val_acc: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2: Option<f64>,
    /// L-BFGS iterations (summed over the folds of a cross-validation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations: Option<usize>,
    /// Cross-validation folds whose out-of-fold predictions give `val_loss` and `val_acc`
    /// (training figures: the mean over the folds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folds: Option<usize>,
    /// `refit`: the chosen setting fitted again on every labelled example.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Examples the refit saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// On the refit line: held-out accuracy of the chosen setting before the refit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection_estimate: Option<f64>,
}

pub struct Fitted {
    /// The kept head: refitted on every labelled example, or the chosen one on the training split.
    pub head: Head,
    pub history: Vec<EpochRecord>,
    /// The chosen epoch (linear, MLP) or L2 candidate (logistic, 1-based).
    pub best_epoch: usize,
    pub l2: Option<f64>,
    pub class_weights: Option<Vec<f64>>,
    pub selection: Selection,
    /// Accuracy of the kept head on the examples it was fitted on.
    pub train_accuracy: f64,
    /// Logits of the chosen setting before any refit on the held-out examples, and their labels:
    /// the validation rows, or every example out of fold.
    pub judged: Option<(Tensor, Tensor)>,
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

fn accuracy(logits: &Tensor, y: &Tensor) -> f64 {
    logits.argmax(-1, false).eq_tensor(y).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
}

fn finite(v: f64, what: &str) -> Result<f64> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(Error::Diverged(format!("{what} is not finite ({v}); stopping before anything is saved (try a lower learning rate)")))
    }
}

impl TrainConfig {
    /// Rejects settings that cannot train, naming the option.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Usage(m));
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
        match self.cv {
            Cv::Folds(k) if k < 2 => return bad(format!("cross-validation needs at least 2 folds, not {k}")),
            Cv::Folds(k) if !self.refit => {
                return bad(format!("setting `cv` {k} chooses a setting to refit on every example; without a refit (setting `no_refit`) the head fitted on the training split is kept, which needs the validation split (setting `cv` off)"))
            }
            _ => {}
        }
        Ok(())
    }
}

/// Fits a head: chooses its setting on held-out examples (`val`, or folds over `train` + `val`
/// per `cfg.cv`), then, per `cfg.refit`, refits it on `train` + `val`.
pub fn fit(cfg: &TrainConfig, train: Split, val: Split, num_classes: i64, on_epoch: &mut dyn FnMut(&EpochRecord)) -> Result<Fitted> {
    cfg.validate()?;
    let n = train.x.size()[0];
    if n == 0 {
        return Err(Error::Usage("no training examples".into()));
    }
    for (what, x) in [("training", train.x), ("validation", val.x)] {
        if !bool::try_from(x.isfinite().all()).unwrap_or(false) {
            return Err(Error::Model(format!("{what} features contain non-finite values")));
        }
    }
    let k = num_classes as usize;
    let val_counts = select::class_counts(&Vec::<i64>::try_from(val.y)?, k);
    let mut all_counts = select::class_counts(&Vec::<i64>::try_from(train.y)?, k);
    for (a, v) in all_counts.iter_mut().zip(&val_counts) {
        *a += v;
    }
    let (plan, reason) = select::plan(cfg.cv, cfg.refit, &val_counts, &all_counts)?;
    if let Some(init) = &cfg.init {
        match cfg.head {
            HeadKind::Mlp => return Err(Error::Usage("setting `head_init` zero-shot starts a linear or logistic head, not an MLP".into())),
            HeadKind::LayerSum => return Err(Error::Usage("setting `head_init` zero-shot starts a linear or logistic head, not a layer-sum head".into())),
            HeadKind::Logistic | HeadKind::Linear => {}
        }
        init.check(train.x.size()[1], num_classes)?;
    }
    if cfg.head == HeadKind::LayerSum {
        let s = cfg.layers.ok_or_else(|| {
            Error::Usage("setting `head` layer_sum needs feature rows of stacked hidden states (an audio model with setting `layer` weighted)".into())
        })?;
        layersum::width(train.x.size()[1], s as i64)?;
    }
    tch::manual_seed(cfg.seed as i64);
    let mut fitted = match cfg.head {
        HeadKind::Logistic => logistic::fit_logistic(cfg, train, val, num_classes, plan, on_epoch)?,
        HeadKind::Linear | HeadKind::Mlp | HeadKind::LayerSum => sgd::fit_sgd(cfg, train, val, num_classes, plan, on_epoch)?,
    };
    fitted.selection.reason = reason;
    Ok(fitted)
}
