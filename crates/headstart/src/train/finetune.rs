//! Fine-tuning: unfreeze the last N stages (or all) and train them with the head.
//!
//! - Frozen stages run in eval mode under `no_grad`: no backward pass through them, their
//!   BatchNorm statistics untouched. Their parameters have `requires_grad` off and are not
//!   given to the optimiser.
//! - BatchNorm in unfrozen stages: `BnPolicy::Train` (default) updates batch statistics as
//!   usual; `BnPolicy::Frozen` keeps the pre-trained statistics (eval-mode normalisation, which
//!   also disables dropout inside those stages); `BnPolicy::Sync`, in a data-parallel run,
//!   normalises with the statistics of the whole global batch (one process: as `Train`).
//! - Per-stage learning rates: the head gets `lr`, the stage below `lr · decay`, the next
//!   `lr · decay²`, and so on (layer-wise decay).
//! - Without augmentation, and with at least one stage frozen, the activations entering the
//!   first unfrozen stage are computed once and reused every epoch.
//! - A checkpoint (weights, optimiser, schedule, position, best weights) is written after every
//!   epoch and every K steps: into a staging directory, synced, marked complete, renamed. A
//!   resumed run continues from it and ends with the same weights as an uninterrupted one
//!   (CPU, same thread count): shuffles and augmentation are derived from (seed, epoch, item)
//!   and dropout is reseeded from (seed, step).
//! - A non-finite loss or gradient skips that step; three in a row abort the run.
//! - Every optimiser step is timed (its batches, forward, backward, the update; not evaluation
//!   or checkpoints): [`Outcome::steps`], which `train` reports with its timings.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

use super::optim::{no_decay, Group, OptimKind, Optimizer};
use super::schedule::{Schedule, Scheduler};
use super::EpochRecord;
use crate::data::Rng;
use crate::error::{Error, Result};
use crate::learn::timings::StepTimings;
use crate::models::Model;
use crate::preprocess::Augment;
use crate::progress::Progress;
use crate::weights::{save_safetensors, Weights};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unfreeze {
    Last(usize),
    All,
}

impl std::str::FromStr for Unfreeze {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "all" {
            return Ok(Unfreeze::All);
        }
        match s.strip_prefix("last:").map(str::parse::<usize>) {
            Some(Ok(n)) if n > 0 => Ok(Unfreeze::Last(n)),
            _ => Err(format!("`{s}`: expected `last:N` (N ≥ 1) or `all`")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BnPolicy {
    Train,
    Frozen,
    /// Batch statistics over every rank's rows (data-parallel runs; else as `Train`).
    Sync,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinetuneConfig {
    pub unfreeze: Unfreeze,
    pub epochs: usize,
    /// Epochs of head-only training on cached features first (fastai's `fine_tune`).
    pub head_epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub stage_lr_decay: f64,
    pub weight_decay: f64,
    pub optim: OptimKind,
    pub schedule: Schedule,
    pub clip_grad_norm: Option<f64>,
    /// Micro-batches per optimiser step.
    pub accumulate: usize,
    pub augment: Option<Augment>,
    pub bn: BnPolicy,
    pub label_smoothing: f64,
    pub seed: u64,
    /// Also checkpoint every this many optimiser steps.
    pub checkpoint_every: Option<usize>,
    /// fp32, or bf16 autocast for the forward passes (weights, optimiser state and loss stay fp32).
    #[serde(default)]
    pub precision: crate::engine::Precision,
    /// Warm-up as a fraction of all optimiser steps (overrides the schedule's step count).
    #[serde(default)]
    pub warmup_ratio: Option<f64>,
    /// Early stopping: epochs without improvement of the best-model metric.
    #[serde(default)]
    pub patience: Option<usize>,
    /// End with the best epoch's weights (by `best_metric` on validation), else the last.
    #[serde(default = "yes")]
    pub keep_best: bool,
    #[serde(default)]
    pub best_metric: BestMetric,
}

fn yes() -> bool {
    true
}

/// What "best epoch" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BestMetric {
    /// Lowest validation loss.
    #[default]
    Loss,
    /// Highest validation accuracy (ties: lower loss).
    Accuracy,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            unfreeze: Unfreeze::Last(1),
            epochs: 5,
            head_epochs: 3,
            batch_size: 32,
            lr: 1e-3,
            stage_lr_decay: 0.5,
            weight_decay: 0.01,
            optim: OptimKind::adamw(),
            schedule: Schedule::WarmupCosine { warmup: 0 },
            clip_grad_norm: None,
            accumulate: 1,
            augment: None,
            bn: BnPolicy::Train,
            label_smoothing: 0.0,
            seed: 0,
            checkpoint_every: None,
            precision: crate::engine::Precision::Fp32,
            warmup_ratio: None,
            patience: None,
            keep_best: true,
            best_metric: BestMetric::Loss,
        }
    }
}

impl FinetuneConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Usage(m.to_string()));
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr <= 10.0) {
            return bad("learning rate must be in (0, 10]");
        }
        if !(self.stage_lr_decay > 0.0 && self.stage_lr_decay <= 1.0) {
            return bad("stage learning-rate decay must be in (0, 1]");
        }
        if self.batch_size == 0 || self.accumulate == 0 || self.epochs == 0 {
            return bad("batch size, accumulation and epochs must be positive");
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad("weight decay must be ≥ 0");
        }
        if self.warmup_ratio.is_some_and(|r| !(0.0..1.0).contains(&r)) {
            return bad("warm-up ratio must be in [0, 1)");
        }
        if self.patience == Some(0) {
            return bad("patience must be at least 1 epoch");
        }
        Ok(())
    }
}

