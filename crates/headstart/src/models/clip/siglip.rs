//! SigLIP (Zhai et al., "Sigmoid Loss for Language Image Pre-Training", 2023), as Hugging
//! Face's `SiglipModel` lays it out: CLIP-like towers trained with a sigmoid loss, so each
//! image–text pair gets its own probability `σ(exp(logit_scale) · cos + logit_bias)` instead of
//! a softmax over the texts.
//!
//! Differences from CLIP: the image tower has no class token, no pre-norm and pools with a
//! multi-head attention probe (`head.probe`, `head.attention`, a layer norm and an MLP); the
//! text tower attends both ways, pools the last position (texts are padded to the full
//! length) and ends in a linear `head` with bias; both use `gelu_pytorch_tanh`.

use std::path::Path;

use serde_json::Value;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::transformer::{layer_norm, Act, Block, BlockCfg, Layout};
use crate::error::{Error, Result};
use crate::weights::report::{load_into, LoadPlan};
use crate::weights::{LoadReport, Weights};

/// One tower's shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct TowerCfg {
    pub width: i64,
    pub layers: i64,
    pub heads: i64,
    pub mlp: i64,
    pub eps: f64,
    pub act: Act,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SiglipCfg {
    pub vision: TowerCfg,
    pub patch_size: i64,
    pub image_size: i64,
    pub text: TowerCfg,
    pub vocab_size: i64,
    pub max_positions: i64,
    /// Width of the text head's output (the joint space).
    pub projection: i64,
}

fn int(v: &Value, key: &str, default: i64, path: &Path, at: &str) -> Result<i64> {
    match v.get(key).filter(|x| !x.is_null()) {
        None => Ok(default),
        Some(x) => x.as_i64().filter(|&n| n > 0).ok_or_else(|| Error::input(path, format!("`{at}.{key}` must be a positive integer, found {x}"))),
    }
}

fn tower(v: &Value, path: &Path, at: &str) -> Result<TowerCfg> {
    let act_name = v.get("hidden_act").and_then(|a| a.as_str()).unwrap_or("gelu_pytorch_tanh");
    let act = Act::parse(act_name).ok_or_else(|| Error::input(path, format!("`{at}.hidden_act` {act_name:?} is not supported")))?;
    let (width, heads) = (int(v, "hidden_size", 768, path, at)?, int(v, "num_attention_heads", 12, path, at)?);
    if width % heads != 0 {
        return Err(Error::input(path, format!("`{at}`: hidden_size {width} is not a multiple of num_attention_heads {heads}")));
    }
    Ok(TowerCfg {
        width,
        layers: int(v, "num_hidden_layers", 12, path, at)?,
        heads,
        mlp: int(v, "intermediate_size", 3072, path, at)?,
        eps: v.get("layer_norm_eps").and_then(|x| x.as_f64()).unwrap_or(1e-6),
        act,
    })
}

impl SiglipCfg {
    /// Reads a Hugging Face `SiglipModel` `config.json`.
    pub fn read(path: &Path) -> Result<SiglipCfg> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::input(path, format!("invalid JSON: {e}")))?;
        let mt = v.get("model_type").and_then(|m| m.as_str()).unwrap_or("");
        if mt != "siglip" {
            return Err(Error::input(path, format!("`model_type` is {mt:?}; only Hugging Face `siglip` models load here")));
        }
        let empty = Value::Object(Default::default());
        let (vc, tc) = (v.get("vision_config").unwrap_or(&empty), v.get("text_config").unwrap_or(&empty));
        if vc.get("vision_use_head").and_then(|x| x.as_bool()) == Some(false) {
            return Err(Error::input(path, "`vision_config.vision_use_head` = false is not supported (the attention-pooling head gives the embedding)"));
        }
        let text = tower(tc, path, "text_config")?;
        Ok(SiglipCfg {
            vision: tower(vc, path, "vision_config")?,
            patch_size: int(vc, "patch_size", 16, path, "vision_config")?,
            image_size: int(vc, "image_size", 224, path, "vision_config")?,
            vocab_size: int(tc, "vocab_size", 32000, path, "text_config")?,
            max_positions: int(tc, "max_position_embeddings", 64, path, "text_config")?,
            projection: int(tc, "projection_size", text.width, path, "text_config")?,
            text,
        })
    }
}

