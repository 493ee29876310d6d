//! Image transfer learning end to end: the image block ([`crate::blocks::image`]) run through
//! the shared task layer ([`crate::learn::task`]). Train a head on frozen-backbone features or
//! fine-tune, evaluate a bundle, predict with it. The binary only parses arguments and prints.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::Tensor;

use crate::blocks::image::{entry_of, open_weights, ImageBlock, ImageModel};
use crate::bundle::{self, BundleMeta};
use crate::data::Skip;
use crate::engine::Precision;
use crate::error::{Error, Result};
use crate::learn::task;
use crate::metrics::Report;
use crate::models::registry::{Entry, ImageInput};
use crate::models::{pretrained, HeadInit};
use crate::preprocess::DecodeOptions;
use crate::progress::Progress;
use crate::train::finetune::FinetuneConfig;
use crate::train::{Head, TrainConfig};

pub use crate::learn::task::TrainOutcome;

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
    /// Precision of the frozen-backbone pass. `auto` is resolved once; the run's
    /// `config.json` and bundle record the concrete one. Configs without it read as fp32.
    #[serde(default)]
    pub precision: Precision,
}

impl TrainRequest {
    /// A request on `data` with the library's defaults: the default model and its weights, a
    /// stratified validation split, no cache, no run directory, a head on frozen features.
    pub fn for_data(data: PathBuf) -> TrainRequest {
        TrainRequest {
            data,
            val: None,
            val_split: crate::learn::task::DEFAULT_VAL_SPLIT,
            model: crate::models::registry::DEFAULT_MODEL.into(),
            weights: None,
            out: PathBuf::new(),
            cache: None,
            extract_batch_size: crate::learn::task::DEFAULT_EVAL_BATCH,
            input_override: None,
            train: TrainConfig::default(),
            finetune: None,
            allow_truncated: false,
            precision: crate::precision::DEFAULT_EXTRACT_PRECISION,
        }
    }

    pub fn decode_options(&self) -> DecodeOptions {
        DecodeOptions { allow_truncated: self.allow_truncated, ..DecodeOptions::default() }
    }
}

/// Trains per `req`.
pub fn train_image(req: &TrainRequest, progress: &dyn Progress) -> Result<TrainOutcome> {
    train_image_resumable(req, false, progress)
}

/// Trains per `req`; with `resume`, continues a fine-tuning run from its last checkpoint.
pub fn train_image_resumable(req: &TrainRequest, resume: bool, progress: &dyn Progress) -> Result<TrainOutcome> {
    task::train(&ImageBlock::for_request(req), resume, progress)
}

/// An image bundle ready to run: backbone with verified weights, head, labels.
pub struct Predictor {
    pub meta: BundleMeta,
    pub entry: &'static Entry,
    model: ImageModel,
    head: Head,
    /// How the files to classify are decoded (truncated ones are skipped by default).
    pub decode: DecodeOptions,
    /// Precision of the backbone pass: the bundle's unless [`Predictor::use_precision`].
    precision: Precision,
}

impl Predictor {
    /// Loads an image bundle (format 1 or 2); `weights` overrides where the backbone's weights
    /// are read from (they must be the very bytes the bundle was trained on).
    pub fn load(bundle_dir: &Path, weights: Option<&Path>) -> Result<Predictor> {
        let (meta, head) = bundle::read(bundle_dir)?;
        let entry = entry_of(&meta.backbone.name)?;
        let w = open_weights(entry, weights).map_err(|e| Error::Model(format!("{e} (needed by the bundle {})", bundle_dir.display())))?;
        bundle::check_weights(&meta, bundle_dir, &w)?;
        let (model, report) = pretrained(entry, &w, 3, HeadInit::None)?;
        report.require_exact()?;
        bundle::check_arch(&meta, bundle_dir, &model.arch)?;
        let weights_sha256 = bundle::load_tuned(bundle_dir, meta.tuned.as_ref(), &model.vs, &meta.backbone.weights_sha256)?;
        if model.backbone.num_features() != meta.head.in_features {
            return Err(Error::bundle(
                bundle_dir,
                format!("head expects {} features, the backbone gives {}", meta.head.in_features, model.backbone.num_features()),
            ));
        }
        let input = meta.pretrained_cfg.input.clone();
        let model =
            ImageModel { entry, model, input, weights_sha256, file_sha256: meta.backbone.weights_sha256.clone(), source: w.source.display().to_string() };
        let precision = meta.precision;
        Ok(Predictor { meta, entry, model, head, decode: DecodeOptions::default(), precision })
    }

    /// Runs the backbone at `requested` (`auto` resolved for this machine) instead of the
    /// precision the head was trained on; returns a warning when the two differ.
    pub fn use_precision(&mut self, requested: Precision) -> Option<String> {
        let (p, warning) = crate::precision::inference_precision(self.meta.precision, Some(requested), self.model.model.arch.family());
        self.precision = p;
        warning
    }

    /// The precision the backbone runs at.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    fn block(&self, cache_root: Option<&Path>) -> ImageBlock<'static> {
        ImageBlock { req: None, decode: self.decode, cache: cache_root.map(Path::to_path_buf), batch_size: 32, precision: self.precision }
    }

    /// Probabilities for each file (rows) in the order given; unusable files are skipped.
    pub fn probabilities(&self, paths: &[PathBuf], cache_root: Option<&Path>, progress: &dyn Progress) -> Result<(Tensor, Vec<usize>, Vec<Skip>)> {
        task::probabilities(&self.block(cache_root), &self.model, &self.head, &paths.to_vec(), progress)
    }

    /// Probabilities for images already decoded and prepared for the bundle's input
    /// ([`crate::preprocess::decode_prepared`]), stacked as `[N, 3, S, S]`: the same backbone
    /// and head as [`Predictor::probabilities`], without files or the feature cache.
    pub fn probabilities_prepared(&self, images: &Tensor) -> Result<Tensor> {
        let f = crate::features::forward_pooled(&self.model.model, images, self.precision);
        Ok(self.head.forward(&f)?.softmax(-1, tch::Kind::Float))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub file: PathBuf,
    pub top: Vec<(String, f64)>,
}

