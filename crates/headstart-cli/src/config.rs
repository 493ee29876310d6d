//! `train --config run.toml`: Hugging Face `TrainingArguments` field names plus headstart's
//! own. Every key is optional; flags given on the command line win over the file; an unknown
//! key is an error that names it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

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
    /// `truncate` or `chunks`.
    pub long_text: Option<String>,
    pub chunk_overlap: Option<usize>,
    pub max_chunks: Option<usize>,
    /// `mean` or `max`.
    pub chunk_pooling: Option<String>,
    pub chunk_batch: Option<usize>,
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
