//! The run, written once for every modality: train (a head on frozen features, or
//! fine-tuning after an optional head-only phase), resume, evaluate, predict and lr-find.
//!
//! A modality supplies a [`Block`]: it opens a data set into examples and skipped files,
//! featurises examples with its encoder (through the feature cache), screens them without the
//! encoder, turns usable examples into fine-tuning inputs, and builds a [`Learner`] over them.
//! For training it also loads its encoder and describes it for the bundle ([`TrainBlock`]).
//! Everything else (validation split, class checks, merging a validation set, the metrics
//! log, the head phase, tuned tensors, the bundle, the outcome) lives here.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::{Kind, Tensor};

use crate::bundle::{self, Bundle};
use crate::error::{Error, Result};
use crate::learn::heads::{final_scores, fit_head, head_phase_config, ranked};
use crate::learn::run_dir::{epoch_line, write_errors, MetricsLog};
use crate::learn::split::{stratified_split, Skip};
use crate::metrics::{self, Report};
use crate::models::Encoder;
use crate::progress::Progress;
use crate::train::finetune::{latest_checkpoint, lr_find_learner, train_learner_in, FinetuneConfig, Learner, LrFind};
use crate::train::{fit, Cv, EpochRecord, Head, HeadKind, HeadSpec, HeadStart, InitialHead, Selection, Split, TrainConfig};

/// A labelled data set as a block opened it.
pub struct Opened<D> {
    /// The examples, in order (paths, texts).
    pub data: D,
    /// Class index of each example.
    pub labels: Vec<usize>,
    pub classes: Vec<String>,
    pub skipped: Vec<Skip>,
    pub warnings: Vec<String>,
}

/// Examples after the encoder (or after a screen without it).
pub struct Featurised {
    /// `[n_ok, dim]` pooled features (`[n_ok, 0]` after a screen).
    pub features: Tensor,
    /// Indices of the usable examples, in order: the rows of `features`.
    pub ok: Vec<usize>,
    pub skipped: Vec<Skip>,
    /// Encoder passes run / feature-cache hits.
    pub computed: usize,
    pub reused: usize,
    pub warnings: Vec<String>,
    /// Where the encoder pass's time went, for encoders that measure it.
    pub timing: Option<crate::learn::timings::ExtractTiming>,
}

impl Featurised {
    /// Every example usable, no features: what a screen of data that cannot fail returns.
    pub fn all(n: usize) -> Featurised {
        Featurised {
            features: Tensor::zeros([n as i64, 0], tch::kind::FLOAT_CPU),
            ok: (0..n).collect(),
            skipped: vec![],
            computed: 0,
            reused: 0,
            warnings: vec![],
            timing: None,
        }
    }
}

/// What a modality supplies to train, evaluate, predict and lr-find.
pub trait Block {
    /// A data set's examples, in order.
    type Data: crate::learn::shared_pass::Examples;
    /// The encoder with everything its inputs need (preprocessing, tokenizer).
    type Model: Encoder;
    /// Fine-tuning inputs of the usable examples (decoded images, tokenised documents).
    type Inputs;
    type Learner<'a>: Learner
    where
        Self: 'a;
    /// What the examples are called in messages (`images`, `examples`).
    const NOUN: &'static str;

