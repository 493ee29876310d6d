//! Bundles and runs through the real binary, on paths no other test covers: a tampered tuned
//! backbone, resume refused after the settings changed or on a feature-extraction run, an MLP
//! head's bundle, lr-find on images and text, and text predict from `.txt` files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

fn headstart(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_headstart")).args(args).env("OMP_NUM_THREADS", "1").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok_json(o: &Output) -> serde_json::Value {
    assert_eq!(o.status.code(), Some(0), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn tiny_bert() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/text/bert_tiny").display().to_string()
}

fn reviews(dir: &Path) -> PathBuf {
    let pos = ["great", "loved", "brilliant", "excellent", "good"];
    let neg = ["awful", "hated", "boring", "terrible", "bad"];
    let mut text = String::from("review,stars\n");
    for i in 0..40 {
        let (w, l) = if i % 2 == 0 { (pos[i / 2 % 5], "pos") } else { (neg[i / 2 % 5], "neg") };
        text += &format!("the movie was {w} and the story {},{l}\n", ["worked", "was long", "ended"][i % 3]);
    }
    let p = dir.join("reviews.csv");
    std::fs::write(&p, text).unwrap();
    p
}

fn top_probabilities_sum_to_one(prediction: &serde_json::Value, classes: usize) {
    let top = prediction["top"].as_array().unwrap();
    assert_eq!(top.len(), classes, "{prediction}");
    let sum: f64 = top.iter().map(|t| t[1].as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-4, "{prediction}");
}

#[test]
fn fine_tuned_bundle_refuses_a_tampered_backbone_and_resume_refuses_changed_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::sample_set(&data);
    let run = tmp.path().join("run");
    let o = headstart(&[
        "train",
        "--mode",
        "finetune",
        "--data",
        s(&data),
        "--out",
        s(&run),
        "--no-cache",
        "--epochs",
        "1",
        "--head-epochs",
        "0",
        "--batch-size",
        "8",
        "--unfreeze",
        "last:1",
        "--progress",
        "none",
        "--json",
    ]);
    ok_json(&o);
    let bundle = run.join("bundle");
    let img = std::fs::read_dir(data.join("Bag")).unwrap().next().unwrap().unwrap().path();
    let before = ok_json(&headstart(&["predict", s(&bundle), s(&img), "--json", "--top-k", "3"]));
    top_probabilities_sum_to_one(&before["predictions"][0], 3);

    // One byte of the tuned backbone changed: refused, naming the file; put back, it loads again.
    let tuned = bundle.join("backbone.safetensors");
    let original = std::fs::read(&tuned).unwrap();
    let mut bytes = original.clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&tuned, &bytes).unwrap();
    let o = headstart(&["predict", s(&bundle), s(&img)]);
    assert_eq!(o.status.code(), Some(5), "a bundle mismatch: {}", stderr(&o));
    assert!(stderr(&o).contains("backbone.safetensors") && stderr(&o).contains("does not match the sha256"), "{}", stderr(&o));
    std::fs::write(&tuned, &original).unwrap();
    assert_eq!(ok_json(&headstart(&["predict", s(&bundle), s(&img), "--json", "--top-k", "3"])), before);

    // The run's settings edited after the checkpoint: resume refuses instead of mixing them.
    let cfg_path = run.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["finetune"]["lr"] = serde_json::json!(0.5);
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    let head = std::fs::read(bundle.join("head.safetensors")).unwrap();
    let o = headstart(&["train", "--resume", s(&run), "--progress", "none"]);
    assert_eq!(o.status.code(), Some(2), "a usage error: {}", stderr(&o));
    assert!(stderr(&o).contains("other fine-tuning settings"), "{}", stderr(&o));
    assert_eq!(std::fs::read(bundle.join("head.safetensors")).unwrap(), head, "a refused resume changed the bundle");
}

#[test]
fn mlp_head_bundle_predicts_and_evaluates_and_feature_runs_do_not_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::sample_set(&data);
    let run = tmp.path().join("run");
    let v = ok_json(&headstart(&["train", "--data", s(&data), "--out", s(&run), "--head", "mlp", "--no-cache", "--progress", "none", "--json"]));
    let bundle = run.join("bundle");
    let meta = std::fs::read_to_string(bundle.join("bundle.toml")).unwrap();
    assert!(meta.contains("mlp"), "{meta}");
    let mut files = vec![];
    for c in ["Bag", "Sandal", "Trouser"] {
        files.extend(std::fs::read_dir(data.join(c)).unwrap().map(|e| e.unwrap().path().display().to_string()));
    }
    let mut args = vec!["predict", s(&bundle), "--json", "--top-k", "3"];
    args.extend(files.iter().map(String::as_str));
    let p = ok_json(&headstart(&args));
    let preds = p["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 24);
    for pred in preds {
        top_probabilities_sum_to_one(pred, 3);
    }
    // eval's accuracy is predict's top-1 agreement with the folders.
    let correct = preds.iter().filter(|p| p["file"].as_str().unwrap().contains(&format!("/{}/", p["top"][0][0].as_str().unwrap()))).count();
    let e = ok_json(&headstart(&["eval", s(&bundle), "--data", s(&data), "--json", "--no-cache"]));
    assert_eq!(e["n"], 24);
    assert!((e["accuracy"].as_f64().unwrap() - correct as f64 / 24.0).abs() < 1e-9, "{e} vs {correct} correct");
    assert_eq!(v["selection"]["refit"].as_bool(), Some(true));

    // A feature-extraction run has no checkpoint: --resume says so.
    let o = headstart(&["train", "--resume", s(&run)]);
    assert_eq!(o.status.code(), Some(2), "a usage error: {}", stderr(&o));
    assert!(stderr(&o).contains("feature-extraction run"), "{}", stderr(&o));
}