fn block_cfg(t: &TowerCfg) -> BlockCfg {
    BlockCfg { width: t.width, heads: t.heads, mlp: t.mlp, eps: t.eps, act: t.act }
}

/// The attention-pooling head: one learned query attends over the tokens, then a residual MLP.
struct MapHead {
    probe: Tensor,
    in_w: Tensor,
    in_b: Tensor,
    out: nn::Linear,
    ln: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    heads: i64,
    act: Act,
}

impl MapHead {
    fn new(p: &nn::Path, t: &TowerCfg) -> MapHead {
        let d = t.width;
        let init = nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        let a = p / "attention";
        MapHead {
            probe: p.var("probe", &[1, 1, d], init),
            in_w: a.var("in_proj_weight", &[3 * d, d], init),
            in_b: a.zeros("in_proj_bias", &[3 * d]),
            out: nn::linear(&a / "out_proj", d, d, Default::default()),
            ln: layer_norm(p / "layernorm", d, t.eps),
            fc1: nn::linear(p / "mlp" / "fc1", d, t.mlp, Default::default()),
            fc2: nn::linear(p / "mlp" / "fc2", t.mlp, d, Default::default()),
            heads: t.heads,
            act: t.act,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, n, d) = x.size3().expect("[B, N, D]");
        let (h, w, bias) = (self.heads, self.in_w.chunk(3, 0), self.in_b.chunk(3, 0));
        let q = self.probe.expand([b, 1, d], false).linear(&w[0], Some(&bias[0]));
        let (k, v) = (x.linear(&w[1], Some(&bias[1])), x.linear(&w[2], Some(&bias[2])));
        let split = |t: Tensor, len: i64| t.view([b, len, h, d / h]).transpose(1, 2);
        let ctx = Tensor::scaled_dot_product_attention(&split(q, 1), &split(k, n), &split(v, n), None::<Tensor>, 0.0, false, None, false);
        let y = self.out.forward(&ctx.transpose(1, 2).reshape([b, 1, d]));
        let m = self.act.apply(&y.apply(&self.ln).apply(&self.fc1)).apply(&self.fc2);
        (y + m).select(1, 0)
    }
}

/// A loaded SigLIP model (both towers, scale and bias).
pub struct Siglip {
    pub vs: nn::VarStore,
    pub cfg: SiglipCfg,
    patch: nn::Conv2D,
    vpos: Tensor,
    vblocks: Vec<Block>,
    post_ln: nn::LayerNorm,
    map: MapHead,
    tok: Tensor,
    tpos: Tensor,
    tblocks: Vec<Block>,
    final_ln: nn::LayerNorm,
    thead: nn::Linear,
    logit_scale: Tensor,
    logit_bias: Tensor,
}

impl Siglip {
    fn build(cfg: SiglipCfg) -> Siglip {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let root = vs.root();
        let init = nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        let (v, t) = (&root / "vision_model", &root / "text_model");
        let (vw, tw) = (cfg.vision.width, cfg.text.width);
        let grid = cfg.image_size / cfg.patch_size;
        let conv = nn::ConvConfig { stride: cfg.patch_size, ..Default::default() };
        let patch = nn::conv2d(&v / "embeddings" / "patch_embedding", 3, vw, cfg.patch_size, conv);
        let vpos = (&v / "embeddings" / "position_embedding").var("weight", &[grid * grid, vw], init);
        let vblocks = (0..cfg.vision.layers).map(|i| Block::new(&(&v / "encoder" / "layers" / i), block_cfg(&cfg.vision), Layout::Hf)).collect();
        let post_ln = layer_norm(&v / "post_layernorm", vw, cfg.vision.eps);
        let map = MapHead::new(&(&v / "head"), &cfg.vision);
        let tok = (&t / "embeddings" / "token_embedding").var("weight", &[cfg.vocab_size, tw], init);
        let tpos = (&t / "embeddings" / "position_embedding").var("weight", &[cfg.max_positions, tw], init);
        let tblocks = (0..cfg.text.layers).map(|i| Block::new(&(&t / "encoder" / "layers" / i), block_cfg(&cfg.text), Layout::Hf)).collect();
        let final_ln = layer_norm(&t / "final_layer_norm", tw, cfg.text.eps);
        let thead = nn::linear(&t / "head", tw, cfg.projection, Default::default());
        let logit_scale = root.zeros("logit_scale", &[1]);
        let logit_bias = root.zeros("logit_bias", &[1]);
        Siglip { vs, cfg, patch, vpos, vblocks, post_ln, map, tok, tpos, tblocks, final_ln, thead, logit_scale, logit_bias }
    }

