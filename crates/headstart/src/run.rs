//! Image transfer learning end to end: train a head on frozen-backbone features, evaluate a
//! bundle, predict with it. The binary only parses arguments and prints.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::{Kind, Tensor};

use crate::bundle::{self, BundleMeta};
use crate::data::{stratified_split, Dataset, Skip};
use crate::error::{Error, Result};
use crate::features::{extract, FeatureCache};
use crate::metrics::{self, Report};
use crate::models::registry::{self, Entry, ImageInput};
use crate::models::{pretrained, unknown_model, HeadInit, Model};
use crate::preprocess::DecodeOptions;
use crate::progress::Progress;
use crate::train::finetune::{finetune, latest_checkpoint, Examples, FinetuneConfig};
use crate::train::{fit, Cv, EpochRecord, Fitted, Head, HeadKind, Selection, Split, TrainConfig};
use crate::weights::Weights;

/// Everything `train` needs; serialised as the run's resolved config (and read back by
/// `--resume`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TrainRequest {
    pub data: PathBuf,
    pub val: Option<PathBuf>,
    pub val_split: f64,
    pub model: String,
    pub weights: Option<PathBuf>,
    pub out: PathBuf,
    /// Feature cache root; `None` disables the cache.
    pub cache: Option<PathBuf>,
    pub extract_batch_size: usize,
    /// Preprocessing that replaces the model's own (warned about).
    pub input_override: Option<ImageInput>,
    pub train: TrainConfig,
    /// Fine-tune backbone stages (after a head-only phase on cached features) instead of
    /// training a head on frozen features.
    #[serde(default)]
    pub finetune: Option<FinetuneConfig>,
    /// Keep truncated images (counted in a warning) instead of skipping them.
    #[serde(default)]
    pub allow_truncated: bool,
}

impl TrainRequest {
    fn decode_options(&self) -> DecodeOptions {
        DecodeOptions { allow_truncated: self.allow_truncated, ..DecodeOptions::default() }
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
}

fn entry_of(name: &str) -> Result<&'static Entry> {
    registry::find(name).ok_or_else(|| unknown_model(name))
}

fn open_weights(entry: &Entry, path: Option<&Path>) -> Result<Weights> {
    match path {
        Some(p) => Weights::open(p),
        None => Weights::open(crate::assets::resolve_weights(entry)?),
    }
}

/// The frozen backbone with its pre-trained weights; a load must be complete.
fn backbone(entry: &Entry, weights: &Weights) -> Result<Model> {
    let (model, report) = pretrained(entry, weights, 3, HeadInit::None)?;
    report.require_exact()?;
    Ok(model)
}

/// Creates the run directory and writes its `config.json`: the resolved request.
pub(crate) fn write_config<T: Serialize>(out: &Path, req: &T) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let config = serde_json::to_string_pretty(req).map_err(|e| Error::Model(e.to_string()))?;
    crate::fsx::atomic_write(&out.join("config.json"), config.as_bytes())
}

/// Writes the run's `errors.jsonl`: every input left out, and why.
pub(crate) fn write_errors(out: &Path, skipped: &[Skip]) -> Result<()> {
    let mut errors = String::new();
    for s in skipped {
        errors += &serde_json::to_string(s).map_err(|e| Error::Model(e.to_string()))?;
        errors.push('\n');
    }
    crate::fsx::atomic_write(&out.join("errors.jsonl"), errors.as_bytes())
}

/// The run's `metrics.jsonl`, one line per epoch (appended to when a run resumes). A failed
/// write is kept and reported by [`MetricsLog::finish`], so training is not interrupted.
pub(crate) struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
    error: Option<Error>,
}

impl MetricsLog {
    pub(crate) fn open(out: &Path, append: bool) -> Result<MetricsLog> {
        let path = out.join("metrics.jsonl");
        let file = if append { std::fs::OpenOptions::new().append(true).create(true).open(&path) } else { std::fs::File::create(&path) }
            .map_err(|e| Error::io(&path, e))?;
        Ok(MetricsLog { file, path, error: None })
    }