#[test]
fn lr_find_runs_on_images_and_on_text() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::sample_set(&data);
    let check = |v: &serde_json::Value, steps: usize| {
        let lrs: Vec<f64> = v["lrs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let losses = v["losses"].as_array().unwrap();
        assert!((3..=steps).contains(&lrs.len()) && losses.len() == lrs.len(), "{v}");
        assert!((lrs[0] - 1e-5).abs() < 1e-15 && lrs.windows(2).all(|w| w[1] > w[0]), "{lrs:?}");
        assert!(losses.iter().all(|l| l.as_f64().unwrap().is_finite()));
        let suggestion = v["suggestion"].as_f64().unwrap();
        assert!(lrs.iter().any(|lr| (lr / 10.0 - suggestion).abs() < 1e-15), "suggestion {suggestion} is not a tenth of a tried rate");
    };
    let o =
        headstart(&["lr-find", "--data", s(&data), "--steps", "12", "--batch-size", "8", "--min-lr", "1e-5", "--max-lr", "1", "--json", "--progress", "none"]);
    check(&ok_json(&o), 12);
    let text = reviews(tmp.path());
    let model = tiny_bert();
    let o = headstart(&[
        "lr-find",
        "--data",
        s(&text),
        "--model",
        &model,
        "--text-column",
        "review",
        "--label-column",
        "stars",
        "--steps",
        "15",
        "--batch-size",
        "8",
        "--min-lr",
        "1e-5",
        "--max-lr",
        "1",
        "--json",
        "--progress",
        "none",
    ]);
    check(&ok_json(&o), 15);
    // Bad settings are refused with the reason.
    let o = headstart(&["lr-find", "--data", s(&text), "--model", &model, "--text-column", "review", "--label-column", "stars", "--steps", "5"]);
    assert_eq!(o.status.code(), Some(2), "a usage error: {}", stderr(&o));
    assert!(stderr(&o).contains("at least 10 steps"), "{}", stderr(&o));
}

#[test]
fn text_predict_reads_txt_files_like_the_same_text_given_inline() {
    let tmp = tempfile::tempdir().unwrap();
    let text = reviews(tmp.path());
    let run = tmp.path().join("run");
    let model = tiny_bert();
    ok_json(&headstart(&[
        "train",
        "--data",
        s(&text),
        "--model",
        &model,
        "--text-column",
        "review",
        "--label-column",
        "stars",
        "--out",
        s(&run),
        "--no-cache",
        "--json",
    ]));
    let bundle = run.join("bundle");
    let (a, b, empty) = (tmp.path().join("a.txt"), tmp.path().join("b.TXT"), tmp.path().join("empty.txt"));
    std::fs::write(&a, "the movie was great and the story worked\n").unwrap();
    std::fs::write(&b, "the movie was awful and the story was long").unwrap();
    std::fs::write(&empty, "  \n").unwrap();
    let files = ok_json(&headstart(&["predict", s(&bundle), s(&a), s(&empty), s(&b), "--json"]));
    let preds = files["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 2, "{files}");
    assert_eq!((preds[0]["input"].as_str(), preds[1]["input"].as_str()), (Some(s(&a)), Some(s(&b))));
    let skipped = files["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{files}");
    assert!(skipped[0].to_string().contains("empty.txt") && skipped[0].to_string().contains("empty text"), "{files}");
    let inline = ok_json(&headstart(&[
        "predict",
        s(&bundle),
        "--text",
        "the movie was great and the story worked\n",
        "--text",
        "the movie was awful and the story was long",
        "--json",
    ]));
    for (f, t) in preds.iter().zip(inline["predictions"].as_array().unwrap()) {
        assert_eq!(f["top"], t["top"]);
    }
    // Not UTF-8: refused with the file's name, unless --lossy.
    std::fs::write(&a, b"the movie was \xff great").unwrap();
    let o = headstart(&["predict", s(&bundle), s(&a)]);
    assert_eq!(o.status.code(), Some(3), "a data error: {}", stderr(&o));
    assert!(stderr(&o).contains("a.txt"), "{}", stderr(&o));
    let lossy = ok_json(&headstart(&["predict", s(&bundle), s(&a), "--lossy", "--json"]));
    assert_eq!(lossy["predictions"].as_array().unwrap().len(), 1);
}
