//! `train --config run.toml`: Hugging Face `TrainingArguments` field names plus headstart's
//! own. Every key is optional; flags given on the command line win over the file; an unknown
//! key is an error that names it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::{config_choice, BestArg, LayerArg, PrecisionArg, ScheduleArg, TrainArgs};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    // Hugging Face TrainingArguments.
    pub output_dir: Option<PathBuf>,
    pub per_device_train_batch_size: Option<usize>,
    pub per_device_eval_batch_size: Option<usize>,
    pub num_train_epochs: Option<f64>,
    pub learning_rate: Option<f64>,
    pub warmup_ratio: Option<f64>,
    pub warmup_steps: Option<usize>,
    pub weight_decay: Option<f64>,
    /// `epoch` or `no`.
    pub eval_strategy: Option<String>,
    /// `epoch`, `steps` (with `save_steps`) or `no`.
    pub save_strategy: Option<String>,
    pub save_steps: Option<usize>,
    pub load_best_model_at_end: Option<bool>,
    /// `loss` / `eval_loss` or `accuracy` / `eval_accuracy`.
    pub metric_for_best_model: Option<String>,
    pub seed: Option<u64>,
    pub max_length: Option<usize>,
    /// `linear`, `cosine` or `constant`.
    pub lr_scheduler_type: Option<String>,
    pub gradient_accumulation_steps: Option<usize>,
    pub max_grad_norm: Option<f64>,
    pub bf16: Option<bool>,
    pub label_smoothing_factor: Option<f64>,
    pub early_stopping_patience: Option<usize>,
    // headstart's own.
    pub model: Option<String>,
    pub weights: Option<PathBuf>,
    pub data: Option<PathBuf>,
    pub val: Option<PathBuf>,
    pub val_split: Option<f64>,
    /// `feature` or `finetune`.
    pub mode: Option<String>,
    /// `logistic`, `linear` or `mlp`.
    pub head: Option<String>,
    pub unfreeze: Option<String>,
    pub head_epochs: Option<usize>,
    pub stage_lr_decay: Option<f64>,
    pub text_column: Option<String>,
    pub label_column: Option<String>,
    pub pair_column: Option<String>,
    /// `cls`, `mean` or `last`.
    pub pooling: Option<String>,
    pub lossy: Option<bool>,
    pub cache_dir: Option<PathBuf>,
    /// Refit the chosen head setting on train + validation (default true).
    pub refit: Option<bool>,
    /// Folds of the cross-validation that chooses the head's setting, `"auto"` or `"off"`.
    pub cv: Option<toml::Value>,
    /// `truncate` or `chunks`.
    pub long_text: Option<String>,
    pub chunk_overlap: Option<usize>,
    pub max_chunks: Option<usize>,
    /// `mean` or `max`.
    pub chunk_pooling: Option<String>,
    pub chunk_batch: Option<usize>,
    /// CLIP models: `default` or `zero-shot`.
    pub head_init: Option<String>,
    /// Prompt templates of the zero-shot start, each with `{}`.
    pub templates: Option<Vec<String>>,
    /// Audio: a hidden state's number, or `"weighted"` (every one, for the layer-sum head).
    pub layer: Option<toml::Value>,
}

impl RunConfig {
    pub fn read(path: &Path) -> Result<RunConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: RunConfig = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
        if let Some(e) = cfg.num_train_epochs {
            if e.fract() != 0.0 || e < 1.0 {
                bail!("{}: num_train_epochs must be a whole number ≥ 1 (got {e})", path.display());
            }
        }
        if let Some(s) = &cfg.eval_strategy {
            if !matches!(s.as_str(), "epoch" | "no") {
                bail!("{}: eval_strategy `{s}` is not supported: headstart evaluates every epoch (`epoch`) or not at all (`no`)", path.display());
            }
        }
        if let Some(s) = &cfg.save_strategy {
            match s.as_str() {
                "epoch" | "no" => {}
                "steps" if cfg.save_steps.is_some() => {}
                "steps" => bail!("{}: save_strategy `steps` needs save_steps", path.display()),
                _ => bail!("{}: save_strategy `{s}` is not one of epoch, steps, no", path.display()),
            }
        }
        Ok(cfg)
    }

    pub fn epochs(&self) -> Option<usize> {
        self.num_train_epochs.map(|e| e as usize)
    }
}