    pub(crate) fn record(&mut self, r: &EpochRecord) {
        let line = serde_json::to_string(r).unwrap_or_default();
        if let Err(e) = writeln!(self.file, "{line}").and_then(|_| self.file.flush()) {
            self.error.get_or_insert(Error::io(&self.path, e));
        }
    }

    pub(crate) fn finish(self) -> Result<()> {
        self.error.map_or(Ok(()), Err)
    }
}

/// A head fitted on features: the head, its chosen epoch or candidate, L2, training accuracy,
/// held-out report of the choice (before any refit) and how it was chosen.
pub(crate) struct HeadFit {
    pub head: Head,
    pub best_epoch: usize,
    pub l2: Option<f64>,
    pub train_accuracy: f64,
    pub val: Option<Report>,
    pub selection: Selection,
}

/// Fits a head on features per `cfg` (selection, then refit) and scores it.
pub(crate) fn fit_head(cfg: &TrainConfig, classes: &[String], train: Split, val: Split, on_epoch: &mut dyn FnMut(&EpochRecord)) -> Result<HeadFit> {
    let f: Fitted = fit(cfg, train, val, classes.len() as i64, on_epoch)?;
    let val = match &f.judged {
        Some((logits, y)) if logits.size()[0] > 0 => {
            let truth: Vec<usize> = Vec::<i64>::try_from(y)?.into_iter().map(|l| l as usize).collect();
            Some(metrics::report(classes, &truth, &ranked(logits)?, 5.min(classes.len())))
        }
        _ => None,
    };
    Ok(HeadFit { head: f.head, best_epoch: f.best_epoch, l2: f.l2, train_accuracy: f.train_accuracy, val, selection: f.selection })
}

/// A head-only phase before fine-tuning: chosen on the validation split and never refitted, so
/// the validation rows stay unseen by the fine-tuning that follows.
pub(crate) fn head_phase_config(base: &TrainConfig) -> TrainConfig {
    TrainConfig { refit: false, cv: Cv::Off, ..base.clone() }
}

/// Training accuracy of the final model, and its report on the validation rows.
pub(crate) fn final_scores(classes: &[String], train_logits: &Tensor, ytr: &Tensor, val_logits: &Tensor, val_truth: &[usize]) -> Result<(f64, Option<Report>)> {
    let train_accuracy = train_logits.argmax(-1, false).eq_tensor(ytr).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
    let val = if val_truth.is_empty() { None } else { Some(metrics::report(classes, val_truth, &ranked(val_logits)?, 5.min(classes.len()))) };
    Ok((train_accuracy, val))
}

/// Class indices of each row, most probable first.
pub(crate) fn ranked(logits: &Tensor) -> Result<Vec<Vec<usize>>> {
    let k = logits.size()[1];
    let (_, idx) = logits.topk(k, -1, true, true);
    let flat: Vec<i64> = Vec::try_from(idx.flatten(0, -1))?;
    Ok(flat.chunks(k as usize).map(|r| r.iter().map(|&i| i as usize).collect()).collect())
}

/// Trains per `req`; with `resume`, continues a fine-tuning run from its last checkpoint.
pub fn train_image(req: &TrainRequest, progress: &dyn Progress) -> Result<TrainOutcome> {
    train_image_resumable(req, false, progress)
}