/// Index of the first trainable stage.
pub fn first_trainable(unfreeze: Unfreeze, num_stages: usize) -> Result<usize> {
    match unfreeze {
        Unfreeze::All => Ok(0),
        Unfreeze::Last(n) if n <= num_stages => Ok(num_stages - n),
        Unfreeze::Last(n) => Err(Error::Usage(format!("setting `unfreeze` last:{n}, but the backbone has {num_stages} stages"))),
    }
}

/// What is trained: variable names of the unfrozen stages and the head.
pub struct FreezeState {
    pub first_trainable: usize,
    /// (stage index or None for the head, name, tensor) of every trainable parameter.
    pub trainable: Vec<(Option<usize>, String, Tensor)>,
    /// Every variable (parameters and buffers) of the unfrozen stages, for bundles.
    pub tuned_vars: Vec<String>,
}

/// Freezes all backbone stages before `first`: `requires_grad` off. Returns the trainable set.
pub fn apply_freeze(model: &Model, first: usize) -> FreezeState {
    freeze_stages(&model.vs, model.backbone.stages(), first)
}

/// [`apply_freeze`] for any variable store split into `stages` (variables outside every stage
/// are the head).
pub fn freeze_stages(vs: &tch::nn::VarStore, stages: &[crate::models::Stage], first: usize) -> FreezeState {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut trainable = vec![];
    let mut tuned_vars = vec![];
    for (name, t) in vars {
        let stage = stages.iter().position(|s| s.contains(&name));
        // Parameters require grad; buffers (BatchNorm running statistics) never do.
        let is_param = t.requires_grad();
        match stage {
            Some(i) if i < first => {
                let _ = t.set_requires_grad(false);
            }
            _ => {
                if stage.is_some() {
                    tuned_vars.push(name.clone());
                }
                if is_param {
                    trainable.push((stage, name, t));
                }
            }
        }
    }
    FreezeState { first_trainable: first, trainable, tuned_vars }
}

/// What the fine-tuning loop needs from a task (images, text): inputs for a set of rows,
/// logits for them, and the model's variables split into ordered stages. The loop itself
/// (optimiser, schedule, accumulation, non-finite guard, checkpoints, resume, best epoch) is
/// shared.
pub trait Learner {
    type Batch;
    /// Every variable of the model (backbone and head).
    fn vs(&self) -> &tch::nn::VarStore;
    /// The backbone's ordered stages; variables outside them are the head.
    fn stages(&self) -> &[crate::models::Stage];
    /// Index of the first stage that trains.
    fn first_trainable(&self) -> usize;
    /// Labels of every row.
    fn labels(&self) -> &Tensor;
    fn num_classes(&self) -> i64;
    /// The classifier head (a head-only phase fills it before the loop).
    fn head(&self) -> &tch::nn::Linear;
    /// Inputs for `rows`; `epoch` is given for training batches (augmentation, when on).
    fn batch(&self, rows: &[usize], epoch: Option<usize>) -> Result<Self::Batch>;
    /// Logits `[B, classes]` (fp32); frozen stages run without autograd.
    fn logits(&self, b: &Self::Batch, train: bool) -> Tensor;
    /// Consecutive parts of a training batch that run forward and backward one after another,
    /// to bound memory; their gradients add up to the whole batch's. Default: one part.
    fn parts(&self, rows: &[usize]) -> Vec<std::ops::Range<usize>> {
        vec![0..rows.len()]
    }

    /// Eval-mode logits for `rows` (no augmentation, no autograd), in row order.
    fn eval_logits(&self, rows: &[usize], batch_size: usize) -> Result<Tensor> {
        let mut out = vec![];
        for chunk in rows.chunks(batch_size) {
            let b = self.batch(chunk, None)?;
            out.push(tch::no_grad(|| self.logits(&b, false)));
        }
        Ok(if out.is_empty() { Tensor::zeros([0, self.num_classes()], tch::kind::FLOAT_CPU) } else { Tensor::cat(&out, 0) })
    }
}

