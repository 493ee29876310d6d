//! `embed`, `extract` and `train --features`: embeddings to Parquet, sharded, and a head
//! trained back from them.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use headstart::blocks::image::ImageBlock;
use headstart::blocks::text::TextBlock;
use headstart::export::stored::{open_set, train_features, FeatureTrainRequest};
use headstart::export::{self, Export, Exported, ModelSpec};
use headstart::models::registry::{self, Modality};
use headstart::preprocess::DecodeOptions;
use headstart::progress::Progress;
use headstart::text::data::Columns;
use headstart::text::TextModelOptions;

use crate::{detect_run, Common};

/// What `embed` and `extract` share: the model, the data and how it is read.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// Registry image model, or a text model: directory, hub repo id, or all-minilm-l6-v2.
    #[arg(long)]
    model: Option<String>,
    /// Weight file or HF directory (images; default: the registry's source).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Labelled data as `train --data` takes it.
    #[arg(long)]
    data: PathBuf,
    /// Examples per encoder batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Text: the column holding the text (default `text`).
    #[arg(long)]
    text_column: Option<String>,
    /// Text: the column holding the label (default `label`).
    #[arg(long)]
    label_column: Option<String>,
    /// Text: a second text column, for sentence pairs.
    #[arg(long)]
    pair_column: Option<String>,
    /// Text: replace invalid UTF-8 (counted) instead of failing.
    #[arg(long)]
    lossy: bool,
    /// Text: truncation length in tokens (default: the model's).
    #[arg(long)]
    max_length: Option<usize>,
    /// Text: cls, mean or last (default: the model's).
    #[arg(long)]
    pooling: Option<String>,
    /// Audio, Whisper: the encoder's window, `clip` (each clip's own seconds) or `full` (30 s),
    /// as for `train`; recorded in the file's metadata.
    #[arg(long, value_enum)]
    audio_window: Option<crate::AudioWindowArg>,
    /// Encoder precision (`auto` resolves as for `train`; recorded in the file's metadata).
    #[arg(long, value_enum, default_value = "auto")]
    precision: crate::PrecisionArg,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    x: ExportArgs,
    /// The Parquet file to write (replaced atomically).
    #[arg(long, value_name = "FILE.parquet")]
    out: PathBuf,
}