pub fn train_image_resumable(req: &TrainRequest, resume: bool, progress: &dyn Progress) -> Result<TrainOutcome> {
    if !(0.0..1.0).contains(&req.val_split) {
        return Err(Error::Model(format!("--val-split must be in [0, 1), not {}", req.val_split)));
    }
    req.train.validate()?;
    let entry = entry_of(&req.model)?;
    let weights = open_weights(entry, req.weights.as_deref())?;
    let sha = weights.sha256()?;
    let train_ds = Dataset::open(&req.data, None)?;
    let val_ds = match &req.val {
        Some(v) => Some(Dataset::open(v, Some(&train_ds.classes))?),
        None => None,
    };
    let classes = train_ds.classes.clone();
    let k = classes.len() as i64;
    if k < 2 {
        return Err(Error::input(&req.data, format!("need at least two classes, found {}", k)));
    }
    // One model serves the frozen-feature pass and, with a new head, fine-tuning.
    let model = match &req.finetune {
        None => backbone(entry, &weights)?,
        Some(ft) => {
            // The new head's initial weights come from the seed (they matter without a head phase).
            tch::manual_seed(ft.seed as i64);
            let (model, report) = pretrained(entry, &weights, 3, HeadInit::New(k))?;
            report.require_exact()?;
            model
        }
    };
    write_config(&req.out, req)?;

    let mut items = train_ds.items.clone();
    let n_train_items = items.len();
    if let Some(v) = &val_ds {
        items.extend(v.items.iter().cloned());
    }
    let paths: Vec<PathBuf> = items.iter().map(|i| i.path.clone()).collect();
    let dim = model.backbone.num_features() as usize;
    let input = req.input_override.clone().unwrap_or_else(|| entry.input.clone());
    let cache = match &req.cache {
        Some(root) => Some(FeatureCache::new(root, &sha, &input, "pooled", dim)?),
        None => None,
    };
    // Fine-tuning without a head-only phase (or resuming past it) needs no frozen features:
    // decoding the images (to find the usable ones) is all; the decoded images then feed the
    // fine-tuning.
    let resuming = resume && latest_checkpoint(&req.out).is_some();
    let head_phase = req.finetune.as_ref().is_none_or(|f| f.head_epochs > 0 && !resuming);
    let (ex, mut decoded) = if head_phase {
        (extract(&model, &input, &paths, cache.as_ref(), req.extract_batch_size.max(1), &req.decode_options(), progress)?, None)
    } else {
        let (ex, images) = decode_only(&paths, &req.decode_options(), progress);
        (ex, Some(images))
    };

    let mut skipped: Vec<Skip> = train_ds.skipped.clone();
    if let Some(v) = &val_ds {
        skipped.extend(v.skipped.iter().cloned());
    }
    skipped.extend(ex.skipped.iter().cloned());
    write_errors(&req.out, &skipped)?;

    // Rows of ex.features ↔ items; split into train / validation.
    let labels: Vec<usize> = ex.ok.iter().map(|&i| items[i].label).collect();
    let (tr_rows, va_rows): (Vec<usize>, Vec<usize>) = if val_ds.is_some() {
        (0..ex.ok.len()).partition(|&r| ex.ok[r] < n_train_items)
    } else {
        stratified_split(&labels, classes.len(), req.val_split, req.train.seed)
    };
    let mut warnings = train_ds.warnings.clone();
    if ex.truncated_kept > 0 {
        warnings.push(format!("{} truncated images kept (their missing part decodes grey)", ex.truncated_kept));
    }
    if input != entry.input {
        warnings.push(format!(
            "preprocessing overridden: {} (the weights were trained with {})",
            serde_json::to_string(&input).unwrap_or_default(),
            serde_json::to_string(&entry.input).unwrap_or_default()
        ));
    }
    let mut present = vec![0usize; classes.len()];
    for &r in &tr_rows {
        present[labels[r]] += 1;
    }
    for (c, &n) in present.iter().enumerate() {
        if n == 0 {
            return Err(Error::input(&req.data, format!("class `{}` has no usable training images", classes[c])));
        }
    }
    if va_rows.is_empty() && !matches!(req.train.cv, Cv::Folds(_)) {
        warnings.push("no validation images: the head is chosen on training loss".into());
    }
    let take = |rows: &[usize]| -> (Tensor, Tensor) {
        let idx = Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>());
        let y: Vec<i64> = rows.iter().map(|&r| labels[r] as i64).collect();
        (ex.features.index_select(0, &idx), Tensor::from_slice(&y))
    };
    let (xtr, ytr) = take(&tr_rows);
    let (xva, yva) = take(&va_rows);

    let mut log = MetricsLog::open(&req.out, resuming)?;
    let mut on_epoch = |r: &EpochRecord| {
        progress.message(&epoch_line(r));
        log.record(r);
    };
    let mut tuned_stages = vec![];
    let (mut skipped_steps, mut resumed_from) = (0, None);
    let mut tuned_tensors = None;
    let (head, best_epoch, l2, (train_accuracy, val, selection)) = match &req.finetune {
        None => {
            let f = fit_head(&req.train, &classes, Split { x: &xtr, y: &ytr }, Split { x: &xva, y: &yva }, &mut on_epoch)?;
            (f.head, f.best_epoch, f.l2, (f.train_accuracy, f.val, Some(f.selection)))
        }
        Some(ft) => {
            let lin = &model.head.as_ref().expect("head").linear;
            if ft.head_epochs > 0 && !resuming {
                // Phase one: the new head alone, on the cached features.
                let hc = TrainConfig { head: HeadKind::Linear, epochs: ft.head_epochs, lr: ft.lr, batch_size: ft.batch_size, seed: ft.seed, ..head_phase_config(&req.train) };
                let fitted = fit(&hc, Split { x: &xtr, y: &ytr }, Split { x: &xva, y: &yva }, k, &mut |r| progress.message(&format!("head {}", epoch_line(r))))?;
                fitted.head.copy_into(&lin)?;
            }
            let images = match decoded.take() {
                Some(images) => images,
                None => {
                    let mut images = Vec::with_capacity(ex.ok.len());
                    for &i in &ex.ok {
                        let bytes = std::fs::read(&paths[i]).map_err(|e| Error::io(&paths[i], e))?;
                        images.push(crate::preprocess::decode_rgb_u8_with(&bytes, &req.decode_options()).map_err(|m| Error::input(&paths[i], m))?.0);
                    }
                    images
                }
            };
            let examples = Examples { images, labels: labels.iter().map(|&l| l as i64).collect(), train: tr_rows.clone(), val: va_rows.clone() };
            let o = finetune(&model, &input, &examples, ft, &req.out, resume, progress, &mut on_epoch)?;
            skipped_steps = o.skipped_steps;
            resumed_from = o.resumed_from;
            // Scores of the fine-tuned network.
            let val_truth: Vec<usize> = va_rows.iter().map(|&r| labels[r]).collect();
            let (train_accuracy, val) = final_scores(&classes, &o.train_logits, &ytr, &o.val_logits, &val_truth)?;
            let first = o.freeze.first_trainable;
            tuned_stages = model.backbone.stages()[first..].iter().map(|s| s.name.clone()).collect();
            let vars = model.vs.variables();
            tuned_tensors = Some(o.freeze.tuned_vars.iter().map(|n| (n.clone(), vars[n].detach().copy())).collect::<Vec<_>>());
            (Head::from_linear(lin)?, o.best_epoch, None, (train_accuracy, val, None))
        }
    };
    log.finish()?;
    let mut meta = BundleMeta::new(entry, &model.arch, &input, &sha, &weights.source.display().to_string(), classes.clone(), head.spec.clone());
    let bundle_dir = bundle::default_bundle_dir(&req.out);
    let tuned = tuned_tensors.as_deref().map(|t| (&tuned_stages[..], t));
    bundle::write(&bundle_dir, &head, tuned, |record| {
        meta.tuned = record;
        bundle::to_toml(&meta)
    })?;
    Ok(TrainOutcome {
        run_dir: req.out.clone(),
        bundle: bundle_dir,
        model: entry.name.to_string(),
        classes,
        n_train: tr_rows.len(),
        n_val: va_rows.len(),
        skipped: skipped.len(),
        warnings,
        head: head.spec.kind,
        best_epoch,
        l2,
        train_accuracy,
        val,
        selection,
        backbone_computed: ex.computed,
        backbone_reused: ex.reused,
        tuned_stages,
        skipped_steps,
        resumed_from,
    })
}

