//! Linear, MLP and layer-sum heads trained with Adam/AdamW, every epoch measured on held-out
//! examples: the validation split, or the folds of a cross-validation trained side by side (the
//! pooled out-of-fold loss per epoch). Early stopping on that loss; the best epoch count is then
//! refitted on every labelled example from the same seeded initialisation.

use tch::nn::{self, Module, OptimizerConfig};
use tch::{Kind, Reduction, Tensor};

use super::select::{class_counts, stratified_folds, Plan};
use super::{accuracy, finite, layersum, loss_acc, EpochRecord, Fitted, Head, HeadKind, HeadSpec, Selection, Split, TrainConfig};
use crate::data::Rng;
use crate::error::Result;

type Forward = Box<dyn Fn(&Tensor, bool) -> Tensor>;

/// One head in training: its variables, forward pass, optimiser, class weights, shuffle order.
struct Net {
    vs: nn::VarStore,
    spec: HeadSpec,
    forward: Forward,
    /// Head tensors that do not train (the layer-sum head's standardisation).
    fixed: Vec<(String, Tensor)>,
    opt: nn::Optimizer,
    weights: Option<Tensor>,
    rng: Rng,
}

impl Net {
    /// A fresh head from the seeded initialisation (every fold and the refit start alike), to
    /// be fitted on rows `x` with labels `y`.
    fn new(cfg: &TrainConfig, x: &Tensor, k: i64, y: &Tensor) -> Result<Net> {
        tch::manual_seed(cfg.seed as i64);
        let d = x.size()[1];
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let root = vs.root();
        let mut fixed = vec![];
        let (spec, forward): (HeadSpec, Forward) = match cfg.head {
            HeadKind::Mlp => {
                let fc1 = nn::linear(&root / "fc1", d, cfg.hidden, Default::default());
                let fc2 = nn::linear(&root / "fc2", cfg.hidden, k, Default::default());
                let p = cfg.dropout;
                let spec = HeadSpec { kind: HeadKind::Mlp, in_features: d, num_classes: k, hidden: Some(cfg.hidden), dropout: p, layers: None };
                (spec, Box::new(move |x: &Tensor, train: bool| fc2.forward(&fc1.forward(x).relu().dropout(p, train))))
            }
            HeadKind::LayerSum => {
                let s = cfg.layers.unwrap_or(1) as i64;
                // Standardised on the rows this head is fitted on (a fold's, or all of them).
                let (mean, sd) = layersum::moments(x, s)?;
                let logits = root.set_group(1).zeros("layer_weights", &[s]);
                // Zeros, as the logistic head: a few hundred steps at the head's rate would not
                // move a random start far enough to outweigh it.
                let zeros = nn::LinearConfig { ws_init: nn::Init::Const(0.0), bs_init: Some(nn::Init::Const(0.0)), bias: true };
                let lin = nn::linear(&root, d / s, k, zeros);
                fixed = vec![("layer_mean".to_string(), mean.shallow_clone()), ("layer_std".to_string(), sd.shallow_clone())];
                let spec = HeadSpec { kind: HeadKind::LayerSum, in_features: d, num_classes: k, hidden: None, dropout: 0.0, layers: Some(s) };
                (spec, Box::new(move |x: &Tensor, _| layersum::forward(x, &mean, &sd, &logits, &lin.ws, lin.bs.as_ref())))
            }
            _ => {
                let lin = nn::linear(&root, d, k, Default::default());
                if let Some(init) = &cfg.init {
                    // A zero-shot start: training continues from the given head.
                    tch::no_grad(|| -> Result<()> {
                        lin.ws.shallow_clone().f_copy_(&init.weight.to_kind(Kind::Float))?;
                        if let Some(bs) = &lin.bs {
                            bs.shallow_clone().f_copy_(&init.bias.to_kind(Kind::Float))?;
                        }
                        Ok(())
                    })?;
                }
                let spec = HeadSpec { kind: HeadKind::Linear, in_features: d, num_classes: k, hidden: None, dropout: 0.0, layers: None };
                (spec, Box::new(move |x: &Tensor, _| lin.forward(x)))
            }
        };
        let mut opt = if cfg.weight_decay > 0.0 {
            nn::AdamW { wd: cfg.weight_decay, ..Default::default() }.build(&vs, cfg.lr)?
        } else {
            nn::Adam::default().build(&vs, cfg.lr)?
        };
        if cfg.head == HeadKind::LayerSum {
            opt.set_lr_group(1, cfg.lr * layersum::LAYER_WEIGHT_LR_SCALE);
        }
        let counts = class_counts(&Vec::<i64>::try_from(y)?, k as usize);
        let weights = cfg.class_weights.resolve(&counts)?.map(|w| Tensor::from_slice(&w).to_kind(Kind::Float));
        Ok(Net { vs, spec, forward, fixed, opt, weights, rng: Rng(cfg.seed ^ 0x5eed) })
    }

