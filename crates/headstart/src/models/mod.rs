//! Backbones and the model registry.

pub mod audio;
pub mod clip;
pub mod registry;
pub mod text;
pub mod vision;

use serde::Serialize;
use tch::nn::VarStore;
use tch::Tensor;

use crate::error::{Error, Result};

/// Train or eval behaviour of dropout and normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

impl Mode {
    pub fn is_train(self) -> bool {
        self == Mode::Train
    }
}

/// A named group of parameters, in input → output order. Freezing works per stage.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub name: String,
    /// Variable-name prefixes (each ending in '.') that belong to this stage.
    pub prefixes: Vec<String>,
}

impl Stage {
    pub fn new(name: impl Into<String>, prefixes: &[String]) -> Stage {
        Stage { name: name.into(), prefixes: prefixes.iter().map(|p| if p.ends_with('.') { p.clone() } else { format!("{p}.") }).collect() }
    }
    pub fn contains(&self, var: &str) -> bool {
        self.prefixes.iter().any(|p| var.starts_with(p.as_str()))
    }
}

/// timm's backbone convention.
pub trait Backbone: Send {
    /// Runs stage `i` of [`Backbone::stages`] on the output of stage `i − 1` (the input image
    /// for stage 0). Fine-tuning runs frozen stages without autograd and the rest with it.
    fn forward_stage(&self, i: usize, xs: &Tensor, mode: Mode) -> Tensor;
    /// Unpooled features, `[B, C, H, W]` or `[B, T, D]`: every stage in order.
    fn forward_features(&self, xs: &Tensor, mode: Mode) -> Tensor {
        self.forward_range(0..self.stages().len(), xs, mode)
    }
    /// Stages `range` in order.
    fn forward_range(&self, range: std::ops::Range<usize>, xs: &Tensor, mode: Mode) -> Tensor {
        let mut x = xs.shallow_clone();
        for i in range {
            x = self.forward_stage(i, &x, mode);
        }
        x
    }
    /// Pre-logits features, `[B, num_features]`.
    fn pool(&self, features: &Tensor) -> Tensor;
    fn num_features(&self) -> i64;
    /// Ordered stages; every backbone variable belongs to exactly one.
    fn stages(&self) -> &[Stage];
}

/// What the shared run code needs from any encoder (vision backbone, text transformer):
/// ordered stages, the forward pass from a stage on, pooling to one vector per example, and
/// the width of that vector.
pub trait Encoder {
    /// One batch of inputs as the first stage takes them (pixels, token ids with a mask).
    type Input;
    /// Ordered stages, input → output; every encoder variable belongs to exactly one.
    fn stages(&self) -> &[Stage];
    /// Unpooled features of stages `first..` given the input of stage `first` (the batch
    /// itself for stage 0).
    fn forward_from(&self, x: &Tensor, input: &Self::Input, first: usize, mode: Mode) -> Tensor;
    /// Pre-logits features `[B, num_features]` from unpooled ones.
    fn pool(&self, h: &Tensor, input: &Self::Input) -> Tensor;
    /// Width of the pooled features.
    fn num_features(&self) -> i64;
}

/// A backbone with an optional classifier head, its variables in one store.
pub struct Model {
    pub vs: VarStore,
    pub backbone: Box<dyn Backbone>,
    pub head: Option<Head>,
    pub arch: vision::Arch,
}

/// A linear classifier, with the dropout that precedes it in the upstream model.
pub struct Head {
    pub linear: tch::nn::Linear,
    pub dropout: f64,
    /// The variable-name prefix of the head (`fc`, `classifier.1`, `_fc`).
    pub prefix: String,
}

impl Model {
    pub fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        let f = self.backbone.pool(&self.backbone.forward_features(xs, mode));
        match &self.head {
            Some(h) => Ok(f.dropout(h.dropout, mode.is_train()).apply(&h.linear)),
            None => Ok(f),
        }
    }

    /// Builds `arch` with fresh variables; `num_classes` sizes a head (None: no head).
    pub fn build(arch: &vision::Arch, in_channels: i64, num_classes: Option<i64>) -> Result<Model> {
        let vs = VarStore::new(tch::Device::Cpu);
        let (backbone, head) = vision::build(arch, &vs.root(), in_channels, num_classes)?;
        Ok(Model { vs, backbone, head, arch: arch.clone() })
    }

    /// The stage each variable belongs to (`head` for the classifier).
    pub fn stage_of(&self, var: &str) -> Option<&str> {
        if let Some(h) = &self.head {
            if var.starts_with(&format!("{}.", h.prefix)) {
                return Some("head");
            }
        }
        self.backbone.stages().iter().find(|s| s.contains(var)).map(|s| s.name.as_str())
    }
}

