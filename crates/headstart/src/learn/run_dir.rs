//! The run directory: `config.json` (the resolved request), `errors.jsonl` (inputs left out),
//! `metrics.jsonl` (one line per epoch), and the progress line of an epoch.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::learn::split::Skip;
use crate::train::EpochRecord;

/// Creates the run directory and writes its `config.json`: the resolved request.
pub fn write_config<T: Serialize>(out: &Path, req: &T) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let config = serde_json::to_string_pretty(req).map_err(|e| Error::Model(e.to_string()))?;
    crate::fsx::atomic_write(&out.join("config.json"), config.as_bytes())
}

/// Writes the run's `errors.jsonl`: every input left out, and why.
pub fn write_errors(out: &Path, skipped: &[Skip]) -> Result<()> {
    let mut errors = String::new();
    for s in skipped {
        errors += &serde_json::to_string(s).map_err(|e| Error::Model(e.to_string()))?;
        errors.push('\n');
    }
    crate::fsx::atomic_write(&out.join("errors.jsonl"), errors.as_bytes())
}

/// The run's `metrics.jsonl`, one line per epoch (appended to when a run resumes). A failed
/// write is kept and reported by [`MetricsLog::finish`], so training is not interrupted.
pub struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
    error: Option<Error>,
}

impl MetricsLog {
    pub fn open(out: &Path, append: bool) -> Result<MetricsLog> {
        let path = out.join("metrics.jsonl");
        let file = if append { std::fs::OpenOptions::new().append(true).create(true).open(&path) } else { std::fs::File::create(&path) }
            .map_err(|e| Error::io(&path, e))?;
        Ok(MetricsLog { file, path, error: None })
    }

    pub fn record(&mut self, r: &EpochRecord) {
        let line = serde_json::to_string(r).unwrap_or_default();
        if let Err(e) = writeln!(self.file, "{line}").and_then(|_| self.file.flush()) {
            self.error.get_or_insert(Error::io(&self.path, e));
        }
    }

    pub fn finish(self) -> Result<()> {
        self.error.map_or(Ok(()), Err)
    }
}

/// One line of progress for an epoch, an L2 candidate or the refit.
pub fn epoch_line(r: &EpochRecord) -> String {
    if r.phase.as_deref() == Some("refit") {
        let mut s = format!("refit      on all {} examples: train loss {:.4} acc {:.4}", r.n.unwrap_or(0), r.train_loss, r.train_acc);
        match r.l2 {
            Some(l2) => s += &format!("  l2 {l2:.0e} ({} iterations)", r.iterations.unwrap_or(0)),
            None => s += &format!("  {} epochs", r.epoch),
        }
        if let Some(e) = r.selection_estimate {
            let what = r.folds.map_or("val acc".to_string(), |k| format!("{k}-fold CV acc"));
            s += &format!("  (selection estimate, {what} before refit: {e:.4})");
        }
        return s;
    }
    let mut s = format!("epoch {:>3}  train loss {:.4} acc {:.4}", r.epoch, r.train_loss, r.train_acc);
    if let (Some(l), Some(a)) = (r.val_loss, r.val_acc) {
        let what = r.folds.map_or("val".to_string(), |k| format!("{k}-fold CV"));
        s += &format!("  {what} loss {l:.4} acc {a:.4}");
    }
    if let Some(l2) = r.l2 {
        s += &format!("  l2 {l2:.0e} ({} iterations)", r.iterations.unwrap_or(0));
    }
    s
}