/// Freezes, then groups the trainable parameters per stage (and the head), with and without
/// weight decay, each stage's learning rate `decay^depth` of the head's.
pub fn optimizer<L: Learner>(l: &L, cfg: &FinetuneConfig) -> (Optimizer, FreezeState) {
    let stages = l.stages();
    let n_stages = stages.len();
    let freeze = freeze_stages(l.vs(), stages, l.first_trainable());
    let mut groups: Vec<Group> = vec![];
    for (stage, name, t) in &freeze.trainable {
        let depth = stage.map_or(0, |i| (n_stages - i) as i32);
        let lr_mult = cfg.stage_lr_decay.powi(depth);
        let wd = if no_decay(t) { 0.0 } else { cfg.weight_decay };
        let gname = format!("{}{}", stage.map_or("head".to_string(), |i| stages[i].name.clone()), if wd == 0.0 { "/no_decay" } else { "" });
        match groups.iter_mut().find(|g| g.name == gname) {
            Some(g) => g.params.push((name.clone(), t.shallow_clone())),
            None => groups.push(Group { name: gname, params: vec![(name.clone(), t.shallow_clone())], lr_mult, weight_decay: wd }),
        }
    }
    (Optimizer::new(cfg.optim, groups), freeze)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    epoch: usize,
    batch: usize,
    global_step: usize,
    micro: usize,
    nonfinite_streak: usize,
    skipped_steps: usize,
    optim_steps: i64,
    best: Option<(f64, usize)>,
    history: Vec<EpochRecord>,
    /// The running epoch's training-loss sum, correct count and examples seen.
    epoch_sums: (f64, i64, usize),
    scheduler: Scheduler,
    config: String,
    #[serde(default)]
    stopped_early: bool,
    /// Processes of the data-parallel run that wrote it (a resume needs as many).
    #[serde(default = "one")]
    world_size: usize,
}

fn one() -> usize {
    1
}

pub struct Outcome {
    /// Logits of the final (best) model on the training and validation rows, in row order.
    pub train_logits: Tensor,
    pub val_logits: Tensor,
    pub history: Vec<EpochRecord>,
    pub best_epoch: usize,
    pub skipped_steps: usize,
    pub freeze: FreezeState,
    pub resumed_from: Option<(usize, usize)>,
    /// The optimiser steps this process ran (a resumed run: those since the resume); its
    /// `setup_s` is left to the caller, who made the learner.
    pub steps: StepTimings,
}

const CKPT: &str = "checkpoint";
const COMPLETE: &str = "COMPLETE";

/// Every variable of `vs` from a saved file.
fn restore(vs: &tch::nn::VarStore, w: &Weights) -> Result<()> {
    let mut tensors = vec![];
    for name in vs.variables().keys() {
        tensors.push((name.clone(), w.tensor(name).map_err(|_| Error::Model(format!("checkpoint lacks `{name}`")))?));
    }
    crate::models::assign(vs, &tensors)
}

/// The latest complete checkpoint directory of a run, if any (a directory left half-renamed by
/// a crash is recovered from its `.old` copy).
pub fn latest_checkpoint(run: &Path) -> Option<PathBuf> {
    let main = run.join(CKPT);
    if main.join(COMPLETE).is_file() {
        return Some(main);
    }
    let old = run.join(format!("{CKPT}.old"));
    old.join(COMPLETE).is_file().then_some(old)
}

/// Fault injection for the crash tests: `HEADSTART_FAULT=checkpoint-write:N` aborts the
/// process in the middle of the N-th checkpoint write (after the weights, before the marker).
fn fault_in_checkpoint(n: usize) -> bool {
    std::env::var("HEADSTART_FAULT").ok().and_then(|v| v.strip_prefix("checkpoint-write:").and_then(|x| x.parse::<usize>().ok())) == Some(n)
}

struct Checkpointer {
    run: PathBuf,
    written: usize,
}

