//! MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
//! 2018), laid out as torchvision's `mobilenet_v2`: `features.{i}` and `classifier.1`.

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::Tensor;

use super::{global_avg_pool, linear_head, relu6, ConvBn, ConvSpec};
use crate::models::{Backbone, Head, Mode, Stage};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MobileNetV2Cfg {
    pub width_mult: f64,
}

/// (expansion t, channels c, repeats n, first stride s), from the paper's Table 2.
const SETTINGS: [(i64, i64, i64, i64); 7] = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];
const EPS: f64 = 1e-5;

/// Rounds channel counts to a multiple of `d`, never dropping below 90% of `v`.
pub fn make_divisible(v: f64, d: i64) -> i64 {
    let mut n = d.max(((v + d as f64 / 2.0) as i64) / d * d);
    if (n as f64) < 0.9 * v {
        n += d;
    }
    n
}

enum Layer {
    Conv(ConvBn),
    Block(InvertedResidual),
}

struct InvertedResidual {
    expand: Option<ConvBn>,
    dw: ConvBn,
    project: ConvBn,
    residual: bool,
}

impl InvertedResidual {
    fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut h = xs.shallow_clone();
        if let Some(e) = &self.expand {
            h = relu6(&e.forward(&h, train));
        }
        h = relu6(&self.dw.forward(&h, train));
        h = self.project.forward(&h, train);
        if self.residual {
            h + xs
        } else {
            h
        }
    }
}

pub struct MobileNetV2 {
    layers: Vec<Layer>,
    /// The layers of each stage.
    stage_layers: Vec<std::ops::Range<usize>>,
    num_features: i64,
    stages: Vec<Stage>,
}

fn conv_bn(p: &nn::Path, cin: i64, cout: i64, k: i64, stride: i64, groups: i64) -> ConvBn {
    ConvBn::new(p / 0, p / 1, ConvSpec { cin, cout, k, stride, groups, eps: EPS }, false)
}

pub fn build(cfg: &MobileNetV2Cfg, p: &nn::Path, in_channels: i64, num_classes: Option<i64>) -> (Box<dyn Backbone>, Option<Head>) {
    let f = p / "features";
    let mut cin = make_divisible(32.0 * cfg.width_mult, 8);
    let last = make_divisible(1280.0 * cfg.width_mult.max(1.0), 8);
    let mut layers = vec![Layer::Conv(conv_bn(&(&f / 0), in_channels, cin, 3, 2, 1))];
    let mut stages = vec![Stage::new("stem", &["features.0".into()])];
    let mut stage_layers = vec![0..1];
    for (si, &(t, c, n, s)) in SETTINGS.iter().enumerate() {
        let first = layers.len();
        let cout = make_divisible(c as f64 * cfg.width_mult, 8);
        let mut prefixes = vec![];
        for i in 0..n {
            let idx = layers.len();
            let stride = if i == 0 { s } else { 1 };
            let hidden = cin * t;
            let bp = &f / idx / "conv";
            let (expand, dw, project) = if t == 1 {
                (
                    None,
                    conv_bn(&(&bp / 0), hidden, hidden, 3, stride, hidden),
                    ConvBn::new(&bp / 1, &bp / 2, ConvSpec { cin: hidden, cout, k: 1, stride: 1, groups: 1, eps: EPS }, false),
                )
            } else {
                (
                    Some(conv_bn(&(&bp / 0), cin, hidden, 1, 1, 1)),
                    conv_bn(&(&bp / 1), hidden, hidden, 3, stride, hidden),
                    ConvBn::new(&bp / 2, &bp / 3, ConvSpec { cin: hidden, cout, k: 1, stride: 1, groups: 1, eps: EPS }, false),
                )
            };
            layers.push(Layer::Block(InvertedResidual { expand, dw, project, residual: stride == 1 && cin == cout }));
            prefixes.push(format!("features.{idx}"));
            cin = cout;
        }
        stages.push(Stage::new(format!("stage{}", si + 1), &prefixes));
        stage_layers.push(first..layers.len());
    }
    let idx = layers.len();
    stage_layers.push(idx..idx + 1);
    layers.push(Layer::Conv(conv_bn(&(&f / idx), cin, last, 1, 1, 1)));
    stages.push(Stage::new("head_conv", &[format!("features.{idx}")]));
    let head = num_classes.map(|n| linear_head(p / "classifier" / 1, "classifier.1", last, n, 0.2));
    (Box::new(MobileNetV2 { layers, stage_layers, num_features: last, stages }), head)
}

impl Backbone for MobileNetV2 {
    fn forward_stage(&self, i: usize, xs: &Tensor, mode: Mode) -> Tensor {
        let train = mode.is_train();
        let mut h = xs.shallow_clone();
        for l in &self.layers[self.stage_layers[i].clone()] {
            h = match l {
                Layer::Conv(c) => relu6(&c.forward(&h, train)),
                Layer::Block(b) => b.forward(&h, train),
            };
        }
        h
    }
    fn pool(&self, features: &Tensor) -> Tensor {
        global_avg_pool(features)
    }
    fn num_features(&self) -> i64 {
        self.num_features
    }
    fn stages(&self) -> &[Stage] {
        &self.stages
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn make_divisible_matches_torchvision() {
        use super::make_divisible as m;
        assert_eq!(m(32.0, 8), 32);
        assert_eq!(m(32.0 * 0.35, 8), 16);
        assert_eq!(m(24.0 * 0.5, 8), 16);
        assert_eq!(m(3.2, 8), 8);
    }
}