    /// Opens labelled data; `classes` fixes the class list (validation and test sets).
    fn open(&self, path: &Path, classes: Option<&[String]>) -> Result<Opened<Self::Data>>;
    /// Appends `more` (a validation set) to `data`.
    fn append(&self, data: &mut Self::Data, more: Self::Data);
    /// Pooled features of every usable example (from the cache where possible).
    fn featurise(&self, model: &Self::Model, data: &Self::Data, progress: &dyn Progress) -> Result<Featurised>;
    /// Which examples are usable, without the encoder, and their fine-tuning inputs.
    fn screen(&self, model: &Self::Model, data: &Self::Data, progress: &dyn Progress) -> Result<(Featurised, Self::Inputs)>;
    /// Fine-tuning inputs of the examples `ok`.
    fn inputs(&self, model: &Self::Model, data: &Self::Data, ok: &[usize], progress: &dyn Progress) -> Result<Self::Inputs>;
    /// A learner over `inputs` with `labels`, a fresh `num_classes`-way head and the stages
    /// `ft` unfreezes trainable.
    fn learner<'a>(
        &'a self,
        model: &'a Self::Model,
        inputs: &'a Self::Inputs,
        labels: &[i64],
        num_classes: i64,
        ft: &'a FinetuneConfig,
        progress: &dyn Progress,
    ) -> Result<Self::Learner<'a>>;
    /// Moves the model to `device` for fine-tuning (a data-parallel rank's `cuda:LOCAL_RANK`).
    /// Default: the CPU only.
    fn place(&self, model: &mut Self::Model, device: tch::Device) -> Result<()> {
        let _ = model;
        match device {
            tch::Device::Cpu => Ok(()),
            d => Err(Error::Usage(format!(
                "fine-tuning on {} is implemented for images only, not on {d:?}: use --dist-backend gloo to train on the CPU",
                Self::NOUN
            ))),
        }
    }
    /// Where example `i` of `data` came from, and its text for text data (what the report
    /// shows of a misclassified example). Default: its position.
    fn describe(&self, data: &Self::Data, i: usize) -> (String, Option<String>) {
        let _ = data;
        (format!("example {}", i + 1), None)
    }
}

/// The share of each class held out for validation when no validation set is given.
pub const DEFAULT_VAL_SPLIT: f64 = 0.2;
/// Batch size of feature extraction and evaluation.
pub const DEFAULT_EVAL_BATCH: usize = 32;

/// The settings every training run has, whatever the modality.
pub struct RunSpec<'a> {
    pub data: &'a Path,
    pub val: Option<&'a Path>,
    pub val_split: f64,
    pub out: &'a Path,
    pub train: &'a TrainConfig,
    pub finetune: Option<&'a FinetuneConfig>,
}

/// A training request of any modality: the settings every run has, and the whole request
/// serialisable as the run's `config.json`.
pub trait RunRequest: Serialize + Clone {
    fn spec(&self) -> RunSpec<'_>;
}

/// Implements [`RunRequest`] for request types whose common settings are the fields `data`,
/// `val`, `val_split`, `out`, `train` and `finetune`.
macro_rules! run_request {
    ($($t:ty),+) => {$(
        impl $crate::learn::task::RunRequest for $t {
            fn spec(&self) -> $crate::learn::task::RunSpec<'_> {
                $crate::learn::task::RunSpec {
                    data: &self.data,
                    val: self.val.as_deref(),
                    val_split: self.val_split,
                    out: &self.out,
                    train: &self.train,
                    finetune: self.finetune.as_ref(),
                }
            }
        }
    )+};
}
pub(crate) use run_request;

