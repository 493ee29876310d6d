//! The image block: folders or manifests of image files, decoded and preprocessed per the
//! model's pretrained config, featurised by a vision backbone through the feature cache, and
//! fine-tuned by [`ImageLearner`] (frozen stages, cached activations, augmentation).

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::bundle::{Bundle, BundleMeta};
use crate::data::{Dataset, Rng, Skip};
use crate::engine::Precision;
use crate::error::{Error, Result};
use crate::features::{extract, Extracted, FeatureCache};
use crate::learn::task::{Block, Featurised, Opened, TrainBlock};
use crate::models::registry::{self, Entry, ImageInput};
use crate::models::{pretrained, unknown_model, Encoder, HeadInit, Mode, Model, Stage};
use crate::preprocess::{augment, decode_rgb_u8_with, prepare, DecodeOptions};
use crate::progress::Progress;
use crate::run::TrainRequest;
use crate::train::finetune::{first_trainable, lr_find_learner, train_learner, BnPolicy, FinetuneConfig, Learner, LrFind, Outcome};
use crate::train::{EpochRecord, HeadSpec};
use crate::weights::Weights;

/// A registry entry by name, or an error naming the nearest one.
pub fn entry_of(name: &str) -> Result<&'static Entry> {
    registry::find(name).ok_or_else(|| unknown_model(name))
}

/// The entry's weights: `path`, else its registry source.
pub fn open_weights(entry: &Entry, path: Option<&Path>) -> Result<Weights> {
    match path {
        Some(p) => Weights::open(p),
        None => Weights::open(crate::assets::resolve_weights(entry)?),
    }
}

/// A vision backbone (and, for fine-tuning, a fresh head) with its preprocessing.
pub struct ImageModel {
    pub entry: &'static Entry,
    pub model: Model,
    pub input: ImageInput,
    /// The key of the feature cache: the weights' sha256 (with any tuned stages').
    pub weights_sha256: String,
    /// The sha256 of the pre-trained weight file and where it was read from.
    pub file_sha256: String,
    pub source: String,
}

impl Encoder for ImageModel {
    type Input = ();
    fn stages(&self) -> &[Stage] {
        self.model.backbone.stages()
    }
    fn forward_from(&self, x: &Tensor, _: &(), first: usize, mode: Mode) -> Tensor {
        self.model.backbone.forward_range(first..self.stages().len(), x, mode)
    }
    fn pool(&self, h: &Tensor, _: &()) -> Tensor {
        self.model.backbone.pool(h)
    }
    fn num_features(&self) -> i64 {
        self.model.backbone.num_features()
    }
}

/// How image files are read and featurised; with a request, how a run trains.
pub struct ImageBlock<'a> {
    pub req: Option<&'a TrainRequest>,
    pub decode: DecodeOptions,
    /// Feature cache root; `None` disables the cache.
    pub cache: Option<PathBuf>,
    pub batch_size: usize,
    /// Precision of the frozen-backbone pass (concrete: `auto` resolved).
    pub precision: Precision,
}

impl<'a> ImageBlock<'a> {
    /// The block of a training request, its precision resolved for the model on this machine.
    pub fn for_request(req: &'a TrainRequest) -> ImageBlock<'a> {
        let family = entry_of(&req.model).map_or(crate::precision::Family::Conv, |e| e.arch.family());
        ImageBlock {
            req: Some(req),
            decode: req.decode_options(),
            cache: req.cache.clone(),
            batch_size: req.extract_batch_size.max(1),
            precision: req.precision.resolve(family),
        }
    }

    fn req(&self) -> &'a TrainRequest {
        self.req.expect("a training block has a request")
    }
}

