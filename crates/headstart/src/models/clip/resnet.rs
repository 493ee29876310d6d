//! CLIP's modified ResNet image tower (Radford et al., 2021, §2.4; OpenAI's `clip/model.py`,
//! open_clip's `modified_resnet.py`), under open_clip's names (`visual.*`):
//! - a stem of three 3×3 convolutions (the first strided) with batch norm and ReLU, then a 2×2
//!   average pool instead of a max pool;
//! - bottleneck blocks whose strided step is a 2×2 average pool after the 3×3 convolution, with
//!   the shortcut average-pooled before its 1×1 convolution (`downsample.{0,1}`);
//! - attention pooling: the spatial mean is prepended as a query token to the flattened grid,
//!   positions are added, and one multi-head attention step (q/k/v/c projections) gives the
//!   embedding.
//!
//! As a [`Backbone`]: stages `stem`, `layer1`..`layer4`, `attnpool`; the last outputs
//! `[B, 1, E]` and pooling L2-normalises it, as the ViT tower's does.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::Tensor;

use super::vision::stage;
use crate::models::{Backbone, Mode, Stage};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResNetCfg {
    /// Bottleneck blocks per stage.
    pub layers: [i64; 4],
    /// Stem width (64 for RN50); the final feature map has `32 × width` channels.
    pub width: i64,
    pub heads: i64,
    pub image_size: i64,
}

fn conv(p: nn::Path, i: i64, o: i64, k: i64, stride: i64) -> nn::Conv2D {
    nn::conv2d(p, i, o, k, nn::ConvConfig { stride, padding: k / 2, bias: false, ..Default::default() })
}

fn bn(p: nn::Path, c: i64) -> nn::BatchNorm {
    nn::batch_norm2d(p, c, Default::default())
}

fn avg_pool(x: &Tensor, s: i64) -> Tensor {
    if s == 1 {
        return x.shallow_clone();
    }
    x.avg_pool2d([s, s], [s, s], [0, 0], false, true, None)
}

struct Bottleneck {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    conv3: nn::Conv2D,
    bn3: nn::BatchNorm,
    down: Option<(nn::Conv2D, nn::BatchNorm)>,
    stride: i64,
}

impl Bottleneck {
    fn new(p: &nn::Path, inplanes: i64, planes: i64, stride: i64) -> Bottleneck {
        let down =
            (stride > 1 || inplanes != planes * 4).then(|| (conv(p / "downsample" / "0", inplanes, planes * 4, 1, 1), bn(p / "downsample" / "1", planes * 4)));
        Bottleneck {
            conv1: conv(p / "conv1", inplanes, planes, 1, 1),
            bn1: bn(p / "bn1", planes),
            conv2: conv(p / "conv2", planes, planes, 3, 1),
            bn2: bn(p / "bn2", planes),
            conv3: conv(p / "conv3", planes, planes * 4, 1, 1),
            bn3: bn(p / "bn3", planes * 4),
            down,
            stride,
        }
    }
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let out = x.apply(&self.conv1).apply_t(&self.bn1, train).relu();
        let out = out.apply(&self.conv2).apply_t(&self.bn2, train).relu();
        let out = avg_pool(&out, self.stride).apply(&self.conv3).apply_t(&self.bn3, train);
        let identity = match &self.down {
            Some((c, b)) => avg_pool(x, self.stride).apply(c).apply_t(b, train),
            None => x.shallow_clone(),
        };
        (out + identity).relu()
    }
}

pub struct ModifiedResNet {
    stem: Vec<(nn::Conv2D, nn::BatchNorm)>,
    layers: Vec<Vec<Bottleneck>>,
    pos: Tensor,
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    c: nn::Linear,
    heads: i64,
    embed_dim: i64,
    stages: Vec<Stage>,
}

impl ModifiedResNet {
    pub fn new(root: &nn::Path, cfg: &ResNetCfg, embed_dim: i64) -> ModifiedResNet {
        let v = root / "visual";
        let w = cfg.width;
        let stem = vec![
            (conv(&v / "conv1", 3, w / 2, 3, 2), bn(&v / "bn1", w / 2)),
            (conv(&v / "conv2", w / 2, w / 2, 3, 1), bn(&v / "bn2", w / 2)),
            (conv(&v / "conv3", w / 2, w, 3, 1), bn(&v / "bn3", w)),
        ];
        let mut inplanes = w;
        let mut layers = vec![];
        for (i, &n) in cfg.layers.iter().enumerate() {
            let planes = w << i;
            let lp = &v / format!("layer{}", i + 1);
            let mut blocks = vec![Bottleneck::new(&(&lp / 0), inplanes, planes, if i == 0 { 1 } else { 2 })];
            inplanes = planes * 4;
            blocks.extend((1..n).map(|j| Bottleneck::new(&(&lp / j), inplanes, planes, 1)));
            layers.push(blocks);
        }
        let d = w * 32;
        let a = &v / "attnpool";
        let grid = cfg.image_size / 32;
        let pos = a.var("positional_embedding", &[grid * grid + 1, d], nn::Init::Randn { mean: 0.0, stdev: (d as f64).powf(-0.5) });
        let lin = |n: &str, o| nn::linear(&a / n, d, o, Default::default());
        let mut stages = vec![stage("stem", &["visual.conv".into(), "visual.bn".into()])];
        stages.extend((1..=4).map(|i| stage(&format!("layer{i}"), &[format!("visual.layer{i}.")])));
        stages.push(stage("attnpool", &["visual.attnpool.".into()]));
        ModifiedResNet {
            stem,
            layers,
            pos,
            q: lin("q_proj", d),
            k: lin("k_proj", d),
            v: lin("v_proj", d),
            c: lin("c_proj", embed_dim),
            heads: cfg.heads,
            embed_dim,
            stages,
        }
    }

    /// Attention pooling of `[B, C, H, W]` to `[B, 1, E]`: only the mean token's output is
    /// kept, so only it is used as a query.
    fn attnpool(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("[B, C, H, W]");
        let tokens = x.reshape([b, c, h * w]).transpose(1, 2);
        let tokens = Tensor::cat(&[tokens.mean_dim([1i64].as_slice(), true, tokens.kind()), tokens], 1) + &self.pos;
        let n = h * w + 1;
        let hd = c / self.heads;
        let q = self.q.forward(&tokens.narrow(1, 0, 1)).view([b, 1, self.heads, hd]).transpose(1, 2);
        let k = self.k.forward(&tokens).view([b, n, self.heads, hd]).transpose(1, 2);
        let v = self.v.forward(&tokens).view([b, n, self.heads, hd]).transpose(1, 2);
        let ctx = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None, false);
        self.c.forward(&ctx.transpose(1, 2).reshape([b, 1, c]))
    }
}

impl Backbone for ModifiedResNet {
    fn forward_stage(&self, i: usize, xs: &Tensor, mode: Mode) -> Tensor {
        let train = mode.is_train();
        match i {
            0 => {
                let mut x = xs.shallow_clone();
                for (c, b) in &self.stem {
                    x = x.apply(c).apply_t(b, train).relu();
                }
                avg_pool(&x, 2)
            }
            5 => self.attnpool(xs),
            _ => self.layers[i - 1].iter().fold(xs.shallow_clone(), |x, blk| blk.forward(&x, train)),
        }
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
