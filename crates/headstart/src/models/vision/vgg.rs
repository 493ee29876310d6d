//! VGG (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
//! Recognition", 2014), laid out as torchvision's `vgg11`..`vgg19` and `vgg*_bn`:
//! `features.{i}` (3×3 convolutions, optional batch norm, ReLU, 2×2 max pools, numbered as
//! torchvision's `nn.Sequential` numbers them), a 7×7 adaptive average pool, and
//! `classifier.{0,3,6}` (fc6, fc7, the 1000-way layer).
//!
//! Stages: `block1`..`block5` (each ending with its max pool), then `fc` (pool, fc6, fc7 with
//! their ReLU and dropout), whose output `[B, hidden, 1, 1]` pools to the 4096-wide pre-logits
//! features that transfer learning on VGG usually starts from; the head is `classifier.6`.
//!
//! timm's checkpoints (`timm/vgg16.tv_in1k`, …: torchvision's weights re-saved) hold fc6 and fc7
//! as convolutions (`pre_logits.fc1` 7×7, `pre_logits.fc2` 1×1) and the classifier as `head.fc`;
//! [`VggLayout::Timm`] names the variables so, with the same shapes' numbers: fc6's kernel
//! `[hidden, C, 7, 7]` is torchvision's `[hidden, C·49]` row for row. Features are computed
//! as torchvision does (average pool to 7×7, then fc6), which is timm's result at 224 × 224.

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::Tensor;

use super::linear_head;
use crate::models::{Backbone, Head, Mode, Stage};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VggCfg {
    /// 11, 13, 16 or 19 weight layers.
    pub depth: i64,
    pub batch_norm: bool,
    /// Channels of the five blocks; torchvision uses [64, 128, 256, 512, 512].
    pub widths: [i64; 5],
    /// Width of fc6 and fc7; torchvision uses 4096.
    pub hidden: i64,
    /// The checkpoint's names for fc6, fc7 and the classifier.
    #[serde(default)]
    pub layout: VggLayout,
}

/// Which names the checkpoint gives the fully connected layers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VggLayout {
    /// torchvision: `classifier.{0,3,6}`, linear layers.
    #[default]
    Torchvision,
    /// timm: `pre_logits.fc1` (7×7 convolution), `pre_logits.fc2` (1×1), `head.fc`.
    Timm,
}

impl VggCfg {
    /// Convolutions per block (torchvision's configurations A, B, D, E).
    pub fn convs_per_block(&self) -> Option<[usize; 5]> {
        match self.depth {
            11 => Some([1, 1, 2, 2, 2]),
            13 => Some([2, 2, 2, 2, 2]),
            16 => Some([2, 2, 3, 3, 3]),
            19 => Some([2, 2, 4, 4, 4]),
            _ => None,
        }
    }
}

const DROPOUT: f64 = 0.5;

struct Conv {
    conv: nn::Conv2D,
    bn: Option<nn::BatchNorm>,
}

/// A fully connected layer stored as a linear layer or as a convolution covering its input.
struct Fc {
    w: Tensor,
    b: Tensor,
}

impl Fc {
    fn new(p: nn::Path, shape: &[i64]) -> Fc {
        let fan_in: i64 = shape[1..].iter().product();
        let bound = 1.0 / (fan_in as f64).sqrt();
        Fc {
            w: p.var("weight", shape, nn::Init::Uniform { lo: -bound, up: bound }),
            b: p.var("bias", &[shape[0]], nn::Init::Uniform { lo: -bound, up: bound }),
        }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.w.view([self.w.size()[0], -1]), Some(&self.b))
    }
}

pub struct Vgg {
    blocks: Vec<Vec<Conv>>,
    fc6: Fc,
    fc7: Fc,
    hidden: i64,
    stages: Vec<Stage>,
}

/// Builds the network; errors on a depth other than 11, 13, 16 or 19.
pub fn build(cfg: &VggCfg, p: &nn::Path, in_channels: i64, num_classes: Option<i64>) -> crate::Result<(Box<dyn Backbone>, Option<Head>)> {
    let per_block = cfg.convs_per_block().ok_or_else(|| crate::Error::Model(format!("VGG depth {} is not one of 11, 13, 16, 19", cfg.depth)))?;
    let f = p / "features";
    let conv_cfg = nn::ConvConfig { padding: 1, ..Default::default() };
    let (mut idx, mut cin) = (0i64, in_channels);
    let mut blocks = vec![];
    let mut stages = vec![];
    for (b, (&n, &width)) in per_block.iter().zip(&cfg.widths).enumerate() {
        let first = idx;
        let mut convs = vec![];
        for _ in 0..n {
            let conv = nn::conv2d(&f / idx, cin, width, 3, conv_cfg);
            let bn = cfg.batch_norm.then(|| nn::batch_norm2d(&f / (idx + 1), width, Default::default()));
            idx += if cfg.batch_norm { 3 } else { 2 };
            convs.push(Conv { conv, bn });
            cin = width;
        }
        idx += 1; // the max pool
        let prefixes: Vec<String> = (first..idx).map(|i| format!("features.{i}")).collect();
        stages.push(Stage::new(format!("block{}", b + 1), &prefixes));
        blocks.push(convs);
    }
    let h = cfg.hidden;
    let (fc6, fc7, head) = match cfg.layout {
        VggLayout::Torchvision => {
            let c = p / "classifier";
            stages.push(Stage::new("fc", &["classifier.0".into(), "classifier.3".into()]));
            (Fc::new(&c / 0, &[h, cin * 49]), Fc::new(&c / 3, &[h, h]), num_classes.map(|n| linear_head(&c / 6, "classifier.6", h, n, 0.0)))
        }
        VggLayout::Timm => {
            let c = p / "pre_logits";
            stages.push(Stage::new("fc", &["pre_logits.".into()]));
            (
                Fc::new(&c / "fc1", &[h, cin, 7, 7]),
                Fc::new(&c / "fc2", &[h, h, 1, 1]),
                num_classes.map(|n| linear_head(p / "head" / "fc", "head.fc", h, n, 0.0)),
            )
        }
    };
    Ok((Box::new(Vgg { blocks, fc6, fc7, hidden: cfg.hidden, stages }), head))
}

impl Backbone for Vgg {
    fn forward_stage(&self, i: usize, xs: &Tensor, mode: Mode) -> Tensor {
        let train = mode.is_train();
        if i == self.blocks.len() {
            let x = xs.adaptive_avg_pool2d([7, 7]).flatten(1, -1);
            let x = self.fc6.forward(&x).relu().dropout(DROPOUT, train);
            let x = self.fc7.forward(&x).relu().dropout(DROPOUT, train);
            return x.view([-1, self.hidden, 1, 1]);
        }
        let mut x = xs.shallow_clone();
        for c in &self.blocks[i] {
            x = x.apply(&c.conv);
            if let Some(bn) = &c.bn {
                x = x.apply_t(bn, train);
            }
            x = x.relu();
        }
        x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
    }
    fn pool(&self, features: &Tensor) -> Tensor {
        features.flatten(1, -1)
    }
    fn num_features(&self) -> i64 {
        self.hidden
    }
    fn stages(&self) -> &[Stage] {
        &self.stages
    }
}
