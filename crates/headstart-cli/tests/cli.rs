//! The real binary, run as a user would.

use std::path::PathBuf;
use std::process::{Command, Output};

mod common;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

fn headstart(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_headstart")).args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn models_lists_the_registry_as_table_and_json() {
    let o = headstart(&["models"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for name in ["mobilenet_v2.tv_in1k", "efficientnet_lite0.in1k", "resnet50.tv_in1k", "vit_base_patch16_224", "convnext_tiny_224.fb_in1k"] {
        assert!(stdout(&o).contains(name), "{name} missing from:\n{}", stdout(&o));
    }
    let o = headstart(&["models", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let entries = v.as_array().unwrap();
    assert_eq!(entries.len(), headstart::models::registry::list().len());
    assert!(entries.iter().any(|e| e["name"] == "all-minilm-l6-v2" && e["modality"] == "text"), "the text entry is listed");
    let mb = entries.iter().find(|e| e["name"] == "mobilenet_v2.tv_in1k").unwrap();
    assert_eq!(mb["input"]["size"], 224);
    assert_eq!(mb["input"]["mean"][0], 0.485);
    assert_eq!(mb["arch"]["family"], "mobilenet_v2");
}

#[test]
fn inspect_weights_prints_every_tensor() {
    let o = headstart(&["inspect", "weights", fixture("resnet_basic_tiny.pth").to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("conv1.weight") && out.contains("[8, 3, 7, 7]") && out.contains("f32"), "{out}");
    assert!(out.contains("TorchLegacy"), "{out}");
    let o = headstart(&["inspect", "weights", "--json", fixture("vit_tiny").to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v.as_array().unwrap().iter().any(|t| t["name"] == "vit.embeddings.cls_token"));
}

#[test]
fn convert_legacy_pth_to_safetensors_keeps_every_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w.safetensors");
    let src = fixture("resnet_basic_tiny.pth");
    let o = headstart(&["convert", src.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let a = headstart::weights::Weights::open(&src).unwrap();
    let b = headstart::weights::Weights::open(&out).unwrap();
    assert_eq!(b.files()[0].format(), headstart::weights::Format::Safetensors);
    assert_eq!(a.names().len(), b.names().len());
    for n in a.names() {
        assert!(a.tensor(n).unwrap().equal(&b.tensor(n).unwrap()), "{n}");
    }
}

#[test]
fn inspect_load_reports_mismatches_and_fails() {
    // Tiny MobileNetV2 weights into the full-size registry model: shapes differ.
    let o = headstart(&["inspect", "load", "mobilenet_v2", "--weights", fixture("mobilenet_v2_tiny.pth").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(4), "an incomplete load is a model error");
    assert!(stdout(&o).contains("mismatch    features.0.0.weight"), "{}", stdout(&o));
    assert!(stderr(&o).contains("load incomplete"), "{}", stderr(&o));
}

#[test]
fn inspect_load_with_new_head_and_grey_input() {
    let o = headstart(&["inspect", "load", "efficientnet_lite0", "--num-classes", "10", "--in-channels", "1", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["missing"].as_array().unwrap().len(), 0);
    assert_eq!(v["dropped"].as_array().unwrap().len(), 2);
    assert_eq!(v["adapted"][0]["name"], "_conv_stem.weight");
    assert_eq!(v["initialised"].as_array().unwrap().len(), 2);
}

#[test]
fn classify_the_test_photos() {
    let o = headstart(&["classify", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["results"][0]["top"][0]["class"], 285);
    assert_eq!(v["results"][0]["top"][0]["label"], "Egyptian cat");
    assert_eq!(v["results"][1]["top"][0]["class"], 967);
    assert_eq!(v["results"][0]["top"].as_array().unwrap().len(), 5);
}

#[test]
fn errors_name_the_file_or_suggest_a_model() {
    let o = headstart(&["inspect", "weights", "/nonexistent/w.pth"]);
    assert_eq!(o.status.code(), Some(7), "a missing file is an I/O error");
    assert!(stderr(&o).contains("/nonexistent/w.pth"), "{}", stderr(&o));
    let o = headstart(&["classify", "--model", "mobilenet_v3"]);
    assert_eq!(o.status.code(), Some(4), "an unknown model");
    assert!(stderr(&o).contains("did you mean `mobilenet_v2.tv_in1k`"), "{}", stderr(&o));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let o = headstart(&["classify", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "an unreadable image is a data error");
    assert!(stderr(&o).contains("broken.png"), "{}", stderr(&o));
}

#[test]
fn train_eval_predict_on_a_small_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::sample_set(&data);
    let (d, run, cache) = (data.to_str().unwrap(), tmp.path().join("run"), tmp.path().join("cache"));
    let o = headstart(&["train", "--data", d, "--out", run.to_str().unwrap(), "--cache-dir", cache.to_str().unwrap(), "--progress", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("selection estimate (5-fold CV acc before refit):") && stdout(&o).contains("bundle"), "{}", stdout(&o));
    assert!(stderr(&o).lines().any(|l| l.contains("\"stage\":\"features\"")), "{}", stderr(&o));
    let bundle = run.join("bundle");
    let o = headstart(&["eval", bundle.to_str().unwrap(), "--data", d, "--json", "--no-cache"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in ["accuracy", "macro_f1", "per_class", "confusion", "n"] {
        assert!(!v[k].is_null(), "{k} missing");
    }
    assert_eq!(v["n"], 24);
    assert_eq!(v["per_class"][0]["label"], "Bag");
    assert!(v["per_class"][0]["support"].is_number() && v["per_class"][0]["recall"].is_number());
    let img = std::fs::read_dir(data.join("Bag")).unwrap().next().unwrap().unwrap().path();
    let o = headstart(&["predict", bundle.to_str().unwrap(), img.to_str().unwrap(), "--top-k", "3", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["predictions"][0]["top"].as_array().unwrap().len(), 3);
    // Predicting with other weights is refused: the bundle does not match them.
    let o = headstart(&["predict", bundle.to_str().unwrap(), img.to_str().unwrap(), "--weights", fixture("mobilenet_v2_tiny.pth").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(5));
}

#[test]
fn train_refits_by_default_and_reports_the_selection_estimate() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::sample_set(&data);
    let cache = tmp.path().join("cache");
    let train = |name: &str, extra: &[&str]| -> Output {
        let run = tmp.path().join(name);
        let mut args = vec!["train", "--data", data.to_str().unwrap(), "--out", run.to_str().unwrap(), "--cache-dir", cache.to_str().unwrap()];
        args.extend_from_slice(extra);
        headstart(&args)
    };
    let json = |o: &Output| -> serde_json::Value {
        assert!(o.status.success(), "{}", stderr(o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    // The number printed after `label`.
    let figure = |o: &Output, label: &str| -> f64 {
        assert_eq!(o.status.code(), Some(0), "{}", stderr(o));
        let out = stdout(o);
        let line = out.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no `{label}` in:\n{out}"));
        line[label.len()..].split_whitespace().next().unwrap().parse().unwrap()
    };
    // 24 images, 8 per class: a 20% split would hold 2 per class, so 5-fold cross-validation.
    let v = json(&train("auto", &["--json"]));
    let sel = &v["selection"];
    assert_eq!(
        (sel["method"].as_str(), sel["folds"].as_u64(), sel["refit"].as_bool(), sel["n_fit"].as_u64()),
        (Some("cross_validation"), Some(5), Some(true), Some(24))
    );
    assert_eq!(v["val"]["accuracy"], sel["estimate"]);
    assert!(sel["reason"].as_str().unwrap().contains("automatic"));

    // On the validation split, with and without the refit: the same choice and estimate.
    let with = train("split", &["--cv", "off"]);
    let estimate = figure(&with, "selection estimate (val acc before refit):");
    assert!(stdout(&with).contains("refit       on all 24 labelled images"), "{}", stdout(&with));
    let without = train("split-kept", &["--cv", "off", "--no-refit"]);
    assert_eq!(figure(&without, "val acc"), estimate);
    assert!(stdout(&without).contains("refit       no: the head fitted on 18 of 24 images is kept"), "{}", stdout(&without));
    let head_line = |o: &Output| stdout(o).lines().find(|l| l.starts_with("head")).unwrap().to_string();
    assert_eq!(head_line(&with), head_line(&without));
    let head = |name: &str| std::fs::read(tmp.path().join(name).join("bundle/head.safetensors")).unwrap();
    assert_ne!(head("split"), head("split-kept"), "the refit should change the head");
    // metrics.jsonl ends with the refit and its selection estimate.
    let metrics = std::fs::read_to_string(tmp.path().join("split/metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!((last["phase"].as_str(), last["n"].as_u64()), (Some("refit"), Some(24)));
    assert!((last["selection_estimate"].as_f64().unwrap() - estimate).abs() < 5e-5);
    // Both bundles evaluate.
    for name in ["split", "split-kept"] {
        let o = headstart(&["eval", tmp.path().join(name).join("bundle").to_str().unwrap(), "--data", data.to_str().unwrap(), "--json", "--no-cache"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }

    // Cross-validation without a refit is refused, naming the flags.
    let o = train("refused", &["--cv", "3", "--no-refit"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--cv 3") && stderr(&o).contains("--no-refit"), "{}", stderr(&o));
    // The same settings from a --config file; flags still win.
    let cfg = tmp.path().join("run.toml");
    std::fs::write(&cfg, "refit = false\ncv = \"off\"\n").unwrap();
    let v = json(&train("config", &["--config", cfg.to_str().unwrap(), "--json"]));
    assert_eq!(
        (v["selection"]["refit"].as_bool(), v["selection"]["method"].as_str(), v["selection"]["n_fit"].as_u64()),
        (Some(false), Some("holdout"), Some(18))
    );
    assert_eq!(head("config"), head("split-kept"));
    std::fs::write(&cfg, "cv = 3\n").unwrap();
    let v = json(&train("config3", &["--config", cfg.to_str().unwrap(), "--json"]));
    assert_eq!((v["selection"]["folds"].as_u64(), v["selection"]["refit"].as_bool()), (Some(3), Some(true)));
    let v = json(&train("config3-flag", &["--config", cfg.to_str().unwrap(), "--cv", "off", "--json"]));
    assert_eq!(v["selection"]["method"].as_str(), Some("holdout"));
    std::fs::write(&cfg, "cv = 1\n").unwrap();
    let o = train("bad", &["--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--cv"), "{}", stderr(&o));
}

/// Two classes of four images each, with a stray `notes.txt` in one class folder.
fn images_with_notes(dir: &std::path::Path) {
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/sample");
    for c in ["Bag", "Trouser"] {
        std::fs::create_dir_all(dir.join(c)).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(sample.join(c)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files.iter().take(4) {
            std::fs::copy(f, dir.join(c).join(f.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(dir.join("Bag/notes.txt"), "photographed on a grey background\n").unwrap();
}

/// A stray text file made an image class folder read as text ("need at least two classes").
/// The folder is judged by what most of its files are, and the choice is said.
#[test]
fn a_stray_notes_file_in_an_image_folder_still_trains_as_images_and_feature_runs_do_not_resume() {
    let d = tempfile::tempdir().unwrap();
    let (data, run) = (d.path().join("data"), d.path().join("run"));
    images_with_notes(&data);
    // No model named: the data decides (the default model is MobileNetV2).
    let o = headstart(&["train", "--data", data.to_str().unwrap(), "--out", run.to_str().unwrap(), "--no-cache"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("read as image") && stderr(&o).contains("8 image files and 1 .txt files"), "{}", stderr(&o));
    assert!(stdout(&o).contains("classes     2 (Bag, Trouser)"), "{}", stdout(&o));

    // A feature-extraction run has no checkpoints: resuming it is refused as a usage error.
    let o = headstart(&["train", "--resume", run.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("is a feature-extraction run") && stderr(&o).contains("train it again"), "{}", stderr(&o));
}

/// `headstart models | head -1`: a reader that goes away ends the output quietly, exit 0.
#[test]
fn a_closed_stdout_pipe_ends_quietly() {
    for args in [&["models"][..], &["models", "--json"][..]] {
        let mut child =
            Command::new(env!("CARGO_BIN_EXE_headstart")).args(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert!(o.stderr.is_empty(), "{args:?}: {}", stderr(&o));
    }
}

/// Errors exit with the code of their cause: usage 2, data 3, model 4, bundle 5.
#[test]
fn exit_codes_follow_the_cause() {
    let d = tempfile::tempdir().unwrap();
    let one = d.path().join("one");
    std::fs::create_dir_all(one.join("only")).unwrap();
    std::fs::copy(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/sample/Bag/train_00105.png"), one.join("only/a.png")).unwrap();
    let out = d.path().join("r");
    let weights = fixture("vit_tiny");
    let w = weights.to_str().unwrap();
    // One class: the data.
    let o = headstart(&[
        "train",
        "--data",
        one.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--model",
        "vit_small_patch16_224",
        "--weights",
        w,
        "--no-cache",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    // An unknown model.
    let two = d.path().join("two");
    images_with_notes(&two);
    let o = headstart(&["train", "--data", two.to_str().unwrap(), "--out", out.to_str().unwrap(), "--model", "resnet19"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    // An argument out of range.
    let o = headstart(&["train", "--data", two.to_str().unwrap(), "--out", out.to_str().unwrap(), "--input-size", "4"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // A bundle used with other weights.
    let bundle = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/bundles_v1/image");
    let o =
        headstart(&["predict", bundle.to_str().unwrap(), one.join("only/a.png").to_str().unwrap(), "--weights", fixture("convnext_tiny").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
}
