//! The one place that knows the library's predictors: a bundle becomes a [`Model`] that turns a
//! batch of prepared inputs into top-k labels, plus the [`Info`] the HTTP side needs to check
//! and prepare inputs before they reach a worker thread.

use std::path::Path;

use anyhow::{Context, Result};
use headstart::blocks::audio::{ClipReader, Unusable};
use headstart::bundle::EncoderRef;
use headstart::engine::Precision;
use headstart::preprocess::{self, DecodeOptions, Source};
use tch::{Kind, Tensor};

/// Labels with their probabilities, most probable first.
pub type Top = Vec<(String, f64)>;

/// What a model is fed: a prepared image, a text (and its pair for pair bundles), or a clip
/// decoded and resampled for the encoder.
pub enum Input {
    Image(Tensor),
    Text { text: String, pair: Option<String> },
    Audio(Vec<f32>),
}

/// What the server knows about a bundle without running it.
#[derive(Clone, serde::Serialize)]
pub struct Info {
    pub name: String,
    /// What inputs are: `image`, `text` or `audio`.
    pub modality: &'static str,
    /// The kind of encoder: `vision`, `clip`, `text` or `audio`.
    pub encoder: &'static str,
    pub labels: Vec<String>,
    pub backbone: String,
    /// The preprocessing the bundle fixes (image input spec, the encoder's text settings, or
    /// how clips are read and featurised).
    pub preprocessing: serde_json::Value,
    /// Text bundles trained on sentence pairs want `{"text", "pair"}` inputs.
    pub pairs: bool,
    /// The encoder precision it runs at (the bundle's, unless `--precision` said otherwise).
    pub precision: Precision,
    /// The precision asked for with `--precision`, which every worker's copy runs at.
    #[serde(skip)]
    pub requested: Option<Precision>,
    /// Why the precision differs from the one the head was trained on, if it does.
    #[serde(skip)]
    pub precision_warning: Option<String>,
    #[serde(skip)]
    image: Option<headstart::models::registry::ImageInput>,
    #[serde(skip)]
    audio: Option<ClipReader>,
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
        let input = self.image.as_ref().ok_or_else(|| Refusal::Invalid(format!("this model takes {}, not images", self.modality)))?;
        let unlimited = DecodeOptions { max_pixels: u64::MAX, max_alloc: u64::MAX, ..self.decode };
        let h = preprocess::header(bytes, &unlimited).map_err(|m| Refusal::Invalid(format!("cannot read the image: {m}")))?;
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
            Err(m) => Err(Refusal::Invalid(format!("cannot read the image: {m}"))),
        }
    }

    /// Decodes one encoded clip from memory exactly as `predict` reads a file: the same decoder,
    /// mix-down to mono, resampling, silence check and duration cap (refused from the header's
    /// length where it declares one, else as soon as decoding passes the cap).
    pub fn prepare_audio(&self, bytes: Vec<u8>, field: &str) -> Result<Input, Refusal> {
        let reader = self.audio.ok_or_else(|| Refusal::Invalid(format!("this model takes {}, not audio", self.modality)))?;
        match reader.read(headstart::audio::Encoded::Bytes { data: bytes, name: field }) {
            Ok(clip) => Ok(Input::Audio(clip.samples)),
            Err(Unusable::OverLong(m)) => Err(Refusal::TooLarge(m)),
            Err(Unusable::Unreadable(m)) => Err(Refusal::Invalid(format!("cannot read the audio: {m}"))),
            Err(Unusable::Silent(m)) => Err(Refusal::Invalid(format!("cannot use the audio: {m}"))),
        }
    }

    /// An input that exercises the whole model once, for warm-up.
    pub fn warm_up_input(&self) -> Input {
        match (&self.image, &self.audio) {
            (Some(i), _) => Input::Image(Tensor::zeros([3, i.size, i.size], (Kind::Float, tch::Device::Cpu))),
            (None, Some(a)) => Input::Audio(vec![0.0; a.min_samples.max(headstart::audio::encoder::SAMPLE_RATE as usize)]),
            (None, None) => Input::Text { text: "warm up".into(), pair: self.pairs.then(|| "warm up".into()) },
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

struct ClipModel(headstart::blocks::clip::ClipPredictor);

impl Model for ClipModel {
    fn predict(&self, inputs: Vec<Input>, top_k: usize) -> Result<Vec<Top>> {
        let xs: Vec<Tensor> = inputs.into_iter().filter_map(|i| if let Input::Image(t) = i { Some(t) } else { None }).collect();
        let probs = self.0.probabilities_prepared(&Tensor::f_stack(&xs, 0)?)?;
        top_of(&probs, &self.0.labels, top_k)
    }
}

struct AudioModel(headstart::blocks::audio::AudioPredictor);

impl Model for AudioModel {
    fn predict(&self, inputs: Vec<Input>, top_k: usize) -> Result<Vec<Top>> {
        let clips: Vec<Vec<f32>> = inputs.into_iter().filter_map(|i| if let Input::Audio(c) = i { Some(c) } else { None }).collect();
        let probs = self.0.probabilities_clips(&clips)?;
        top_of(&probs, self.0.labels(), top_k)
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
pub fn load(name: &str, dir: &Path, requested: Option<Precision>) -> Result<(Info, Box<dyn Model>)> {
    let meta = headstart::bundle::read_meta(dir).with_context(|| format!("reading the bundle {}", dir.display()))?;
    match meta.encoder {
        EncoderRef::Text(_) => load_text(name, dir, requested),
        EncoderRef::Vision(_) => load_image(name, dir, requested),
        EncoderRef::Clip(_) => load_clip(name, dir, requested),
        EncoderRef::Audio(_) => load_audio(name, dir, requested),
    }
}

/// The description every kind of bundle shares, before its own fields are set.
fn info(name: &str, modality: &'static str, encoder: &'static str, labels: &[String], backbone: &str, precision: Precision) -> Info {
    Info {
        name: name.into(),
        modality,
        encoder,
        labels: labels.to_vec(),
        backbone: backbone.into(),
        preprocessing: serde_json::Value::Null,
        pairs: false,
        precision,
        requested: None,
        precision_warning: None,
        image: None,
        audio: None,
        decode: DecodeOptions::default(),
    }
}

fn load_text(name: &str, dir: &Path, requested: Option<Precision>) -> Result<(Info, Box<dyn Model>)> {
    let mut p = headstart::text::TextPredictor::load(dir, None)?;
    let precision_warning = requested.and_then(|r| p.use_precision(r));
    let e = &p.meta.encoder;
    let info = Info {
        preprocessing: serde_json::json!({"max_length": e.max_length, "pooling": e.pooling, "normalize": e.normalize, "long_text": e.long_text}),
        pairs: p.meta.columns.pair.is_some(),
        requested,
        precision_warning,
        ..info(name, "text", "text", &p.meta.labels, &e.model, p.precision())
    };
    Ok((info, Box::new(TextModel(p))))
}

fn load_image(name: &str, dir: &Path, requested: Option<Precision>) -> Result<(Info, Box<dyn Model>)> {
    let mut p = headstart::run::Predictor::load(dir, None)?;
    let precision_warning = requested.and_then(|r| p.use_precision(r));
    let input = p.meta.pretrained_cfg.input.clone();
    let info = Info {
        preprocessing: serde_json::to_value(&input)?,
        requested,
        precision_warning,
        image: Some(input),
        decode: p.decode,
        ..info(name, "image", "vision", &p.meta.labels, &p.meta.backbone.name, p.precision())
    };
    Ok((info, Box::new(ImageModel(p))))
}

/// Audio encoders run in fp32 only: another precision asked for is warned about.
fn fp32_only(requested: Option<Precision>, what: &str) -> Option<String> {
    requested
        .filter(|&r| r == Precision::Bf16)
        .map(|_| format!("{what} encoders run in fp32 only; setting `precision` bf16 does not apply (this model runs at fp32)"))
}

fn load_clip(name: &str, dir: &Path, requested: Option<Precision>) -> Result<(Info, Box<dyn Model>)> {
    let mut p = headstart::blocks::clip::ClipPredictor::load(dir, None)?;
    let precision_warning = requested.and_then(|r| p.use_precision(r));
    let input = p.encoder.clip.input.clone();
    let info = Info {
        preprocessing: serde_json::to_value(&input)?,
        requested,
        precision_warning,
        image: Some(input),
        decode: p.decode,
        ..info(name, "image", "clip", &p.labels, &p.encoder.model, p.encoder.precision())
    };
    Ok((info, Box::new(ClipModel(p))))
}

fn load_audio(name: &str, dir: &Path, requested: Option<Precision>) -> Result<(Info, Box<dyn Model>)> {
    let p = headstart::blocks::audio::AudioPredictor::load(dir, None)?;
    let e = &p.encoder;
    let preprocessing = serde_json::json!({
        "sample_rate": e.sample_rate,
        "channels": "mono (the mean of the channels)",
        "feature_extractor": p.feature_extractor(),
        "normalize": e.normalize,
        "window_seconds": e.window_seconds,
        // Whisper: `full` (the 30 s window) or `clip` (each clip's own seconds); none for
        // encoders without a fixed window.
        "audio_window": if e.family == "whisper" { Some(e.window.map_or("full", |w| w.name())) } else { None },
        "max_seconds": e.max_seconds,
        "family": e.family,
        "layer": e.layer,
        // Every hidden state, stacked, under a head that learned their weighted sum.
        "all_layers": e.all_layers,
        "pooling": "mean over the frames of real audio, windows weighted by their frames",
    });
    let info = Info {
        preprocessing,
        requested,
        precision_warning: fp32_only(requested, "audio"),
        audio: Some(p.reader()),
        ..info(name, "audio", "audio", p.labels(), &e.model, Precision::Fp32)
    };
    Ok((info, Box::new(AudioModel(p))))
}