    /// One pass over (`x`, `y`) in seeded shuffled mini-batches.
    fn epoch(&mut self, cfg: &TrainConfig, x: &Tensor, y: &Tensor, epoch: usize) -> Result<()> {
        let mut order: Vec<i64> = (0..x.size()[0]).collect();
        self.rng.shuffle(&mut order);
        for (step, chunk) in order.chunks(cfg.batch_size.max(1)).enumerate() {
            let idx = Tensor::from_slice(chunk);
            let (xb, yb) = (x.index_select(0, &idx), y.index_select(0, &idx));
            let logits = (self.forward)(&xb, true);
            let loss = logits.cross_entropy_loss::<&Tensor>(&yb, self.weights.as_ref(), Reduction::Mean, -100, cfg.label_smoothing);
            finite(loss.double_value(&[]), &format!("training loss at epoch {epoch}, step {}", step + 1))?;
            self.opt.backward_step(&loss);
        }
        Ok(())
    }

    fn eval(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| (self.forward)(x, false))
    }

    fn head(&self) -> Result<Head> {
        let mut tensors = crate::models::snapshot(&self.vs);
        tensors.extend(self.fixed.iter().map(|(n, t)| (n.clone(), t.copy())));
        let head = Head { spec: self.spec.clone(), tensors };
        head.validate()?;
        Ok(head)
    }
}

/// A head trained on some rows and measured on others: the split, or one fold.
struct Lane {
    net: Net,
    x: Tensor,
    y: Tensor,
    held_x: Tensor,
    /// Rows of the held-out examples among all labelled ones (cross-validation).
    held_rows: Option<Tensor>,
}

fn lanes(cfg: &TrainConfig, train: &Split, val: &Split, all: &Split, k: i64, plan: Plan) -> Result<Vec<Lane>> {
    let Plan::Folds(folds) = plan else {
        let x = train.x.to_kind(Kind::Float);
        let net = Net::new(cfg, &x, k, train.y)?;
        let held_x = if plan == Plan::Holdout { val.x.to_kind(Kind::Float) } else { val.x.narrow(0, 0, 0).to_kind(Kind::Float) };
        return Ok(vec![Lane { net, x, y: train.y.shallow_clone(), held_x, held_rows: None }]);
    };
    let y: Vec<i64> = Vec::try_from(all.y)?;
    let n = y.len() as i64;
    let fold_of = stratified_folds(&y, k as usize, folds, cfg.seed);
    let mut out = vec![];
    for f in 0..folds {
        let rows = |inside: bool| Tensor::from_slice(&(0..n).filter(|&i| (fold_of[i as usize] == f) != inside).collect::<Vec<i64>>());
        let (fit_rows, held_rows) = (rows(true), rows(false));
        let (x, yf) = (all.x.index_select(0, &fit_rows).to_kind(Kind::Float), all.y.index_select(0, &fit_rows));
        let net = Net::new(cfg, &x, k, &yf)?;
        out.push(Lane { net, x, y: yf, held_x: all.x.index_select(0, &held_rows).to_kind(Kind::Float), held_rows: Some(held_rows) });
    }
    Ok(out)
}

/// Trains one epoch of every lane; the record pools their training and held-out figures, and
/// the held-out logits come back in row order (validation rows, or every example).
fn lockstep_epoch(
    cfg: &TrainConfig,
    lanes: &mut [Lane],
    all: &Split,
    val: &Split,
    epoch: usize,
    folds: Option<usize>,
) -> Result<(EpochRecord, Option<Tensor>)> {
    let mut per_lane = vec![];
    for lane in lanes.iter_mut() {
        lane.net.epoch(cfg, &lane.x, &lane.y, epoch)?;
        let (l, a) = loss_acc(&lane.net.eval(&lane.x), &lane.y);
        per_lane.push((l, a, lane.x.size()[0] as f64));
    }
    let (train_loss, train_acc) = match per_lane[..] {
        [(l, a, _)] => (l, a),
        _ => {
            let n: f64 = per_lane.iter().map(|p| p.2).sum();
            (per_lane.iter().map(|p| p.0 * p.2).sum::<f64>() / n, per_lane.iter().map(|p| p.1 * p.2).sum::<f64>() / n)
        }
    };
    finite(train_loss, &format!("training loss after epoch {epoch}"))?;
    let held = if lanes[0].held_x.size()[0] == 0 {
        None
    } else if folds.is_some() {
        let k = lanes[0].net.spec.num_classes;
        let mut oof = Tensor::zeros([all.y.size()[0], k], tch::kind::FLOAT_CPU);
        for lane in lanes.iter() {
            oof = oof.index_copy(0, lane.held_rows.as_ref().expect("fold rows"), &lane.net.eval(&lane.held_x));
        }
        Some((oof, all.y))
    } else {
        Some((lanes[0].net.eval(&lanes[0].held_x), val.y))
    };
    let (val_loss, val_acc) = held.as_ref().map(|(l, y)| loss_acc(l, y)).unzip();
    let rec = EpochRecord { epoch, train_loss, train_acc, val_loss, val_acc, folds, ..Default::default() };
    Ok((rec, held.map(|(l, _)| l)))
}

