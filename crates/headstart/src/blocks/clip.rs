//! CLIP's image tower as an image encoder: image folders and manifests as the image block
//! reads them, featurised into CLIP's normalised image embeddings (prepared as CLIP was
//! trained, bicubic overshoot clipped, through the feature cache), a head on top (logistic by
//! default, the linear-probe recipe of the CLIP paper), and a bundle that records the CLIP
//! model. The text tower gives the zero-shot classifier: as a head of its own (`eval
//! --zero-shot`) or as the start of a trained one (`head_init` zero-shot).
//!
//! Image and text embeddings are the same quantities as [`crate::zero_shot`] uses: the image
//! tower's pooled features are L2-normalised projected embeddings, so a head initialised with
//! `logit_scale · class embeddings` scores exactly as the zero-shot classifier does.

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::blocks::image::{ImageBlock, ImageLearner};
use crate::bundle::{self, Bundle, ClipRef, EncoderRef};
use crate::data::Skip;
use crate::engine::Precision;
use crate::error::{Error, Result};
use crate::features::{extract_with, Extracted, FeatureCache};
use crate::learn::task::{self, Block, Featurised, Opened, TrainBlock};
use crate::metrics::Report;
use crate::models::clip::{self, Clip};
use crate::models::registry::{self, Modality};
use crate::models::{Encoder, Mode, Stage};
use crate::preprocess::DecodeOptions;
use crate::progress::Progress;
use crate::run::{TrainOutcome, TrainRequest};
use crate::train::finetune::FinetuneConfig;
use crate::train::{Head, HeadKind, HeadSpec, HeadStart, InitialHead};
use crate::zero_shot::ZeroShot;

/// The directory a CLIP model named on the command line lives in: a registry name (hub cache),
/// a directory or weight file, or a hub repo id in the hub cache.
pub fn resolve_model(model: &str) -> Result<PathBuf> {
    match registry::find_clip(model) {
        Some(e) => clip::resolve(&format!("{}@{}", e.repo, e.revision)).map_err(|err| {
            Error::Model(format!(
                "{err}; `{}` is read from the Hugging Face hub cache: download {} there (no package registry has CLIP weights)",
                e.name, e.repo
            ))
        }),
        None => clip::resolve(model),
    }
}

/// Whether `model` names a CLIP model: a CLIP registry name, or a directory (given, or a hub
/// snapshot) holding a Hugging Face `clip` config or an open_clip config. Nothing is loaded.
pub fn is_clip_model(model: &str) -> bool {
    if registry::find_clip(model).is_some() {
        return true;
    }
    let Ok(dir) = clip::resolve(model) else { return false };
    if dir.join("open_clip_config.json").is_file() {
        return true;
    }
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v.get("model_type").and_then(|m| m.as_str()) == Some("clip"))
}

/// The prompt name of a class folder: underscores read as spaces (`golden_retriever`).
pub fn prompt_name(class: &str) -> String {
    class.replace('_', " ")
}

/// A CLIP model as an image encoder.
pub struct ClipEncoder {
    pub clip: Clip,
    /// As named by the user.
    pub model: String,
    /// The sha256 of the weights (the feature cache's key; of every shard for a sharded model).
    pub weights_sha256: String,
    pub weights_source: String,
    /// Bounds of a normalised pixel: bicubic overshoot is clipped to them, as CLIP's own
    /// preprocessing (PIL) clips it.
    lo: Tensor,
    hi: Tensor,
}

impl ClipEncoder {
    /// Loads `model` (see [`resolve_model`]); `dir` overrides where it is read from.
    pub fn load(model: &str, dir: Option<&Path>) -> Result<ClipEncoder> {
        let dir = match dir {
            Some(d) => clip::resolve(&d.display().to_string())?,
            None => resolve_model(model)?,
        };
        let (clip, _) = Clip::load(&dir, tch::Device::Cpu)?;
        let (_, _, weights) = clip::config::read(&dir)?;
        let weights_sha256 = crate::weights::Weights::open(&weights)?.sha256()?;
        let (mean, std) = (Tensor::from_slice(&clip.input.mean).view([3, 1, 1]), Tensor::from_slice(&clip.input.std).view([3, 1, 1]));
        let lo = (-&mean / &std).to_kind(Kind::Float);
        let hi = ((-&mean + 1.0) / &std).to_kind(Kind::Float);
        Ok(ClipEncoder { clip, model: model.to_string(), weights_sha256, weights_source: weights.display().to_string(), lo, hi })
    }

    /// Normalised image embeddings `[B, E]` of images prepared by the generic preprocessing.
    /// Runs at the model's precision ([`ClipEncoder::set_precision`]).
    pub fn embed(&self, x: &Tensor) -> Tensor {
        let v = &self.clip.vision;
        let x = x.maximum(&self.lo).minimum(&self.hi);
        crate::engine::autocast_cpu(self.clip.precision, || tch::no_grad(|| v.pool(&v.forward_features(&x, Mode::Eval)))).to_kind(Kind::Float)
    }