/// Fills a flag not given on the command line with the config file's value.
macro_rules! fill {
    ($flag:expr, $value:expr) => {
        if $flag.is_none() {
            $flag = $value;
        }
    };
}

impl TrainArgs {
    /// Fills every flag not given on the command line from the config file.
    pub(crate) fn merge(&mut self, mut f: RunConfig) -> Result<Vec<String>> {
        self.merge_values(&mut f);
        self.merge_choices(&mut f)?;
        self.merge_hf_strategies(&f);
        if self.common.cache_dir.is_none() {
            self.common.cache_dir = f.cache_dir.take();
        }
        self.lossy |= f.lossy.unwrap_or(false);
        let mut warnings = vec![];
        match f.save_strategy.as_deref() {
            Some("steps") => fill!(self.checkpoint_every, f.save_steps),
            Some("no") => warnings.push("save_strategy = \"no\": fine-tuning still checkpoints every epoch, so runs can be resumed".into()),
            _ => {}
        }
        Ok(warnings)
    }

    /// The settings that are plain values, flag for key.
    fn merge_values(&mut self, f: &mut RunConfig) {
        fill!(self.out, f.output_dir.take());
        fill!(self.batch_size, f.per_device_train_batch_size);
        fill!(self.eval_batch_size, f.per_device_eval_batch_size);
        fill!(self.epochs, f.epochs());
        fill!(self.lr, f.learning_rate);
        fill!(self.warmup_ratio, f.warmup_ratio);
        fill!(self.warmup, f.warmup_steps);
        fill!(self.weight_decay, f.weight_decay);
        fill!(self.seed, f.seed);
        fill!(self.max_length, f.max_length);
        fill!(self.accumulate, f.gradient_accumulation_steps);
        fill!(self.clip_grad, f.max_grad_norm);
        fill!(self.label_smoothing, f.label_smoothing_factor);
        fill!(self.early_stopping, f.early_stopping_patience);
        fill!(self.model, f.model.take());
        fill!(self.weights, f.weights.take());
        fill!(self.data, f.data.take());
        fill!(self.val, f.val.take());
        fill!(self.val_split, f.val_split);
        fill!(self.unfreeze, f.unfreeze.take());
        fill!(self.head_epochs, f.head_epochs);
        fill!(self.stage_lr_decay, f.stage_lr_decay);
        fill!(self.text_column, f.text_column.take());
        fill!(self.label_column, f.label_column.take());
        fill!(self.pair_column, f.pair_column.take());
        fill!(self.pooling, f.pooling.take());
        fill!(self.chunk_overlap, f.chunk_overlap);
        fill!(self.max_chunks, f.max_chunks);
        fill!(self.chunk_batch, f.chunk_batch);
        if self.prompts.templates.is_empty() {
            self.prompts.templates = f.templates.take().unwrap_or_default();
        }
    }

