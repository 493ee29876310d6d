//! The HTML report hooks: after `train`, for `eval --report FILE`, and `headstart report`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use headstart::learn::task::Scored;
use headstart::report::{self, ReportInput};
use tch::Tensor;

/// Records the outcome and timings next to the run's other files, then writes `report.html`.
pub fn after_train<T: serde::Serialize>(run_dir: &Path, outcome: &T, elapsed: Duration) -> Result<PathBuf> {
    let mut v = serde_json::to_value(outcome)?;
    // The run's own breakdown (if any) keeps its parts; the process's wall time joins them.
    if !v["timings"].is_object() {
        v["timings"] = serde_json::json!({});
    }
    v["timings"]["train_seconds"] = serde_json::json!(elapsed.as_secs_f64());
    report::remove_stale_temps(run_dir);
    let path = run_dir.join("outcome.json");
    headstart::fsx::atomic_write(&path, serde_json::to_string_pretty(&v)?.as_bytes())?;
    Ok(report::write_run_report(run_dir)?)
}

/// The predicted class and its probability for each row.
fn best(probs: &Tensor) -> Result<Vec<(usize, f64)>> {
    let (v, i) = probs.max_dim(-1, false);
    let v: Vec<f64> = Vec::try_from(v.to_kind(tch::Kind::Double))?;
    let i: Vec<i64> = Vec::try_from(i)?;
    Ok(i.into_iter().map(|i| i as usize).zip(v).collect())
}

/// Writes `eval`'s HTML report to `file`: the scores, the class counts, the skipped inputs and
/// the misclassified examples of the most-confused pairs (thumbnails for images, snippets for
/// text). `summary` names what was evaluated; `elapsed` is the evaluation's time.
pub fn eval_report(scored: &Scored, title: String, summary: Vec<(String, String)>, elapsed: Duration, file: &Path) -> Result<()> {
    let judged = scored.truth.iter().zip(best(&scored.probs)?).zip(&scored.examples).map(|((&truth, (predicted, probability)), (origin, text))| {
        report::Judged { truth, predicted, probability, origin: origin.clone(), text: text.clone() }
    });
    let mistakes = report::pick_mistakes(&scored.report, judged);
    let mut counts: Vec<(String, usize)> = scored.labels.iter().map(|l| (l.clone(), 0)).collect();
    for &t in &scored.truth {
        counts[t].1 += 1;
    }
    let input = ReportInput {
        title,
        summary,
        eval_name: "test set".into(),
        eval: Some(scored.report.clone()),
        counts,
        skipped: scored.skipped.iter().map(|s| (s.path.display().to_string(), s.reason.clone())).collect(),
        mistakes,
        timings: vec![("evaluation".into(), elapsed.as_secs_f64())],
        ..Default::default()
    };
    report::write(file, &report::render(&input)).with_context(|| format!("writing the report {}", file.display()))
}