    /// Sets the image tower's precision; `auto` stays fp32 for CLIP (see [`Clip::set_precision`]).
    pub fn set_precision(&mut self, p: Precision) {
        self.clip.set_precision(p);
    }

    /// The precision the image tower runs at.
    pub fn precision(&self) -> Precision {
        self.clip.precision
    }

    /// The zero-shot classifier of `classes` (folder names; see [`prompt_name`]) as a linear
    /// head's weight and bias: `logit_scale ·` the prompt-ensembled class embeddings, zero bias.
    pub fn zero_shot_head(&self, classes: &[String], templates: &[String]) -> Result<InitialHead> {
        let names: Vec<String> = classes.iter().map(|c| prompt_name(c)).collect();
        let (weight, bias) = ZeroShot::new(&self.clip, &names, templates)?.linear_head();
        Ok(InitialHead { weight: weight.to_kind(Kind::Float), bias })
    }

    /// The bundle's record of this encoder.
    pub fn record(&self) -> ClipRef {
        ClipRef {
            model: self.model.clone(),
            weights_sha256: self.weights_sha256.clone(),
            weights_source: self.weights_source.clone(),
            config: self.clip.cfg.clone(),
            input: self.clip.input.clone(),
        }
    }
}

impl Encoder for ClipEncoder {
    type Input = ();
    fn stages(&self) -> &[Stage] {
        self.clip.vision.stages()
    }
    fn forward_from(&self, x: &Tensor, _: &(), first: usize, mode: Mode) -> Tensor {
        let x = if first == 0 { x.maximum(&self.lo).minimum(&self.hi) } else { x.shallow_clone() };
        self.clip.vision.forward_range(first..self.stages().len(), &x, mode)
    }
    fn pool(&self, h: &Tensor, _: &()) -> Tensor {
        self.clip.vision.pool(h)
    }
    fn num_features(&self) -> i64 {
        self.clip.vision.num_features()
    }
}

/// Image files featurised by a CLIP image tower; with a request, how a run trains.
pub struct ClipBlock<'a> {
    pub req: Option<&'a TrainRequest>,
    pub decode: DecodeOptions,
    /// Feature cache root; `None` disables the cache.
    pub cache: Option<PathBuf>,
    pub batch_size: usize,
    /// The image tower's precision for models this block loads (`embed`, `extract`); a loaded
    /// encoder runs at its own ([`ClipEncoder::set_precision`]).
    pub precision: Precision,
}

impl<'a> ClipBlock<'a> {
    pub fn for_request(req: &'a TrainRequest) -> ClipBlock<'a> {
        ClipBlock {
            req: Some(req),
            decode: req.decode_options(),
            cache: req.cache.clone(),
            batch_size: req.extract_batch_size.max(1),
            precision: req.precision,
        }
    }

    /// A block for evaluation and prediction.
    pub fn reading(decode: DecodeOptions, cache: Option<&Path>) -> ClipBlock<'static> {
        ClipBlock { req: None, decode, cache: cache.map(Path::to_path_buf), batch_size: task::DEFAULT_EVAL_BATCH, precision: Precision::Fp32 }
    }

    fn req(&self) -> &'a TrainRequest {
        self.req.expect("a training block has a request")
    }

    fn images(&self) -> ImageBlock<'static> {
        ImageBlock { req: None, decode: self.decode, cache: None, batch_size: self.batch_size, precision: Precision::Fp32 }
    }
}

impl<'a> Block for ClipBlock<'a> {
    type Data = Vec<PathBuf>;
    type Model = ClipEncoder;
    type Inputs = Vec<Tensor>;
    type Learner<'l>
        = ImageLearner<'l>
    where
        Self: 'l;
    const NOUN: &'static str = "images";

    fn open(&self, path: &Path, classes: Option<&[String]>) -> Result<Opened<Vec<PathBuf>>> {
        self.images().open(path, classes)
    }

    fn append(&self, data: &mut Vec<PathBuf>, more: Vec<PathBuf>) {
        data.extend(more);
    }

    fn featurise(&self, m: &ClipEncoder, paths: &Vec<PathBuf>, progress: &dyn Progress) -> Result<Featurised> {
        let dim = m.num_features() as usize;
        let input = &m.clip.input;
        let cache = self.cache.as_deref().map(|root| FeatureCache::new(root, &m.weights_sha256, input, "clip-image-embeds", dim, m.precision())).transpose()?;
        let forward = |x: &Tensor| m.embed(x);
        let Extracted { features, ok, skipped, computed, reused, truncated_kept, timing } =
            extract_with(&forward, dim, input, paths, cache.as_ref(), self.batch_size, &self.decode, progress)?;
        let warnings = if truncated_kept > 0 { vec![format!("{truncated_kept} truncated images kept (their missing part decodes grey)")] } else { vec![] };
        Ok(Featurised { features, ok, skipped, computed, reused, warnings, timing: Some(timing) })
    }

