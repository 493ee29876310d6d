//! The one place that knows the library's predictors: a bundle becomes a [`Model`] that turns a
//! batch of prepared inputs into top-k labels, plus the [`Info`] the HTTP side needs to check
//! and prepare inputs before they reach a worker thread.

use std::path::Path;

use anyhow::{Context, Result};
use headstart::preprocess::{self, DecodeOptions, Source};
use tch::{Kind, Tensor};

/// Labels with their probabilities, most probable first.
pub type Top = Vec<(String, f64)>;

/// What a model is fed: a prepared image, or a text (and its pair for pair bundles).
pub enum Input {
    Image(Tensor),
    Text { text: String, pair: Option<String> },
}

/// What the server knows about a bundle without running it.
#[derive(Clone, serde::Serialize)]
pub struct Info {
    pub name: String,
    pub modality: &'static str,
    pub labels: Vec<String>,
    pub backbone: String,
    /// The preprocessing the bundle fixes (image input spec, or the encoder's text settings).
    pub preprocessing: serde_json::Value,
    /// Text bundles trained on sentence pairs want `{"text", "pair"}` inputs.
    pub pairs: bool,
    /// The encoder precision it runs at (the bundle's, unless `--precision` said otherwise).
    pub precision: headstart::engine::Precision,
    /// The precision asked for with `--precision`, which every worker's copy runs at.
    #[serde(skip)]
    pub requested: Option<headstart::engine::Precision>,
    /// Why the precision differs from the one the head was trained on, if it does.
    #[serde(skip)]
    pub precision_warning: Option<String>,
    #[serde(skip)]
    image: Option<headstart::models::registry::ImageInput>,
    #[serde(skip)]
    pub decode: DecodeOptions,
}

/// Why one input cannot be prepared: a size limit (413) or unreadable data (400).
pub enum Refusal {
    TooLarge(String),
    Invalid(String),
}

impl Info {
    /// Decodes and prepares one encoded image exactly as `predict` does for a file: the same
    /// pixel cap (checked from the header first), decoder limits, crop and normalisation.
    pub fn prepare_image(&self, bytes: &[u8], budget: &headstart::features::Budget) -> Result<Input, Refusal> {
        let input = self.image.as_ref().ok_or_else(|| Refusal::Invalid("this model takes text".into()))?;
        let unlimited = DecodeOptions { max_pixels: u64::MAX, max_alloc: u64::MAX, ..self.decode };
        let h = preprocess::header(bytes, &unlimited).map_err(Refusal::Invalid)?;
        let pixels = h.width as u64 * h.height as u64;
        if pixels > self.decode.max_pixels {
            return Err(Refusal::TooLarge(format!("{}×{} image exceeds the {}-pixel cap", h.width, h.height, self.decode.max_pixels)));
        }
        if h.decoded_bytes > self.decode.max_alloc {
            return Err(Refusal::TooLarge(format!(
                "{}×{} image needs {} MiB to decode, over the {} MiB limit",
                h.width,
                h.height,
                h.decoded_bytes >> 20,
                self.decode.max_alloc >> 20
            )));
        }
        let _ticket = budget.take(h.working_bytes());
        match preprocess::decode_prepared(Source::Bytes(bytes), input, &self.decode) {
            Ok((t, _)) => Ok(Input::Image(t)),
            Err(m) => Err(Refusal::Invalid(m)),
        }
    }

    /// An input that exercises the whole model once, for warm-up.
    pub fn warm_up_input(&self) -> Input {
        match &self.image {
            Some(i) => Input::Image(Tensor::zeros([3, i.size, i.size], (Kind::Float, tch::Device::Cpu))),
            None => Input::Text { text: "warm up".into(), pair: self.pairs.then(|| "warm up".into()) },
        }
    }
}

/// A loaded bundle on one worker thread.
pub trait Model {
    /// Top-`top_k` labels for each input, in order. Inputs are all of this model's modality.
    fn predict(&self, inputs: Vec<Input>, top_k: usize) -> Result<Vec<Top>>;
}

struct ImageModel(headstart::run::Predictor);

impl Model for ImageModel {
    fn predict(&self, inputs: Vec<Input>, top_k: usize) -> Result<Vec<Top>> {
        let xs: Vec<Tensor> = inputs.into_iter().filter_map(|i| if let Input::Image(t) = i { Some(t) } else { None }).collect();
        let probs = self.0.probabilities_prepared(&Tensor::f_stack(&xs, 0)?)?;
        top_of(&probs, &self.0.meta.labels, top_k)
    }
}

struct TextModel(headstart::text::TextPredictor);

impl Model for TextModel {
    fn predict(&self, inputs: Vec<Input>, top_k: usize) -> Result<Vec<Top>> {
        let (mut texts, mut pairs) = (vec![], vec![]);
        for i in inputs {
            if let Input::Text { text, pair } = i {
                texts.push(text);
                pairs.push(pair.unwrap_or_default());
            }
        }
        let pairs = self.0.meta.columns.pair.is_some().then_some(&pairs[..]);
        Ok(self.0.predict(&texts, pairs, top_k, &headstart::progress::Silent)?)
    }
}

/// Top-k rows of a probability matrix, as `run::predict` reports them.
fn top_of(probs: &Tensor, labels: &[String], top_k: usize) -> Result<Vec<Top>> {
    let k = top_k.clamp(1, labels.len());
    let (vals, idx) = probs.topk(k as i64, -1, true, true);
    let vals: Vec<f64> = Vec::try_from(vals.to_kind(Kind::Double).flatten(0, -1))?;
    let idx: Vec<i64> = Vec::try_from(idx.flatten(0, -1))?;
    Ok(vals.chunks(k).zip(idx.chunks(k)).map(|(v, i)| i.iter().zip(v).map(|(&i, &p)| (labels[i as usize].clone(), p)).collect()).collect())
}

/// Loads a bundle: its description and a runnable model, at the `requested` precision (default:
/// the bundle's).
pub fn load(name: &str, dir: &Path, requested: Option<headstart::engine::Precision>) -> Result<(Info, Box<dyn Model>)> {
    let modality = headstart::bundle::modality(dir).with_context(|| format!("reading the bundle {}", dir.display()))?;
    if modality == "text" {
        let mut p = headstart::text::TextPredictor::load(dir, None)?;
        let precision_warning = requested.and_then(|r| p.use_precision(r));
        let e = &p.meta.encoder;
        let info = Info {
            name: name.into(),
            modality: "text",
            labels: p.meta.labels.clone(),
            backbone: e.model.clone(),
            preprocessing: serde_json::json!({"max_length": e.max_length, "pooling": e.pooling, "normalize": e.normalize, "long_text": e.long_text}),
            pairs: p.meta.columns.pair.is_some(),
            precision: p.precision(),
            requested,
            precision_warning,
            image: None,
            decode: DecodeOptions::default(),
        };
        Ok((info, Box::new(TextModel(p))))
    } else {
        let mut p = headstart::run::Predictor::load(dir, None)?;
        let precision_warning = requested.and_then(|r| p.use_precision(r));
        let input = p.meta.pretrained_cfg.input.clone();
        let info = Info {
            name: name.into(),
            modality: "image",
            labels: p.meta.labels.clone(),
            backbone: p.meta.backbone.name.clone(),
            preprocessing: serde_json::to_value(&input)?,
            pairs: false,
            precision: p.precision(),
            requested,
            precision_warning,
            image: Some(input),
            decode: p.decode,
        };
        Ok((info, Box::new(ImageModel(p))))
    }
}
