//! Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words", 2020), laid out as
//! Hugging Face's `ViTModel` checkpoints: `embeddings.*`, `encoder.layer.{i}.*`, `layernorm`.
//! Features are the final-layernorm token sequence; pooling takes the class token, as
//! `ViTForImageClassification` does. Position embeddings are resized bicubically when the
//! input grid differs from the pre-training grid.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::linear_head;
use crate::models::{Backbone, Head, Mode, Stage};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViTCfg {
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub patch_size: i64,
    pub image_size: i64,
    pub layer_norm_eps: f64,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
}

struct Layer {
    ln_before: nn::LayerNorm,
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    out: nn::Linear,
    ln_after: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

pub struct ViT {
    cfg: ViTCfg,
    patch: nn::Conv2D,
    cls: Tensor,
    pos: Tensor,
    layers: Vec<Layer>,
    norm: nn::LayerNorm,
    stages: Vec<Stage>,
}

pub fn build(cfg: &ViTCfg, p: &nn::Path, in_channels: i64, num_classes: Option<i64>) -> (Box<dyn Backbone>, Option<Head>) {
    let d = cfg.hidden_size;
    let e = p / "embeddings";
    let grid = cfg.image_size / cfg.patch_size;
    let conv = nn::ConvConfig { stride: cfg.patch_size, ..Default::default() };
    let patch = nn::conv2d(&e / "patch_embeddings" / "projection", in_channels, d, cfg.patch_size, conv);
    let cls = e.var("cls_token", &[1, 1, d], nn::Init::Randn { mean: 0.0, stdev: 0.02 });
    let pos = e.var("position_embeddings", &[1, grid * grid + 1, d], nn::Init::Randn { mean: 0.0, stdev: 0.02 });
    let ln = |p: nn::Path| nn::layer_norm(p, vec![d], nn::LayerNormConfig { eps: cfg.layer_norm_eps, ..Default::default() });
    let mut layers = vec![];
    let mut stages = vec![Stage::new("embed", &["embeddings".into()])];
    for i in 0..cfg.num_hidden_layers {
        let lp = p / "encoder" / "layer" / i;
        let a = &lp / "attention";
        layers.push(Layer {
            ln_before: ln(&lp / "layernorm_before"),
            q: nn::linear(&a / "attention" / "query", d, d, Default::default()),
            k: nn::linear(&a / "attention" / "key", d, d, Default::default()),
            v: nn::linear(&a / "attention" / "value", d, d, Default::default()),
            out: nn::linear(&a / "output" / "dense", d, d, Default::default()),
            ln_after: ln(&lp / "layernorm_after"),
            fc1: nn::linear(&lp / "intermediate" / "dense", d, cfg.intermediate_size, Default::default()),
            fc2: nn::linear(&lp / "output" / "dense", cfg.intermediate_size, d, Default::default()),
        });
        stages.push(Stage::new(format!("block{i}"), &[format!("encoder.layer.{i}")]));
    }
    let norm = ln(p / "layernorm");
    stages.push(Stage::new("final_norm", &["layernorm".into()]));
    let head = num_classes.map(|n| linear_head(p / "classifier", "classifier", d, n, 0.0));
    (Box::new(ViT { cfg: cfg.clone(), patch, cls, pos, layers, norm, stages }), head)
}

impl ViT {
    /// Position embeddings for an `h`×`w` patch grid.
    fn positions(&self, h: i64, w: i64) -> Tensor {
        let n = self.pos.size()[1] - 1;
        let g = (n as f64).sqrt().round() as i64;
        if g == h && g == w {
            return self.pos.shallow_clone();
        }
        let d = self.cfg.hidden_size;
        let cls = self.pos.narrow(1, 0, 1);
        let grid = self.pos.narrow(1, 1, n).reshape([1, g, g, d]).permute([0, 3, 1, 2]);
        let grid = grid.upsample_bicubic2d([h, w], false, None, None).permute([0, 2, 3, 1]).reshape([1, h * w, d]);
        Tensor::cat(&[cls, grid], 1)
    }

    fn attention(&self, l: &Layer, x: &Tensor, train: bool) -> Tensor {
        let (b, n, d) = x.size3().expect("[B, N, D]");
        let h = self.cfg.num_attention_heads;
        let split = |t: Tensor| t.view([b, n, h, d / h]).transpose(1, 2);
        let (q, k, v) = (split(l.q.forward(x)), split(l.k.forward(x)), split(l.v.forward(x)));
        let scores = q.matmul(&k.transpose(-2, -1)) / ((d / h) as f64).sqrt();
        let probs = scores.softmax(-1, Kind::Float).dropout(self.cfg.attention_probs_dropout_prob, train);
        let ctx = probs.matmul(&v).transpose(1, 2).reshape([b, n, d]);
        l.out.forward(&ctx).dropout(self.cfg.hidden_dropout_prob, train)
    }
}

impl Backbone for ViT {
    fn forward_stage(&self, i: usize, xs: &Tensor, mode: Mode) -> Tensor {
        let train = mode.is_train();
        if i == 0 {
            let p = self.patch.forward(xs);
            let (b, d, h, w) = p.size4().expect("[B, D, H, W]");
            let tokens = p.flatten(2, -1).transpose(1, 2);
            let cls = self.cls.expand([b, 1, d], false);
            return (Tensor::cat(&[cls, tokens], 1) + self.positions(h, w)).dropout(self.cfg.hidden_dropout_prob, train);
        }
        if i == self.layers.len() + 1 {
            return xs.apply(&self.norm);
        }
        let l = &self.layers[i - 1];
        let x = xs + self.attention(l, &xs.apply(&l.ln_before), train);
        let m = x.apply(&l.ln_after).apply(&l.fc1).gelu("none").apply(&l.fc2).dropout(self.cfg.hidden_dropout_prob, train);
        x + m
    }
    fn pool(&self, features: &Tensor) -> Tensor {
        features.select(1, 0)
    }
    fn num_features(&self) -> i64 {
        self.cfg.hidden_size
    }
    fn stages(&self) -> &[Stage] {
        &self.stages
    }
}
