//! CLIP's ViT image tower (Radford et al., "Learning Transferable Visual Models From Natural
//! Language Supervision", 2021; OpenAI's `clip/model.py` `VisionTransformer`, Hugging Face's
//! `CLIPVisionTransformer`): patch convolution without bias, class token, learned positions,
//! a layer norm *before* the blocks, pre-norm blocks, a final layer norm and a bias-free
//! projection into the joint space.
//!
//! As a [`Backbone`], the last stage (final norm + projection) maps every token into the joint
//! space, `[B, 1 + N, E]`; pooling takes the class token and L2-normalises it, so a linear head
//! on the pooled features can start from the zero-shot classifier.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::Tensor;

use super::transformer::{layer_norm, Act, Block, BlockCfg, Layout, Projection};
use crate::models::{Backbone, Mode, Stage};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitCfg {
    pub width: i64,
    pub layers: i64,
    pub heads: i64,
    pub mlp: i64,
    pub patch_size: i64,
    pub image_size: i64,
    pub eps: f64,
    pub act: Act,
}

pub struct VisionTransformer {
    cfg: VitCfg,
    patch: nn::Conv2D,
    class: Tensor,
    pos: Tensor,
    ln_pre: nn::LayerNorm,
    blocks: Vec<Block>,
    ln_post: nn::LayerNorm,
    proj: Projection,
    embed_dim: i64,
    stages: Vec<Stage>,
}

/// A stage made of exact variable names and name prefixes (`visual.class_embedding` has no
/// trailing dot).
pub(crate) fn stage(name: &str, prefixes: &[String]) -> Stage {
    Stage { name: name.to_string(), prefixes: prefixes.to_vec() }
}

impl VisionTransformer {
    /// `root` is the model root; the tower's variables live under `vision_model.` and
    /// `visual_projection.` (Hugging Face) or `visual.` (open_clip).
    pub fn new(root: &nn::Path, cfg: &VitCfg, embed_dim: i64, layout: Layout) -> VisionTransformer {
        let d = cfg.width;
        let grid = cfg.image_size / cfg.patch_size;
        let conv = nn::ConvConfig { stride: cfg.patch_size, bias: false, ..Default::default() };
        let init = nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        let bc = BlockCfg { width: d, heads: cfg.heads, mlp: cfg.mlp, eps: cfg.eps, act: cfg.act };
        let n = cfg.layers as usize;
        let (patch, class, pos, ln_pre, blocks, ln_post, proj, names) = match layout {
            Layout::Hf => {
                let v = root / "vision_model";
                let e = &v / "embeddings";
                let patch = nn::conv2d(&e / "patch_embedding", 3, d, cfg.patch_size, conv);
                let class = e.var("class_embedding", &[d], init);
                let pos = (&e / "position_embedding").var("weight", &[grid * grid + 1, d], init);
                let blocks = (0..n).map(|i| Block::new(&(&v / "encoder" / "layers" / i), bc, layout)).collect();
                let names = ["vision_model.embeddings.", "vision_model.pre_layrnorm.", "vision_model.encoder.layers", "vision_model.post_layernorm."];
                let proj = Projection::new(root, "visual_projection", d, embed_dim, layout);
                (patch, class, pos, layer_norm(&v / "pre_layrnorm", d, cfg.eps), blocks, layer_norm(&v / "post_layernorm", d, cfg.eps), proj, names)
            }
            Layout::OpenClip => {
                let v = root / "visual";
                let patch = nn::conv2d(&v / "conv1", 3, d, cfg.patch_size, conv);
                let class = v.var("class_embedding", &[d], init);
                let pos = v.var("positional_embedding", &[grid * grid + 1, d], init);
                let blocks = (0..n).map(|i| Block::new(&(&v / "transformer" / "resblocks" / i), bc, layout)).collect();
                let names = ["visual.conv1.", "visual.ln_pre.", "visual.transformer.resblocks", "visual.ln_post."];
                let proj = Projection::new(&v, "proj", d, embed_dim, layout);
                (patch, class, pos, layer_norm(&v / "ln_pre", d, cfg.eps), blocks, layer_norm(&v / "ln_post", d, cfg.eps), proj, names)
            }
        };
        let mut stages = vec![match layout {
            Layout::Hf => stage("embed", &[names[0].into(), names[1].into()]),
            Layout::OpenClip => stage("embed", &[names[0].into(), names[1].into(), "visual.class_embedding".into(), "visual.positional_embedding".into()]),
        }];
        stages.extend((0..n).map(|i| stage(&format!("block{i}"), &[format!("{}.{i}.", names[2])])));
        stages.push(match layout {
            Layout::Hf => stage("head", &[names[3].into(), "visual_projection.".into()]),
            Layout::OpenClip => stage("head", &[names[3].into(), "visual.proj".into()]),
        });
        VisionTransformer { cfg: cfg.clone(), patch, class, pos, ln_pre, blocks, ln_post, proj, embed_dim, stages }
    }
}

impl Backbone for VisionTransformer {
    fn forward_stage(&self, i: usize, xs: &Tensor, _mode: Mode) -> Tensor {
        if i == 0 {
            let p = self.patch.forward(xs);
            let (b, d, h, w) = p.size4().expect("[B, D, H, W]");
            let g = ((self.pos.size()[0] - 1) as f64).sqrt().round() as i64;
            assert!(g == h && g == w, "CLIP ViT expects a {}×{} input", self.cfg.image_size, self.cfg.image_size);
            let tokens = p.flatten(2, -1).transpose(1, 2);
            let cls = self.class.view([1, 1, d]).expand([b, 1, d], false);
            return (Tensor::cat(&[cls, tokens], 1) + &self.pos).apply(&self.ln_pre);
        }
        if i == self.blocks.len() + 1 {
            return self.proj.apply(&xs.apply(&self.ln_post));
        }
        self.blocks[i - 1].forward(xs, false)
    }
    fn pool(&self, features: &Tensor) -> Tensor {
        super::normalize(&features.select(1, 0))
    }
    fn num_features(&self) -> i64 {
        self.embed_dim
    }
    fn stages(&self) -> &[Stage] {
        &self.stages
    }
}
