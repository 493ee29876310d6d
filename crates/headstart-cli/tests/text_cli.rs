//! Text runs through the real binary: a TrainingArguments-style config file, flags over it,
//! unknown keys, fine-tuning with resume, eval and predict on a text bundle.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use common::{assert_same, bundle_tensors};

fn tiny_bert() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/text/bert_tiny").display().to_string()
}

fn headstart(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_headstart")).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write_data(dir: &Path) -> PathBuf {
    let pos = ["great", "loved", "brilliant", "excellent", "good"];
    let neg = ["awful", "hated", "boring", "terrible", "bad"];
    let mut s = String::from("{\"review\": \"\", \"stars\": \"pos\"}\n");
    for i in 0..40 {
        let (w, l) = if i % 2 == 0 { (pos[i / 2 % 5], "pos") } else { (neg[i / 2 % 5], "neg") };
        s += &format!("{{\"review\": \"the movie was {w} and the story {}\", \"stars\": \"{l}\"}}\n", ["worked", "was long", "ended"][i % 3]);
    }
    let p = dir.join("reviews.jsonl");
    std::fs::write(&p, s).unwrap();
    p
}

#[test]
fn config_file_with_flag_overrides_and_text_bundle_eval_predict() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path());
    let run = tmp.path().join("run");
    let cfg = tmp.path().join("run.toml");
    std::fs::write(
        &cfg,
        format!(
            "output_dir = {:?}\nmodel = {:?}\ndata = {:?}\ntext_column = \"review\"\nlabel_column = \"stars\"\nmode = \"finetune\"\n\
             per_device_train_batch_size = 8\nper_device_eval_batch_size = 16\nnum_train_epochs = 2\nlearning_rate = 1e-4\n\
             warmup_ratio = 0.1\nweight_decay = 0.01\neval_strategy = \"epoch\"\nsave_strategy = \"epoch\"\n\
             load_best_model_at_end = true\nmetric_for_best_model = \"accuracy\"\nseed = 7\nmax_length = 32\n",
            run.display().to_string(),
            tiny_bert(),
            data.display().to_string()
        ),
    )
    .unwrap();
    // --epochs on the command line wins over num_train_epochs.
    let o = headstart(&["train", "--config", cfg.to_str().unwrap(), "--epochs", "3", "--no-cache", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["n_train"].as_u64().unwrap() + v["n_val"].as_u64().unwrap(), 40);
    assert_eq!(v["skipped"], 1, "the empty review is reported");
    let resolved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    let ft = &resolved["finetune"];
    assert_eq!((ft["epochs"].as_u64(), ft["batch_size"].as_u64(), ft["lr"].as_f64(), ft["seed"].as_u64()), (Some(3), Some(8), Some(1e-4), Some(7)));
    assert_eq!((ft["warmup_ratio"].as_f64(), ft["best_metric"].as_str(), ft["keep_best"].as_bool()), (Some(0.1), Some("accuracy"), Some(true)));
    assert_eq!((resolved["eval_batch_size"].as_u64(), resolved["model_options"]["max_length"].as_u64()), (Some(16), Some(32)));
    assert_eq!(std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().count(), 3);
    let errors = std::fs::read_to_string(run.join("errors.jsonl")).unwrap();
    assert!(errors.contains("reviews.jsonl:1") && errors.contains("empty text"), "{errors}");
    // The held-out predictions behind the report: one per validation text, with where it came
    // from and the text itself.
    let held: Vec<serde_json::Value> =
        std::fs::read_to_string(run.join("val_predictions.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(held.len() as u64, v["n_val"].as_u64().unwrap());
    for h in &held {
        let line: usize = h["origin"].as_str().unwrap().rsplit_once("reviews.jsonl:").unwrap().1.parse().unwrap();
        assert!((2..=41).contains(&line), "{h}");
        assert!(h["text"].as_str().unwrap().starts_with("the movie was "), "{h}");
        assert!(["pos", "neg"].contains(&h["predicted"].as_str().unwrap()));
    }

    let bundle = run.join("bundle");
    let o = headstart(&["eval", bundle.to_str().unwrap(), "--data", data.to_str().unwrap(), "--json", "--no-cache"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["n"], 40);
    let o = headstart(&["predict", bundle.to_str().unwrap(), "--text", "the movie was great", "--text", "boring", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["predictions"].as_array().unwrap().len(), 2);

    // Resuming a finished run changes nothing and says where it resumed.
    let before = std::fs::read(bundle.join("head.safetensors")).unwrap();
    let o = headstart(&["train", "--resume", run.to_str().unwrap(), "--no-cache"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("resumed"), "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(std::fs::read(bundle.join("head.safetensors")).unwrap(), before);
}

#[test]
fn unknown_config_keys_and_bad_values_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("run.toml");
    std::fs::write(&cfg, "output_dir = \"x\"\nlearnig_rate = 0.1\n").unwrap();
    let o = headstart(&["train", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "a bad config file is a usage error");
    assert!(stderr(&o).contains("learnig_rate") && stderr(&o).contains("run.toml"), "{}", stderr(&o));
    std::fs::write(&cfg, "eval_strategy = \"steps\"\n").unwrap();
    let o = headstart(&["train", "--config", cfg.to_str().unwrap()]);
    assert!(stderr(&o).contains("eval_strategy") && stderr(&o).contains("steps"), "{}", stderr(&o));
    std::fs::write(&cfg, "num_train_epochs = 2.5\n").unwrap();
    let o = headstart(&["train", "--config", cfg.to_str().unwrap()]);
    assert!(stderr(&o).contains("num_train_epochs"), "{}", stderr(&o));
}

#[test]
fn text_errors_name_file_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.csv");
    std::fs::write(&bad, b"text,label\nfine,a\nbroken \xc3\x28 bytes,b\n").unwrap();
    let run = tmp.path().join("run");
    let o = headstart(&["train", "--data", bad.to_str().unwrap(), "--model", &tiny_bert(), "--out", run.to_str().unwrap(), "--no-cache"]);
    assert_eq!(o.status.code(), Some(3), "malformed data");
    assert!(stderr(&o).contains("bad.csv") && stderr(&o).contains("line 3") && stderr(&o).contains("--lossy"), "{}", stderr(&o));
    let o = headstart(&[
        "train",
        "--data",
        bad.to_str().unwrap(),
        "--model",
        &tiny_bert(),
        "--out",
        run.to_str().unwrap(),
        "--text-column",
        "body",
        "--lossy",
        "--no-cache",
    ]);
    assert!(stderr(&o).contains("no column `body`"), "{}", stderr(&o));
    // An unclosed quote swallowed every later row and surfaced as "need at least two classes".
    std::fs::write(&bad, b"text,label\nfine,a\n\"never closed,b\nmore,a\n").unwrap();
    let o = headstart(&["train", "--data", bad.to_str().unwrap(), "--model", &tiny_bert(), "--out", run.to_str().unwrap(), "--no-cache"]);
    assert_eq!(o.status.code(), Some(3), "malformed data");
    let e = stderr(&o);
    assert!(e.contains(&format!("{}:3: unterminated quoted field", bad.display())) && !e.contains("two classes"), "{e}");
}

#[test]
fn text_fine_tuning_aborted_mid_checkpoint_resumes_to_identical_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path());
    let args = |out: &Path| -> Vec<String> {
        [
            "train",
            "--mode",
            "finetune",
            "--data",
            data.to_str().unwrap(),
            "--model",
            &tiny_bert(),
            "--text-column",
            "review",
            "--label-column",
            "stars",
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--unfreeze",
            "last:1",
            "--checkpoint-every",
            "1",
            "--seed",
            "5",
            "--lr",
            "1e-3",
            "--no-cache",
            "--progress",
            "none",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |a: &[String], fault: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_headstart"));
        c.args(a).env("OMP_NUM_THREADS", "1").env_remove("HEADSTART_FAULT");
        if let Some(f) = fault {
            c.env("HEADSTART_FAULT", f);
        }
        c.output().unwrap()
    };
    let straight = tmp.path().join("straight");
    let o = run(&args(&straight), None);
    assert!(o.status.success(), "{}", stderr(&o));
    let torn = tmp.path().join("torn");
    let o = run(&args(&torn), Some("checkpoint-write:3"));
    assert!(!o.status.success());
    assert!(!torn.join("checkpoint.staging/COMPLETE").exists());
    let o = run(&["train".into(), "--resume".into(), torn.to_str().unwrap().into(), "--progress".into(), "none".into()], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (bundle_tensors(&straight), bundle_tensors(&torn));
    assert!(a.iter().any(|(n, _)| n.starts_with("backbone.safetensors:encoder.layer.1.")));
    assert_same(&a, &b);
}

#[test]
fn sentence_pairs_train_eval_and_predict() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("pairs.tsv");
    let mut s = String::from("premise\thypothesis\tlabel\n");
    for i in 0..30 {
        let (a, b, l) = if i % 2 == 0 { ("the movie was great", "loved it", "same") } else { ("the movie was great", "hated it", "different") };
        s += &format!("{a} {}\t{b}\t{l}\n", ["today", "again", "really"][i % 3]);
    }
    std::fs::write(&data, s).unwrap();
    let run = tmp.path().join("run");
    let base = ["--text-column", "premise", "--pair-column", "hypothesis"];
    let model = tiny_bert();
    let mut args = vec!["train", "--data", data.to_str().unwrap(), "--model", &model, "--out", run.to_str().unwrap(), "--no-cache", "--json"];
    args.extend(base);
    let o = headstart(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let bundle = run.join("bundle");
    let o = headstart(&["predict", bundle.to_str().unwrap(), data.to_str().unwrap(), "--json", "--top-k", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let preds = v["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 30);
    // eval reads both columns of the same file: its accuracy is predict's agreement with the labels.
    let correct = preds.iter().enumerate().filter(|(i, p)| p["top"][0][0] == if i % 2 == 0 { "same" } else { "different" }).count();
    let o = headstart(&["eval", bundle.to_str().unwrap(), "--data", data.to_str().unwrap(), "--json", "--no-cache"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["n"], 30);
    assert!((v["accuracy"].as_f64().unwrap() - correct as f64 / 30.0).abs() < 1e-9, "{v} vs {correct} of 30");
    // One text alone cannot be classified by a pair bundle.
    let o = headstart(&["predict", bundle.to_str().unwrap(), "--text", "the movie was great"]);
    assert_eq!(o.status.code(), Some(2), "a usage error: {}", stderr(&o));
    assert!(stderr(&o).contains("sentence pairs"), "{}", stderr(&o));
}

#[test]
fn long_text_flags_config_keys_and_bundle_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path());
    let (d, tb) = (data.to_str().unwrap(), tiny_bert());
    let common = ["--model", tb.as_str(), "--data", d, "--text-column", "review", "--label-column", "stars", "--max-length", "8", "--no-cache", "--json"];
    let bundle_toml = |run: &Path| std::fs::read_to_string(run.join("bundle/bundle.toml")).unwrap();
    // Feature extraction reads long texts whole by default.
    let run = tmp.path().join("default");
    let o = headstart(&[&["train", "--out", run.to_str().unwrap()], &common[..]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let t = bundle_toml(&run);
    assert!(t.contains("[encoder.long_text]") && t.contains("policy = \"chunks\"") && t.contains("max_chunks = 16"), "{t}");
    // Settings from a config file; flags win over it.
    let cfg = tmp.path().join("run.toml");
    std::fs::write(&cfg, "long_text = \"chunks\"\nchunk_overlap = 2\nmax_chunks = 3\nchunk_pooling = \"max\"\n").unwrap();
    let run = tmp.path().join("config");
    let o = headstart(&[&["train", "--config", cfg.to_str().unwrap(), "--max-chunks", "4", "--out", run.to_str().unwrap()], &common[..]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let t = bundle_toml(&run);
    assert!(t.contains("overlap = 2") && t.contains("max_chunks = 4") && t.contains("pooling = \"max\""), "{t}");
    let o = headstart(&["eval", run.join("bundle").to_str().unwrap(), "--data", d, "--no-cache", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Chunk settings with truncation, a bad overlap and an unknown policy are errors.
    let o = headstart(&[&["train", "--long-text", "truncate", "--chunk-overlap", "2", "--out", tmp.path().join("x").to_str().unwrap()], &common[..]].concat());
    assert!(!o.status.success() && stderr(&o).contains("need --long-text chunks"), "{}", stderr(&o));
    let o = headstart(&[&["train", "--chunk-overlap", "6", "--out", tmp.path().join("y").to_str().unwrap()], &common[..]].concat());
    assert!(!o.status.success() && stderr(&o).contains("--chunk-overlap 6"), "{}", stderr(&o));
    std::fs::write(&cfg, "long_text = \"split\"\n").unwrap();
    let o = headstart(&[&["train", "--config", cfg.to_str().unwrap(), "--out", tmp.path().join("z").to_str().unwrap()], &common[..]].concat());
    assert!(!o.status.success() && stderr(&o).contains("long_text `split`"), "{}", stderr(&o));
    // Fine-tuning truncates unless told otherwise.
    let run = tmp.path().join("ft");
    let o = headstart(&[&["train", "--mode", "finetune", "--epochs", "1", "--out", run.to_str().unwrap()], &common[..]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(bundle_toml(&run).contains("policy = \"truncate\""));
}

/// A test file whose columns are named differently from the training file's: `eval` and
/// `predict` read it with `--text-column` / `--label-column`; without them the bundle's names
/// apply and the missing column is named.
#[test]
fn eval_and_predict_take_other_column_names() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path());
    let run = tmp.path().join("run");
    let o = headstart(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--model",
        &tiny_bert(),
        "--text-column",
        "review",
        "--label-column",
        "stars",
        "--out",
        run.to_str().unwrap(),
        "--no-cache",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bundle = run.join("bundle");
    // The same rows under other names, as CSV.
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&data).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let test = tmp.path().join("test.csv");
    let mut csv = String::from("body,gold\n");
    for r in rows.iter().skip(1) {
        csv += &format!("{},{}\n", r["review"].as_str().unwrap(), r["stars"].as_str().unwrap());
    }
    std::fs::write(&test, csv).unwrap();
    let o = headstart(&["eval", bundle.to_str().unwrap(), "--data", test.to_str().unwrap(), "--no-cache", "--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("no column `review`") && stderr(&o).contains("--text-column"), "{}", stderr(&o));
    let o = headstart(&[
        "eval",
        bundle.to_str().unwrap(),
        "--data",
        test.to_str().unwrap(),
        "--text-column",
        "body",
        "--label-column",
        "gold",
        "--no-cache",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let same = headstart(&["eval", bundle.to_str().unwrap(), "--data", data.to_str().unwrap(), "--no-cache", "--json"]);
    let (a, b): (serde_json::Value, serde_json::Value) = (serde_json::from_slice(&o.stdout).unwrap(), serde_json::from_slice(&same.stdout).unwrap());
    assert_eq!((a["n"].as_u64(), a["accuracy"].as_f64()), (b["n"].as_u64(), b["accuracy"].as_f64()), "the renamed file scores as the original");
    let o = headstart(&["predict", bundle.to_str().unwrap(), test.to_str().unwrap(), "--text-column", "body", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["predictions"].as_array().unwrap().len(), 40);
    // Column flags on an image bundle are a usage error.
    let image = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/bundles_v1/image");
    let o = headstart(&["eval", image.to_str().unwrap(), "--data", tmp.path().to_str().unwrap(), "--text-column", "body"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
