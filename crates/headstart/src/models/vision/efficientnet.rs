//! EfficientNet-Lite (Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional
//! Neural Networks", 2019; the Lite variants of the TensorFlow TPU repository): no
//! squeeze-excitation, ReLU6, fixed 32-channel stem and 1280-channel head, TF "same" padding,
//! BatchNorm eps 1e-3. Variable names follow the `_conv_stem`/`_blocks.{i}`/`_fc` layout of
//! the widely used PyTorch port, which the packaged Lite weights use.

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::Tensor;

use super::{global_avg_pool, linear_head, relu6, ConvBn, ConvSpec};
use crate::models::{Backbone, Head, Mode, Stage};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiteCfg {
    pub width: f64,
    pub depth: f64,
    pub dropout: f64,
    /// Stochastic-depth rate at the last block (linear in block index), train mode only.
    pub drop_connect: f64,
}

/// (repeats, kernel, stride, expansion, output channels) per stage.
const STAGES: [(i64, i64, i64, i64, i64); 7] =
    [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)];
const EPS: f64 = 1e-3;

fn round_filters(c: i64, width: f64) -> i64 {
    let v = c as f64 * width;
    let mut n = 8.max(((v + 4.0) as i64) / 8 * 8);
    if (n as f64) < 0.9 * v {
        n += 8;
    }
    n
}

struct MBConv {
    expand: Option<ConvBn>,
    dw: ConvBn,
    project: ConvBn,
    residual: bool,
    drop_rate: f64,
}

pub struct EfficientNetLite {
    stem: ConvBn,
    blocks: Vec<MBConv>,
    /// The blocks of each stage between the stem and the head conv.
    stage_blocks: Vec<std::ops::Range<usize>>,
    head_conv: ConvBn,
    stages: Vec<Stage>,
}

pub fn build(cfg: &LiteCfg, p: &nn::Path, in_channels: i64, num_classes: Option<i64>) -> (Box<dyn Backbone>, Option<Head>) {
    let spec = |cin, cout, k, stride, groups| ConvSpec { cin, cout, k, stride, groups, eps: EPS };
    let stem = ConvBn::new(p / "_conv_stem", p / "_bn0", spec(in_channels, 32, 3, 2, 1), true);
    let mut stages = vec![Stage::new("stem", &["_conv_stem".into(), "_bn0".into()])];
    let total: i64 = STAGES.iter().enumerate().map(|(i, s)| if i == 0 || i == STAGES.len() - 1 { s.0 } else { (s.0 as f64 * cfg.depth).ceil() as i64 }).sum();
    let mut blocks = vec![];
    let mut stage_blocks = vec![];
    let mut cin = 32;
    for (si, &(repeats, k, s, e, c)) in STAGES.iter().enumerate() {
        let first = blocks.len();
        // Lite keeps the first and last stage at one block whatever the depth multiplier.
        let n = if si == 0 || si == STAGES.len() - 1 { repeats } else { (repeats as f64 * cfg.depth).ceil() as i64 };
        let cout = round_filters(c, cfg.width);
        let mut prefixes = vec![];
        for i in 0..n {
            let idx = blocks.len() as i64;
            let bp = p / "_blocks" / idx;
            let stride = if i == 0 { s } else { 1 };
            let hidden = cin * e;
            let expand = (e != 1).then(|| ConvBn::new(&bp / "_expand_conv", &bp / "_bn0", spec(cin, hidden, 1, 1, 1), true));
            let dw = ConvBn::new(&bp / "_depthwise_conv", &bp / "_bn1", spec(hidden, hidden, k, stride, hidden), true);
            let project = ConvBn::new(&bp / "_project_conv", &bp / "_bn2", spec(hidden, cout, 1, 1, 1), true);
            let drop_rate = cfg.drop_connect * idx as f64 / total as f64;
            blocks.push(MBConv { expand, dw, project, residual: stride == 1 && cin == cout, drop_rate });
            prefixes.push(format!("_blocks.{idx}"));
            cin = cout;
        }
        stages.push(Stage::new(format!("stage{}", si + 1), &prefixes));
        stage_blocks.push(first..blocks.len());
    }
    let head_conv = ConvBn::new(p / "_conv_head", p / "_bn1", spec(cin, 1280, 1, 1, 1), true);
    stages.push(Stage::new("head_conv", &["_conv_head".into(), "_bn1".into()]));
    let head = num_classes.map(|n| linear_head(p / "_fc", "_fc", 1280, n, cfg.dropout));
    (Box::new(EfficientNetLite { stem, blocks, stage_blocks, head_conv, stages }), head)
}

/// Stochastic depth: drops whole residual branches per sample, rescaling the survivors.
fn drop_connect(xs: &Tensor, rate: f64) -> Tensor {
    let keep = 1.0 - rate;
    let b = xs.size()[0];
    let mask = (Tensor::rand([b, 1, 1, 1], (xs.kind(), xs.device())) + keep).floor();
    xs / keep * mask
}

impl Backbone for EfficientNetLite {
    fn forward_stage(&self, i: usize, xs: &Tensor, mode: Mode) -> Tensor {
        let train = mode.is_train();
        if i == 0 {
            return relu6(&self.stem.forward(xs, train));
        }
        if i == self.stages.len() - 1 {
            return relu6(&self.head_conv.forward(xs, train));
        }
        let mut h = xs.shallow_clone();
        for b in &self.blocks[self.stage_blocks[i - 1].clone()] {
            let input = h.shallow_clone();
            if let Some(e) = &b.expand {
                h = relu6(&e.forward(&h, train));
            }
            h = relu6(&b.dw.forward(&h, train));
            h = b.project.forward(&h, train);
            if b.residual {
                if train && b.drop_rate > 0.0 {
                    h = drop_connect(&h, b.drop_rate);
                }
                h += input;
            }
        }
        h
    }
    fn pool(&self, features: &Tensor) -> Tensor {
        global_avg_pool(features)
    }
    fn num_features(&self) -> i64 {
        1280
    }
    fn stages(&self) -> &[Stage] {
        &self.stages
    }
}