    /// Loads a Hugging Face `SiglipModel` directory (`config.json`, `model.safetensors` or
    /// `pytorch_model.bin`); every variable must be filled.
    pub fn load(dir: &Path) -> Result<(Siglip, LoadReport)> {
        let cfg = SiglipCfg::read(&dir.join("config.json"))?;
        let file = ["model.safetensors", "pytorch_model.bin"].iter().map(|f| dir.join(f)).find(|p| p.is_file());
        let file = file.ok_or_else(|| Error::input(dir, "no model.safetensors or pytorch_model.bin in this SigLIP directory"))?;
        let weights = Weights::open(&file)?;
        let m = Siglip::build(cfg);
        let plan = LoadPlan {
            unused: ["text_model.embeddings.position_ids", "vision_model.embeddings.position_ids"]
                .iter()
                .map(|k| (k.to_string(), "a constant the model recomputes".to_string()))
                .collect(),
            ..Default::default()
        };
        let report = load_into(&m.vs, &weights, &plan)?;
        report.require_complete()?;
        Ok((m, report))
    }

    /// Unnormalised image embeddings `[B, E]` of prepared images `[B, 3, S, S]`.
    pub fn encode_image(&self, images: &Tensor) -> Result<Tensor> {
        let s = self.cfg.image_size;
        let size = images.size();
        if size.len() != 4 || size[1] != 3 || size[2] != s || size[3] != s {
            return Err(Error::Model(format!("SigLIP takes images of [B, 3, {s}, {s}], got {size:?}")));
        }
        Ok(tch::no_grad(|| {
            let mut x = self.patch.forward(&images.to_kind(Kind::Float)).flatten(2, -1).transpose(1, 2) + &self.vpos;
            for b in &self.vblocks {
                x = b.forward(&x, false);
            }
            self.map.forward(&x.apply(&self.post_ln))
        }))
    }

    /// Unnormalised text embeddings `[B, E]` of token ids `[B, L]` (padded to the full length
    /// as SigLIP expects; the last position is pooled).
    pub fn encode_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let size = ids.size();
        if size.len() != 2 || size[1] < 1 || size[1] > self.cfg.max_positions {
            return Err(Error::Model(format!("SigLIP takes token ids of [B, ≤{}], got {size:?}", self.cfg.max_positions)));
        }
        let (lo, hi) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
        if lo < 0 || hi >= self.cfg.vocab_size {
            return Err(Error::Model(format!("token id {} outside the vocabulary of {}", if lo < 0 { lo } else { hi }, self.cfg.vocab_size)));
        }
        Ok(tch::no_grad(|| {
            let mut x = self.tok.index_select(0, &ids.flatten(0, -1)).view([size[0], size[1], -1]) + self.tpos.narrow(0, 0, size[1]);
            for b in &self.tblocks {
                x = b.forward(&x, false);
            }
            x.apply(&self.final_ln).select(1, size[1] - 1).apply(&self.thead)
        }))
    }

    /// `exp(logit_scale) · cos(image, text) + logit_bias`, `[B_images, B_texts]`.
    pub fn logits(&self, image_embeds: &Tensor, text_embeds: &Tensor) -> Tensor {
        let (i, t) = (super::normalize(image_embeds), super::normalize(text_embeds));
        i.matmul(&t.tr()) * self.logit_scale.exp() + &self.logit_bias
    }

    /// Independent probabilities of each image–text pair: the sigmoid of [`Siglip::logits`].
    pub fn probabilities(&self, image_embeds: &Tensor, text_embeds: &Tensor) -> Tensor {
        self.logits(image_embeds, text_embeds).sigmoid()
    }
}