    fn screen(&self, _: &ClipEncoder, _: &Vec<PathBuf>, _: &dyn Progress) -> Result<(Featurised, Vec<Tensor>)> {
        Err(no_finetuning())
    }

    fn inputs(&self, _: &ClipEncoder, _: &Vec<PathBuf>, _: &[usize], _: &dyn Progress) -> Result<Vec<Tensor>> {
        Err(no_finetuning())
    }

    fn learner<'l>(&'l self, _: &'l ClipEncoder, _: &'l Vec<Tensor>, _: &[i64], _: i64, _: &'l FinetuneConfig, _: &dyn Progress) -> Result<ImageLearner<'l>> {
        Err(no_finetuning())
    }

    fn describe(&self, data: &Vec<PathBuf>, i: usize) -> (String, Option<String>) {
        (super::describe_path(&data[i]), None)
    }
}

fn no_finetuning() -> Error {
    Error::Usage("fine-tuning a CLIP image tower is not supported; train a head on its features (feature extraction)".into())
}

impl TrainBlock for ClipBlock<'_> {
    type Request = TrainRequest;

    fn request(&self) -> &TrainRequest {
        self.req()
    }

    fn model_name(&self) -> String {
        self.req().model.clone()
    }

    fn load(&self, _: &[String], _: &Vec<PathBuf>, _: &mut Vec<String>) -> Result<ClipEncoder> {
        let req = self.req();
        if req.finetune.is_some() {
            return Err(no_finetuning());
        }
        if req.input_override.is_some() {
            return Err(Error::Usage("a CLIP model prepares images as it was trained; the input size, mean and std cannot be overridden".into()));
        }
        let mut m = ClipEncoder::load(&req.model, req.weights.as_deref())?;
        m.set_precision(self.precision);
        Ok(m)
    }

    /// The request as run: `auto` recorded as the precision it resolved to (fp32 for CLIP).
    fn recorded(&self) -> std::borrow::Cow<'_, TrainRequest> {
        let precision = self.req().precision.resolve(crate::precision::Family::Other);
        std::borrow::Cow::Owned(TrainRequest { precision, ..self.req().clone() })
    }

    fn initial_head(&self, model: &ClipEncoder, classes: &[String]) -> Result<Option<InitialHead>> {
        match &self.req().train.head_init {
            HeadStart::Default => Ok(None),
            HeadStart::ZeroShot { templates } => model.zero_shot_head(classes, templates).map(Some),
        }
    }

    fn bundle_meta(&self, m: &ClipEncoder, labels: Vec<String>, head: HeadSpec) -> Result<Bundle> {
        Ok(Bundle {
            format_version: bundle::FORMAT_VERSION,
            modality: Modality::Image,
            created_by: format!("headstart {}", env!("CARGO_PKG_VERSION")),
            labels,
            encoder: EncoderRef::Clip(m.record()),
            columns: None,
            head,
            tuned: None,
            precision: m.precision(),
        })
    }
}

/// Trains a head on a CLIP model's image embeddings per `req` (`req.model` names the CLIP
/// model; `req.weights`, if given, is the directory to read it from).
pub fn train_clip(req: &TrainRequest, progress: &dyn Progress) -> Result<TrainOutcome> {
    task::train(&ClipBlock::for_request(req), false, progress)
}

/// Whether the bundle in `dir` runs on a CLIP model.
pub fn is_clip_bundle(dir: &Path) -> Result<bool> {
    Ok(matches!(bundle::read_meta(dir)?.encoder, EncoderRef::Clip(_)))
}

/// A bundle trained on CLIP image embeddings, ready to run.
pub struct ClipPredictor {
    pub labels: Vec<String>,
    pub encoder: ClipEncoder,
    head: Head,
    pub decode: DecodeOptions,
    /// The precision the head was trained on (the image tower runs at it unless
    /// [`ClipPredictor::use_precision`] says otherwise).
    trained: Precision,
}

