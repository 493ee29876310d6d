//! `--precision` through the real binary: `train` records the concrete precision and where its
//! time went, `predict` and `eval` run at the bundle's precision and warn when told otherwise.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

mod common;

fn headstart(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_headstart")).args(args).output().unwrap()
}

fn ok(o: &Output) -> (Value, String) {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    (serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout))), err)
}

fn train(data: &Path, out: &Path, precision: &str) -> Value {
    let args =
        ["train", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "--no-cache", "--progress", "none", "--json", "--precision", precision];
    ok(&headstart(&args)).0
}

#[test]
fn bundles_run_at_their_precision_and_another_is_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::sample_set(&data);
    let o = train(&data, &tmp.path().join("bf16"), "bf16");
    assert_eq!(o["precision"], "bf16");
    let x = &o["timings"]["extract"];
    assert!(x["backbone_s"].as_f64().unwrap() > 0.0 && x["backbone_s"].as_f64() <= x["wall_s"].as_f64(), "{o}");
    let outcome: Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join("bf16/outcome.json")).unwrap()).unwrap();
    assert!(outcome["timings"]["train_seconds"].as_f64().unwrap() >= outcome["timings"]["total_s"].as_f64().unwrap(), "{outcome}");
    // `auto` keeps fp32 for images (bf16 features cost accuracy), whatever the CPU.
    assert_eq!(train(&data, &tmp.path().join("auto"), "auto")["precision"], "fp32");

    let bundle = tmp.path().join("bf16/bundle");
    let files: Vec<String> =
        ["Bag", "Trouser"].iter().map(|c| std::fs::read_dir(data.join(c)).unwrap().next().unwrap().unwrap().path().display().to_string()).collect();
    let predict = |extra: &[&str]| {
        let mut args = vec!["predict", bundle.to_str().unwrap(), "--json", "--no-cache"];
        args.extend(extra);
        args.extend(files.iter().map(String::as_str));
        ok(&headstart(&args))
    };
    let (at_bf16, err) = predict(&[]);
    assert!(!err.contains("warning"), "{err}");
    let (same, err) = predict(&["--precision", "bf16"]);
    assert!(!err.contains("warning") && same == at_bf16, "{err}");
    let (at_fp32, err) = predict(&["--precision", "fp32"]);
    assert!(err.contains("warning: the head was trained on bf16 features but fp32 was asked for"), "{err}");
    assert!(err.contains("--precision"), "the warning names the flag: {err}");
    assert_ne!(at_bf16, at_fp32, "predictions at fp32 are those at bf16: the flag did nothing");
    let p = |v: &Value| v["predictions"][0]["top"][0][1].as_f64().unwrap();
    assert!((p(&at_bf16) - p(&at_fp32)).abs() < 0.1);

    let (report, err) = ok(&headstart(&["eval", bundle.to_str().unwrap(), "--data", data.to_str().unwrap(), "--json", "--no-cache", "--precision", "auto"]));
    assert!(err.contains("auto resolves to fp32 here"), "{err}");
    assert_eq!(report["n"], 24);
}