impl Checkpointer {
    fn write(&mut self, vs: &tch::nn::VarStore, opt: &Optimizer, best: &Option<Vec<(String, Tensor)>>, state: &CheckpointState) -> Result<()> {
        self.written += 1;
        let staging = self.run.join(format!("{CKPT}.staging"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        let weights = crate::models::snapshot(vs);
        if let Some((name, _)) = weights.iter().find(|(_, t)| !bool::try_from(t.isfinite().all()).unwrap_or(false)) {
            return Err(Error::Diverged(format!("`{name}` holds non-finite values; no checkpoint written")));
        }
        save_safetensors(&staging.join("model.safetensors"), &weights)?;
        if fault_in_checkpoint(self.written) {
            std::process::abort();
        }
        save_safetensors(&staging.join("optim.safetensors"), &opt.state_tensors())?;
        if let Some(b) = best {
            save_safetensors(&staging.join("best.safetensors"), b)?;
        }
        let json = serde_json::to_string_pretty(state).map_err(|e| Error::Model(e.to_string()))?;
        crate::fsx::atomic_write(&staging.join("state.json"), json.as_bytes())?;
        crate::fsx::atomic_write(&staging.join(COMPLETE), b"")?;
        let main = self.run.join(CKPT);
        let old = self.run.join(format!("{CKPT}.old"));
        let _ = std::fs::remove_dir_all(&old);
        if main.exists() {
            std::fs::rename(&main, &old).map_err(|e| Error::io(&main, e))?;
        }
        std::fs::rename(&staging, &main).map_err(|e| Error::io(&main, e))?;
        let _ = std::fs::remove_dir_all(&old);
        if let Ok(d) = std::fs::File::open(&self.run) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Row indices on the device of `like` (the labels).
fn rows_tensor(rows: &[usize], like: &Tensor) -> Tensor {
    Tensor::from_slice(&rows.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(like.device())
}

fn set_dropout_seed(seed: u64, step: usize) {
    tch::manual_seed((seed.wrapping_mul(1_000_003).wrapping_add(step as u64) & 0x7fff_ffff_ffff) as i64);
}

/// Forward and backward over the training rows `rows`, part by part as the learner splits
/// them: each part's mean loss weighted by its share of the rows (times `scale`), so the
/// gradients held add up to the whole batch's. Returns the batch's mean loss (non-finite as
/// soon as one part's is, and then the rest is skipped) and how many rows were right.
fn forward_backward<L: Learner>(sess: &L, rows: &[usize], epoch: Option<usize>, label_smoothing: f64, scale: f64, opt: &mut Optimizer) -> Result<(f64, i64)> {
    let (mut loss_sum, mut correct) = (0.0, 0);
    let parts = sess.parts(rows);
    let whole = parts.len() == 1;
    for part in parts {
        let r = &rows[part];
        let h = sess.batch(r, epoch)?;
        let y = sess.labels().index_select(0, &rows_tensor(r, sess.labels()));
        let logits = sess.logits(&h, true);
        let loss = logits.cross_entropy_loss::<&Tensor>(&y, None, Reduction::Mean, -100, label_smoothing);
        let lv = loss.double_value(&[]);
        if !lv.is_finite() {
            return Ok((lv, correct));
        }
        let share = r.len() as f64 / rows.len() as f64;
        opt.backward(&(loss * share * scale))?;
        loss_sum += if whole { lv } else { lv * r.len() as f64 / rows.len() as f64 };
        correct += logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64).int64_value(&[]);
    }
    Ok((loss_sum, correct))
}

/// The schedule of `cfg`, its warm-up set from `warmup_ratio` when one is given.
fn warmed_up(cfg: &FinetuneConfig, steps_per_epoch: usize) -> Schedule {
    let Some(r) = cfg.warmup_ratio else { return cfg.schedule.clone() };
    let w = (r * (steps_per_epoch * cfg.epochs) as f64).ceil() as usize;
    match cfg.schedule.clone() {
        Schedule::WarmupCosine { .. } => Schedule::WarmupCosine { warmup: w },
        Schedule::Linear { .. } => Schedule::Linear { warmup: w },
        other => other,
    }
}

impl CheckpointState {
    /// The state before the first step.
    fn fresh(scheduler: &Scheduler, config: String, world_size: usize) -> CheckpointState {
        CheckpointState {
            epoch: 0,
            batch: 0,
            global_step: 0,
            micro: 0,
            nonfinite_streak: 0,
            skipped_steps: 0,
            optim_steps: 0,
            best: None,
            history: vec![],
            epoch_sums: (0.0, 0, 0),
            scheduler: scheduler.clone(),
            config,
            stopped_early: false,
            world_size,
        }
    }
}

/// Loads the checkpoint in `dir` into `vs` and `opt`, after checking it was made with the same
/// settings (`config`) and as many processes; returns its state and best weights.
#[allow(clippy::type_complexity)]
fn load_checkpoint(
    dir: &Path,
    config: &str,
    world: usize,
    vs: &tch::nn::VarStore,
    opt: &mut Optimizer,
) -> Result<(CheckpointState, Option<Vec<(String, Tensor)>>)> {
    let text = std::fs::read_to_string(dir.join("state.json")).map_err(|e| Error::io(&dir.join("state.json"), e))?;
    let st: CheckpointState = serde_json::from_str(&text).map_err(|e| Error::input(&dir.join("state.json"), e.to_string()))?;
    if st.config != config {
        return Err(Error::Usage(format!("{}: the checkpoint was made with other fine-tuning settings; resume with the same ones", dir.display())));
    }
    if st.world_size != world {
        return Err(Error::Usage(format!(
            "{}: the checkpoint was made by {} processes (WORLD_SIZE); resume with as many, not {world}",
            dir.display(),
            st.world_size
        )));
    }
    restore(vs, &Weights::open(dir.join("model.safetensors"))?)?;
    opt.load_state(st.optim_steps, &Weights::open(dir.join("optim.safetensors"))?)?;
    let mut best = None;
    if dir.join("best.safetensors").is_file() {
        let w = Weights::open(dir.join("best.safetensors"))?;
        best = Some(w.names().iter().map(|n| Ok((n.clone(), w.tensor(n)?))).collect::<Result<_>>()?);
    }
    Ok((st, best))
}

/// The fine-tuning loop's working state: the optimiser, schedule, position and best weights,
/// and the data-parallel group when there is one.
struct Loop<'a, L: Learner> {
    sess: &'a L,
    cfg: &'a FinetuneConfig,
    ddp: Option<&'a super::ddp::Ddp>,
    primary: bool,
    opt: Optimizer,
    scheduler: Scheduler,
    state: CheckpointState,
    best_weights: Option<Vec<(String, Tensor)>>,
    ck: Checkpointer,
    /// BatchNorm statistics of the unfrozen stages, and their copy from before the optimiser
    /// step under way: a skipped step puts them back.
    buffers: Vec<Tensor>,
    saved_buffers: Vec<Tensor>,
    dropout_seed: u64,
    /// Data-parallel: this rank's step sums and non-finite flag, until the step's all-reduce.
    pending: super::ddp::Sums,
    pending_bad: bool,
    /// Each finished optimiser step's seconds and examples, and the step under way's so far.
    step_times: Vec<(f64, usize)>,
    step_clock: (f64, usize),
}

impl<L: Learner> Loop<'_, L> {
    /// Joins the data-parallel group (when there is one) at the loop's position; returns the
    /// synchronised-BatchNorm guard the loop must hold.
    fn start(&mut self, train_rows: usize) -> Result<Option<crate::dist::SyncBnGuard>> {
        if let Some(d) = self.ddp {
            d.start(self.sess.vs(), [self.state.epoch, self.state.batch, self.state.global_step])?;
        }
        let sync_bn = match (self.ddp, self.cfg.bn) {
            (Some(d), BnPolicy::Sync) => Some(d.sync_bn(train_rows, self.cfg.batch_size)?),
            _ => None,
        };
        self.opt.zero_grad();
        Ok(sync_bn)
    }

    fn done(&self) -> bool {
        self.state.epoch >= self.cfg.epochs || self.state.stopped_early
    }

    /// One epoch from the current position: its remaining batches, then the epoch's end.
    fn epoch(&mut self, train: &[usize], val: &[usize], progress: &dyn Progress, on_epoch: &mut dyn FnMut(&EpochRecord)) -> Result<()> {
        let epoch = self.state.epoch;
        let mut order = train.to_vec();
        Rng(self.cfg.seed ^ 0xf1e7 ^ (epoch as u64).wrapping_mul(0x2545_f491)).shuffle(&mut order);
        let batches: Vec<&[usize]> = order.chunks(self.cfg.batch_size).collect();
        progress.start(&format!("epoch {}", epoch + 1), batches.len() as u64);
        progress.inc(self.state.batch as u64);
        while self.state.batch < batches.len() {
            self.micro_batch(batches[self.state.batch], batches.len())?;
            progress.inc(1);
        }
        progress.finish();
        self.end_epoch(val, progress, on_epoch)
    }

    /// Forward and backward over this rank's share of batch `b` (of `n_batches` this epoch),
    /// then the optimiser step when the accumulation is complete or the loss not finite.
    fn micro_batch(&mut self, b: &[usize], n_batches: usize) -> Result<()> {
        let started = Instant::now();
        let (cfg, epoch) = (self.cfg, self.state.epoch);
        let mine = self.ddp.map(|d| d.share(b));
        let rows = mine.as_deref().unwrap_or(b);
        set_dropout_seed(self.dropout_seed, self.state.global_step * cfg.accumulate + self.state.micro);
        if self.state.micro == 0 {
            self.saved_buffers = self.buffers.iter().map(|b| b.copy()).collect();
        }
        let scale = rows.len() as f64 / b.len() as f64 / cfg.accumulate as f64;
        let (lv, correct) = if rows.is_empty() {
            (0.0, 0)
        } else {
            let r = forward_backward(self.sess, rows, Some(epoch), cfg.label_smoothing, scale, &mut self.opt);
            match self.ddp {
                Some(d) => {
                    d.g.check_sync_bn()?;
                    r.map_err(|e| d.g.step_failure(e))?
                }
                None => r?,
            }
        };
        let sums = if self.ddp.is_some() { &mut self.pending } else { &mut self.state.epoch_sums };
        if lv.is_finite() {
            sums.0 += lv * rows.len() as f64;
            sums.1 += correct;
            sums.2 += rows.len();
        }
        self.pending_bad |= !lv.is_finite();
        self.state.micro += 1;
        self.state.batch += 1;
        let last_micro = self.state.micro == cfg.accumulate || self.state.batch == n_batches;
        let stepping = (self.ddp.is_none() && !lv.is_finite()) || last_micro;
        if stepping {
            self.step(lv.is_finite())?;
        }
        self.step_clock.0 += started.elapsed().as_secs_f64();
        self.step_clock.1 += rows.len();
        if stepping {
            self.step_times.push(std::mem::take(&mut self.step_clock));
            if self.primary && cfg.checkpoint_every.is_some_and(|k| self.state.global_step.is_multiple_of(k)) && self.state.batch < n_batches {
                self.checkpoint()?;
            }
        }
        Ok(())
    }

    /// The optimiser step over the gradients held (data-parallel: after the all-reduce), or,
    /// when the loss or a gradient is not finite, a skipped step.
    fn step(&mut self, finite: bool) -> Result<()> {
        let mut finite = finite;
        if let Some(d) = self.ddp {
            let (bad, step) = d.reduce_step(&mut self.opt, std::mem::take(&mut self.pending_bad), std::mem::take(&mut self.pending))?;
            finite = !bad;
            let s = &mut self.state.epoch_sums;
            *s = (s.0 + step.0, s.1 + step.1, s.2 + step.2);
        }
        if finite && self.opt.grads_finite() {
            if let Some(c) = self.cfg.clip_grad_norm {
                self.opt.clip_grad_norm(c);
            }
            self.opt.step(self.cfg.lr * self.scheduler.factor(self.state.global_step))?;
            self.state.nonfinite_streak = 0;
            if let (Some(d), BnPolicy::Train) = (self.ddp, self.cfg.bn) {
                d.sync_buffers(&self.buffers)?;
            }
        } else {
            self.skip_step()?;
        }
        self.opt.zero_grad();
        self.state.micro = 0;
        self.state.global_step += 1;
        Ok(())
    }

    /// Puts the BatchNorm statistics back and counts the skip; three in a row end the run.
    fn skip_step(&mut self) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for (b, s) in self.buffers.iter().zip(&self.saved_buffers) {
                b.shallow_clone().f_copy_(s)?;
            }
            Ok(())
        })?;
        self.state.skipped_steps += 1;
        self.state.nonfinite_streak += 1;
        if self.state.nonfinite_streak >= 3 {
            return Err(Error::Diverged(format!(
                "three optimiser steps in a row had a non-finite loss or gradient (epoch {}, step {}); stopping. Try a lower learning rate or clip gradients (setting `clip_grad`)",
                self.state.epoch + 1,
                self.state.global_step + 1
            )));
        }
        Ok(())
    }

    /// Validation loss and accuracy on rows `val` (none without validation rows).
    fn val_scores(&self, val: &[usize]) -> Result<(Option<f64>, Option<f64>)> {
        if val.is_empty() {
            return Ok((None, None));
        }
        let (loss, acc) = match self.ddp {
            Some(d) => d.val_scores(self.sess, val, self.cfg.batch_size)?,
            None => {
                let logits = self.sess.eval_logits(val, self.cfg.batch_size)?;
                let y = self.sess.labels().index_select(0, &rows_tensor(val, self.sess.labels()));
                let loss = logits.cross_entropy_for_logits(&y).double_value(&[]);
                let acc = logits.argmax(-1, false).eq_tensor(&y).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
                (loss, acc)
            }
        };
        Ok((Some(loss), Some(acc)))
    }

    /// End of epoch: measure, keep the best, decide on early stopping, checkpoint.
    fn end_epoch(&mut self, val: &[usize], progress: &dyn Progress, on_epoch: &mut dyn FnMut(&EpochRecord)) -> Result<()> {
        let epoch = self.state.epoch;
        let (val_loss, val_acc) = self.val_scores(val)?;
        let (loss_sum, correct, seen) = std::mem::take(&mut self.state.epoch_sums);
        let rec = EpochRecord {
            epoch: epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            val_loss,
            val_acc,
            ..Default::default()
        };
        on_epoch(&rec);
        self.state.history.push(rec);
        self.scheduler.end_epoch(val_loss);
        if let (Some(vl), Some(va)) = (val_loss, val_acc) {
            // Lower is better: the loss, or minus the accuracy with the loss as tie-break.
            let score = match self.cfg.best_metric {
                BestMetric::Loss => vl,
                BestMetric::Accuracy => -va + vl * 1e-9,
            };
            if self.state.best.is_none_or(|(b, _)| score < b) {
                self.state.best = Some((score, epoch + 1));
                if self.cfg.keep_best {
                    self.best_weights = Some(crate::models::snapshot(self.sess.vs()));
                }
            }
        }
        self.state.epoch += 1;
        let stale = self.state.best.map(|(_, e)| self.state.epoch - e);
        if let (Some(p), Some(stale)) = (self.cfg.patience, stale) {
            if stale >= p && self.state.epoch < self.cfg.epochs {
                progress.message(&format!("early stopping: no improvement for {p} epochs"));
                self.state.stopped_early = true;
            }
        }
        self.state.batch = 0;
        if self.primary {
            self.checkpoint()?;
        }
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<()> {
        self.state.scheduler = self.scheduler.clone();
        self.state.optim_steps = self.opt.steps;
        self.ck.write(self.sess.vs(), &self.opt, &self.best_weights, &self.state)
    }

    /// After the last epoch: every rank done, the best weights in place, the final logits.
    fn finish(self, train: &[usize], val: &[usize], freeze: FreezeState, resumed_from: Option<(usize, usize)>) -> Result<Outcome> {
        if let Some(d) = self.ddp {
            d.g.barrier("the end of training")?;
        }
        if let Some(b) = &self.best_weights {
            crate::models::assign(self.sess.vs(), b)?;
        }
        let (cfg, state) = (self.cfg, self.state);
        let best_epoch = if cfg.keep_best { state.best.map(|(_, e)| e).unwrap_or(state.epoch) } else { state.epoch };
        let (train_logits, val_logits) = match self.ddp {
            Some(d) => (d.eval_logits(self.sess, train, cfg.batch_size)?, d.eval_logits(self.sess, val, cfg.batch_size)?),
            None => (self.sess.eval_logits(train, cfg.batch_size)?, self.sess.eval_logits(val, cfg.batch_size)?),
        };
        let steps = StepTimings::from_steps(0.0, &self.step_times);
        Ok(Outcome { train_logits, val_logits, history: state.history, best_epoch, skipped_steps: state.skipped_steps, freeze, resumed_from, steps })
    }
}