/// A block that trains: its request, its encoder, and the encoder's record in a bundle.
pub trait TrainBlock: Block {
    type Request: RunRequest;
    /// The request the block trains per.
    fn request(&self) -> &Self::Request;
    fn spec(&self) -> RunSpec<'_> {
        self.request().spec()
    }
    /// The request as run, as `config.json` records it. Default: as given.
    fn recorded(&self) -> std::borrow::Cow<'_, Self::Request> {
        std::borrow::Cow::Borrowed(self.request())
    }
    /// Writes the request as the run's `config.json` (read back to resume).
    fn write_config(&self) -> Result<()> {
        let req = self.recorded();
        crate::learn::run_dir::write_config(req.spec().out, &*req)
    }
    /// The model's name for the outcome.
    fn model_name(&self) -> String;
    /// Loads the encoder for `classes` (fine-tuning: with a fresh head where the encoder holds
    /// one); warnings about the settings go to `warnings`.
    fn load(&self, classes: &[String], data: &Self::Data, warnings: &mut Vec<String>) -> Result<Self::Model>;
    /// The hidden states stacked in each feature row, for the layer-sum head. Default: none
    /// (a row is one vector).
    fn stacked_layers(&self, _model: &Self::Model) -> Option<usize> {
        None
    }
    /// The bundle's metadata (no tuned stages yet).
    fn bundle_meta(&self, model: &Self::Model, labels: Vec<String>, head: HeadSpec) -> Result<Bundle>;
    /// Where the head on features starts, per the request's `head_init`: encoders without a
    /// zero-shot classifier refuse anything but the default.
    fn initial_head(&self, _model: &Self::Model, _classes: &[String]) -> Result<Option<InitialHead>> {
        match self.spec().train.head_init {
            HeadStart::Default => Ok(None),
            HeadStart::ZeroShot { .. } => Err(Error::Usage("setting `head_init` zero-shot needs a CLIP model (its text tower names the classes)".into())),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainOutcome {
    pub run_dir: PathBuf,
    pub bundle: PathBuf,
    pub model: String,
    pub classes: Vec<String>,
    pub n_train: usize,
    pub n_val: usize,
    pub skipped: usize,
    pub warnings: Vec<String>,
    pub head: HeadKind,
    pub best_epoch: usize,
    pub l2: Option<f64>,
    /// The layer-sum head's learned weight of each hidden state (softmax; state 0 first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_weights: Option<Vec<f64>>,
    /// Accuracy of the kept head on the examples it was fitted on (all of them after a refit).
    pub train_accuracy: f64,
    /// Held-out report of the chosen head before any refit: on the validation rows, or (with
    /// cross-validation) on every example out of fold. Its accuracy is the selection estimate;
    /// after a refit it describes the setting, not the refitted weights.
    pub val: Option<Report>,
    /// How a head on features was chosen and refitted (`None` for fine-tuning, which keeps the
    /// best checkpoint on the validation split).
    pub selection: Option<Selection>,
    pub backbone_computed: usize,
    pub backbone_reused: usize,
    /// Fine-tuning: the unfrozen stages, skipped non-finite steps, where a resume started.
    pub tuned_stages: Vec<String>,
    pub skipped_steps: usize,
    pub resumed_from: Option<(usize, usize)>,
    /// The concrete precision the bundle's head was trained on.
    pub precision: Option<crate::engine::Precision>,
    /// A data-parallel run: the slice of the data this rank featurised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank_share: Option<crate::learn::shared_pass::RankShare>,
    /// Where the run's time went.
    pub timings: Option<crate::learn::timings::RunTimings>,
}

/// The labelled examples of a run: train and validation merged, with the run's checks.
struct Gathered<D> {
    data: D,
    labels: Vec<usize>,
    classes: Vec<String>,
    n_train: usize,
    skipped: Vec<Skip>,
    warnings: Vec<String>,
}

fn gather<B: TrainBlock>(block: &B) -> Result<Gathered<B::Data>> {
    let spec = block.spec();
    if !(0.0..1.0).contains(&spec.val_split) {
        return Err(Error::Usage(format!("setting `val_split` must be in [0, 1), not {}", spec.val_split)));
    }
    spec.train.validate()?;
    if let Some(ft) = spec.finetune {
        ft.validate()?;
    }
    let train = block.open(spec.data, None)?;
    if train.classes.len() < 2 {
        return Err(Error::input(spec.data, format!("need at least two classes, found {}", train.classes.len())));
    }
    let Opened { mut data, mut labels, classes, mut skipped, mut warnings } = train;
    let n_train = labels.len();
    if let Some(v) = spec.val {
        let val = block.open(v, Some(&classes))?;
        block.append(&mut data, val.data);
        labels.extend(val.labels);
        skipped.extend(val.skipped);
        warnings.extend(val.warnings);
    }
    Ok(Gathered { data, labels, classes, n_train, skipped, warnings })
}

/// What fitting produced, whichever way.
struct Fit {
    head: Head,
    best_epoch: usize,
    l2: Option<f64>,
    train_accuracy: f64,
    val: Option<Report>,
    selection: Option<Selection>,
    tuned: Option<(Vec<String>, Vec<(String, Tensor)>)>,
    skipped_steps: usize,
    resumed_from: Option<(usize, usize)>,
    /// The held-out rows behind `val` and their logits.
    held_out: Option<(Vec<usize>, Tensor)>,
    /// Fine-tuning: the learner's set-up and the optimiser steps.
    steps: Option<crate::learn::timings::StepTimings>,
}

/// Rows of the usable examples, split into train and validation.
struct Rows {
    labels: Vec<usize>,
    tr: Vec<usize>,
    va: Vec<usize>,
}

impl Rows {
    fn y(&self, rows: &[usize]) -> Tensor {
        Tensor::from_slice(&rows.iter().map(|&r| self.labels[r] as i64).collect::<Vec<_>>())
    }

    fn take(&self, features: &Tensor, rows: &[usize]) -> (Tensor, Tensor) {
        let idx = Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>());
        (features.index_select(0, &idx), self.y(rows))
    }
}

fn split_rows<B: TrainBlock>(block: &B, g: &Gathered<B::Data>, ok: &[usize], warnings: &mut Vec<String>) -> Result<Rows> {
    let spec = block.spec();
    let labels: Vec<usize> = ok.iter().map(|&i| g.labels[i]).collect();
    let (tr, va): (Vec<usize>, Vec<usize>) = if spec.val.is_some() {
        (0..ok.len()).partition(|&r| ok[r] < g.n_train)
    } else {
        stratified_split(&labels, g.classes.len(), spec.val_split, spec.train.seed)
    };
    let mut present = vec![0usize; g.classes.len()];
    for &r in &tr {
        present[labels[r]] += 1;
    }
    if let Some(c) = present.iter().position(|&n| n == 0) {
        return Err(Error::input(spec.data, format!("class `{}` has no usable training {}", g.classes[c], B::NOUN)));
    }
    if va.is_empty() && !matches!(spec.train.cv, Cv::Folds(_)) {
        warnings.push(format!("no validation {}: the head is chosen on training loss", B::NOUN));
    }
    Ok(Rows { labels, tr, va })
}

/// Trains per the block's request; with `resume`, a fine-tuning run continues from its last
/// checkpoint (a run without one starts afresh).
pub fn train<B: TrainBlock>(block: &B, resume: bool, progress: &dyn Progress) -> Result<TrainOutcome> {
    let mut clock = crate::learn::timings::RunTimings::start();
    let spec = block.spec();
    // A data-parallel launch (WORLD_SIZE > 1): every rank runs this; rank 0 alone writes.
    let primary = crate::dist::is_primary();
    if spec.finetune.is_none() && crate::dist::Env::from_env()?.is_some() {
        return Err(Error::Usage("WORLD_SIZE > 1: only fine-tuning runs data-parallel; train a head on features in one process".into()));
    }
    let ddp = if spec.finetune.is_some() { crate::train::ddp::Ddp::from_env()? } else { None };
    let g = gather(block)?;
    let mut warnings = g.warnings.clone();
    if let Some(ft) = spec.finetune {
        // A new head's initial weights come from the seed (they matter without a head phase).
        tch::manual_seed(ft.seed as i64);
    }
    let mut model = block.load(&g.classes, &g.data, &mut warnings)?;
    let head_cfg = TrainConfig { init: block.initial_head(&model, &g.classes)?, layers: block.stacked_layers(&model), ..spec.train.clone() };
    clock.loaded();
    if primary {
        block.write_config()?;
    }
    let resuming = resume && latest_checkpoint(spec.out).is_some();
    let head_phase = spec.finetune.is_none_or(|f| f.head_epochs > 0 && !resuming);
    // Data-parallel: each rank featurises its slice; all end with every example's features.
    let (f, mut inputs, rank_share) = encode(block, &model, &g.data, head_phase, ddp.as_ref().map(|d| &d.g), progress)?;
    let mut skipped = g.skipped.clone();
    skipped.extend(f.skipped.iter().cloned());
    if primary {
        write_errors(spec.out, &skipped)?;
    }
    warnings.extend(f.warnings.iter().cloned());
    let rows = split_rows(block, &g, &f.ok, &mut warnings)?;

    let mut log = if primary { Some(MetricsLog::open(spec.out, resuming)?) } else { None };
    let mut on_epoch = |r: &EpochRecord| {
        progress.message(&epoch_line(r));
        if let Some(l) = log.as_mut() {
            l.record(r);
        }
    };
    let fitted = match spec.finetune {
        None => head_on_features(&head_cfg, &g.classes, &rows, &f.features, &mut on_epoch)?,
        Some(ft) => {
            let inputs = match inputs.take() {
                Some(i) => i,
                None => block.inputs(&model, &g.data, &f.ok, progress)?,
            };
            // Data-parallel on CUDA: the model moves to this rank's device (features, inputs and
            // the head phase stay on the CPU).
            if let Some(d) = ddp.as_ref().filter(|d| d.g.device != tch::Device::Cpu) {
                block.place(&mut model, d.g.device)?;
            }
            let head_features = head_phase.then_some(&f.features);
            fine_tune(block, &model, &inputs, &g.classes, &rows, head_features, ft, resume, ddp.as_ref(), progress, &mut on_epoch)?
        }
    };
    if let Some(l) = log {
        l.finish()?;
    }
    let (bundle_dir, precision) = if primary {
        write_val_predictions(block, &g, &f.ok, &rows, &fitted)?;
        write_bundle(block, &model, g.classes.clone(), &fitted)?
    } else {
        // Other ranks write nothing; they report what rank 0's bundle records.
        (bundle::default_bundle_dir(spec.out), block.bundle_meta(&model, g.classes.clone(), fitted.head.spec.clone())?.precision)
    };
    Ok(TrainOutcome {
        run_dir: spec.out.to_path_buf(),
        bundle: bundle_dir,
        model: block.model_name(),
        classes: g.classes,
        n_train: rows.tr.len(),
        n_val: rows.va.len(),
        skipped: skipped.len(),
        warnings,
        head: fitted.head.spec.kind,
        best_epoch: fitted.best_epoch,
        l2: fitted.l2,
        layer_weights: fitted.head.layer_weights(),
        train_accuracy: fitted.train_accuracy,
        val: fitted.val,
        selection: fitted.selection,
        backbone_computed: f.computed,
        backbone_reused: f.reused,
        tuned_stages: fitted.tuned.map(|t| t.0).unwrap_or_default(),
        skipped_steps: fitted.skipped_steps,
        resumed_from: fitted.resumed_from,
        precision: Some(precision),
        timings: Some(clock.finish(f.timing).with_steps(fitted.steps)),
        rank_share,
    })
}

/// The examples through the encoder when a head phase needs their features; else only
/// screened, with their fine-tuning inputs.
#[allow(clippy::type_complexity)]
fn encode<B: TrainBlock>(
    block: &B,
    model: &B::Model,
    data: &B::Data,
    head_phase: bool,
    group: Option<&crate::dist::Group>,
    progress: &dyn Progress,
) -> Result<(Featurised, Option<B::Inputs>, Option<crate::learn::shared_pass::RankShare>)>
where
    B::Data: crate::learn::shared_pass::Examples,
{
    if head_phase {
        let (f, share) = crate::learn::shared_pass::featurise(block, model, data, group, progress)?;
        return Ok((f, None, share));
    }
    let (f, inputs) = block.screen(model, data, progress)?;
    Ok((f, Some(inputs), None))
}

/// A head on frozen features: fitted per `cfg` on the training rows, chosen on the validation
/// rows (or by cross-validation).
fn head_on_features(cfg: &TrainConfig, classes: &[String], rows: &Rows, features: &Tensor, on_epoch: &mut dyn FnMut(&EpochRecord)) -> Result<Fit> {
    let ((xtr, ytr), (xva, yva)) = (rows.take(features, &rows.tr), rows.take(features, &rows.va));
    let h = fit_head(cfg, classes, Split { x: &xtr, y: &ytr }, Split { x: &xva, y: &yva }, on_epoch)?;
    // Held out: the validation rows, or (cross-validation) every row, train rows first.
    let cv = h.selection.method == crate::train::select::Method::CrossValidation;
    let held_out = h.judged.map(|l| (if cv { [&rows.tr[..], &rows.va[..]].concat() } else { rows.va.clone() }, l));
    Ok(Fit {
        head: h.head,
        best_epoch: h.best_epoch,
        l2: h.l2,
        train_accuracy: h.train_accuracy,
        val: h.val,
        selection: Some(h.selection),
        tuned: None,
        skipped_steps: 0,
        resumed_from: None,
        held_out,
        steps: None,
    })
}

/// Fine-tuning: the head phase on `head_features` (when given), then the learner's loop.
///
/// The head phase is the same for every modality: the new linear head alone, for
/// `head_epochs` epochs, with the head settings of the request (learning rate, L2, patience:
/// fine-tuning rates are far too small for a fresh head), chosen on the validation split and
/// never refitted.
#[allow(clippy::too_many_arguments)]
fn fine_tune<B: TrainBlock>(
    block: &B,
    model: &B::Model,
    inputs: &B::Inputs,
    classes: &[String],
    rows: &Rows,
    head_features: Option<&Tensor>,
    ft: &FinetuneConfig,
    resume: bool,
    ddp: Option<&crate::train::ddp::Ddp>,
    progress: &dyn Progress,
    on_epoch: &mut dyn FnMut(&EpochRecord),
) -> Result<Fit> {
    let spec = block.spec();
    let k = classes.len() as i64;
    let labels: Vec<i64> = rows.labels.iter().map(|&l| l as i64).collect();
    let setup = std::time::Instant::now();
    let learner = block.learner(model, inputs, &labels, k, ft, progress)?;
    let setup_s = setup.elapsed().as_secs_f64();
    let (ytr, yva) = (rows.y(&rows.tr), rows.y(&rows.va));
    if let Some(x) = head_features {
        let ((xtr, _), (xva, _)) = (rows.take(x, &rows.tr), rows.take(x, &rows.va));
        let hc = TrainConfig { head: HeadKind::Linear, epochs: ft.head_epochs, batch_size: ft.batch_size, seed: ft.seed, ..head_phase_config(spec.train) };
        let fitted = fit(&hc, Split { x: &xtr, y: &ytr }, Split { x: &xva, y: &yva }, k, &mut |r| progress.message(&format!("head {}", epoch_line(r))))?;
        fitted.head.copy_into(learner.head())?;
    }
    let o = train_learner_in(ddp, &learner, &rows.tr, &rows.va, ft, spec.out, resume, progress, on_epoch)?;
    let val_truth: Vec<usize> = rows.va.iter().map(|&r| rows.labels[r]).collect();
    let (train_accuracy, val) = final_scores(classes, &o.train_logits, &ytr, &o.val_logits, &val_truth)?;
    let stages: Vec<String> = model.stages()[o.freeze.first_trainable..].iter().map(|s| s.name.clone()).collect();
    let vars = learner.vs().variables();
    let tensors = o.freeze.tuned_vars.iter().map(|n| (n.clone(), vars[n].detach().to_device(tch::Device::Cpu))).collect();
    let mut head = Head::from_linear(learner.head())?;
    head.tensors.iter_mut().for_each(|(_, t)| *t = t.to_device(tch::Device::Cpu));
    Ok(Fit {
        head,
        best_epoch: o.best_epoch,
        l2: None,
        train_accuracy,
        val,
        selection: None,
        tuned: Some((stages, tensors)),
        skipped_steps: o.skipped_steps,
        resumed_from: o.resumed_from,
        held_out: Some((rows.va.clone(), o.val_logits)),
        steps: Some(crate::learn::timings::StepTimings { setup_s, ..o.steps }),
    })
}

/// Writes the held-out predictions behind the run's validation report to
/// `val_predictions.jsonl` (one JSON object per example: origin, truth, predicted, probability,
/// and the text for text data), which the run's report shows mistakes from.
fn write_val_predictions<B: TrainBlock>(block: &B, g: &Gathered<B::Data>, ok: &[usize], rows: &Rows, fitted: &Fit) -> Result<()> {
    let path = block.spec().out.join(crate::report::VAL_PREDICTIONS);
    let mut out = String::new();
    if let Some((held, logits)) = fitted.held_out.as_ref().filter(|(held, l)| !held.is_empty() && l.size()[0] as usize == held.len()) {
        let (prob, pred) = logits.softmax(-1, Kind::Float).max_dim(-1, false);
        let prob: Vec<f64> = Vec::try_from(prob.to_kind(Kind::Double))?;
        let pred: Vec<i64> = Vec::try_from(pred)?;
        for ((&r, p), q) in held.iter().zip(pred).zip(prob) {
            let (origin, text) = block.describe(&g.data, ok[r]);
            let line = serde_json::json!({
                "origin": origin,
                "truth": g.classes[rows.labels[r]],
                "predicted": g.classes[p as usize],
                "probability": q,
                "text": text,
            });
            out.push_str(&line.to_string());
            out.push('\n');
        }
    }
    crate::fsx::atomic_write(&path, out.as_bytes())
}

/// Writes the run's bundle: head, tuned stages, metadata. Returns where, and the precision it
/// records.
fn write_bundle<B: TrainBlock>(block: &B, model: &B::Model, classes: Vec<String>, fitted: &Fit) -> Result<(PathBuf, crate::engine::Precision)> {
    let mut meta = block.bundle_meta(model, classes, fitted.head.spec.clone())?;
    let dir = bundle::default_bundle_dir(block.spec().out);
    let tuned = fitted.tuned.as_ref().map(|(s, t)| (&s[..], &t[..]));
    bundle::write(&dir, &fitted.head, tuned, |record| {
        meta.tuned = record;
        bundle::to_toml(&meta)
    })?;
    Ok((dir, meta.precision))
}

/// The learning-rate range test: fine-tuning settings `ft` on every usable example of the
/// request's data, with a fresh head (weights are restored afterwards).
pub fn lr_find<B: TrainBlock>(block: &B, ft: &FinetuneConfig, min_lr: f64, max_lr: f64, steps: usize, progress: &dyn Progress) -> Result<LrFind> {
    let spec = block.spec();
    let opened = block.open(spec.data, None)?;
    let k = opened.classes.len() as i64;
    tch::manual_seed(ft.seed as i64);
    let model = block.load(&opened.classes, &opened.data, &mut vec![])?;
    let (f, inputs) = block.screen(&model, &opened.data, progress)?;
    if f.ok.is_empty() {
        return Err(Error::input(spec.data, format!("no readable {}", B::NOUN)));
    }
    let labels: Vec<i64> = f.ok.iter().map(|&i| opened.labels[i] as i64).collect();
    let learner = block.learner(&model, &inputs, &labels, k, ft, progress)?;
    lr_find_learner(&learner, &(0..labels.len()).collect::<Vec<_>>(), ft, min_lr, max_lr, steps, progress)
}

/// Class probabilities `[n_ok, classes]` of the usable examples of `data`, which rows they
/// are, and the examples left out.
pub fn probabilities<B: Block>(block: &B, model: &B::Model, head: &Head, data: &B::Data, progress: &dyn Progress) -> Result<(Tensor, Vec<usize>, Vec<Skip>)> {
    let f = block.featurise(model, data, progress)?;
    let probs = head.forward(&f.features)?.softmax(-1, Kind::Float);
    Ok((probs, f.ok, f.skipped))
}

/// An evaluation example by example: the report, and what a report file shows of each
/// scored example.
pub struct Scored {
    /// The classes scored against.
    pub labels: Vec<String>,
    pub report: Report,
    /// Class index of each scored example, and its class probabilities `[n, classes]`.
    pub truth: Vec<usize>,
    pub probs: Tensor,
    /// Where each scored example came from, and its text for text data.
    pub examples: Vec<(String, Option<String>)>,
    pub skipped: Vec<Skip>,
}

/// Scores a head and encoder on labelled data at `path` (its classes: `labels`), example by
/// example.
pub fn score<B: Block>(block: &B, model: &B::Model, head: &Head, labels: &[String], path: &Path, progress: &dyn Progress) -> Result<Scored> {
    let opened = block.open(path, Some(labels))?;
    let (probs, ok, mut skipped) = probabilities(block, model, head, &opened.data, progress)?;
    skipped.extend(opened.skipped);
    let truth: Vec<usize> = ok.iter().map(|&i| opened.labels[i]).collect();
    let report = metrics::report(labels, &truth, &ranked(&probs)?, 5.min(labels.len()));
    let examples = ok.iter().map(|&i| block.describe(&opened.data, i)).collect();
    Ok(Scored { labels: labels.to_vec(), report, truth, probs, examples, skipped })
}

/// Scores a bundle's head and encoder on labelled data at `path` (its classes: `labels`).
pub fn evaluate<B: Block>(block: &B, model: &B::Model, head: &Head, labels: &[String], path: &Path, progress: &dyn Progress) -> Result<(Report, Vec<Skip>)> {
    let s = score(block, model, head, labels, path, progress)?;
    Ok((s.report, s.skipped))
}

/// The `top_k` most probable labels of each row, with their probabilities.
pub fn top_k(probs: &Tensor, labels: &[String], top_k: usize) -> Result<Vec<Vec<(String, f64)>>> {
    let k = top_k.clamp(1, labels.len());
    let (vals, idx) = probs.topk(k as i64, -1, true, true);
    let vals: Vec<f64> = Vec::try_from(vals.to_kind(Kind::Double).flatten(0, -1))?;
    let idx: Vec<i64> = Vec::try_from(idx.flatten(0, -1))?;
    Ok((0..probs.size()[0] as usize).map(|r| (0..k).map(|j| (labels[idx[r * k + j] as usize].clone(), vals[r * k + j])).collect()).collect())
}
