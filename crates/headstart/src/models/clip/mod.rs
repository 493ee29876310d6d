//! CLIP (Radford et al., 2021): an image tower and a text tower projected into one embedding
//! space, compared by cosine similarity times a learned temperature (`logit_scale`).
//!
//! Two checkpoint layouts load without renaming:
//! - Hugging Face `CLIPModel` directories: `config.json` + `model.safetensors` or
//!   `pytorch_model.bin` (sharded or not), `tokenizer.json`, optionally
//!   `preprocessor_config.json` (mean, std, crop size);
//! - open_clip directories: `open_clip_config.json` (`model_cfg`, `preprocess_cfg`) +
//!   `open_clip_model.safetensors` or `open_clip_pytorch_model.bin`, `tokenizer.json`.
//!
//! Shapes come from the configuration (ViT-B/32, B/16, L/14 and any other ViT size, and
//! open_clip's modified-ResNet towers RN50, RN101, RN50x4, …; the activation is `quick_gelu`
//! or `gelu` as configured). Images are prepared as CLIP was
//! trained: bicubic resize of the shorter side to the input size, centre crop, OpenAI's
//! mean and std unless the configuration gives others.

pub mod config;
pub mod resnet;
pub mod siglip;
pub mod text;
pub mod tokenizer;
pub mod transformer;
pub mod vision;

use std::path::{Path, PathBuf};

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

pub use config::{ClipCfg, VisionCfg};
pub use text::{EotPool, TextCfg, TextTransformer};
pub use tokenizer::ClipTokenizer;
pub use transformer::{Act, Layout};

use crate::engine::{autocast_cpu, Precision};
use crate::error::{Error, Result};
use crate::models::registry::ImageInput;
use crate::models::{Backbone, Mode};
use crate::weights::report::{load_into, LoadPlan};
use crate::weights::{LoadReport, Weights};

/// Where a CLIP model named on the command line lives: an existing directory (or a weight file
/// in one), else a hub repo id (`org/name`, optionally `@revision`) in the Hugging Face hub
/// cache `cache`. Nothing is downloaded.
pub fn resolve_in(cache: &Path, model: &str) -> Result<PathBuf> {
    let p = Path::new(model);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    if p.is_file() {
        return Ok(p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf());
    }
    let (repo, revision) = model.split_once('@').unwrap_or((model, "main"));
    if repo.contains('/') && !p.is_absolute() && !model.starts_with('.') {
        return crate::weights::hub::resolve_snapshot(cache, repo, revision);
    }
    Err(Error::input(p, "no such CLIP directory"))
}

/// [`resolve_in`] the user's hub cache.
pub fn resolve(model: &str) -> Result<PathBuf> {
    resolve_in(&crate::weights::hub::cache_dir(), model)
}

/// L2-normalises the last dimension.
pub fn normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [-1i64].as_slice(), true).clamp_min(1e-12)
}

/// A loaded CLIP model with its tokenizer and image preprocessing.
pub struct Clip {
    pub vs: VarStore,
    pub cfg: ClipCfg,
    /// The image tower; its pooled features are L2-normalised image embeddings.
    pub vision: Box<dyn Backbone>,
    pub text: TextTransformer,
    logit_scale: Tensor,
    pub tokenizer: ClipTokenizer,
    /// How images must be prepared for this model.
    pub input: ImageInput,
    /// The directory it was loaded from.
    pub source: PathBuf,
    /// Precision of the image tower's forward pass: `fp32`, or `bf16` through CPU autocast
    /// (embeddings are returned as fp32 either way). The text tower runs in fp32: it embeds
    /// class prompts once per classifier.
    pub precision: Precision,
}

impl Clip {
    /// Builds `cfg` with fresh variables (no tokenizer-independent use; see [`Clip::load`]).
    fn build(cfg: &ClipCfg, device: Device) -> Result<(VarStore, Box<dyn Backbone>, TextTransformer, Tensor)> {
        let vs = VarStore::new(device);
        let root = vs.root();
        let vision: Box<dyn Backbone> = match &cfg.vision {
            VisionCfg::Vit(v) => Box::new(vision::VisionTransformer::new(&root, v, cfg.embed_dim, cfg.layout)),
            VisionCfg::ResNet(r) if cfg.layout == Layout::OpenClip => Box::new(resnet::ModifiedResNet::new(&root, r, cfg.embed_dim)),
            VisionCfg::ResNet(_) => return Err(Error::Model("a ResNet image tower loads from open_clip checkpoints only".into())),
        };
        let text = TextTransformer::new(&root, &cfg.text, cfg.embed_dim, cfg.layout);
        let logit_scale = root.var("logit_scale", &[], tch::nn::Init::Const((1.0f64 / 0.07).ln()));
        Ok((vs, vision, text, logit_scale))
    }