/// The fine-tuning loop for any [`Learner`]: trains on rows `train`, measures on rows `val`
/// after every epoch, checkpoints into `run`, and ends with the best epoch's weights. Runs
/// data-parallel when the environment describes a launch (see [`crate::dist`]).
#[allow(clippy::too_many_arguments)]
pub fn train_learner<L: Learner>(
    sess: &L,
    train: &[usize],
    val: &[usize],
    cfg: &FinetuneConfig,
    run: &Path,
    resume: bool,
    progress: &dyn Progress,
    on_epoch: &mut dyn FnMut(&EpochRecord),
) -> Result<Outcome> {
    let ddp = super::ddp::Ddp::from_env()?;
    train_learner_in(ddp.as_ref(), sess, train, val, cfg, run, resume, progress, on_epoch)
}

/// [`train_learner`] in a data-parallel run already joined (`None`: one process).
#[allow(clippy::too_many_arguments)]
pub fn train_learner_in<L: Learner>(
    ddp: Option<&super::ddp::Ddp>,
    sess: &L,
    train: &[usize],
    val: &[usize],
    cfg: &FinetuneConfig,
    run: &Path,
    resume: bool,
    progress: &dyn Progress,
    on_epoch: &mut dyn FnMut(&EpochRecord),
) -> Result<Outcome> {
    cfg.validate()?;
    let (primary, world) = ddp.map_or((true, 1), |d| (d.g.is_primary(), d.g.world));
    let vs = sess.vs();
    let (mut opt, freeze) = optimizer(sess, cfg);
    let steps_per_epoch = train.len().div_ceil(cfg.batch_size).div_ceil(cfg.accumulate).max(1);
    let mut scheduler = Scheduler::new(warmed_up(cfg, steps_per_epoch), steps_per_epoch, cfg.epochs);
    let config_json = serde_json::to_string(cfg).map_err(|e| Error::Model(e.to_string()))?;
    let mut state = CheckpointState::fresh(&scheduler, config_json.clone(), world);
    let (mut best_weights, mut resumed_from) = (None, None);
    if let Some(dir) = if resume { latest_checkpoint(run) } else { None } {
        let (st, best) = load_checkpoint(&dir, &config_json, world, vs, &mut opt)?;
        scheduler = st.scheduler.clone();
        resumed_from = Some((st.epoch, st.batch));
        (state, best_weights) = (st, best);
    }
    let buffers: Vec<Tensor> = {
        let vars = vs.variables();
        freeze.tuned_vars.iter().filter(|n| !vars[*n].requires_grad()).map(|n| vars[n].shallow_clone()).collect()
    };
    let dropout_seed = ddp.map_or(cfg.seed, |d| d.seed(cfg.seed));
    let mut lp = Loop {
        sess,
        cfg,
        ddp,
        primary,
        opt,
        scheduler,
        state,
        best_weights,
        ck: Checkpointer { run: run.to_path_buf(), written: 0 },
        buffers,
        saved_buffers: vec![],
        dropout_seed,
        pending: (0.0, 0, 0),
        pending_bad: false,
        step_times: vec![],
        step_clock: (0.0, 0),
    };
    let _sync_bn = lp.start(train.len())?;
    while !lp.done() {
        lp.epoch(train, val, progress, on_epoch)?;
    }
    lp.finish(train, val, freeze, resumed_from)
}

