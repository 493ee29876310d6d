//! ResNet (He et al., "Deep Residual Learning for Image Recognition", 2015), laid out as
//! torchvision's `resnet*` (v1.5: the stride of a bottleneck sits on its 3×3 conv):
//! `conv1`, `bn1`, `layer1`..`layer4`, `fc`.

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::Tensor;

use super::{global_avg_pool, linear_head, ConvBn, ConvSpec};
use crate::models::{Backbone, Head, Mode, Stage};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResNetCfg {
    pub bottleneck: bool,
    pub layers: [i64; 4],
    /// Planes per layer; torchvision uses [64, 128, 256, 512]. The stem has `widths[0]`.
    pub widths: [i64; 4],
}

const EPS: f64 = 1e-5;

struct Block {
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl Block {
    fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut h = xs.shallow_clone();
        let last = self.convs.len() - 1;
        for (i, c) in self.convs.iter().enumerate() {
            h = c.forward(&h, train);
            if i < last {
                h = h.relu_();
            }
        }
        let id = match &self.downsample {
            Some(d) => d.forward(xs, train),
            None => xs.shallow_clone(),
        };
        // In place, as torchvision's `ReLU(inplace=True)`: the sum is a fresh tensor.
        (h + id).relu_()
    }
}

pub struct ResNet {
    stem: ConvBn,
    layers: Vec<Vec<Block>>,
    num_features: i64,
    stages: Vec<Stage>,
}

fn cb(p: &nn::Path, conv: &str, bn: &str, s: ConvSpec) -> ConvBn {
    ConvBn::new(p / conv, p / bn, s, false)
}

pub fn build(cfg: &ResNetCfg, p: &nn::Path, in_channels: i64, num_classes: Option<i64>) -> (Box<dyn Backbone>, Option<Head>) {
    let spec = |cin, cout, k, stride| ConvSpec { cin, cout, k, stride, groups: 1, eps: EPS };
    let mut cin = cfg.widths[0];
    let stem = cb(p, "conv1", "bn1", spec(in_channels, cin, 7, 2));
    let expansion = if cfg.bottleneck { 4 } else { 1 };
    let mut layers = vec![];
    let mut stages = vec![Stage::new("stem", &["conv1".into(), "bn1".into()])];
    for (li, (&n, &planes)) in cfg.layers.iter().zip(&cfg.widths).enumerate() {
        let name = format!("layer{}", li + 1);
        let lp = p / name.as_str();
        let mut blocks = vec![];
        for bi in 0..n {
            let bp = &lp / bi;
            let stride = if bi == 0 && li > 0 { 2 } else { 1 };
            let cout = planes * expansion;
            let convs = if cfg.bottleneck {
                vec![
                    cb(&bp, "conv1", "bn1", spec(cin, planes, 1, 1)),
                    cb(&bp, "conv2", "bn2", spec(planes, planes, 3, stride)),
                    cb(&bp, "conv3", "bn3", spec(planes, cout, 1, 1)),
                ]
            } else {
                vec![cb(&bp, "conv1", "bn1", spec(cin, planes, 3, stride)), cb(&bp, "conv2", "bn2", spec(planes, planes, 3, 1))]
            };
            let downsample =
                (stride != 1 || cin != cout).then(|| ConvBn::new(&bp / "downsample" / 0, &bp / "downsample" / 1, spec(cin, cout, 1, stride), false));
            blocks.push(Block { convs, downsample });
            cin = cout;
        }
        layers.push(blocks);
        stages.push(Stage::new(name.clone(), &[name]));
    }
    let head = num_classes.map(|n| linear_head(p / "fc", "fc", cin, n, 0.0));
    (Box::new(ResNet { stem, layers, num_features: cin, stages }), head)
}

impl Backbone for ResNet {
    fn forward_stage(&self, i: usize, xs: &Tensor, mode: Mode) -> Tensor {
        let train = mode.is_train();
        if i == 0 {
            return self.stem.forward(xs, train).relu_().max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        }
        let mut h = xs.shallow_clone();
        for b in &self.layers[i - 1] {
            h = b.forward(&h, train);
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
