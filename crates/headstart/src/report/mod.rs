//! The HTML run report: one self-contained file (inline CSS and SVG, thumbnails as data URLs,
//! no scripts, nothing fetched) with learning curves, the lr-find curve, the confusion matrix,
//! per-class precision / recall / F1, the most-confused pairs with examples, settings and a
//! data summary. Built from a run directory ([`from_run_dir`]) or from an evaluation.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::metrics::{ClassMetrics, Report};

pub mod svg;

use svg::{esc, Series};

/// What a misclassified example looks like in the report.
pub enum Preview {
    /// A downscaled PNG, base64.
    Image(String),
    Text(String),
    None,
}

/// A misclassified example.
pub struct Mistake {
    pub truth: String,
    pub predicted: String,
    pub probability: f64,
    pub origin: String,
    pub preview: Preview,
}

/// Everything a report shows; empty parts are left out.
#[derive(Default)]
pub struct ReportInput {
    pub title: String,
    /// Headline facts (model, classes, example counts, accuracy), in order.
    pub summary: Vec<(String, String)>,
    /// The run's settings (its `config.json`).
    pub settings: Option<Value>,
    /// `metrics.jsonl` lines.
    pub epochs: Vec<Value>,
    /// The L2 strength the logistic head kept, marked on its curves.
    pub chosen_l2: Option<f64>,
    /// (rates, smoothed losses, suggestion).
    pub lr_find: Option<(Vec<f64>, Vec<f64>, f64)>,
    /// What the confusion matrix and table describe ("validation", "test set").
    pub eval_name: String,
    pub eval: Option<Report>,
    pub counts: Vec<(String, usize)>,
    /// (path, reason).
    pub skipped: Vec<(String, String)>,
    pub mistakes: Vec<Mistake>,
    pub timings: Vec<(String, f64)>,
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}\
h1{font-size:22px}h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}\
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}\
td.l,th.l{text-align:left}.charts{display:flex;flex-wrap:wrap;gap:16px}.ct{font-size:13px;font-weight:600}.tick{font-size:11px}\
.frame{fill:none;stroke:#999}.grid{stroke:#eee}.mark{stroke:#888;stroke-dasharray:4 3}.cell{stroke:#fff}\
.pair{margin:10px 0}.ex{display:inline-block;margin:4px;text-align:center;font-size:11px;vertical-align:top;max-width:160px}\
.ex img{width:64px;height:64px;image-rendering:pixelated;border:1px solid #ccc;display:block;margin:auto}\
.snip{border:1px solid #ddd;padding:4px;text-align:left;background:#fafafa}pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px}";

/// The report as one HTML document.
pub fn render(r: &ReportInput) -> String {
    let mut h = format!("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>", esc(&r.title));
    let _ = write!(h, "<h1>{}</h1>", esc(&r.title));
    if !r.summary.is_empty() {
        h += "<table>";
        for (k, v) in &r.summary {
            let _ = write!(h, "<tr><th class=\"l\">{}</th><td class=\"l\">{}</td></tr>", esc(k), esc(v));
        }
        h += "</table>";
    }
    h += &curves(&r.epochs, r.chosen_l2);
    if let Some((lrs, losses, s)) = &r.lr_find {
        let pts = lrs.iter().copied().zip(losses.iter().copied()).collect();
        h += "<h2>Learning-rate range test</h2><div class=\"charts\">";
        h += &svg::line_chart(
            "loss against learning rate",
            "learning rate (log)",
            &[Series { name: "smoothed loss".into(), color: "#1f77b4", points: pts }],
            true,
            Some((*s, "suggested")),
        );
        h += "</div>";
    }
    if let Some(e) = &r.eval {
        h += &evaluation(e, &r.eval_name);
        h += &confused_pairs(e, &r.mistakes);
    }
    h += &data_summary(r);
    if let Some(s) = &r.settings {
        let _ = write!(h, "<h2>Settings</h2><pre>{}</pre>", esc(&serde_json::to_string_pretty(s).unwrap_or_default()));
    }
    h + "</body></html>\n"
}

/// Loss and accuracy per epoch; for the logistic head, the candidates' scores by L2 strength.
fn curves(epochs: &[Value], chosen_l2: Option<f64>) -> String {
    let rows: Vec<&Value> = epochs.iter().filter(|e| e.get("phase").and_then(Value::as_str) != Some("refit")).collect();
    if rows.is_empty() {
        return String::new();
    }
    let f = |e: &Value, k: &str| e.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let logistic = rows.iter().all(|e| e.get("l2").is_some_and(|l| !l.is_null()));
    let (x_key, x_label, log_x) = if logistic { ("l2", "L2 strength (log)", true) } else { ("epoch", "epoch", false) };
    let line =
        |key: &str, name: &str, color: &'static str| Series { name: name.into(), color, points: rows.iter().map(|e| (f(e, x_key), f(e, key))).collect() };
    let mark = chosen_l2.filter(|_| logistic).map(|l| (l, "chosen"));
    let mut h = format!("<h2>{}</h2><div class=\"charts\">", if logistic { "Learning curves: the logistic head's L2 choice" } else { "Learning curves" });
    h += &svg::line_chart("loss", x_label, &[line("train_loss", "train", "#1f77b4"), line("val_loss", "validation", "#ff7f0e")], log_x, mark);
    h += &svg::line_chart("accuracy", x_label, &[line("train_acc", "train", "#1f77b4"), line("val_acc", "validation", "#ff7f0e")], log_x, mark);
    h + "</div>"
}

fn evaluation(e: &Report, name: &str) -> String {
    let labels: Vec<String> = e.per_class.iter().map(|c| c.label.clone()).collect();
    let mut h = format!(
        "<h2>Confusion matrix ({})</h2><p>n {} · accuracy {:.4} · macro-F1 {:.4} · top-{} accuracy {:.4}</p>",
        esc(name),
        e.n,
        e.accuracy,
        e.macro_f1,
        e.top_k,
        e.top_k_accuracy
    );
    h += &svg::heat_map(&labels, &e.confusion);
    h += "<h2>Per-class precision, recall and F1</h2><table><tr><th class=\"l\">class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>";
    for ClassMetrics { label, precision, recall, f1, support } in &e.per_class {
        let _ = write!(h, "<tr><td class=\"l\">{}</td><td>{precision:.4}</td><td>{recall:.4}</td><td>{f1:.4}</td><td>{support}</td></tr>", esc(label));
    }
    h + "</table>"
}

/// The off-diagonal cells with the most examples, largest first.
pub fn most_confused(e: &Report, n: usize) -> Vec<(usize, usize, usize)> {
    let mut pairs: Vec<(usize, usize, usize)> = e
        .confusion
        .iter()
        .enumerate()
        .flat_map(|(t, row)| row.iter().enumerate().filter(move |(p, &c)| *p != t && c > 0).map(move |(p, &c)| (t, p, c)))
        .collect();
    pairs.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
    pairs.truncate(n);
    pairs
}

/// A held-out prediction, as `train` records it in `val_predictions.jsonl` and `eval` makes it.
pub struct Judged {
    pub truth: usize,
    pub predicted: usize,
    /// Probability of the predicted class.
    pub probability: f64,
    /// Where the example came from (a path, `file.csv:12`).
    pub origin: String,
    /// The example's text, for text data.
    pub text: Option<String>,
}

/// The misclassified examples the report shows: up to 8 for each of the 6 most-confused pairs
/// of `e`, in input order, with a thumbnail (images, made only for these) or a text snippet.
pub fn pick_mistakes(e: &Report, judged: impl IntoIterator<Item = Judged>) -> Vec<Mistake> {
    let shown = most_confused(e, 6);
    let label = |c: usize| e.per_class[c].label.clone();
    let mut per_pair = vec![0usize; shown.len()];
    let mut out = vec![];
    for j in judged {
        let Some(slot) = shown.iter().position(|s| s.0 == j.truth && s.1 == j.predicted) else { continue };
        if j.truth == j.predicted || per_pair[slot] >= 8 {
            continue;
        }
        per_pair[slot] += 1;
        let preview = match j.text {
            Some(t) => Preview::Text(t),
            None => thumbnail(Path::new(&j.origin)),
        };
        out.push(Mistake { truth: label(j.truth), predicted: label(j.predicted), probability: j.probability, origin: j.origin, preview });
    }
    out
}

/// The held-out predictions a run recorded (`val_predictions.jsonl`); lines naming a class the
/// report does not have are left out.
fn read_judged(run: &Path, e: &Report) -> Result<Vec<Judged>> {
    let index = |v: &Value| v.as_str().and_then(|l| e.per_class.iter().position(|c| c.label == l));
    Ok(read_lines(&run.join(VAL_PREDICTIONS))?
        .iter()
        .filter_map(|v| {
            Some(Judged {
                truth: index(&v["truth"])?,
                predicted: index(&v["predicted"])?,
                probability: v["probability"].as_f64().unwrap_or(f64::NAN),
                origin: v["origin"].as_str()?.to_string(),
                text: v["text"].as_str().map(str::to_string),
            })
        })
        .collect())
}

/// The file in a run directory that holds the held-out predictions behind the report.
pub const VAL_PREDICTIONS: &str = "val_predictions.jsonl";

fn confused_pairs(e: &Report, mistakes: &[Mistake]) -> String {
    let pairs = most_confused(e, 6);
    if pairs.is_empty() {
        return "<h2>Most-confused pairs</h2><p>No misclassified examples.</p>".into();
    }
    let mut h = "<h2>Most-confused pairs</h2>".to_string();
    for (t, p, n) in pairs {
        let (tl, pl) = (&e.per_class[t].label, &e.per_class[p].label);
        let _ = write!(h, "<div class=\"pair\"><b>{}</b> taken for <b>{}</b>: {n}<br>", esc(tl), esc(pl));
        for m in mistakes.iter().filter(|m| &m.truth == tl && &m.predicted == pl).take(8) {
            let cap = format!("{} ({:.2})", esc(&short(&m.origin, 28)), m.probability);
            match &m.preview {
                Preview::Image(b64) => {
                    let _ = write!(h, "<span class=\"ex\"><img alt=\"{}\" src=\"data:image/png;base64,{b64}\">{cap}</span>", esc(&m.origin));
                }
                Preview::Text(t) => {
                    let _ = write!(h, "<span class=\"ex snip\">{}<br><i>{cap}</i></span>", esc(&short(t, 140)));
                }
                Preview::None => {
                    let _ = write!(h, "<span class=\"ex\">{cap}</span>");
                }
            }
        }
        h += "</div>";
    }
    h
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n).collect::<String>() + "…"
    }
}

fn data_summary(r: &ReportInput) -> String {
    let mut h = String::new();
    if !r.counts.is_empty() {
        h += "<h2>Data</h2><table><tr><th class=\"l\">class</th><th>examples</th></tr>";
        for (c, n) in &r.counts {
            let _ = write!(h, "<tr><td class=\"l\">{}</td><td>{n}</td></tr>", esc(c));
        }
        let _ = write!(h, "<tr><th class=\"l\">total</th><th>{}</th></tr></table>", r.counts.iter().map(|c| c.1).sum::<usize>());
    }
    let _ = write!(h, "<h2>Skipped inputs ({})</h2>", r.skipped.len());
    if !r.skipped.is_empty() {
        h += "<table><tr><th class=\"l\">input</th><th class=\"l\">reason</th></tr>";
        for (p, why) in r.skipped.iter().take(200) {
            let _ = write!(h, "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>", esc(p), esc(why));
        }
        h += "</table>";
    }
    if !r.timings.is_empty() {
        h += "<h2>Timings</h2><table>";
        for (k, s) in &r.timings {
            let _ = write!(h, "<tr><th class=\"l\">{}</th><td>{s:.2} s</td></tr>", esc(k));
        }
        h += "</table>";
    }
    h
}

/// A small PNG of an image file (at most 64 px a side), for the report; `None` if unreadable.
pub fn thumbnail(path: &Path) -> Preview {
    use base64::Engine;
    let Ok(bytes) = std::fs::read(path) else { return Preview::None };
    if crate::preprocess::header(&bytes, &Default::default()).is_err() {
        return Preview::None;
    }
    let Ok(img) = image::load_from_memory(&bytes) else { return Preview::None };
    let mut png = std::io::Cursor::new(vec![]);
    if img.thumbnail(64, 64).to_rgb8().write_to(&mut png, image::ImageFormat::Png).is_err() {
        return Preview::None;
    }
    Preview::Image(base64::engine::general_purpose::STANDARD.encode(png.into_inner()))
}

/// A metrics report written as JSON (as `train` records it in `outcome.json`).
pub fn report_from_json(v: &Value) -> Option<Report> {
    let per_class = v["per_class"]
        .as_array()?
        .iter()
        .map(|c| {
            Some(ClassMetrics {
                label: c["label"].as_str()?.to_string(),
                precision: c["precision"].as_f64()?,
                recall: c["recall"].as_f64()?,
                f1: c["f1"].as_f64()?,
                support: c["support"].as_u64()? as usize,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let confusion = v["confusion"]
        .as_array()?
        .iter()
        .map(|r| r.as_array().map(|r| r.iter().map(|x| x.as_u64().unwrap_or(0) as usize).collect()))
        .collect::<Option<Vec<Vec<usize>>>>()?;
    Some(Report {
        n: v["n"].as_u64()? as usize,
        accuracy: v["accuracy"].as_f64()?,
        top_k: v["top_k"].as_u64()? as usize,
        top_k_accuracy: v["top_k_accuracy"].as_f64()?,
        macro_f1: v["macro_f1"].as_f64()?,
        per_class,
        confusion,
    })
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t).map(Some).map_err(|e| Error::input(path, e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn read_lines(path: &Path) -> Result<Vec<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(path, e)),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::input(path, format!("line {}: {e}", i + 1))))
        .collect()
}

/// Examples per class of the run's training data (and its separate validation set), read again
/// from `config.json`'s paths; empty when they are no longer there.
fn class_counts(cfg: &Value) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = vec![];
    for key in ["data", "val"] {
        let Some(p) = cfg.get(key).and_then(Value::as_str).map(PathBuf::from) else { continue };
        let found: Option<(Vec<String>, Vec<usize>)> = match cfg.get("columns") {
            Some(c) => serde_json::from_value::<crate::text::data::Columns>(c.clone())
                .ok()
                .and_then(|cols| crate::text::data::TextDataset::open(&p, &cols, None, true).ok())
                .map(|d| (d.classes.clone(), d.classes.iter().enumerate().map(|(i, _)| d.labels.iter().filter(|&&l| l == i).count()).collect())),
            None => crate::data::Dataset::open(&p, None).ok().map(|d| (d.classes.clone(), d.counts())),
        };
        for (c, n) in found.into_iter().flat_map(|(c, n)| c.into_iter().zip(n)) {
            match counts.iter_mut().find(|(k, _)| *k == c) {
                Some(e) => e.1 += n,
                None => counts.push((c, n)),
            }
        }
    }
    counts
}

/// Gathers what a run directory holds: `config.json`, `metrics.jsonl`, `errors.jsonl`,
/// `outcome.json` (the result `train` printed, with timings) and `lr_find.json` if present.
pub fn from_run_dir(run: &Path) -> Result<ReportInput> {
    let settings = read_json(&run.join("config.json"))?;
    if settings.is_none() && !run.join("metrics.jsonl").exists() {
        return Err(Error::input(run, "not a run directory (no config.json or metrics.jsonl)"));
    }
    let outcome = read_json(&run.join("outcome.json"))?;
    let mut r =
        ReportInput { title: format!("headstart run {}", run.display()), settings: settings.clone(), eval_name: "validation".into(), ..Default::default() };
    r.epochs = read_lines(&run.join("metrics.jsonl"))?;
    r.skipped = read_lines(&run.join("errors.jsonl"))?
        .iter()
        .map(|v| (v["path"].as_str().unwrap_or("?").to_string(), v["reason"].as_str().unwrap_or("?").to_string()))
        .collect();
    if let Some(o) = &outcome {
        let s = |k: &str| o.get(k).map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).unwrap_or_default();
        r.summary.push(("model".into(), s("model")));
        r.summary.push(("classes".into(), o["classes"].as_array().map_or(0, Vec::len).to_string()));
        r.summary.push(("examples".into(), format!("{} train, {} validation, {} skipped", s("n_train"), s("n_val"), s("skipped"))));
        r.summary.push((
            "head".into(),
            format!("{}, best epoch {}{}", s("head"), s("best_epoch"), o["l2"].as_f64().map(|l| format!(", L2 {l:.0e}")).unwrap_or_default()),
        ));
        if let Some(w) = o["layer_weights"].as_array() {
            let each: Vec<String> = w.iter().enumerate().map(|(i, w)| format!("{i}: {:.3}", w.as_f64().unwrap_or(f64::NAN))).collect();
            r.summary.push(("layer weights".into(), each.join(", ")));
        }
        r.summary.push(("train accuracy".into(), format!("{:.4}", o["train_accuracy"].as_f64().unwrap_or(f64::NAN))));
        r.summary.push(("bundle".into(), s("bundle")));
        r.eval = report_from_json(&o["val"]);
        if let Some(e) = &r.eval {
            r.mistakes = pick_mistakes(e, read_judged(run, e)?);
        }
        r.chosen_l2 = o["l2"].as_f64();
        if o["selection"]["refit"].as_bool() == Some(true) || o["selection"]["method"].as_str() == Some("cross_validation") {
            r.eval_name = "held-out estimate of the chosen setting, before the refit".into();
        }
        if let Some(t) = o.get("timings").and_then(Value::as_object) {
            r.timings = t.iter().filter_map(|(k, v)| Some((k.replace('_', " "), v.as_f64()?))).collect();
        }
    }
    if let Some(l) = read_json(&run.join("lr_find.json"))? {
        let nums = |k: &str| l[k].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect::<Vec<f64>>()).unwrap_or_default();
        r.lr_find = Some((nums("lrs"), nums("losses"), l["suggestion"].as_f64().unwrap_or(f64::NAN)));
    }
    if let Some(cfg) = &settings {
        r.counts = class_counts(cfg);
    }
    Ok(r)
}