    /// The settings with fixed choices, each checked as its flag would be.
    fn merge_choices(&mut self, f: &mut RunConfig) -> Result<()> {
        if self.cv.is_none() {
            self.cv = match f.cv.take() {
                None => None,
                Some(toml::Value::Integer(k)) => Some(k.to_string()),
                Some(toml::Value::String(s)) => Some(s),
                Some(v) => bail!("config: cv must be a number of folds, \"auto\" or \"off\", not {v}"),
            };
        }
        if !self.refit && !self.no_refit {
            self.no_refit = f.refit == Some(false);
        }
        fill!(self.head_init, config_choice("head_init", f.head_init.as_deref())?);
        fill!(self.long_text, config_choice("long_text", f.long_text.as_deref())?);
        fill!(self.chunk_pooling, config_choice("chunk_pooling", f.chunk_pooling.as_deref())?);
        fill!(self.mode, config_choice("mode", f.mode.as_deref())?);
        fill!(self.head, config_choice("head", f.head.as_deref())?);
        if self.layer.is_none() {
            self.layer = match f.layer.take() {
                None => None,
                Some(toml::Value::Integer(n)) if n >= 0 => Some(LayerArg::Hidden(n as usize)),
                Some(toml::Value::String(s)) => Some(s.parse().map_err(|e| anyhow::anyhow!("config: layer {e}"))?),
                Some(v) => bail!("config: layer must be a hidden state's number or \"weighted\", not {v}"),
            };
        }
        if self.schedule.is_none() {
            self.schedule = match f.lr_scheduler_type.as_deref() {
                None => None,
                Some("linear") => Some(ScheduleArg::Linear),
                Some("cosine") => Some(ScheduleArg::Cosine),
                Some("constant") => Some(ScheduleArg::Constant),
                Some(t) => bail!("config: lr_scheduler_type `{t}` is not linear, cosine or constant"),
            };
        }
        if self.best_metric.is_none() {
            self.best_metric = match f.metric_for_best_model.as_deref() {
                None => None,
                Some("loss" | "eval_loss") => Some(BestArg::Loss),
                Some("accuracy" | "eval_accuracy") => Some(BestArg::Accuracy),
                Some(m) => bail!("config: metric_for_best_model `{m}` is not loss or accuracy"),
            };
        }
        Ok(())
    }