    /// Loads a Hugging Face `CLIPModel` or open_clip directory. The report must be complete
    /// (every variable filled); unused checkpoint tensors are listed in it.
    pub fn load(dir: &Path, device: Device) -> Result<(Clip, LoadReport)> {
        let (cfg, input, weights_path) = config::read(dir)?;
        let weights = Weights::open(&weights_path)?;
        let (vs, vision, text, logit_scale) = Self::build(&cfg, device)?;
        let plan = LoadPlan {
            unused: [
                "text_model.embeddings.position_ids",
                "vision_model.embeddings.position_ids",
                "attn_mask",
                "input_resolution",
                "context_length",
                "vocab_size",
            ]
            .iter()
            .map(|k| (k.to_string(), "a constant the model recomputes".to_string()))
            .collect(),
            ..Default::default()
        };
        let report = load_into(&vs, &weights, &plan)?;
        report.require_complete()?;
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(Error::input(dir, "no tokenizer.json in this CLIP directory (save the model's tokenizer beside it)"));
        }
        let tokenizer = ClipTokenizer::load(&tok_path, cfg.text.context_length as usize)?;
        let vocab = tokenizer.vocab_size();
        if vocab > cfg.text.vocab_size as usize {
            return Err(Error::input(&tok_path, format!("{vocab} tokens, more than the text tower's {} embeddings", cfg.text.vocab_size)));
        }
        let clip = Clip { vs, cfg, vision, text, logit_scale, tokenizer, input, source: dir.to_path_buf(), precision: Precision::Fp32 };
        Ok((clip, report))
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// `exp(logit_scale)`, the temperature applied to cosine similarities.
    pub fn logit_scale(&self) -> f64 {
        self.logit_scale.exp().double_value(&[])
    }

    /// Resizes, crops and normalises an RGB image (`[3, H, W]`, floats in [0, 1] or `u8`) for
    /// this model, clipping bicubic overshoot to the valid pixel range as PIL does for CLIP's
    /// own preprocessing.
    pub fn prepare_image(&self, img: &Tensor) -> Result<Tensor> {
        let x = crate::preprocess::prepare(img, &self.input)?;
        let (mean, std) = (Tensor::from_slice(&self.input.mean).view([3, 1, 1]), Tensor::from_slice(&self.input.std).view([3, 1, 1]));
        let lo = (-&mean / &std).to_kind(Kind::Float);
        let hi = ((-&mean + 1.0) / &std).to_kind(Kind::Float);
        Ok(x.maximum(&lo).minimum(&hi))
    }

    /// Loads and prepares an image file (see [`Clip::prepare_image`]).
    pub fn load_image(&self, path: &Path) -> Result<Tensor> {
        self.prepare_image(&crate::preprocess::load_rgb(path)?)
    }

    /// Unnormalised image embeddings `[B, E]` of prepared images `[B, 3, S, S]`.
    pub fn encode_image(&self, images: &Tensor) -> Result<Tensor> {
        let s = self.input.size;
        let size = images.size();
        if size.len() != 4 || size[1] != 3 || size[2] != s || size[3] != s {
            return Err(Error::Model(format!("CLIP takes images of [B, 3, {s}, {s}], got {size:?}")));
        }
        let x = images.to_device(self.device()).to_kind(Kind::Float);
        Ok(autocast_cpu(self.precision, || self.vision.forward_features(&x, Mode::Eval)).select(1, 0).to_kind(Kind::Float))
    }

    /// Sets the image tower's precision (`auto` resolves as for a network `auto` keeps at fp32
    /// until measured: CLIP's accuracy under bf16 has not been measured on real weights).
    pub fn set_precision(&mut self, p: Precision) {
        self.precision = p.resolve(crate::precision::Family::Other);
    }

    /// Unnormalised text embeddings `[B, E]` of token ids `[B, L]`.
    pub fn encode_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let size = ids.size();
        if size.len() != 2 || size[1] > self.cfg.text.context_length || size[1] < 1 {
            return Err(Error::Model(format!("CLIP takes token ids of [B, ≤{}], got {size:?}", self.cfg.text.context_length)));
        }
        let max = ids.max().int64_value(&[]);
        if ids.min().int64_value(&[]) < 0 || max >= self.cfg.text.vocab_size {
            return Err(Error::Model(format!("token id {max} outside the vocabulary of {}", self.cfg.text.vocab_size)));
        }
        Ok(self.text.encode(&ids.to_device(self.device())))
    }

    /// Unnormalised text embeddings `[B, E]` of raw texts (cleaned and tokenized here).
    pub fn encode_texts(&self, texts: &[String]) -> Result<Tensor> {
        if texts.is_empty() {
            return Ok(Tensor::zeros([0, self.cfg.embed_dim], (Kind::Float, self.device())));
        }
        self.encode_ids(&self.tokenizer.encode(texts)?)
    }

    /// `logit_scale · cos(image, text)`, `[B_images, B_texts]`, from unnormalised embeddings.
    pub fn logits(&self, image_embeds: &Tensor, text_embeds: &Tensor) -> Tensor {
        normalize(image_embeds).matmul(&normalize(text_embeds).tr()) * self.logit_scale.exp()
    }
}
