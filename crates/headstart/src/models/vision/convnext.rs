//! ConvNeXt (Liu et al., "A ConvNet for the 2020s", 2022), laid out as Hugging Face's
//! `ConvNextModel` checkpoints: `embeddings.*`, `encoder.stages.{s}.*`, `layernorm`.
//! Pooling is global average then the final LayerNorm, as `ConvNextModel.pooler_output`.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::Tensor;

use super::linear_head;
use crate::models::{Backbone, Head, Mode, Stage};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvNextCfg {
    pub hidden_sizes: [i64; 4],
    pub depths: [i64; 4],
    pub patch_size: i64,
    /// Epsilon of the final LayerNorm; the inner ones use 1e-6.
    pub layer_norm_eps: f64,
    pub layer_scale_init_value: f64,
    /// Stochastic depth at the last block (linear in block index), train mode only.
    pub drop_path_rate: f64,
}

const INNER_EPS: f64 = 1e-6;

struct Block {
    dwconv: nn::Conv2D,
    norm: nn::LayerNorm,
    pw1: nn::Linear,
    pw2: nn::Linear,
    scale: Option<Tensor>,
    drop_path: f64,
}

struct StageMods {
    down: Option<(nn::LayerNorm, nn::Conv2D)>,
    blocks: Vec<Block>,
}

pub struct ConvNext {
    stem: nn::Conv2D,
    stem_norm: nn::LayerNorm,
    stage_mods: Vec<StageMods>,
    norm: nn::LayerNorm,
    num_features: i64,
    stages: Vec<Stage>,
}

/// LayerNorm over the channel dimension of an NCHW tensor.
fn ln_channels_first(ln: &nn::LayerNorm, x: &Tensor) -> Tensor {
    x.permute([0, 2, 3, 1]).apply(ln).permute([0, 3, 1, 2])
}

pub fn build(cfg: &ConvNextCfg, p: &nn::Path, in_channels: i64, num_classes: Option<i64>) -> (Box<dyn Backbone>, Option<Head>) {
    let ln = |p: nn::Path, c: i64, eps: f64| nn::layer_norm(p, vec![c], nn::LayerNormConfig { eps, ..Default::default() });
    let e = p / "embeddings";
    let c0 = cfg.hidden_sizes[0];
    let stem = nn::conv2d(&e / "patch_embeddings", in_channels, c0, cfg.patch_size, nn::ConvConfig { stride: cfg.patch_size, ..Default::default() });
    let stem_norm = ln(&e / "layernorm", c0, INNER_EPS);
    let mut stages = vec![Stage::new("stem", &["embeddings".into()])];
    let total: i64 = cfg.depths.iter().sum();
    let mut idx = 0;
    let mut stage_mods = vec![];
    let mut cin = c0;
    for (s, (&depth, &c)) in cfg.depths.iter().zip(&cfg.hidden_sizes).enumerate() {
        let sp = p / "encoder" / "stages" / s as i64;
        let down = (s > 0).then(|| {
            let dp = &sp / "downsampling_layer";
            (ln(&dp / 0, cin, INNER_EPS), nn::conv2d(&dp / 1, cin, c, 2, nn::ConvConfig { stride: 2, ..Default::default() }))
        });
        let mut blocks = vec![];
        for j in 0..depth {
            let bp = &sp / "layers" / j;
            let dw = nn::ConvConfig { padding: 3, groups: c, ..Default::default() };
            let scale = (cfg.layer_scale_init_value > 0.0).then(|| bp.var("layer_scale_parameter", &[c], nn::Init::Const(cfg.layer_scale_init_value)));
            blocks.push(Block {
                dwconv: nn::conv2d(&bp / "dwconv", c, c, 7, dw),
                norm: ln(&bp / "layernorm", c, INNER_EPS),
                pw1: nn::linear(&bp / "pwconv1", c, 4 * c, Default::default()),
                pw2: nn::linear(&bp / "pwconv2", 4 * c, c, Default::default()),
                scale,
                drop_path: if total > 1 { cfg.drop_path_rate * idx as f64 / (total - 1) as f64 } else { 0.0 },
            });
            idx += 1;
        }
        stage_mods.push(StageMods { down, blocks });
        stages.push(Stage::new(format!("stage{}", s + 1), &[format!("encoder.stages.{s}")]));
        cin = c;
    }
    let norm = ln(p / "layernorm", cin, cfg.layer_norm_eps);
    stages.push(Stage::new("final_norm", &["layernorm".into()]));
    let head = num_classes.map(|n| linear_head(p / "classifier", "classifier", cin, n, 0.0));
    (Box::new(ConvNext { stem, stem_norm, stage_mods, norm, num_features: cin, stages }), head)
}

fn drop_path(x: &Tensor, rate: f64) -> Tensor {
    let keep = 1.0 - rate;
    let mask = (Tensor::rand([x.size()[0], 1, 1, 1], (x.kind(), x.device())) + keep).floor();
    x / keep * mask
}

impl Backbone for ConvNext {
    /// The last stage (`final_norm`) holds the LayerNorm that [`Backbone::pool`] applies; as
    /// a feature stage it passes its input through.
    fn forward_stage(&self, i: usize, xs: &Tensor, mode: Mode) -> Tensor {
        let train = mode.is_train();
        if i == 0 {
            return ln_channels_first(&self.stem_norm, &self.stem.forward(xs));
        }
        if i == self.stage_mods.len() + 1 {
            return xs.shallow_clone();
        }
        let s = &self.stage_mods[i - 1];
        let mut x = match &s.down {
            Some((ln, conv)) => conv.forward(&ln_channels_first(ln, xs)),
            None => xs.shallow_clone(),
        };
        for b in &s.blocks {
            let mut h = b.dwconv.forward(&x).permute([0, 2, 3, 1]).apply(&b.norm).apply(&b.pw1).gelu("none").apply(&b.pw2);
            if let Some(scale) = &b.scale {
                h *= scale;
            }
            h = h.permute([0, 3, 1, 2]);
            if train && b.drop_path > 0.0 {
                h = drop_path(&h, b.drop_path);
            }
            x += h;
        }
        x
    }
    fn pool(&self, features: &Tensor) -> Tensor {
        features.mean_dim(&[2i64, 3][..], false, features.kind()).apply(&self.norm)
    }
    fn num_features(&self) -> i64 {
        self.num_features
    }
    fn stages(&self) -> &[Stage] {
        &self.stages
    }
}
