//! Zero-shot classification with CLIP (Radford et al., 2021, §3.1.4): each class name is put
//! into one or more prompt templates (`a photo of a {}.`); with several templates, the
//! L2-normalised text embeddings of a class are averaged and the mean renormalised (prompt
//! ensembling, as the paper does). An image's class scores are `logit_scale · cos(image,
//! class)`, turned into probabilities by a softmax over the classes.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::models::clip::{normalize, Clip};

/// CLIP's default prompt.
pub const DEFAULT_TEMPLATE: &str = "a photo of a {}.";

/// Images embedded per forward pass.
const BATCH: usize = 32;

/// Checks a template: exactly one `{}` where the class name goes.
pub fn check_template(t: &str) -> std::result::Result<(), String> {
    match t.matches("{}").count() {
        1 => Ok(()),
        0 => Err(format!("template {t:?} has no `{{}}` for the class name")),
        _ => Err(format!("template {t:?} has more than one `{{}}`")),
    }
}

/// Reads a templates file: one template per line; blank lines and lines starting with `#`
/// are skipped.
pub fn read_templates(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        check_template(t).map_err(|m| Error::input(path, format!("line {}: {m}", i + 1)))?;
        out.push(t.to_string());
    }
    if out.is_empty() {
        return Err(Error::input(path, "no templates in this file"));
    }
    Ok(out)
}

/// Class names from a comma-separated list, trimmed; empty and repeated names are errors.
pub fn parse_labels(list: &str) -> std::result::Result<Vec<String>, String> {
    let labels: Vec<String> = list.split(',').map(|s| s.trim().to_string()).collect();
    if labels.iter().any(|l| l.is_empty()) {
        return Err(format!("empty class name in {list:?}"));
    }
    for (i, l) in labels.iter().enumerate() {
        if labels[..i].contains(l) {
            return Err(format!("class name {l:?} is given twice"));
        }
    }
    Ok(labels)
}

/// A zero-shot classifier: one unit-norm text embedding per class.
pub struct ZeroShot {
    pub classes: Vec<String>,
    pub templates: Vec<String>,
    /// `[C, E]`, rows of unit norm.
    pub weights: Tensor,
    pub logit_scale: f64,
}

/// One image's top classes, best first.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub file: PathBuf,
    pub top: Vec<Scored>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    pub class: usize,
    pub label: String,
    pub prob: f64,
}

impl ZeroShot {
    /// Embeds every class under every template (an empty list means [`DEFAULT_TEMPLATE`]).
    pub fn new(clip: &Clip, classes: &[String], templates: &[String]) -> Result<ZeroShot> {
        if classes.is_empty() {
            return Err(Error::Model("zero-shot classification needs at least one class name".into()));
        }
        let templates: Vec<String> = if templates.is_empty() { vec![DEFAULT_TEMPLATE.to_string()] } else { templates.to_vec() };
        for t in &templates {
            check_template(t).map_err(Error::Model)?;
        }
        let mut rows = Vec::with_capacity(classes.len());
        for c in classes {
            let prompts: Vec<String> = templates.iter().map(|t| t.replacen("{}", c, 1)).collect();
            let e = tch::no_grad(|| clip.encode_texts(&prompts))?;
            rows.push(normalize(&normalize(&e).mean_dim([0i64].as_slice(), false, Kind::Float)));
        }
        Ok(ZeroShot { classes: classes.to_vec(), templates, weights: Tensor::stack(&rows, 0), logit_scale: clip.logit_scale() })
    }

    /// A linear head (`weight` `[C, E]`, `bias` `[C]`) that reproduces this classifier on the
    /// image tower's pooled (unit-norm) features: `logit_scale · class embeddings`, zero bias.
    /// Initialising a trainable head with it starts few-shot training at zero-shot accuracy.
    pub fn linear_head(&self) -> (Tensor, Tensor) {
        (&self.weights * self.logit_scale, Tensor::zeros([self.classes.len() as i64], (Kind::Float, self.weights.device())))
    }

    /// Class logits `[B, C]` of unnormalised image embeddings `[B, E]`.
    pub fn logits(&self, image_embeds: &Tensor) -> Tensor {
        normalize(image_embeds).matmul(&self.weights.to_device(image_embeds.device()).tr()) * self.logit_scale
    }

    /// Class probabilities `[B, C]` of prepared images `[B, 3, S, S]`.
    pub fn probabilities(&self, clip: &Clip, images: &Tensor) -> Result<Tensor> {
        let e = tch::no_grad(|| clip.encode_image(images))?;
        Ok(self.logits(&e).softmax(-1, Kind::Float))
    }

    /// The `top_k` classes of each image file, batched.
    pub fn classify_files(&self, clip: &Clip, files: &[PathBuf], top_k: usize) -> Result<Vec<Prediction>> {
        let k = top_k.clamp(1, self.classes.len()) as i64;
        let mut out = Vec::with_capacity(files.len());
        for chunk in files.chunks(BATCH) {
            let images = chunk.iter().map(|f| clip.load_image(f)).collect::<Result<Vec<_>>>()?;
            let probs = self.probabilities(clip, &Tensor::stack(&images, 0))?.to_device(tch::Device::Cpu);
            let (p, idx) = probs.topk(k, -1, true, true);
            let p: Vec<f64> = Vec::try_from(p.to_kind(Kind::Double).flatten(0, -1))?;
            let idx: Vec<i64> = Vec::try_from(idx.flatten(0, -1))?;
            for (i, f) in chunk.iter().enumerate() {
                let at = i * k as usize..(i + 1) * k as usize;
                let top =
                    idx[at.clone()].iter().zip(&p[at]).map(|(&c, &prob)| Scored { class: c as usize, label: self.classes[c as usize].clone(), prob }).collect();
                out.push(Prediction { file: f.clone(), top });
            }
        }
        Ok(out)
    }
}