/// Decodes every file (no backbone): which are usable, why the others are not, and the
/// decoded `u8` images of the usable ones. The features are empty (`[n_ok, 0]`).
fn decode_only(paths: &[PathBuf], opts: &DecodeOptions, progress: &dyn Progress) -> (crate::features::Extracted, Vec<Tensor>) {
    progress.start("decode", paths.len() as u64);
    let (mut ok, mut skipped, mut images, mut truncated_kept) = (vec![], vec![], vec![], 0);
    for (i, p) in paths.iter().enumerate() {
        match std::fs::read(p).map_err(|e| format!("cannot read: {e}")).and_then(|b| crate::preprocess::decode_rgb_u8_with(&b, opts)) {
            Ok((img, truncated)) => {
                ok.push(i);
                images.push(img);
                truncated_kept += truncated as usize;
            }
            Err(reason) => skipped.push(Skip { path: p.clone(), reason }),
        }
        progress.inc(1);
    }
    progress.finish();
    let features = Tensor::zeros([ok.len() as i64, 0], tch::kind::FLOAT_CPU);
    (crate::features::Extracted { features, ok, skipped, computed: 0, reused: 0, truncated_kept }, images)
}


/// One line of progress for an epoch, an L2 candidate or the refit.
pub(crate) fn epoch_line(r: &EpochRecord) -> String {
    if r.phase.as_deref() == Some("refit") {
        let mut s = format!("refit      on all {} examples: train loss {:.4} acc {:.4}", r.n.unwrap_or(0), r.train_loss, r.train_acc);
        match r.l2 {
            Some(l2) => s += &format!("  l2 {l2:.0e} ({} iterations)", r.iterations.unwrap_or(0)),
            None => s += &format!("  {} epochs", r.epoch),
        }
        if let Some(e) = r.selection_estimate {
            let what = r.folds.map_or("val acc".to_string(), |k| format!("{k}-fold CV acc"));
            s += &format!("  (selection estimate, {what} before refit: {e:.4})");
        }
        return s;
    }
    let mut s = format!("epoch {:>3}  train loss {:.4} acc {:.4}", r.epoch, r.train_loss, r.train_acc);
    if let (Some(l), Some(a)) = (r.val_loss, r.val_acc) {
        let what = r.folds.map_or("val".to_string(), |k| format!("{k}-fold CV"));
        s += &format!("  {what} loss {l:.4} acc {a:.4}");
    }
    if let Some(l2) = r.l2 {
        s += &format!("  l2 {l2:.0e} ({} iterations)", r.iterations.unwrap_or(0));
    }
    s
}