/// Chooses the epoch count (early stopping on held-out loss) and, per `cfg.refit`, refits it on
/// every labelled example.
pub(super) fn fit_sgd(cfg: &TrainConfig, train: Split, val: Split, k: i64, plan: Plan, on_epoch: &mut dyn FnMut(&EpochRecord)) -> Result<Fitted> {
    let xall = Tensor::cat(&[train.x.shallow_clone(), val.x.to_kind(train.x.kind())], 0);
    let yall = Tensor::cat(&[train.y, val.y], 0);
    let all = Split { x: &xall, y: &yall };
    let folds = match plan {
        Plan::Folds(f) => Some(f),
        _ => None,
    };
    let mut lanes = lanes(cfg, &train, &val, &all, k, plan)?;
    let mut history = vec![];
    // (score, epoch, the single lane's head, held-out logits, held-out loss and accuracy)
    let mut best: Option<(f64, usize, Option<Head>, Option<Tensor>, EpochRecord)> = None;
    let mut since_best = 0;
    for epoch in 1..=cfg.epochs.max(1) {
        let (rec, held) = lockstep_epoch(cfg, &mut lanes, &all, &val, epoch, folds)?;
        on_epoch(&rec);
        history.push(rec.clone());
        let score = rec.val_loss.unwrap_or(rec.train_loss);
        if best.as_ref().is_none_or(|(b, ..)| score < *b) {
            let head = if lanes.len() == 1 { Some(lanes[0].net.head()?) } else { None };
            best = Some((score, epoch, head, held, rec.clone()));
            since_best = 0;
        } else {
            since_best += 1;
            if rec.val_loss.is_some() && since_best >= cfg.patience {
                break;
            }
        }
    }
    drop(lanes);
    let (_, best_epoch, chosen, held, best_rec) = best.expect("at least one epoch");
    let refit = cfg.refit && plan != Plan::None;
    let judged = match plan {
        Plan::None => None,
        // The kept epoch's head (eval mode) on the validation rows.
        Plan::Holdout => Some((chosen.as_ref().expect("one lane").forward(val.x)?, val.y.shallow_clone())),
        Plan::Folds(_) => held.map(|l| (l, yall.shallow_clone())),
    };
    let (head, fit_x, fit_y) = if refit {
        let x = xall.to_kind(Kind::Float);
        let mut net = Net::new(cfg, &x, k, &yall)?;
        for epoch in 1..=best_epoch {
            net.epoch(cfg, &x, &yall, epoch)?;
        }
        let (train_loss, train_acc) = loss_acc(&net.eval(&x), &yall);
        finite(train_loss, "training loss of the refit")?;
        let rec = EpochRecord {
            epoch: best_epoch,
            train_loss,
            train_acc,
            phase: Some("refit".into()),
            n: Some(xall.size()[0] as usize),
            folds,
            selection_estimate: best_rec.val_acc,
            ..Default::default()
        };
        on_epoch(&rec);
        history.push(rec);
        (net.head()?, &xall, &yall)
    } else {
        (chosen.expect("one lane"), train.x, train.y)
    };
    let train_accuracy = accuracy(&head.forward(fit_x)?, fit_y);
    let counts = class_counts(&Vec::<i64>::try_from(fit_y)?, k as usize);
    let selection = Selection {
        method: plan.method(),
        folds,
        reason: String::new(),
        n_judged: judged.as_ref().map_or(0, |(l, _)| l.size()[0] as usize),
        estimate: best_rec.val_acc,
        estimate_loss: best_rec.val_loss,
        refit,
        n_fit: fit_x.size()[0] as usize,
        l2: None,
        epochs: Some(best_epoch),
    };
    Ok(Fitted { head, history, best_epoch, l2: None, class_weights: cfg.class_weights.resolve(&counts)?, selection, train_accuracy, judged })
}
