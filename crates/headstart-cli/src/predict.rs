//! `predict`: a bundle's top classes for image or audio files, or for texts.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use headstart::error::Cause;

use crate::{fail, warn_precision, write_predictions, write_skipped, ColumnArgs, Common, PrecisionArg};

#[derive(clap::Args)]
pub(crate) struct PredictArgs {
    bundle: PathBuf,
    #[arg(required_unless_present = "text")]
    files: Vec<PathBuf>,
    /// Text bundles: a text to classify (repeatable).
    #[arg(long)]
    text: Vec<String>,
    /// Text bundles: replace invalid UTF-8 instead of failing.
    #[arg(long)]
    lossy: bool,
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Encoder precision (default: the one the head was trained on; another is warned about).
    #[arg(long, value_enum)]
    precision: Option<PrecisionArg>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    columns: ColumnArgs,
    #[command(flatten)]
    common: Common,
}

impl PredictArgs {
    /// `--weights` as the text and audio predictors take it.
    fn weights_name(&self) -> Option<String> {
        self.weights.as_ref().map(|w| w.display().to_string())
    }
}

/// Predicts with the bundle's own modality.
pub(crate) fn run(a: PredictArgs, out: &mut impl Write) -> Result<()> {
    let modality = headstart::bundle::modality(&a.bundle)?;
    if modality == "text" {
        text(&a, out)
    } else if modality == "audio" {
        audio(&a, out)
    } else if headstart::blocks::clip::is_clip_bundle(&a.bundle)? {
        clip(&a, out)
    } else {
        image(&a, out)
    }
}

/// A data failure when no file at all could be used.
fn none_read(used: usize, files: &[PathBuf]) -> Result<()> {
    if used == 0 {
        return Err(fail(Cause::Data, format!("none of the {} files could be read", files.len())));
    }
    Ok(())
}

fn text(a: &PredictArgs, out: &mut impl Write) -> Result<()> {
    let mut p = headstart::text::TextPredictor::load(&a.bundle, a.weights_name().as_deref())?;
    warn_precision(a.precision.and_then(|x| p.use_precision(x.value())));
    let given: Vec<(String, String)> = a.text.iter().enumerate().map(|(i, t)| (format!("--text {}", i + 1), t.clone())).collect();
    let cols = p.columns(a.columns.text_column.as_deref(), a.columns.label_column.as_deref(), a.columns.pair_column.as_deref());
    let inputs = headstart::blocks::text::predict_inputs(&given, &a.files, &cols, a.lossy)?;
    write_skipped(&inputs.skipped);
    let top = p.predict(&inputs.texts, inputs.pairs.as_deref(), a.top_k, &a.common.progress())?;
    write_predictions(out, inputs.origins.iter().cloned().zip(top), &inputs.skipped, a.json, "input")
}

fn audio(a: &PredictArgs, out: &mut impl Write) -> Result<()> {
    a.columns.refuse_for("an audio")?;
    let p = headstart::blocks::audio::AudioPredictor::load(&a.bundle, a.weights_name().as_deref())?;
    let (preds, skipped) = p.predict(&a.files, a.top_k, a.common.cache().as_deref(), &a.common.progress())?;
    write_skipped(&skipped);
    let n = preds.len();
    write_predictions(out, preds.into_iter().map(|(f, top)| (f.display().to_string(), top)), &skipped, a.json, "file")?;
    none_read(n, &a.files)
}

fn clip(a: &PredictArgs, out: &mut impl Write) -> Result<()> {
    a.columns.refuse_for_images()?;
    let mut p = headstart::blocks::clip::ClipPredictor::load(&a.bundle, a.weights.as_deref())?;
    p.decode.allow_truncated = a.common.allow_truncated;
    warn_precision(a.precision.and_then(|x| p.use_precision(x.value())));
    let (probs, ok, skipped) = p.probabilities(&a.files, a.common.cache().as_deref(), &a.common.progress())?;
    let tops = headstart::learn::task::top_k(&probs, &p.labels, a.top_k)?;
    write_skipped(&skipped);
    write_predictions(out, ok.iter().map(|&i| a.files[i].display().to_string()).zip(tops), &skipped, a.json, "file")?;
    none_read(ok.len(), &a.files)
}

fn image(a: &PredictArgs, out: &mut impl Write) -> Result<()> {
    a.columns.refuse_for_images()?;
    let mut p = headstart::run::Predictor::load(&a.bundle, a.weights.as_deref())?;
    p.decode.allow_truncated = a.common.allow_truncated;
    warn_precision(a.precision.and_then(|x| p.use_precision(x.value())));
    let (preds, skipped) = headstart::run::predict(&p, &a.files, a.top_k, a.common.cache().as_deref(), &a.common.progress())?;
    write_skipped(&skipped);
    let n = preds.len();
    write_predictions(out, preds.into_iter().map(|pr| (pr.file.display().to_string(), pr.top)), &skipped, a.json, "file")?;
    none_read(n, &a.files)
}