/// The `top_k` classes of each usable file, and the files left out.
pub fn predict(p: &Predictor, files: &[PathBuf], top_k: usize, cache_root: Option<&Path>, progress: &dyn Progress) -> Result<(Vec<Prediction>, Vec<Skip>)> {
    let (probs, ok, skipped) = p.probabilities(files, cache_root, progress)?;
    let tops = task::top_k(&probs, &p.meta.labels, top_k)?;
    Ok((ok.iter().zip(tops).map(|(&i, top)| Prediction { file: files[i].clone(), top }).collect(), skipped))
}

/// Scores an image bundle on labelled data (a class folder or manifest), example by example.
pub fn score(p: &Predictor, data: &Path, cache_root: Option<&Path>, progress: &dyn Progress) -> Result<task::Scored> {
    task::score(&p.block(cache_root), &p.model, &p.head, &p.meta.labels, data, progress)
}

/// Scores an image bundle on labelled data (a class folder or manifest).
pub fn evaluate(p: &Predictor, data: &Path, cache_root: Option<&Path>, progress: &dyn Progress) -> Result<(Report, Vec<Skip>)> {
    task::evaluate(&p.block(cache_root), &p.model, &p.head, &p.meta.labels, data, progress)
}

/// Runs the learning-rate range test for fine-tuning `req.model` on `req.data` with the
/// settings of `req.finetune` (default: the image defaults; a fresh head; weights are
/// restored afterwards).
pub fn lr_find_image(req: &TrainRequest, min_lr: f64, max_lr: f64, steps: usize, progress: &dyn Progress) -> Result<crate::train::finetune::LrFind> {
    let ft = req.finetune.clone().unwrap_or_default();
    let req = TrainRequest { finetune: Some(ft.clone()), ..req.clone() };
    task::lr_find(&ImageBlock::for_request(&req), &ft, min_lr, max_lr, steps, progress)
}

/// One class of a pre-trained classifier's prediction.
#[derive(Debug, Clone, Serialize)]
pub struct ClassProb {
    pub class: i64,
    /// The ImageNet-1k name, when the label file is in the asset store (else empty).
    pub label: String,
    pub prob: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Classified {
    pub file: String,
    pub top: Vec<ClassProb>,
}

/// What a pre-trained ImageNet classifier says about images.
#[derive(Debug, Clone, Serialize)]
pub struct Classification {
    pub model: String,
    pub results: Vec<Classified>,
}

/// Classifies `files` (none: the test photos of the asset store) with the pre-trained
/// classifier of registry model `model`: the `top_k` ImageNet classes of each.
pub fn classify(model: &str, weights: Option<&Path>, files: &[PathBuf], top_k: i64) -> Result<Classification> {
    let e = entry_of(model)?;
    let w = open_weights(e, weights)?;
    let (m, report) = pretrained(e, &w, 3, HeadInit::Pretrained)?;
    report.require_complete()?;
    let files = if files.is_empty() {
        let dir = crate::assets::asset_dir();
        let photos = vec![dir.join("chelsea.png"), dir.join("coffee.png")];
        if !photos.iter().all(|p| p.is_file()) {
            return Err(Error::Model(format!(
                "no files given and the test photos are not in {}; fetch them with `headstart fetch test_photos`",
                dir.display()
            )));
        }
        photos
    } else {
        files.to_vec()
    };
    let labels = imagenet_labels();
    let mut results = vec![];
    for f in &files {
        let img = crate::preprocess::load_rgb(f)?;
        let x = crate::preprocess::prepare(&img, &e.input)?.unsqueeze(0);
        let probs = tch::no_grad(|| m.forward(&x, crate::models::Mode::Eval))?.softmax(-1, tch::Kind::Float).squeeze_dim(0);
        let (p, idx) = probs.topk(top_k.clamp(1, e.num_classes), -1, true, true);
        let p: Vec<f64> = Vec::try_from(&p.to_kind(tch::Kind::Double))?;
        let idx: Vec<i64> = Vec::try_from(&idx)?;
        let top = idx.iter().zip(&p).map(|(&class, &prob)| ClassProb { class, label: labels.get(class as usize).cloned().unwrap_or_default(), prob }).collect();
        results.push(Classified { file: f.display().to_string(), top });
    }
    Ok(Classification { model: e.name.to_string(), results })
}

/// ImageNet-1k class names from the asset cache, when fetched.
fn imagenet_labels() -> Vec<String> {
    let p = crate::assets::asset_dir().join("imagenet1k_label_to_names.json");
    let Ok(text) = std::fs::read_to_string(p) else { return vec![] };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return vec![] };
    match v {
        serde_json::Value::Array(a) => a.iter().map(|x| x.as_str().unwrap_or("").to_string()).collect(),
        serde_json::Value::Object(o) => {
            let mut out = vec![String::new(); o.len()];
            for (k, v) in o {
                if let (Ok(i), Some(s)) = (k.parse::<usize>(), v.as_str()) {
                    if i < out.len() {
                        out[i] = s.to_string();
                    }
                }
            }
            out
        }
        _ => vec![],
    }
}
