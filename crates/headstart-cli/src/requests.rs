//! `train`'s flags as the library's training request of the modality the data is read as.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use headstart::blocks::audio::{AudioOptions, AudioTrainRequest};
use headstart::learn::task::{DEFAULT_EVAL_BATCH, DEFAULT_VAL_SPLIT};
use headstart::models::registry::{self, Modality};
use headstart::run::{self, TrainOutcome, TrainRequest};
use headstart::text::data::Columns;
use headstart::text::{TextModelOptions, TextTrainRequest};
use headstart::train::finetune::FinetuneConfig;
use headstart::train::HeadKind;

use crate::{extract_precision, finetune_config, input_override, long_text, precision, progress, train_config, HeadArg, LayerArg, TrainArgs, TrainMode};

/// Trains per the flags, in the modality the library detects.
pub(crate) fn new_run(a: &TrainArgs, p: &progress::Render) -> Result<(Modality, TrainOutcome)> {
    let data = a.data.clone().context("--data is required (or `data` in the --config file)")?;
    let out = a.out.clone().context("--out is required (or `output_dir` in the --config file)")?;
    let detected = a.detect().expect("data is given");
    eprintln!("note: read as {}: {}", detected.modality.name(), detected.reason);
    if detected.modality != Modality::Audio && (a.layer.is_some() || a.max_seconds.is_some() || a.audio_window.is_some()) {
        bail!("--layer, --max-seconds and --audio-window apply to audio runs; this run reads {}", detected.modality.name());
    }
    let o = match detected.modality {
        Modality::Audio => headstart::blocks::audio::train_audio(&audio_request(a, data, out)?, false, p)?,
        Modality::Text => headstart::text::train_text(&text_request(a, data, out)?, false, p)?,
        Modality::Image => {
            let req = image_request(a, data, out)?;
            if headstart::blocks::clip::is_clip_model(&req.model) {
                headstart::blocks::clip::train_clip(&req, p)?
            } else {
                run::train_image(&req, p)?
            }
        }
    };
    Ok((detected.modality, o))
}

/// The share held out for validation: none with a validation set, else the flag or the default.
fn val_split(a: &TrainArgs) -> f64 {
    if a.val.is_some() {
        0.0
    } else {
        a.val_split.unwrap_or(DEFAULT_VAL_SPLIT)
    }
}

fn finetuning(a: &TrainArgs) -> bool {
    a.mode == Some(TrainMode::Finetune)
}

fn audio_request(a: &TrainArgs, data: PathBuf, out: PathBuf) -> Result<AudioTrainRequest> {
    let base = headstart::blocks::audio::audio_finetune_defaults();
    let d = AudioTrainRequest::for_data(data);
    let weighted = a.layer == Some(LayerArg::Weighted);
    let audio = AudioOptions {
        layer: match a.layer {
            Some(LayerArg::Hidden(n)) => Some(n),
            _ => None,
        },
        weighted_layers: weighted,
        max_seconds: a.max_seconds.unwrap_or(d.audio.max_seconds),
        window: a.audio_window.map(crate::AudioWindowArg::value),
    };
    let mut train = train_config(a)?;
    if weighted && !finetuning(a) {
        // The stacked layers train the layer-sum head: a linear classifier on their learned sum.
        train.head = match a.head {
            None | Some(HeadArg::Linear) => HeadKind::LayerSum,
            Some(h) => bail!(
                "--head {} does not take --layer weighted: the stacked hidden states train a linear classifier on their learned weighted sum (leave --head out)",
                clap::ValueEnum::to_possible_value(&h).map_or_else(String::new, |p| p.get_name().to_string())
            ),
        };
    }
    Ok(AudioTrainRequest {
        val: a.val.clone(),
        val_split: val_split(a),
        model: a.model.clone().unwrap_or(d.model.clone()),
        audio,
        out,
        cache: a.common.cache(),
        eval_batch_size: a.eval_batch_size.unwrap_or(d.eval_batch_size),
        train,
        finetune: if finetuning(a) { Some(finetune_config(a, base)?) } else { None },
        ..d
    })
}

fn text_request(a: &TrainArgs, data: PathBuf, out: PathBuf) -> Result<TextTrainRequest> {
    let d = Columns::default();
    let finetuning = finetuning(a);
    Ok(TextTrainRequest {
        data,
        val: a.val.clone(),
        val_split: val_split(a),
        columns: Columns { text: a.text_column.clone().unwrap_or(d.text), label: a.label_column.clone().unwrap_or(d.label), pair: a.pair_column.clone() },
        lossy: a.lossy,
        model: a.model.clone().unwrap_or_else(|| headstart::text::DEFAULT_TEXT_MODEL.into()),
        model_options: TextModelOptions {
            max_length: a.max_length,
            pooling: a.pooling.as_deref().map(str::parse).transpose().map_err(|e| anyhow::anyhow!("--pooling {e}"))?,
            long_text: long_text(a)?,
            chunk_batch: a.chunk_batch,
        },
        out,
        cache: a.common.cache(),
        eval_batch_size: a.eval_batch_size.unwrap_or(DEFAULT_EVAL_BATCH),
        precision: if finetuning { headstart::engine::Precision::Fp32 } else { extract_precision(a.precision) },
        finetune: if finetuning { Some(finetune_config(a, headstart::text::text_finetune_defaults())?) } else { None },
        train: train_config(a)?,
    })
}

fn image_request(a: &TrainArgs, data: PathBuf, out: PathBuf) -> Result<TrainRequest> {
    let model = a.model.clone().unwrap_or_else(|| registry::DEFAULT_MODEL.into());
    let finetuning = finetuning(a);
    Ok(TrainRequest {
        data,
        val: a.val.clone(),
        val_split: val_split(a),
        input_override: input_override(a, &model)?,
        model,
        weights: a.weights.clone(),
        out,
        cache: a.common.cache(),
        extract_batch_size: a.eval_batch_size.unwrap_or(DEFAULT_EVAL_BATCH),
        finetune: if finetuning { Some(finetune_config(a, FinetuneConfig::default())?) } else { None },
        train: train_config(a)?,
        allow_truncated: a.common.allow_truncated,
        precision: if finetuning { precision(a.precision) } else { extract_precision(a.precision) },
    })
}