/// A bundle ready to run: backbone with verified weights, head, labels.
pub struct Predictor {
    pub meta: BundleMeta,
    pub entry: &'static Entry,
    model: Model,
    head: Head,
    weights_sha: String,
    /// How the files to classify are decoded (truncated ones are skipped by default).
    pub decode: DecodeOptions,
}

impl Predictor {
    pub fn load(bundle_dir: &Path, weights: Option<&Path>) -> Result<Predictor> {
        let (meta, head) = bundle::read(bundle_dir)?;
        let entry = entry_of(&meta.backbone.name)?;
        let w = open_weights(entry, weights).map_err(|e| Error::Model(format!("{e} (needed by the bundle {})", bundle_dir.display())))?;
        bundle::check_weights(&meta, bundle_dir, &w)?;
        let model = backbone(entry, &w)?;
        bundle::check_arch(&meta, bundle_dir, &model.arch)?;
        let mut weights_sha = meta.backbone.weights_sha256.clone();
        if let Some(t) = &meta.tuned {
            let p = bundle_dir.join(bundle::TUNED);
            let sha = crate::weights::file_sha256(&p)?;
            if sha != t.sha256 {
                return Err(Error::input(&p, "does not match the sha256 recorded in bundle.toml"));
            }
            let tw = Weights::open(&p)?;
            let tensors: Vec<(String, Tensor)> = tw.names().iter().map(|n| Ok((n.clone(), tw.tensor(n)?))).collect::<Result<_>>()?;
            crate::models::assign(&model.vs, &tensors).map_err(|e| Error::input(&p, e.to_string()))?;
            weights_sha = crate::features::sha256_hex(format!("{weights_sha}+{sha}").as_bytes());
        }
        if model.backbone.num_features() != meta.head.in_features {
            return Err(Error::input(bundle_dir, format!("head expects {} features, the backbone gives {}", meta.head.in_features, model.backbone.num_features())));
        }
        Ok(Predictor { weights_sha, meta, entry, model, head, decode: DecodeOptions::default() })
    }

    /// Probabilities for each file (rows) in the order given; unusable files are skipped.
    pub fn probabilities(&self, paths: &[PathBuf], cache_root: Option<&Path>, progress: &dyn Progress) -> Result<(Tensor, Vec<usize>, Vec<Skip>)> {
        let dim = self.model.backbone.num_features() as usize;
        let cache = match cache_root {
            Some(root) => Some(FeatureCache::new(root, &self.weights_sha, &self.meta.pretrained_cfg.input, "pooled", dim)?),
            None => None,
        };
        let ex = extract(&self.model, &self.meta.pretrained_cfg.input, paths, cache.as_ref(), 32, &self.decode, progress)?;
        let probs = self.head.forward(&ex.features)?.softmax(-1, Kind::Float);
        Ok((probs, ex.ok, ex.skipped))
    }