/// Decodes every file (no backbone): which are usable, why the others are not, and the
/// decoded `u8` images of the usable ones. The features are empty (`[n_ok, 0]`).
fn decode_only(paths: &[PathBuf], opts: &DecodeOptions, progress: &dyn Progress) -> (Featurised, Vec<Tensor>) {
    progress.start("decode", paths.len() as u64);
    let (mut ok, mut skipped, mut images, mut truncated_kept) = (vec![], vec![], vec![], 0);
    for (i, p) in paths.iter().enumerate() {
        match std::fs::read(p).map_err(|e| format!("cannot read: {e}")).and_then(|b| decode_rgb_u8_with(&b, opts)) {
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
    let mut f = Featurised::all(0);
    f.features = Tensor::zeros([ok.len() as i64, 0], tch::kind::FLOAT_CPU);
    f.ok = ok;
    f.skipped = skipped;
    f.warnings = truncated_warning(truncated_kept);
    (f, images)
}

fn truncated_warning(n: usize) -> Vec<String> {
    if n > 0 {
        vec![format!("{n} truncated images kept (their missing part decodes grey)")]
    } else {
        vec![]
    }
}

impl<'a> Block for ImageBlock<'a> {
    type Data = Vec<PathBuf>;
    type Model = ImageModel;
    type Inputs = Vec<Tensor>;
    type Learner<'l>
        = ImageLearner<'l>
    where
        Self: 'l;
    const NOUN: &'static str = "images";

    fn open(&self, path: &Path, classes: Option<&[String]>) -> Result<Opened<Vec<PathBuf>>> {
        let ds = Dataset::open(path, classes)?;
        let labels = ds.items.iter().map(|i| i.label).collect();
        Ok(Opened { data: ds.items.into_iter().map(|i| i.path).collect(), labels, classes: ds.classes, skipped: ds.skipped, warnings: ds.warnings })
    }

    fn append(&self, data: &mut Vec<PathBuf>, more: Vec<PathBuf>) {
        data.extend(more);
    }

    fn featurise(&self, m: &ImageModel, paths: &Vec<PathBuf>, progress: &dyn Progress) -> Result<Featurised> {
        let dim = m.num_features() as usize;
        let precision = self.precision.resolve(m.model.arch.family());
        let cache = self.cache.as_deref().map(|root| FeatureCache::new(root, &m.weights_sha256, &m.input, "pooled", dim, precision)).transpose()?;
        let Extracted { features, ok, skipped, computed, reused, truncated_kept, timing } =
            extract(&m.model, &m.input, paths, cache.as_ref(), self.batch_size, &self.decode, precision, progress)?;
        Ok(Featurised { features, ok, skipped, computed, reused, warnings: truncated_warning(truncated_kept), timing: Some(timing) })
    }

    fn screen(&self, _: &ImageModel, paths: &Vec<PathBuf>, progress: &dyn Progress) -> Result<(Featurised, Vec<Tensor>)> {
        Ok(decode_only(paths, &self.decode, progress))
    }

    fn inputs(&self, _: &ImageModel, paths: &Vec<PathBuf>, ok: &[usize], _: &dyn Progress) -> Result<Vec<Tensor>> {
        let mut images = Vec::with_capacity(ok.len());
        for &i in ok {
            let bytes = std::fs::read(&paths[i]).map_err(|e| Error::io(&paths[i], e))?;
            images.push(decode_rgb_u8_with(&bytes, &self.decode).map_err(|m| Error::input(&paths[i], m))?.0);
        }
        Ok(images)
    }

    fn learner<'l>(
        &'l self,
        m: &'l ImageModel,
        images: &'l Vec<Tensor>,
        labels: &[i64],
        _: i64,
        ft: &'l FinetuneConfig,
        progress: &dyn Progress,
    ) -> Result<ImageLearner<'l>> {
        ImageLearner::new(&m.model, &m.input, images, labels, ft, progress)
    }

    fn describe(&self, data: &Vec<PathBuf>, i: usize) -> (String, Option<String>) {
        (super::describe_path(&data[i]), None)
    }

    /// Every variable (backbone, head, BatchNorm statistics) moves; the learner then builds its
    /// batches and labels there.
    fn place(&self, m: &mut ImageModel, device: tch::Device) -> Result<()> {
        m.model.vs.set_device(device);
        Ok(())
    }
}

