//! The HTML report hooks: after `train`, for `eval --report FILE`, and `headstart report`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use headstart::metrics::Report;
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

fn ranked(probs: &Tensor) -> Result<Vec<Vec<usize>>> {
    let k = probs.size()[1];
    let (_, idx) = probs.topk(k, -1, true, true);
    let flat: Vec<i64> = Vec::try_from(idx.flatten(0, -1))?;
    Ok(flat.chunks(k as usize).map(|r| r.iter().map(|&i| i as usize).collect()).collect())
}

/// How `eval` reads and runs a bundle.
pub struct EvalOptions<'a> {
    /// Text: replace invalid UTF-8.
    pub lossy: bool,
    pub weights: Option<&'a Path>,
    pub allow_truncated: bool,
    /// Another encoder precision than the bundle's (warned about).
    pub precision: Option<headstart::engine::Precision>,
}

/// Evaluates a bundle on labelled data (as `eval` does) and writes the HTML report to `file`,
/// with the misclassified examples of the most-confused pairs.
pub fn eval_with_report(
    bundle: &Path,
    data: &Path,
    how: &EvalOptions,
    cache: Option<&Path>,
    progress: &dyn headstart::progress::Progress,
    file: &Path,
) -> Result<(Report, Vec<headstart::data::Skip>)> {
    let EvalOptions { lossy, weights, allow_truncated, precision } = *how;
    let t = std::time::Instant::now();
    let (labels, truth, probs, origins, previews, skipped): (Vec<String>, Vec<usize>, Tensor, Vec<String>, Vec<Option<String>>, _) =
        if headstart::bundle::modality(bundle)? == "audio" {
            let model = weights.map(|w| w.display().to_string());
            let p = headstart::blocks::audio::AudioPredictor::load(bundle, model.as_deref())?;
            let ds = headstart::data::Dataset::open_kind(data, Some(p.labels()), headstart::blocks::audio::AUDIO_FILES)?;
            let paths: Vec<PathBuf> = ds.items.iter().map(|i| i.path.clone()).collect();
            let (probs, ok, mut skipped) = p.probabilities(&paths, cache, progress)?;
            skipped.extend(ds.skipped);
            let truth = ok.iter().map(|&i| ds.items[i].label).collect();
            let origins = ok.iter().map(|&i| paths[i].display().to_string()).collect();
            let previews = ok.iter().map(|_| None).collect();
            (p.labels().to_vec(), truth, probs, origins, previews, skipped)
        } else if headstart::bundle::modality(bundle)? == "text" {
            let model = weights.map(|w| w.display().to_string());
            let mut p = headstart::text::TextPredictor::load(bundle, model.as_deref())?;
            crate::warn_precision(precision.and_then(|a| p.use_precision(a)));
            let ds = headstart::text::data::TextDataset::open(data, &p.meta.columns, Some(&p.meta.labels), lossy)?;
            let probs = p.probabilities(&ds.texts, ds.pairs.as_deref(), cache, progress)?;
            let previews = ds.texts.iter().map(|t| Some(t.clone())).collect();
            (p.meta.labels.clone(), ds.labels.clone(), probs, ds.origins.clone(), previews, ds.skipped)
        } else if headstart::blocks::clip::is_clip_bundle(bundle)? {
            let mut p = headstart::blocks::clip::ClipPredictor::load(bundle, weights)?;
            p.decode.allow_truncated = allow_truncated;
            let ds = headstart::data::Dataset::open(data, Some(&p.labels))?;
            let paths: Vec<PathBuf> = ds.items.iter().map(|i| i.path.clone()).collect();
            let (probs, ok, mut skipped) = p.probabilities(&paths, cache, progress)?;
            skipped.extend(ds.skipped);
            let truth = ok.iter().map(|&i| ds.items[i].label).collect();
            let origins = ok.iter().map(|&i| paths[i].display().to_string()).collect();
            let previews = ok.iter().map(|_| None).collect();
            (p.labels.clone(), truth, probs, origins, previews, skipped)
        } else {
            let mut p = headstart::run::Predictor::load(bundle, weights)?;
            p.decode.allow_truncated = allow_truncated;
            crate::warn_precision(precision.and_then(|a| p.use_precision(a)));
            let ds = headstart::data::Dataset::open(data, Some(&p.meta.labels))?;
            let paths: Vec<PathBuf> = ds.items.iter().map(|i| i.path.clone()).collect();
            let (probs, ok, mut skipped) = p.probabilities(&paths, cache, progress)?;
            skipped.extend(ds.skipped);
            let truth = ok.iter().map(|&i| ds.items[i].label).collect();
            let origins = ok.iter().map(|&i| paths[i].display().to_string()).collect();
            // Thumbnails are made only for the mistakes shown.
            let previews = ok.iter().map(|_| None).collect();
            (p.meta.labels.clone(), truth, probs, origins, previews, skipped)
        };
    let eval = headstart::metrics::report(&labels, &truth, &ranked(&probs)?, 5.min(labels.len()));
    let elapsed = t.elapsed().as_secs_f64();
    let judged = truth.iter().zip(best(&probs)?).zip(origins).zip(previews).map(|(((&truth, (predicted, probability)), origin), text)| report::Judged {
        truth,
        predicted,
        probability,
        origin,
        text,
    });
    let mistakes = report::pick_mistakes(&eval, judged);
    let mut counts: Vec<(String, usize)> = labels.iter().map(|l| (l.clone(), 0)).collect();
    for &t in &truth {
        counts[t].1 += 1;
    }
    let input = ReportInput {
        title: format!("headstart eval of {} on {}", bundle.display(), data.display()),
        summary: vec![
            ("bundle".into(), bundle.display().to_string()),
            ("data".into(), data.display().to_string()),
            ("classes".into(), labels.len().to_string()),
        ],
        eval_name: "test set".into(),
        eval: Some(eval.clone()),
        counts,
        skipped: skipped.iter().map(|s| (s.path.display().to_string(), s.reason.clone())).collect(),
        mistakes,
        timings: vec![("evaluation".into(), elapsed)],
        ..Default::default()
    };
    report::write(file, &report::render(&input)).with_context(|| format!("writing the report {}", file.display()))?;
    Ok((eval, skipped))
}