impl ClipPredictor {
    /// Loads a CLIP bundle; the CLIP model is read from where the bundle names it, or from
    /// `dir`, and must be the very weights it was trained on.
    pub fn load(bundle_dir: &Path, dir: Option<&Path>) -> Result<ClipPredictor> {
        let (meta, head) = bundle::read_bundle(bundle_dir)?;
        let EncoderRef::Clip(r) = &meta.encoder else {
            return Err(Error::bundle(&bundle_dir.join(bundle::META), "not a bundle on a CLIP model"));
        };
        let encoder = ClipEncoder::load(&r.model, dir).map_err(|e| Error::Model(format!("{e} (needed by the bundle {})", bundle_dir.display())))?;
        if encoder.weights_sha256 != r.weights_sha256 {
            return Err(Error::bundle(
                bundle_dir,
                format!(
                    "the CLIP weights ({}) are not the ones this bundle was trained on (from {}); give the model's directory (setting `weights`)",
                    encoder.weights_source, r.weights_source
                ),
            ));
        }
        if encoder.clip.cfg != r.config || encoder.clip.input != r.input {
            return Err(Error::bundle(bundle_dir, "the CLIP model's configuration or preprocessing differs from the bundle's"));
        }
        if encoder.num_features() != meta.head.in_features {
            return Err(Error::bundle(bundle_dir, format!("head expects {} features, the CLIP model gives {}", meta.head.in_features, encoder.num_features())));
        }
        let mut encoder = encoder;
        encoder.set_precision(meta.precision);
        Ok(ClipPredictor { labels: meta.labels, encoder, head, decode: DecodeOptions::default(), trained: meta.precision })
    }

    /// Runs the image tower at `requested` instead of the precision the head was trained on;
    /// returns a warning when the two differ.
    pub fn use_precision(&mut self, requested: Precision) -> Option<String> {
        let (p, warning) = crate::precision::inference_precision(self.trained, Some(requested), crate::precision::Family::Other);
        self.encoder.set_precision(p);
        warning
    }

    /// Probabilities of the usable files (rows), which files they are, and the files left out.
    pub fn probabilities(&self, paths: &[PathBuf], cache: Option<&Path>, progress: &dyn Progress) -> Result<(Tensor, Vec<usize>, Vec<Skip>)> {
        task::probabilities(&ClipBlock::reading(self.decode, cache), &self.encoder, &self.head, &paths.to_vec(), progress)
    }

    /// Probabilities for images already decoded and prepared for the CLIP model's input
    /// ([`crate::preprocess::decode_prepared`]), stacked as `[N, 3, S, S]`: the same image tower
    /// and head as [`ClipPredictor::probabilities`], without files or the feature cache.
    pub fn probabilities_prepared(&self, images: &Tensor) -> Result<Tensor> {
        Ok(self.head.forward(&self.encoder.embed(images))?.softmax(-1, Kind::Float))
    }

    /// Scores the bundle on labelled data, example by example.
    pub fn score(&self, data: &Path, cache: Option<&Path>, progress: &dyn Progress) -> Result<task::Scored> {
        task::score(&ClipBlock::reading(self.decode, cache), &self.encoder, &self.head, &self.labels, data, progress)
    }

    /// Scores the bundle on labelled data.
    pub fn evaluate(&self, data: &Path, cache: Option<&Path>, progress: &dyn Progress) -> Result<(Report, Vec<Skip>)> {
        task::evaluate(&ClipBlock::reading(self.decode, cache), &self.encoder, &self.head, &self.labels, data, progress)
    }
}

/// The zero-shot classifier of `classes` as a linear head on the image embeddings.
pub fn zero_shot_linear(encoder: &ClipEncoder, classes: &[String], templates: &[String]) -> Result<Head> {
    let init = encoder.zero_shot_head(classes, templates)?;
    let (k, d) = init.weight.size2()?;
    let spec = HeadSpec { kind: HeadKind::Linear, in_features: d, num_classes: k, hidden: None, dropout: 0.0, layers: None };
    Ok(Head { spec, tensors: vec![("weight".into(), init.weight), ("bias".into(), init.bias)] })
}

/// Zero-shot evaluation on labelled data: the class names are the data's classes (folder
/// names, underscores read as spaces), put into `templates`; the report is `eval`'s.
pub fn evaluate_zero_shot(
    encoder: &ClipEncoder,
    data: &Path,
    templates: &[String],
    decode: DecodeOptions,
    cache: Option<&Path>,
    progress: &dyn Progress,
) -> Result<(Report, Vec<Skip>)> {
    let s = score_zero_shot(encoder, data, templates, decode, cache, progress)?;
    Ok((s.report, s.skipped))
}

/// [`evaluate_zero_shot`] example by example.
pub fn score_zero_shot(
    encoder: &ClipEncoder,
    data: &Path,
    templates: &[String],
    decode: DecodeOptions,
    cache: Option<&Path>,
    progress: &dyn Progress,
) -> Result<task::Scored> {
    let block = ClipBlock::reading(decode, cache);
    let classes = block.open(data, None)?.classes;
    if classes.len() < 2 {
        return Err(Error::input(data, format!("need at least two classes, found {}", classes.len())));
    }
    let head = zero_shot_linear(encoder, &classes, templates)?;
    task::score(&block, encoder, &head, &classes, data, progress)
}
