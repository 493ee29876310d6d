//! CLIP configurations from Hugging Face `config.json` (+ `preprocessor_config.json`) or
//! open_clip's `open_clip_config.json`. Options this implementation does not have (timm or
//! Hugging Face towers, attentional pooling, layer scale, …) are refused by name rather than
//! loaded wrongly.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::resnet::ResNetCfg;
use super::text::{EotPool, TextCfg};
use super::transformer::{Act, Layout};
use super::vision::VitCfg;
use crate::error::{Error, Result};
use crate::models::registry::{ImageInput, Interpolation, ResizeMode};

/// OpenAI CLIP's normalisation statistics.
pub const OPENAI_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const OPENAI_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VisionCfg {
    Vit(VitCfg),
    ResNet(ResNetCfg),
}

impl VisionCfg {
    pub fn image_size(&self) -> i64 {
        match self {
            VisionCfg::Vit(v) => v.image_size,
            VisionCfg::ResNet(r) => r.image_size,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipCfg {
    pub layout: Layout,
    pub vision: VisionCfg,
    pub text: TextCfg,
    /// Width of the joint embedding space.
    pub embed_dim: i64,
}

/// A JSON object read from `path`, for field look-ups that name the file and field on error.
struct Obj<'a> {
    v: &'a Value,
    path: &'a Path,
    at: String,
}

impl<'a> Obj<'a> {
    fn new(v: &'a Value, path: &'a Path, at: &str) -> Result<Obj<'a>> {
        if !v.is_object() {
            return Err(Error::input(path, format!("`{at}` is not an object")));
        }
        Ok(Obj { v, path, at: at.to_string() })
    }
    fn field(&self, key: &str) -> String {
        if self.at.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.at)
        }
    }
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.v.get(key).filter(|x| !x.is_null())
    }
    fn child(&self, key: &str) -> Result<Obj<'a>> {
        let v = self.get(key).ok_or_else(|| Error::input(self.path, format!("missing `{}`", self.field(key))))?;
        Obj::new(v, self.path, &self.field(key))
    }
    fn int(&self, key: &str, default: i64) -> Result<i64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => {
                v.as_i64().filter(|&n| n > 0).ok_or_else(|| Error::input(self.path, format!("`{}` must be a positive integer, found {v}", self.field(key))))
            }
        }
    }
    fn float(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| Error::input(self.path, format!("`{}` must be a number, found {v}", self.field(key)))),
        }
    }
    fn string(&self, key: &str, default: &str) -> Result<String> {
        match self.get(key) {
            None => Ok(default.to_string()),
            Some(v) => v.as_str().map(str::to_string).ok_or_else(|| Error::input(self.path, format!("`{}` must be a string", self.field(key)))),
        }
    }
    fn triple(&self, key: &str, default: [f64; 3]) -> Result<[f64; 3]> {
        let Some(v) = self.get(key) else { return Ok(default) };
        let bad = || Error::input(self.path, format!("`{}` must be a list of 3 numbers", self.field(key)));
        let a = v.as_array().filter(|a| a.len() == 3).ok_or_else(bad)?;
        let mut out = [0.0; 3];
        for (o, x) in out.iter_mut().zip(a) {
            *o = x.as_f64().ok_or_else(bad)?;
        }
        Ok(out)
    }
    /// Errors when `key` is set to anything but `allowed` (absent and null are fine).
    fn refuse(&self, key: &str, allowed: &[Value]) -> Result<()> {
        match self.get(key) {
            Some(v) if !allowed.contains(v) => Err(Error::input(self.path, format!("`{}` = {v} is not supported", self.field(key)))),
            _ => Ok(()),
        }
    }
    /// An integer that may also be written `[n, n]`.
    fn square(&self, key: &str, default: i64) -> Result<i64> {
        if let Some(a) = self.get(key).and_then(|v| v.as_array()) {
            let n: Vec<i64> = a.iter().filter_map(|x| x.as_i64()).collect();
            return match n[..] {
                [h, w] if h == w && h > 0 => Ok(h),
                _ => Err(Error::input(self.path, format!("`{}`: only square sizes are supported", self.field(key)))),
            };
        }
        self.int(key, default)
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::input(path, format!("invalid JSON: {e}")))
}

fn act(name: &str, o: &Obj, key: &str) -> Result<Act> {
    Act::parse(name).ok_or_else(|| Error::input(o.path, format!("`{}` = {name:?}: expected quick_gelu or gelu", o.field(key))))
}

fn heads_divide(path: &Path, what: &str, width: i64, heads: i64) -> Result<()> {
    if heads < 1 || width % heads != 0 {
        return Err(Error::input(path, format!("{what}: width {width} is not divisible into {heads} heads")));
    }
    Ok(())
}

/// The configuration, image preprocessing and weight file of a CLIP directory.
pub fn read(dir: &Path) -> Result<(ClipCfg, ImageInput, PathBuf)> {
    if !dir.is_dir() {
        return Err(Error::input(dir, "not a directory: CLIP loads from a Hugging Face CLIPModel or open_clip directory"));
    }
    let oc = dir.join("open_clip_config.json");
    if oc.is_file() {
        return read_open_clip(dir, &oc);
    }
    let hf = dir.join("config.json");
    if hf.is_file() {
        return read_hf(dir, &hf);
    }
    Err(Error::input(dir, "neither config.json (Hugging Face CLIPModel) nor open_clip_config.json (open_clip) in this directory"))
}