/// Writes `html` to `path` atomically.
pub fn write(path: &Path, html: &str) -> Result<()> {
    crate::fsx::atomic_write(path, html.as_bytes())
}

/// Removes temporary files a killed run left while writing its report, `outcome.json` or
/// `val_predictions.jsonl` (another process's writes of these files in the same run directory
/// are not expected).
pub fn remove_stale_temps(run: &Path) {
    let own = format!("-{}-", std::process::id());
    for e in std::fs::read_dir(run).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = [".report.html.tmp-", ".outcome.json.tmp-", ".val_predictions.jsonl.tmp-"].iter().any(|p| name.starts_with(p));
        if ours && !name.contains(&own) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Builds the run's report and writes it to `RUN_DIR/report.html`.
pub fn write_run_report(run: &Path) -> Result<PathBuf> {
    remove_stale_temps(run);
    let path = run.join("report.html");
    write(&path, &render(&from_run_dir(run)?))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_holds_every_section_and_picks_the_most_confused_pairs() {
        let labels: Vec<String> = ["cat", "dog", "fox"].iter().map(|s| s.to_string()).collect();
        let e = crate::metrics::report(&labels, &[0, 0, 1, 1, 1, 2], &[vec![0], vec![1], vec![2], vec![2], vec![1], vec![2]], 1);
        assert_eq!(most_confused(&e, 5), vec![(1, 2, 2), (0, 1, 1)]);
        let r = ReportInput {
            title: "t".into(),
            epochs: vec![serde_json::json!({"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.2, "val_acc": 0.4})],
            eval: Some(e),
            eval_name: "test".into(),
            mistakes: vec![Mistake {
                truth: "dog".into(),
                predicted: "fox".into(),
                probability: 0.7,
                origin: "d.png".into(),
                preview: Preview::Text("<b>".into()),
            }],
            counts: vec![("cat".into(), 2)],
            skipped: vec![("x.png".into(), "truncated".into())],
            ..Default::default()
        };
        let h = render(&r);
        for part in
            ["Learning curves", "Confusion matrix (test)", "Per-class", "Most-confused pairs", "<b>dog</b> taken for <b>fox</b>: 2", "&lt;b&gt;", "truncated"]
        {
            assert!(h.contains(part), "{part} missing");
        }
        assert!(!h.contains("<script") && !h.contains("http://") && !h.contains("https://"));
        assert_eq!(h.matches("<svg").count(), h.matches("</svg>").count());
    }
}
