//! `eval`: a bundle (or a CLIP model's zero-shot classifier) scored on labelled data, one path
//! for every modality, with the HTML report when asked.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use headstart::learn::task::Scored;

use crate::{report, warn_precision, write_report, write_skipped, ColumnArgs, Common, PrecisionArg, TemplateArgs};

#[derive(clap::Args)]
pub(crate) struct EvalArgs {
    #[arg(required_unless_present = "zero_shot")]
    bundle: Option<PathBuf>,
    #[arg(long)]
    data: PathBuf,
    /// Evaluate a CLIP model's zero-shot classifier instead of a bundle: the class names are
    /// the data's class folders (underscores read as spaces), put into the templates.
    #[arg(long, requires = "model", conflicts_with = "bundle")]
    zero_shot: bool,
    /// With --zero-shot: the CLIP model (directory, registry name or hub id in the hub cache).
    #[arg(long)]
    model: Option<String>,
    #[command(flatten)]
    prompts: TemplateArgs,
    /// Text bundles: replace invalid UTF-8 instead of failing.
    #[arg(long)]
    lossy: bool,
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Encoder precision (default: the one the head was trained on; another is warned about).
    /// With --zero-shot: the image tower's (default fp32; bf16 is CPU autocast).
    #[arg(long, value_enum)]
    precision: Option<PrecisionArg>,
    #[arg(long)]
    json: bool,
    /// Also write an HTML report (confusion matrix, per-class table, misclassified examples).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    #[command(flatten)]
    columns: ColumnArgs,
    #[command(flatten)]
    common: Common,
}

/// Scores, then prints the report (and writes the HTML one when asked).
pub(crate) fn run(a: EvalArgs, out: &mut impl Write) -> Result<()> {
    let started = std::time::Instant::now();
    let (scored, what) = if a.zero_shot || a.prompts.given() { zero_shot(&a)? } else { bundle(&a)? };
    write_skipped(&scored.skipped);
    if let Some(file) = &a.report {
        let title = format!("headstart eval of {} on {}", what.1, a.data.display());
        let summary = vec![(what.0.to_string(), what.1), ("data".into(), a.data.display().to_string()), ("classes".into(), scored.labels.len().to_string())];
        report::eval_report(&scored, title, summary, started.elapsed(), file)?;
    }
    write_report(out, &scored.report, a.json)
}

/// What was evaluated, as the report's summary names it.
type Evaluated = (&'static str, String);

/// A CLIP model's zero-shot classifier of the data's classes.
fn zero_shot(a: &EvalArgs) -> Result<(Scored, Evaluated)> {
    let (Some(model), true) = (&a.model, a.zero_shot) else { bail!("--template and --templates-file apply to --zero-shot") };
    a.columns.refuse_for_images()?;
    let mut encoder = headstart::blocks::clip::ClipEncoder::load(model, a.weights.as_deref())?;
    if let Some(p) = a.precision {
        encoder.set_precision(p.value());
    }
    let decode = headstart::preprocess::DecodeOptions { allow_truncated: a.common.allow_truncated, ..Default::default() };
    let templates = a.prompts.read()?;
    let scored = headstart::blocks::clip::score_zero_shot(&encoder, &a.data, &templates, decode, a.common.cache().as_deref(), &a.common.progress())?;
    Ok((scored, ("zero-shot model", model.clone())))
}

/// A bundle of any modality, read by its own predictor.
fn bundle(a: &EvalArgs) -> Result<(Scored, Evaluated)> {
    let bundle = a.bundle.as_deref().context("a BUNDLE to evaluate, or --zero-shot --model CLIP")?;
    let (cache, progress) = (a.common.cache(), a.common.progress());
    let (cache, asked) = (cache.as_deref(), a.precision.map(PrecisionArg::value));
    let named = a.weights.as_ref().map(|w| w.display().to_string());
    let modality = headstart::bundle::modality(bundle)?;
    let scored = if modality == "audio" {
        a.columns.refuse_for("an audio")?;
        headstart::blocks::audio::AudioPredictor::load(bundle, named.as_deref())?.score(&a.data, cache, &progress)?
    } else if modality == "text" {
        let mut p = headstart::text::TextPredictor::load(bundle, named.as_deref())?;
        warn_precision(asked.and_then(|x| p.use_precision(x)));
        let c = &a.columns;
        let cols = p.columns(c.text_column.as_deref(), c.label_column.as_deref(), c.pair_column.as_deref());
        p.score(&a.data, Some(&cols), a.lossy, cache, &progress)?
    } else if headstart::blocks::clip::is_clip_bundle(bundle)? {
        a.columns.refuse_for_images()?;
        let mut p = headstart::blocks::clip::ClipPredictor::load(bundle, a.weights.as_deref())?;
        p.decode.allow_truncated = a.common.allow_truncated;
        warn_precision(asked.and_then(|x| p.use_precision(x)));
        p.score(&a.data, cache, &progress)?
    } else {
        a.columns.refuse_for_images()?;
        let mut p = headstart::run::Predictor::load(bundle, a.weights.as_deref())?;
        p.decode.allow_truncated = a.common.allow_truncated;
        warn_precision(asked.and_then(|x| p.use_precision(x)));
        headstart::run::score(&p, &a.data, cache, &progress)?
    };
    Ok((scored, ("bundle", bundle.display().to_string())))
}