/// Detached copies of every variable, sorted by name (checkpoints, best-epoch snapshots).
pub fn snapshot(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(n, t)| (n, t.detach().copy())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Copies named tensors into the store's variables; every name must exist with the same shape.
pub fn assign(vs: &VarStore, tensors: &[(String, Tensor)]) -> Result<()> {
    let vars = vs.variables();
    tch::no_grad(|| -> Result<()> {
        for (name, t) in tensors {
            let var = vars.get(name).ok_or_else(|| Error::Model(format!("tensor `{name}` has no place in the model")))?;
            if var.size() != t.size() {
                return Err(Error::Model(format!("tensor `{name}` is {:?}, the model has {:?}", t.size(), var.size())));
            }
            var.shallow_clone().f_copy_(&t.to_kind(var.kind()))?;
        }
        Ok(())
    })
}

pub fn unknown_model(name: &str) -> Error {
    // Compare against the short names too (`mobilenet_v2` for `mobilenet_v2.tv_in1k`).
    let short: Vec<String> = registry::ENTRIES.iter().map(|e| e.name.split('.').next().unwrap_or(e.name).to_string()).collect();
    let near = crate::weights::report::nearest(name.split('.').next().unwrap_or(name), &short)
        .and_then(|s| registry::ENTRIES.iter().find(|e| e.name.starts_with(&format!("{s}."))))
        .map(|e| e.name);
    Error::Model(format!("unknown model `{name}`{}; `headstart models` lists them", near.map(|n| format!(" (did you mean `{n}`?)")).unwrap_or_default()))
}

/// Which classifier a pre-trained model gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadInit {
    /// The pre-trained classifier, loaded from the weights.
    Pretrained,
    /// A fresh n-way head; the pre-trained classifier is reported as dropped.
    New(i64),
    /// Backbone only (feature extraction); the pre-trained classifier is dropped.
    None,
}

/// Builds a registry model and loads pre-trained weights into it. `in_channels` 1 adapts the
/// first convolution by summing its RGB kernels.
pub fn pretrained(entry: &registry::Entry, weights: &crate::weights::Weights, in_channels: i64, head: HeadInit) -> Result<(Model, crate::weights::LoadReport)> {
    let arch = match hf_config(weights)? {
        Some(config) => entry.arch.with_hf_config(&config).map_err(|e| Error::Model(format!("{}: {e}", weights.source.display())))?,
        None => entry.arch.clone(),
    };
    let num_classes = match head {
        HeadInit::Pretrained => Some(entry.num_classes),
        HeadInit::New(n) => Some(n),
        HeadInit::None => None,
    };
    let model = Model::build(&arch, in_channels, num_classes)?;
    let mut plan = crate::weights::report::LoadPlan {
        first_conv: Some(entry.first_conv.to_string()),
        strip_prefixes: entry.strip_prefixes.iter().map(|s| s.to_string()).collect(),
        unused: entry.unused.iter().map(|(p, w)| (p.to_string(), w.to_string())).collect(),
        ..Default::default()
    };
    if head != HeadInit::Pretrained {
        plan.classifier = entry.classifier.iter().map(|s| s.to_string()).collect();
        plan.fresh_prefixes = model.head.iter().map(|h| format!("{}.", h.prefix)).collect();
    }
    let report = crate::weights::report::load_into(&model.vs, weights, &plan)?;
    Ok((model, report))
}

/// The `config.json` beside HF-directory weights, if any.
fn hf_config(weights: &crate::weights::Weights) -> Result<Option<serde_json::Value>> {
    let p = weights.source.join("config.json");
    if !weights.source.is_dir() || !p.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_str(&text).map(Some).map_err(|e| Error::input(&p, format!("invalid JSON: {e}")))
}