    /// Probabilities for images already decoded and prepared for the bundle's input
    /// ([`crate::preprocess::decode_prepared`]), stacked as `[N, 3, S, S]`: the same backbone
    /// and head as [`Predictor::probabilities`], without files or the feature cache.
    pub fn probabilities_prepared(&self, images: &Tensor) -> Result<Tensor> {
        let f = tch::no_grad(|| self.model.backbone.pool(&self.model.backbone.forward_features(images, crate::models::Mode::Eval))).to_kind(Kind::Float);
        Ok(self.head.forward(&f)?.softmax(-1, Kind::Float))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub file: PathBuf,
    pub top: Vec<(String, f64)>,
}

pub fn predict(p: &Predictor, files: &[PathBuf], top_k: usize, cache_root: Option<&Path>, progress: &dyn Progress) -> Result<(Vec<Prediction>, Vec<Skip>)> {
    let (probs, ok, skipped) = p.probabilities(files, cache_root, progress)?;
    let k = top_k.clamp(1, p.meta.labels.len()) as i64;
    let (vals, idx) = probs.topk(k, -1, true, true);
    let vals: Vec<f64> = Vec::try_from(vals.to_kind(Kind::Double).flatten(0, -1))?;
    let idx: Vec<i64> = Vec::try_from(idx.flatten(0, -1))?;
    let mut out = vec![];
    for (row, &i) in ok.iter().enumerate() {
        let top = (0..k as usize).map(|j| (p.meta.labels[idx[row * k as usize + j] as usize].clone(), vals[row * k as usize + j])).collect();
        out.push(Prediction { file: files[i].clone(), top });
    }
    Ok((out, skipped))
}

pub fn evaluate(p: &Predictor, data: &Path, cache_root: Option<&Path>, progress: &dyn Progress) -> Result<(Report, Vec<Skip>)> {
    let ds = Dataset::open(data, Some(&p.meta.labels))?;
    let paths: Vec<PathBuf> = ds.items.iter().map(|i| i.path.clone()).collect();
    let (probs, ok, mut skipped) = p.probabilities(&paths, cache_root, progress)?;
    skipped.extend(ds.skipped);
    let truth: Vec<usize> = ok.iter().map(|&i| ds.items[i].label).collect();
    let report = metrics::report(&p.meta.labels, &truth, &ranked(&probs)?, 5.min(p.meta.labels.len()));
    Ok((report, skipped))
}

/// Runs the learning-rate range test for fine-tuning `req.model` on `req.data` with the
/// settings of `req.finetune` (a fresh head; weights are restored afterwards).
pub fn lr_find_image(req: &TrainRequest, min_lr: f64, max_lr: f64, steps: usize, progress: &dyn Progress) -> Result<crate::train::finetune::LrFind> {
    let ft = req.finetune.clone().unwrap_or_default();
    let entry = entry_of(&req.model)?;
    let weights = open_weights(entry, req.weights.as_deref())?;
    let ds = Dataset::open(&req.data, None)?;
    let k = ds.classes.len() as i64;
    let (model, report) = pretrained(entry, &weights, 3, HeadInit::New(k))?;
    report.require_complete()?;
    let input = req.input_override.clone().unwrap_or_else(|| entry.input.clone());
    let paths: Vec<PathBuf> = ds.items.iter().map(|i| i.path.clone()).collect();
    let (decoded, images) = decode_only(&paths, &req.decode_options(), progress);
    let labels: Vec<i64> = decoded.ok.iter().map(|&i| ds.items[i].label as i64).collect();
    if images.is_empty() {
        return Err(Error::input(&req.data, "no readable images"));
    }
    let n = images.len();
    let ex = Examples { images, labels, train: (0..n).collect(), val: vec![] };
    crate::train::finetune::lr_find(&model, &input, &ex, &ft, min_lr, max_lr, steps, progress)
}