impl TrainBlock for ImageBlock<'_> {
    type Request = TrainRequest;

    fn request(&self) -> &TrainRequest {
        self.req()
    }

    /// The request as run: `auto` recorded as the precision it resolved to.
    fn recorded(&self) -> std::borrow::Cow<'_, TrainRequest> {
        std::borrow::Cow::Owned(TrainRequest { precision: self.precision, ..self.req().clone() })
    }

    fn model_name(&self) -> String {
        entry_of(&self.req().model).map(|e| e.name.to_string()).unwrap_or_else(|_| self.req().model.clone())
    }

    fn load(&self, classes: &[String], _: &Vec<PathBuf>, warnings: &mut Vec<String>) -> Result<ImageModel> {
        let req = self.req();
        let entry = entry_of(&req.model)?;
        let weights = open_weights(entry, req.weights.as_deref())?;
        let sha = weights.sha256()?;
        let head = if req.finetune.is_some() { HeadInit::New(classes.len() as i64) } else { HeadInit::None };
        let (model, report) = pretrained(entry, &weights, 3, head)?;
        report.require_exact()?;
        let input = req.input_override.clone().unwrap_or_else(|| entry.input.clone());
        if input != entry.input {
            warnings.push(format!(
                "preprocessing overridden: {} (the weights were trained with {})",
                serde_json::to_string(&input).unwrap_or_default(),
                serde_json::to_string(&entry.input).unwrap_or_default()
            ));
        }
        Ok(ImageModel { entry, model, input, weights_sha256: sha.clone(), file_sha256: sha, source: weights.source.display().to_string() })
    }

    /// The bundle records the precision the head was trained on: the extraction's, or the
    /// fine-tuning's.
    fn bundle_meta(&self, m: &ImageModel, labels: Vec<String>, head: HeadSpec) -> Result<Bundle> {
        let mut meta = BundleMeta::new(m.entry, &m.model.arch, &m.input, &m.file_sha256, &m.source, labels, head);
        meta.precision = self.req().finetune.as_ref().map_or(self.precision, |ft| ft.precision.resolve(m.model.arch.family()));
        Ok(meta.into())
    }
}

fn to_float(u8_img: &Tensor) -> Tensor {
    u8_img.to_kind(Kind::Float) / 255.0
}

/// The examples: decoded RGB images in memory (`u8`, `[3, H, W]`), labels, and the train /
/// validation indices.
pub struct Examples {
    pub images: Vec<Tensor>,
    pub labels: Vec<i64>,
    pub train: Vec<usize>,
    pub val: Vec<usize>,
}

/// Images as a [`Learner`]: frozen stages, cached activations, augmentation.
pub struct ImageLearner<'a> {
    model: &'a Model,
    input: &'a ImageInput,
    images: &'a [Tensor],
    cfg: &'a FinetuneConfig,
    head: &'a crate::models::Head,
    first: usize,
    n_stages: usize,
    trainable_mode: Mode,
    /// Activations entering the first trainable stage, when inputs do not change per epoch.
    cached: Option<Vec<Tensor>>,
    labels: Tensor,
}

impl<'a> ImageLearner<'a> {
    /// A learner over decoded `images` with `labels`; `model` must have a head.
    pub fn new(
        model: &'a Model,
        input: &'a ImageInput,
        images: &'a [Tensor],
        labels: &[i64],
        cfg: &'a FinetuneConfig,
        progress: &dyn Progress,
    ) -> Result<ImageLearner<'a>> {
        cfg.validate()?;
        let head = model.head.as_ref().ok_or_else(|| Error::Model("fine-tuning needs a model with a head".into()))?;
        let n_stages = model.backbone.stages().len();
        let first = first_trainable(cfg.unfreeze, n_stages)?;
        let trainable_mode = if cfg.bn == BnPolicy::Frozen { Mode::Eval } else { Mode::Train };
        let labels = Tensor::from_slice(labels).to_device(model.vs.device());
        let mut s = ImageLearner { model, input, images, cfg, head, first, n_stages, trainable_mode, cached: None, labels };
        // Worth it only when there are frozen stages to skip; unfreezing everything would just
        // hold every preprocessed image in memory.
        if cfg.augment.is_none() && first > 0 {
            progress.start("prepare", images.len() as u64);
            let mut acts = Vec::with_capacity(images.len());
            for chunk in (0..images.len()).collect::<Vec<_>>().chunks(cfg.batch_size) {
                let xs: Vec<Tensor> = chunk.iter().map(|&i| prepare(&images[i], input)).collect::<Result<_>>()?;
                let a = s.prefix(&Tensor::stack(&xs, 0).to_device(model.vs.device()));
                for k in 0..chunk.len() as i64 {
                    acts.push(a.get(k));
                }
                progress.inc(chunk.len() as u64);
            }
            progress.finish();
            s.cached = Some(acts);
        }
        Ok(s)
    }

    /// Frozen stages: eval mode, no autograd.
    fn prefix(&self, x: &Tensor) -> Tensor {
        crate::engine::autocast_cpu(self.cfg.precision, || tch::no_grad(|| self.model.backbone.forward_range(0..self.first, x, Mode::Eval)))
    }
}