    /// Hugging Face settings that map onto other flags: bf16, keeping the last epoch, no
    /// evaluation.
    fn merge_hf_strategies(&mut self, f: &RunConfig) {
        if self.precision.is_none() && f.bf16 == Some(true) {
            self.precision = Some(PrecisionArg::Bf16);
        }
        if f.load_best_model_at_end == Some(false) {
            self.keep_last = true;
        }
        if f.eval_strategy.as_deref() == Some("no") && self.val.is_none() && self.val_split.is_none() {
            self.val_split = Some(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    //! Mutation fuzzing of `run.toml`: each mutated file is read, merged into `train`'s flags
    //! and turned into training settings. Nothing may panic; each case must finish in 1 s.

    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::time::{Duration, Instant};

    use clap::Parser;
    use headstart::data::Rng;

    use super::RunConfig;

    const SEED: &str = r#"# a run
output_dir = "runs/x"
per_device_train_batch_size = 16
per_device_eval_batch_size = 64
num_train_epochs = 3
learning_rate = 2e-5
warmup_ratio = 0.1
warmup_steps = 10
weight_decay = 0.01
eval_strategy = "epoch"
save_strategy = "steps"
save_steps = 50
load_best_model_at_end = true
metric_for_best_model = "eval_accuracy"
seed = 42
max_length = 128
lr_scheduler_type = "cosine"
gradient_accumulation_steps = 2
max_grad_norm = 1.0
bf16 = false
label_smoothing_factor = 0.1
early_stopping_patience = 2
model = "all-minilm-l6-v2"
data = "train.csv"
val_split = 0.2
mode = "finetune"
head = "mlp"
unfreeze = "last:2"
head_epochs = 1
stage_lr_decay = 0.5
text_column = "text"
label_column = "label"
pooling = "mean"
lossy = true
"#;

    const TOKENS: &[&str] = &[
        "=",
        "\"",
        "'''",
        "[",
        "]",
        "[[x]]",
        "{",
        "}",
        "#",
        "\n",
        ".",
        ",",
        "-1",
        "0",
        "1e400",
        "nan",
        "inf",
        "-inf",
        "18446744073709551616",
        "9223372036854775807",
        "1.5",
        "true",
        "\"no\"",
        "\"steps\"",
        "\"last:0\"",
        "\"all\"",
        "\"last:99999999999999999999\"",
        "\\u0000",
        "é",
        "\u{202e}",
    ];

    /// One text or byte-level edit.
    fn mutate(rng: &mut Rng, text: &mut Vec<u8>) -> &'static str {
        let at = if text.is_empty() { 0 } else { rng.below(text.len()) };
        match rng.below(6) {
            0 | 1 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                text.splice(at..at, t.bytes());
                "insert token"
            }
            2 => {
                // Replace a value (what follows `= ` up to the line end) with a token.
                let Some(eq) = text[at..].iter().position(|&b| b == b'=').map(|i| at + i + 1) else { return "no value" };
                let end = text[eq..].iter().position(|&b| b == b'\n').map_or(text.len(), |i| eq + i);
                let t = TOKENS[rng.below(TOKENS.len())];
                text.splice(eq..end, format!(" {t}").into_bytes());
                "replace value"
            }
            3 => {
                text.truncate(at);
                "truncate"
            }
            4 => {
                let end = (at + 1 + rng.below(40)).min(text.len());
                text.drain(at..end);
                "remove"
            }
            _ => {
                if let Some(b) = text.get_mut(at) {
                    *b ^= 1 << rng.below(8);
                }
                "bit flip"
            }
        }
    }

    /// Reads, merges and builds the settings; `Ok(true)` when all of that succeeded.
    fn run_config(path: &std::path::Path) -> Result<bool, String> {
        let Ok(cfg) = RunConfig::read(path) else { return Ok(false) };
        let crate::Command::Train(mut args) = crate::Cli::try_parse_from(["headstart", "train"]).map_err(|e| e.to_string())?.command else {
            return Err("`headstart train` did not parse as train".into());
        };
        if args.merge(cfg).is_err() {
            return Ok(false);
        }
        let built = crate::train_config(&args).is_ok();
        let tuned = crate::finetune_config(&args, headstart::train::finetune::FinetuneConfig::default()).map(|c| c.validate().is_ok()).unwrap_or(false);
        Ok(built && tuned)
    }

    #[test]
    fn fuzz_run_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, SEED).unwrap();
        assert_eq!(run_config(&path), Ok(true), "the seed config must be accepted");
        if let Ok(root) = std::env::var("HEADSTART_FUZZ_SEEDS") {
            // A starting corpus for the cargo-fuzz target `run_config`.
            let dir = std::path::Path::new(&root).join("run_config");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("run.toml"), SEED).unwrap();
        }
        let (mut accepted, mut refused, mut failures) = (0, 0, vec![]);
        let t0 = Instant::now();
        const CASES: usize = 600;
        for i in 0..CASES {
            let mut rng = Rng(0x70_6d1 ^ ((i as u64) << 24));
            rng.next_u64();
            let mut text = SEED.as_bytes().to_vec();
            let hows: Vec<&str> = (0..1 + rng.below(4)).map(|_| mutate(&mut rng, &mut text)).collect();
            std::fs::write(&path, &text).unwrap();
            let c0 = Instant::now();
            match catch_unwind(AssertUnwindSafe(|| run_config(&path))) {
                Ok(Ok(true)) => accepted += 1,
                Ok(Ok(false)) => refused += 1,
                Ok(Err(e)) => failures.push(format!("case {i} ({}): {e}", hows.join("+"))),
                Err(_) => failures.push(format!("case {i} ({}): PANIC on\n{}", hows.join("+"), String::from_utf8_lossy(&text))),
            }
            if c0.elapsed() > Duration::from_secs(1) {
                failures.push(format!("case {i} ({}): took {:?}", hows.join("+"), c0.elapsed()));
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        println!("fuzz run config    cases {CASES:>5}  accepted {accepted:>5}  refused {refused:>5}  failures {}  time {secs:.1} s", failures.len());
        assert!(failures.is_empty(), "{} failing cases:\n{}", failures.len(), failures.join("\n"));
    }
}
