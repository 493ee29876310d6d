//! Image backbones. Variable paths mirror the upstream PyTorch module trees, so checkpoints
//! load without renaming.

pub mod convnext;
pub mod efficientnet;
pub mod mobilenet;
pub mod resnet;
pub mod vgg;
pub mod vit;

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::Tensor;

use super::{Backbone, Head};
use crate::error::{Error, Result};

/// An architecture and its size parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family")]
pub enum Arch {
    #[serde(rename = "resnet")]
    ResNet(resnet::ResNetCfg),
    #[serde(rename = "mobilenet_v2")]
    MobileNetV2(mobilenet::MobileNetV2Cfg),
    #[serde(rename = "efficientnet_lite")]
    EfficientNetLite(efficientnet::LiteCfg),
    #[serde(rename = "vit")]
    ViT(vit::ViTCfg),
    #[serde(rename = "convnext")]
    ConvNext(convnext::ConvNextCfg),
    #[serde(rename = "vgg")]
    Vgg(vgg::VggCfg),
}

impl Arch {
    /// Convolutional or not, for the `auto` precision and the channels-last layout.
    pub fn family(&self) -> crate::precision::Family {
        match self {
            Arch::ViT(_) => crate::precision::Family::Other,
            _ => crate::precision::Family::Conv,
        }
    }

    /// The same family sized by a Hugging Face `config.json` (ViT and ConvNeXt read their
    /// dimensions from it; other families are fixed by the registry).
    pub fn with_hf_config(&self, config: &serde_json::Value) -> std::result::Result<Arch, String> {
        fn merge<T: serde::Serialize + serde::de::DeserializeOwned>(base: &T, config: &serde_json::Value) -> std::result::Result<T, String> {
            let mut v = serde_json::to_value(base).map_err(|e| e.to_string())?;
            let obj = v.as_object_mut().expect("struct");
            for (k, slot) in obj.iter_mut() {
                if let Some(x) = config.get(k) {
                    *slot = x.clone();
                }
            }
            serde_json::from_value(v).map_err(|e| format!("config.json: {e}"))
        }
        Ok(match self {
            Arch::ViT(c) => Arch::ViT(merge(c, config)?),
            Arch::ConvNext(c) => Arch::ConvNext(merge(c, config)?),
            other => other.clone(),
        })
    }
}

pub fn build(arch: &Arch, p: &nn::Path, in_channels: i64, num_classes: Option<i64>) -> Result<(Box<dyn Backbone>, Option<Head>)> {
    if in_channels != 1 && in_channels != 3 {
        return Err(Error::Model(format!("input channels must be 1 or 3, not {in_channels}")));
    }
    Ok(match arch {
        Arch::ResNet(c) => resnet::build(c, p, in_channels, num_classes),
        Arch::MobileNetV2(c) => mobilenet::build(c, p, in_channels, num_classes),
        Arch::EfficientNetLite(c) => efficientnet::build(c, p, in_channels, num_classes),
        Arch::ViT(c) => vit::build(c, p, in_channels, num_classes),
        Arch::ConvNext(c) => convnext::build(c, p, in_channels, num_classes),
        Arch::Vgg(c) => vgg::build(c, p, in_channels, num_classes)?,
    })
}

/// Convolution without bias followed by BatchNorm, torchvision's `Conv2dNormActivation`
/// layout (`{prefix}.0` conv, `{prefix}.1` norm) or named paths.
#[derive(Debug)]
pub struct ConvBn {
    pub conv: nn::Conv2D,
    pub bn: nn::BatchNorm,
    pub eps: f64,
    /// TF "same" padding (kernel, stride) applied before the conv, asymmetric when odd.
    pub same: Option<(i64, i64)>,
}

pub struct ConvSpec {
    pub cin: i64,
    pub cout: i64,
    pub k: i64,
    pub stride: i64,
    pub groups: i64,
    pub eps: f64,
}

impl ConvBn {
    pub fn new(conv_p: nn::Path, bn_p: nn::Path, s: ConvSpec, same: bool) -> ConvBn {
        let cfg = nn::ConvConfig { stride: s.stride, padding: if same { 0 } else { (s.k - 1) / 2 }, groups: s.groups, bias: false, ..Default::default() };
        let conv = nn::conv2d(conv_p, s.cin, s.cout, s.k, cfg);
        let bn = nn::batch_norm2d(bn_p, s.cout, nn::BatchNormConfig { eps: s.eps, ..Default::default() });
        ConvBn { conv, bn, eps: s.eps, same: same.then_some((s.k, s.stride)) }
    }
    pub fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        let xs = match self.same {
            Some((k, s)) => pad_same(xs, k, s),
            None => xs.shallow_clone(),
        };
        let ys = self.conv.forward(&xs);
        // Data-parallel training with synchronised BatchNorm (tch's default momentum, 0.1).
        if let Some(out) = train.then(|| crate::dist::sync_batch_norm(&ys, &self.bn, 0.1, self.eps)).flatten() {
            return out;
        }
        ys.apply_t(&self.bn, train)
    }
}

/// TensorFlow "SAME" padding: total `max((ceil(n/s) − 1)·s + k − n, 0)`, the extra pixel
/// going to the bottom/right.
pub fn pad_same(xs: &Tensor, k: i64, s: i64) -> Tensor {
    let size = xs.size();
    let (h, w) = (size[2], size[3]);
    let total = |n: i64| (((n + s - 1) / s - 1) * s + k - n).max(0);
    let (ph, pw) = (total(h), total(w));
    if ph == 0 && pw == 0 {
        return xs.shallow_clone();
    }
    xs.constant_pad_nd([pw / 2, pw - pw / 2, ph / 2, ph - ph / 2])
}

/// Global average pooling to `[B, C]`.
pub fn global_avg_pool(xs: &Tensor) -> Tensor {
    xs.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
}

pub fn linear_head(p: nn::Path, prefix: &str, nin: i64, nout: i64, dropout: f64) -> Head {
    Head { linear: nn::linear(p, nin, nout, Default::default()), dropout, prefix: prefix.to_string() }
}

/// ReLU6 as `at::relu6` (hardtanh): its backward kernel is far faster than `clamp`'s, in bf16
/// especially.
pub fn relu6(xs: &Tensor) -> Tensor {
    xs.relu6()
}