fn read_hf(dir: &Path, path: &Path) -> Result<(ClipCfg, ImageInput, PathBuf)> {
    let v = read_json(path)?;
    let root = Obj::new(&v, path, "")?;
    let model_type = root.string("model_type", "clip")?;
    if model_type != "clip" {
        return Err(Error::input(path, format!("`model_type` is {model_type:?}; only Hugging Face `clip` models load here")));
    }
    let t = root.child("text_config")?;
    let width = t.int("hidden_size", 512)?;
    let heads = t.int("num_attention_heads", 8)?;
    heads_divide(path, "text_config", width, heads)?;
    let eos = t.get("eos_token_id").and_then(|x| x.as_i64()).unwrap_or(49407);
    let text = TextCfg {
        vocab_size: t.int("vocab_size", 49408)?,
        width,
        layers: t.int("num_hidden_layers", 12)?,
        heads,
        mlp: t.int("intermediate_size", 2048)?,
        context_length: t.int("max_position_embeddings", 77)?,
        eps: t.float("layer_norm_eps", 1e-5)?,
        act: act(&t.string("hidden_act", "quick_gelu")?, &t, "hidden_act")?,
        // Hugging Face's rule: the legacy eos_token_id 2 means "the largest id".
        pool: if eos == 2 { EotPool::Argmax } else { EotPool::FirstId(eos) },
    };
    let vc = root.child("vision_config")?;
    let width = vc.int("hidden_size", 768)?;
    let heads = vc.int("num_attention_heads", 12)?;
    heads_divide(path, "vision_config", width, heads)?;
    let vit = VitCfg {
        width,
        layers: vc.int("num_hidden_layers", 12)?,
        heads,
        mlp: vc.int("intermediate_size", 3072)?,
        patch_size: vc.int("patch_size", 32)?,
        image_size: vc.int("image_size", 224)?,
        eps: vc.float("layer_norm_eps", 1e-5)?,
        act: act(&vc.string("hidden_act", "quick_gelu")?, &vc, "hidden_act")?,
    };
    vc.refuse("num_channels", &[Value::from(3)])?;
    if vit.image_size % vit.patch_size != 0 {
        return Err(Error::input(path, format!("vision_config: image_size {} is not a multiple of patch_size {}", vit.image_size, vit.patch_size)));
    }
    let cfg = ClipCfg { layout: Layout::Hf, vision: VisionCfg::Vit(vit), text, embed_dim: root.int("projection_dim", 512)? };
    let input = hf_preprocessing(dir, cfg.vision.image_size())?;
    Ok((cfg, input, dir.to_path_buf()))
}

/// `preprocessor_config.json`'s mean, std and crop, when present; OpenAI's otherwise.
fn hf_preprocessing(dir: &Path, size: i64) -> Result<ImageInput> {
    let mut input = clip_input(size);
    let path = dir.join("preprocessor_config.json");
    if !path.is_file() {
        return Ok(input);
    }
    let v = read_json(&path)?;
    let o = Obj::new(&v, &path, "")?;
    input.mean = o.triple("image_mean", OPENAI_MEAN)?;
    input.std = o.triple("image_std", OPENAI_STD)?;
    let crop = match o.get("crop_size") {
        Some(Value::Object(_)) => o.child("crop_size")?.int("height", size)?,
        _ => o.int("crop_size", size)?,
    };
    let shortest = match o.get("size") {
        Some(Value::Object(_)) => o.child("size")?.int("shortest_edge", crop)?,
        _ => o.int("size", crop)?,
    };
    if crop != size || shortest < crop {
        return Err(Error::input(&path, format!("crop {crop} after resizing to {shortest}: the model takes {size}×{size}")));
    }
    input.crop_pct = crop as f64 / shortest as f64;
    Ok(input)
}

/// CLIP's preprocessing: bicubic resize of the shorter side to `size`, centre crop, OpenAI's
/// statistics.
pub fn clip_input(size: i64) -> ImageInput {
    ImageInput { size, crop_pct: 1.0, resize_mode: ResizeMode::ShorterSideThenCrop, interpolation: Interpolation::Bicubic, mean: OPENAI_MEAN, std: OPENAI_STD }
}