/// The learning-rate range test (Smith 2017; fastai's `lr_find`).
#[derive(Debug, Clone, Serialize)]
pub struct LrFind {
    pub lrs: Vec<f64>,
    /// Exponentially smoothed, bias-corrected training loss at each rate.
    pub losses: Vec<f64>,
    /// The rate where the smoothed loss falls fastest.
    pub steepest: f64,
    /// A tenth of the rate with the lowest smoothed loss: the suggestion.
    pub suggestion: f64,
}

/// The learning-rate range test for any [`Learner`], over rows `train`: trains with the rate
/// growing exponentially from `min_lr` to `max_lr` over `steps` steps (stopping early once the
/// loss diverges), records the loss, then puts every weight back.
pub fn lr_find_learner<L: Learner>(
    sess: &L,
    train: &[usize],
    cfg: &FinetuneConfig,
    min_lr: f64,
    max_lr: f64,
    steps: usize,
    progress: &dyn Progress,
) -> Result<LrFind> {
    if !(min_lr > 0.0 && max_lr > min_lr && steps >= 10) {
        return Err(Error::Usage("the range test needs 0 < min < max and at least 10 steps".into()));
    }
    if train.is_empty() {
        return Err(Error::Usage("the range test needs training examples".into()));
    }
    let saved = crate::models::snapshot(sess.vs());
    let (mut opt, _) = optimizer(sess, cfg);
    let mut order = train.to_vec();
    Rng(cfg.seed ^ 0x1f).shuffle(&mut order);
    let batches: Vec<&[usize]> = order.chunks(cfg.batch_size).collect();
    let (mut lrs, mut losses) = (vec![], vec![]);
    let (mut avg, mut best) = (0.0, f64::INFINITY);
    progress.start("lr-find", steps as u64);
    for i in 0..steps {
        let lr = min_lr * (max_lr / min_lr).powf(i as f64 / (steps - 1) as f64);
        let rows = batches[i % batches.len()];
        set_dropout_seed(cfg.seed, i);
        opt.zero_grad();
        let (lv, _) = forward_backward(sess, rows, Some(i / batches.len()), cfg.label_smoothing, 1.0, &mut opt)?;
        if !lv.is_finite() {
            break;
        }
        opt.step(lr)?;
        avg = 0.98 * avg + 0.02 * lv;
        let smooth = avg / (1.0 - 0.98f64.powi(i as i32 + 1));
        lrs.push(lr);
        losses.push(smooth);
        best = best.min(smooth);
        progress.inc(1);
        if i >= 10 && smooth > 4.0 * best {
            break;
        }
    }
    progress.finish();
    // Put everything back: parameters and BatchNorm statistics.
    crate::models::assign(sess.vs(), &saved)?;
    if lrs.len() < 3 {
        return Err(Error::Diverged("the loss diverged at once; try a lower starting rate (setting `min_lr`)".into()));
    }
    let imin = (0..losses.len()).min_by(|&a, &b| losses[a].total_cmp(&losses[b])).unwrap_or(0);
    let skip = losses.len() / 10;
    let steepest = (skip..imin.max(skip + 1).min(losses.len() - 1))
        .min_by(|&a, &b| {
            let slope = |i: usize| (losses[i + 1] - losses[i]) / (lrs[i + 1].ln() - lrs[i].ln());
            slope(a).total_cmp(&slope(b))
        })
        .map_or(lrs[imin], |i| lrs[i]);
    Ok(LrFind { suggestion: lrs[imin] / 10.0, steepest, lrs, losses })
}