#[derive(clap::Args)]
pub struct ExtractArgs {
    #[command(flatten)]
    x: ExportArgs,
    /// Which slice of the data this process embeds: I/N, I from 0 (`$SLURM_ARRAY_TASK_ID/N`,
    /// `$JOB_COMPLETION_INDEX/N`).
    #[arg(long, value_name = "I/N")]
    shard: String,
    /// The folder of shards and manifests (shared by the N processes).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

enum Job<'a> {
    Embed(&'a PathBuf),
    Extract((usize, usize), &'a PathBuf),
}

impl ExportArgs {
    fn text_flags(&self) -> bool {
        self.text_column.is_some() || self.label_column.is_some() || self.pair_column.is_some() || self.max_length.is_some() || self.pooling.is_some()
    }

    fn spec(&self, modality: Modality) -> Result<ModelSpec> {
        let default = match modality {
            Modality::Image => registry::DEFAULT_MODEL,
            Modality::Text => headstart::text::DEFAULT_TEXT_MODEL,
            Modality::Audio => registry::DEFAULT_AUDIO_MODEL,
        };
        let pooling = self.pooling.as_deref().map(str::parse).transpose().map_err(|e| anyhow::anyhow!("--pooling {e}"))?;
        Ok(ModelSpec {
            name: self.model.clone().unwrap_or_else(|| default.into()),
            weights: self.weights.clone(),
            text: TextModelOptions { max_length: self.max_length, pooling, ..TextModelOptions::default() },
        })
    }

    /// Detects the modality and runs `job` with that modality's block.
    fn run(&self, job: Job, out: &mut impl Write) -> Result<()> {
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        let detected = detect_run(&self.data, self.model.as_deref(), self.text_flags());
        eprintln!("note: read as {}: {}", detected.modality.name(), detected.reason);
        let spec = self.spec(detected.modality)?;
        let p = self.common.progress();
        match detected.modality {
            Modality::Image => {
                if self.text_flags() || self.lossy {
                    bail!("--text-column, --label-column, --pair-column, --max-length, --pooling and --lossy apply to text data");
                }
                let decode = DecodeOptions { allow_truncated: self.common.allow_truncated, ..DecodeOptions::default() };
                if headstart::blocks::clip::is_clip_model(&spec.name) {
                    // CLIP's image tower: the normalised embeddings zero-shot and probes use.
                    let mut block = headstart::blocks::clip::ClipBlock::reading(decode, self.common.cache().as_deref());
                    block.batch_size = self.batch_size;
                    block.precision = self.precision.value();
                    return self.go(&block, &spec, job, &p, out);
                }
                let block = ImageBlock { req: None, decode, cache: self.common.cache(), batch_size: self.batch_size, precision: self.precision.value() };
                self.go(&block, &spec, job, &p, out)
            }
            Modality::Text => {
                let d = Columns::default();
                let columns = Columns {
                    text: self.text_column.clone().unwrap_or(d.text),
                    label: self.label_column.clone().unwrap_or(d.label),
                    pair: self.pair_column.clone(),
                };
                let mut block = TextBlock::for_predict(columns, self.lossy, self.common.cache().as_deref(), self.precision.value());
                block.batch_size = self.batch_size;
                self.go(&block, &spec, job, &p, out)
            }
            Modality::Audio => {
                if self.text_flags() || self.lossy {
                    bail!("--text-column, --label-column, --pair-column, --max-length, --pooling and --lossy apply to text data");
                }
                let block = headstart::blocks::audio::AudioBlock {
                    req: None,
                    max_seconds: headstart::blocks::audio::DEFAULT_MAX_SECONDS,
                    cache: self.common.cache(),
                    batch_size: self.batch_size,
                    window: self.audio_window.map(crate::AudioWindowArg::value),
                };
                self.go(&block, &spec, job, &p, out)
            }
        }
    }

    fn go<B: Export>(&self, block: &B, spec: &ModelSpec, job: Job, p: &dyn Progress, out: &mut impl Write) -> Result<()> {
        match job {
            Job::Embed(file) => {
                let e = export::embed(block, spec, &self.data, file, p)?;
                self.summary(out, &e, None, file, serde_json::json!({ "file": file }))
            }
            Job::Extract(shard, dir) => {
                let x = export::shard::extract(block, spec, &self.data, shard, dir, p)?;
                let status = if x.already_done { "already finished with these inputs and settings: nothing to do" } else { "written" };
                let json = serde_json::json!({ "file": x.file, "manifest": x.manifest, "shard": x.shard, "shards": x.shards, "inputs": x.inputs, "already_done": x.already_done });
                self.summary(out, &x.exported, Some(format!("shard {}/{} ({} examples): {status}", x.shard, x.shards, x.inputs)), &x.file, json)
            }
        }
    }

    fn summary(&self, out: &mut impl Write, e: &Exported, line: Option<String>, file: &std::path::Path, mut json: serde_json::Value) -> Result<()> {
        for s in &e.skipped {
            eprintln!("skipped {}: {}", s.path.display(), s.reason);
        }
        for w in &e.warnings {
            eprintln!("warning: {w}");
        }
        if self.json {
            let mut v = serde_json::to_value(e)?;
            if let (Some(o), Some(extra)) = (v.as_object_mut(), json.as_object_mut()) {
                o.append(extra);
            }
            serde_json::to_writer_pretty(&mut *out, &v)?;
            writeln!(out)?;
            return Ok(());
        }
        if let Some(l) = line {
            writeln!(out, "{l}")?;
        }
        writeln!(out, "rows        {} ({} computed, {} from the feature cache, {} skipped)", e.rows, e.computed, e.reused, e.skipped.len())?;
        writeln!(out, "file        {}", file.display())?;
        Ok(())
    }
}

pub fn embed(a: EmbedArgs, out: &mut impl Write) -> Result<()> {
    a.x.run(Job::Embed(&a.out), out)
}

pub fn extract(a: ExtractArgs, out: &mut impl Write) -> Result<()> {
    let shard = export::file::parse_shard(&a.shard).map_err(|m| anyhow::anyhow!("--shard {m}"))?;
    a.x.run(Job::Extract(shard, &a.out), out)
}

/// `train --features`: a head on stored features; the run's modality is the features'.
pub fn train_on_features(req: &FeatureTrainRequest, p: &dyn Progress) -> Result<(Modality, headstart::run::TrainOutcome)> {
    let modality = open_set(&req.features)?.record.modality;
    eprintln!("note: {} features from {}", modality.name(), req.features.display());
    Ok((modality, train_features(req, p)?))
}
