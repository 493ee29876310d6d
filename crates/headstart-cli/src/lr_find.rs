//! `lr-find`: the learning-rate range test on a data set, in the modality it is read as.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use headstart::blocks::audio::AudioTrainRequest;
use headstart::models::registry::Modality;
use headstart::run::TrainRequest;
use headstart::text::TextTrainRequest;
use headstart::train::finetune::{FinetuneConfig, LrFind, Unfreeze};

use crate::{detect_run, Common};

#[derive(clap::Args)]
pub(crate) struct LrFindArgs {
    #[arg(long)]
    data: PathBuf,
    /// Image registry model or text model (default: mobilenet_v2.tv_in1k; text
    /// all-minilm-l6-v2).
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Stages to train during the test: `last:N` or `all` (default: images last:1, text all).
    #[arg(long)]
    unfreeze: Option<String>,
    /// Text: the text and label columns.
    #[arg(long)]
    text_column: Option<String>,
    #[arg(long)]
    label_column: Option<String>,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-7)]
    min_lr: f64,
    #[arg(long, default_value_t = 10.0)]
    max_lr: f64,
    #[arg(long, default_value_t = 100)]
    steps: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    json: bool,
    /// Also save the curve as RUN_DIR/lr_find.json, for the run's report.
    #[arg(long, value_name = "RUN_DIR")]
    out: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

/// Runs the test, saves the curve when asked, and prints it.
pub(crate) fn run(a: LrFindArgs, out: &mut impl Write) -> Result<()> {
    let detected = detect_run(&a.data, a.model.as_deref(), a.text_column.is_some() || a.label_column.is_some());
    eprintln!("note: read as {}: {}", detected.modality.name(), detected.reason);
    let unfreeze = a.unfreeze.as_deref().map(|u| u.parse::<Unfreeze>().map_err(|e| anyhow::anyhow!("--unfreeze {e}"))).transpose()?;
    let r = match detected.modality {
        Modality::Audio => audio(&a, unfreeze)?,
        Modality::Text => text(&a, unfreeze)?,
        Modality::Image => image(&a, unfreeze)?,
    };
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        headstart::fsx::atomic_write(&dir.join("lr_find.json"), serde_json::to_string_pretty(&r)?.as_bytes())?;
    }
    crate::write_lr_find(out, &r, a.json)
}

/// The modality's fine-tuning defaults with the test's stages, batch size and seed.
fn settings(a: &LrFindArgs, base: FinetuneConfig, unfreeze: Option<Unfreeze>) -> FinetuneConfig {
    FinetuneConfig { unfreeze: unfreeze.unwrap_or(base.unfreeze), batch_size: a.batch_size, seed: a.seed, ..base }
}

fn audio(a: &LrFindArgs, unfreeze: Option<Unfreeze>) -> Result<LrFind> {
    let ft = settings(a, headstart::blocks::audio::audio_finetune_defaults(), unfreeze);
    let d = AudioTrainRequest::for_data(a.data.clone());
    let req = AudioTrainRequest { model: a.model.clone().unwrap_or(d.model.clone()), val_split: 0.0, finetune: Some(ft), ..d };
    Ok(headstart::blocks::audio::lr_find_audio(&req, a.min_lr, a.max_lr, a.steps, &a.common.progress())?)
}

fn text(a: &LrFindArgs, unfreeze: Option<Unfreeze>) -> Result<LrFind> {
    let ft = settings(a, headstart::text::text_finetune_defaults(), unfreeze);
    let d = TextTrainRequest::for_data(a.data.clone());
    let columns = headstart::text::data::Columns {
        text: a.text_column.clone().unwrap_or(d.columns.text.clone()),
        label: a.label_column.clone().unwrap_or(d.columns.label.clone()),
        pair: None,
    };
    let req = TextTrainRequest { columns, model: a.model.clone().unwrap_or(d.model.clone()), val_split: 0.0, finetune: Some(ft), ..d };
    Ok(headstart::text::lr_find_text(&req, a.min_lr, a.max_lr, a.steps, &a.common.progress())?)
}

fn image(a: &LrFindArgs, unfreeze: Option<Unfreeze>) -> Result<LrFind> {
    let ft = settings(a, FinetuneConfig::default(), unfreeze);
    let d = TrainRequest::for_data(a.data.clone());
    let req = TrainRequest {
        model: a.model.clone().unwrap_or(d.model.clone()),
        weights: a.weights.clone(),
        val_split: 0.0,
        finetune: Some(ft),
        allow_truncated: a.common.allow_truncated,
        ..d
    };
    Ok(headstart::run::lr_find_image(&req, a.min_lr, a.max_lr, a.steps, &a.common.progress())?)
}