fn read_open_clip(dir: &Path, path: &Path) -> Result<(ClipCfg, ImageInput, PathBuf)> {
    let v = read_json(path)?;
    let root = Obj::new(&v, path, "")?;
    let m = root.child("model_cfg")?;
    m.refuse("custom_text", &[Value::Bool(false)])?;
    let quick = m.get("quick_gelu").and_then(|x| x.as_bool()).unwrap_or(false);
    let a = if quick { Act::QuickGelu } else { Act::Gelu };
    let embed_dim = m.int("embed_dim", 0).and_then(|e| if e == 0 { Err(Error::input(path, "missing `model_cfg.embed_dim`")) } else { Ok(e) })?;
    let vision = open_clip_vision(&m.child("vision_cfg")?, a)?;
    let text = open_clip_text(&m.child("text_cfg")?, a)?;
    let mut input = clip_input(vision.image_size());
    if root.get("preprocess_cfg").is_some() {
        let p = root.child("preprocess_cfg")?;
        input.mean = p.triple("mean", OPENAI_MEAN)?;
        input.std = p.triple("std", OPENAI_STD)?;
        input.interpolation = match p.string("interpolation", "bicubic")?.as_str() {
            "bicubic" => Interpolation::Bicubic,
            "bilinear" => Interpolation::Bilinear,
            other => return Err(Error::input(path, format!("`preprocess_cfg.interpolation` = {other:?}: expected bicubic or bilinear"))),
        };
        input.resize_mode = match p.string("resize_mode", "shortest")?.as_str() {
            "shortest" => ResizeMode::ShorterSideThenCrop,
            "squash" => ResizeMode::Squash,
            other => return Err(Error::input(path, format!("`preprocess_cfg.resize_mode` = {other:?}: expected shortest or squash"))),
        };
    }
    let weights = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::input(dir, "no open_clip_model.safetensors or open_clip_pytorch_model.bin beside open_clip_config.json"))?;
    Ok((ClipCfg { layout: Layout::OpenClip, vision, text, embed_dim }, input, weights))
}

fn open_clip_vision(o: &Obj, a: Act) -> Result<VisionCfg> {
    for key in ["timm_model_name", "ls_init_value", "act_kwargs", "norm_kwargs", "block_type"] {
        o.refuse(key, &[])?;
    }
    for key in ["attentional_pool", "no_ln_pre", "final_ln_after_pool", "qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn", "scale_fc"] {
        o.refuse(key, &[Value::Bool(false)])?;
    }
    o.refuse("pool_type", &[Value::from("tok")])?;
    o.refuse("pos_embed_type", &[Value::from("learnable")])?;
    if let Some(l) = o.get("layers").filter(|l| l.is_array()) {
        let n: Vec<i64> = l.as_array().into_iter().flatten().filter_map(|x| x.as_i64()).filter(|&x| x > 0).collect();
        let layers: [i64; 4] = n.try_into().map_err(|_| Error::input(o.path, format!("`{}` must be 4 positive block counts", o.field("layers"))))?;
        let width = o.int("width", 64)?;
        let image_size = o.square("image_size", 224)?;
        if image_size % 32 != 0 {
            return Err(Error::input(o.path, format!("`{}` {image_size}: a ResNet tower needs a multiple of 32", o.field("image_size"))));
        }
        let heads = width * 32 / o.int("head_width", 64)?;
        heads_divide(o.path, "vision_cfg", width * 32, heads)?;
        return Ok(VisionCfg::ResNet(ResNetCfg { layers, width, heads, image_size }));
    }
    let width = o.int("width", 768)?;
    let heads = width / o.int("head_width", 64)?;
    heads_divide(o.path, "vision_cfg", width, heads)?;
    let vit = VitCfg {
        width,
        layers: o.int("layers", 12)?,
        heads,
        mlp: (width as f64 * o.float("mlp_ratio", 4.0)?) as i64,
        patch_size: o.square("patch_size", 16)?,
        image_size: o.square("image_size", 224)?,
        eps: 1e-5,
        act: a,
    };
    if vit.image_size % vit.patch_size != 0 {
        return Err(Error::input(o.path, format!("vision_cfg: image_size {} is not a multiple of patch_size {}", vit.image_size, vit.patch_size)));
    }
    Ok(VisionCfg::Vit(vit))
}

fn open_clip_text(o: &Obj, a: Act) -> Result<TextCfg> {
    for key in ["hf_model_name", "ls_init_value", "act_kwargs", "norm_kwargs", "block_type"] {
        o.refuse(key, &[])?;
    }
    for key in ["embed_cls", "no_causal_mask", "final_ln_after_pool", "proj_bias", "qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn", "scale_fc"] {
        o.refuse(key, &[Value::Bool(false)])?;
    }
    o.refuse("proj_type", &[Value::from("linear")])?;
    let width = o.int("width", 512)?;
    let heads = o.int("heads", 8)?;
    heads_divide(o.path, "text_cfg", width, heads)?;
    let pool = match o.string("pool_type", "argmax")?.as_str() {
        "argmax" => EotPool::Argmax,
        "last" => EotPool::Last,
        "eos" => EotPool::FirstId(o.get("eos_id").and_then(|x| x.as_i64()).unwrap_or(2)),
        other => return Err(Error::input(o.path, format!("`{}` = {other:?} is not supported", o.field("pool_type")))),
    };
    Ok(TextCfg {
        vocab_size: o.int("vocab_size", 49408)?,
        width,
        layers: o.int("layers", 12)?,
        heads,
        mlp: (width as f64 * o.float("mlp_ratio", 4.0)?) as i64,
        context_length: o.int("context_length", 77)?,
        eps: 1e-5,
        act: a,
        pool,
    })
}