impl Learner for ImageLearner<'_> {
    /// Inputs of the first trainable stage.
    type Batch = Tensor;

    fn vs(&self) -> &tch::nn::VarStore {
        &self.model.vs
    }
    fn stages(&self) -> &[crate::models::Stage] {
        self.model.backbone.stages()
    }
    fn first_trainable(&self) -> usize {
        self.first
    }
    fn labels(&self) -> &Tensor {
        &self.labels
    }
    fn num_classes(&self) -> i64 {
        self.head.linear.ws.size()[0]
    }
    fn head(&self) -> &tch::nn::Linear {
        &self.head.linear
    }

    fn batch(&self, rows: &[usize], epoch: Option<usize>) -> Result<Tensor> {
        if let Some(c) = &self.cached {
            let xs: Vec<Tensor> = rows.iter().map(|&i| c[i].shallow_clone()).collect();
            return Ok(Tensor::stack(&xs, 0));
        }
        let xs: Vec<Tensor> = rows
            .iter()
            .map(|&i| {
                let img = to_float(&self.images[i]);
                match (&self.cfg.augment, epoch) {
                    (Some(a), Some(e)) => {
                        let mut rng = Rng(self.cfg.seed ^ ((e as u64) << 32) ^ (i as u64).wrapping_mul(0x9e37_79b9));
                        augment(&img, self.input, a, &mut rng)
                    }
                    _ => prepare(&img, self.input),
                }
            })
            .collect::<Result<_>>()?;
        Ok(self.prefix(&Tensor::stack(&xs, 0).to_device(self.model.vs.device())))
    }

    /// Trainable stages, pooling and head.
    fn logits(&self, h: &Tensor, train: bool) -> Tensor {
        let mode = if train { self.trainable_mode } else { Mode::Eval };
        crate::engine::autocast_cpu(self.cfg.precision, || {
            let f = self.model.backbone.pool(&self.model.backbone.forward_range(self.first..self.n_stages, h, mode));
            f.dropout(self.head.dropout, mode.is_train()).apply(&self.head.linear)
        })
        .to_kind(Kind::Float)
    }
}

/// Fine-tunes `model` (which has a head) on `ex`.
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    model: &Model,
    input: &ImageInput,
    ex: &Examples,
    cfg: &FinetuneConfig,
    run: &Path,
    resume: bool,
    progress: &dyn Progress,
    on_epoch: &mut dyn FnMut(&EpochRecord),
) -> Result<Outcome> {
    let learner = ImageLearner::new(model, input, &ex.images, &ex.labels, cfg, progress)?;
    train_learner(&learner, &ex.train, &ex.val, cfg, run, resume, progress, on_epoch)
}

/// The learning-rate range test on decoded images `ex` (rows `ex.train`).
#[allow(clippy::too_many_arguments)]
pub fn lr_find(
    model: &Model,
    input: &ImageInput,
    ex: &Examples,
    cfg: &FinetuneConfig,
    min_lr: f64,
    max_lr: f64,
    steps: usize,
    progress: &dyn Progress,
) -> Result<LrFind> {
    let learner = ImageLearner::new(model, input, &ex.images, &ex.labels, cfg, progress)?;
    lr_find_learner(&learner, &ex.train, cfg, min_lr, max_lr, steps, progress)
}
