//! The HTML reports of `train`, `headstart report` and `eval --report`, rendered in headless
//! Chromium: the screenshot is not blank, the page logs nothing to the console, and the SVG
//! charts are in the rendered DOM. Skipped, loudly, only when `chromium` is not installed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

fn headstart(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_headstart")).args(args).output().unwrap()
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|c| {
        let o = Command::new("sh").args(["-c", &format!("command -v {c}")]).output().ok()?;
        o.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
    })
}

/// Runs headless Chromium on `page` with `extra` flags; returns stdout and the console lines
/// it logged.
fn browse(chrome: &Path, profile: &Path, page: &Path, extra: &[&str]) -> (String, Vec<String>) {
    let url = format!("file://{}", page.canonicalize().unwrap().display());
    let o = Command::new(chrome)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--enable-logging=stderr", "--v=0", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(&url)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "chromium failed on {url}: {err}");
    let console = err.lines().filter(|l| l.contains(":CONSOLE")).map(str::to_string).collect();
    (String::from_utf8_lossy(&o.stdout).into_owned(), console)
}

/// Share of pixels that differ from the top-left one (the page background).
fn ink(png: &Path) -> f64 {
    let img = image::open(png).unwrap().to_rgb8();
    let bg = *img.get_pixel(0, 0);
    img.pixels().filter(|p| **p != bg).count() as f64 / (img.width() * img.height()) as f64
}

fn check_page(chrome: &Path, dir: &Path, page: &Path, min_svg: usize) -> PathBuf {
    let shot = dir.join(format!("{}.png", page.file_stem().unwrap().to_string_lossy()));
    let (_, console) = browse(chrome, &dir.join("profile"), page, &["--window-size=1200,1800", &format!("--screenshot={}", shot.display())]);
    assert!(console.is_empty(), "console output from {}: {console:?}", page.display());
    let share = ink(&shot);
    assert!(share > 0.02, "{} renders (almost) blank: {share:.4} of the pixels are not background", page.display());
    let (dom, console) = browse(chrome, &dir.join("profile"), page, &["--dump-dom"]);
    assert!(console.is_empty(), "console output from {}: {console:?}", page.display());
    let svgs = dom.matches("<svg").count();
    assert!(svgs >= min_svg, "{} has {svgs} SVG elements, wanted at least {min_svg}", page.display());
    assert!(dom.contains("<polyline") || dom.contains("<rect"), "no drawn SVG content in {}", page.display());
    shot
}

#[test]
fn reports_render_in_headless_chromium() {
    let Some(chrome) = chromium() else {
        eprintln!("\n\n**************** SKIPPED: chromium is not installed; the HTML reports were NOT checked in a browser ****************\n\n");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The detector itself: a page with a console error and a blank page are caught.
    let bad = dir.path().join("bad.html");
    std::fs::write(&bad, "<html><body><script>console.error('marker')</script></body></html>").unwrap();
    let (_, console) = browse(&chrome, &dir.path().join("profile"), &bad, &["--dump-dom"]);
    assert!(console.iter().any(|l| l.contains("marker")), "console errors are not seen: {console:?}");
    let blank = dir.path().join("blank.png");
    browse(&chrome, &dir.path().join("profile"), &bad, &["--window-size=400,300", &format!("--screenshot={}", blank.display())]);
    assert!(ink(&blank) < 0.001);

    let data = dir.path().join("data");
    common::sample_set(&data);
    std::fs::write(data.join("Bag").join("broken.png"), b"not an image").unwrap();
    let run = dir.path().join("run");
    let o = headstart(&["train", "--data", data.to_str().unwrap(), "--out", run.to_str().unwrap(), "--no-cache", "--progress", "none"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("report      "), "train names its report");
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    for part in ["Learning curves", "Confusion matrix", "Per-class precision", "Most-confused pairs", "broken.png", "train seconds", "Settings"] {
        assert!(html.contains(part), "{part} missing from the run report");
    }
    assert!(!html.contains("<script") && !html.contains("src=\"http"), "the report must load nothing");
    // `headstart report` rebuilds the same file from the run directory.
    std::fs::remove_file(run.join("report.html")).unwrap();
    let o = headstart(&["report", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(run.join("report.html")).unwrap(), html);
    // An lr-find saved into the run shows up as its own chart.
    assert!(!html.contains("Learning-rate range test"));
    let o = headstart(&["lr-find", "--data", data.to_str().unwrap(), "--steps", "10", "--batch-size", "4", "--out", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = headstart(&["report", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read_to_string(run.join("report.html")).unwrap().contains("Learning-rate range test"));
    check_page(&chrome, dir.path(), &run.join("report.html"), 4);

    let eval = dir.path().join("eval.html");
    let o = headstart(&["eval", run.join("bundle").to_str().unwrap(), "--data", data.to_str().unwrap(), "--no-cache", "--report", eval.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(&eval).unwrap();
    assert!(html.contains("Confusion matrix (test set)") && html.contains("broken.png"));
    check_page(&chrome, dir.path(), &eval, 1);
}

/// `train` records its held-out predictions, and the report shows the mistakes among them with
/// thumbnails. The validation set holds bags filed under `Trouser`, which a head trained on
/// real bags takes for bags: those mistakes must be recorded and shown.
#[test]
fn the_run_report_shows_thumbnails_of_misclassified_validation_images() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::sample_set(&data);
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/sample");
    let val = dir.path().join("val");
    for (class, from, n) in [("Bag", "Bag", 3), ("Trouser", "Bag", 3), ("Sandal", "Sandal", 3)] {
        std::fs::create_dir_all(val.join(class)).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(sample.join(from)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let skip = if class == "Trouser" { 20 } else { 10 };
        for f in files.iter().skip(skip).take(n) {
            std::fs::copy(f, val.join(class).join(f.file_name().unwrap())).unwrap();
        }
    }
    let run = dir.path().join("run");
    let o = headstart(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--val",
        val.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--no-cache",
        "--progress",
        "none",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let outcome: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("outcome.json")).unwrap()).unwrap();
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(run.join("val_predictions.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // With this few examples the setting is chosen by cross-validation: every image is held
    // out once, so every image has a line (with a split, only the validation images would).
    assert_eq!(outcome["selection"]["method"], "cross_validation", "{outcome}");
    assert_eq!(lines.len() as u64, outcome["n_train"].as_u64().unwrap() + outcome["n_val"].as_u64().unwrap(), "one line per held-out image");
    // The recorded predictions are the ones the validation report counts.
    let classes: Vec<&str> = outcome["classes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    let confusion = &outcome["val"]["confusion"];
    for (t, truth) in classes.iter().enumerate() {
        for (p, pred) in classes.iter().enumerate() {
            let n = lines.iter().filter(|l| l["truth"] == *truth && l["predicted"] == *pred).count() as u64;
            assert_eq!(confusion[t][p].as_u64().unwrap(), n, "{truth} → {pred}");
        }
    }
    let bags_as_trousers: Vec<&serde_json::Value> = lines.iter().filter(|l| l["truth"] == "Trouser" && l["predicted"] == "Bag").collect();
    assert!(bags_as_trousers.len() >= 2, "the mislabelled bags should be predicted as bags: {lines:?}");
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    let pairs = &html[html.find("Most-confused pairs").unwrap()..];
    assert!(pairs.contains("<b>Trouser</b> taken for <b>Bag</b>"), "{pairs}");
    assert!(pairs.matches("src=\"data:image/png;base64,").count() >= bags_as_trousers.len(), "one thumbnail per shown mistake");
}
