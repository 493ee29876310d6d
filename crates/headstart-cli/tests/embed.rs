//! `embed`, `extract --shard I/N` and `train --features` through the real binary: three shard
//! processes against one, reruns, mixed settings, incomplete folders, and the Parquet read
//! back by the library's reader and by pyarrow (`tests/fixtures/check_embeddings.py`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use headstart::export::file::{Reader, EMBEDDING, LABEL};
use headstart::export::stored::{load, open_set};

mod common;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

fn headstart(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_headstart")).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = headstart(args);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tiny random ConvNeXt in the Hugging Face layout.
const MODEL: &str = "convnext_tiny_224.fb_in1k";

fn tiny_weights() -> String {
    fixture("convnext_tiny").display().to_string()
}

/// `extract` of the sample images with the tiny ConvNeXt, shard `shard` into `out`.
fn extract(data: &Path, shard: &str, out: &Path, extra: &[&str]) -> Output {
    let w = tiny_weights();
    let mut args = vec!["extract", "--data", s(data), "--model", MODEL, "--weights", &w, "--shard", shard, "--out", s(out)];
    args.extend_from_slice(extra);
    headstart(&args)
}

/// The origin and text of each held-out row a run recorded in `val_predictions.jsonl`.
fn held_out(run: &Path) -> Vec<(String, Option<String>)> {
    let text = std::fs::read_to_string(run.join("val_predictions.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["origin"].as_str().unwrap().to_string(), v["text"].as_str().map(String::from))
        })
        .collect()
}

/// `predict --json` of every file: (file, [(label, prob)]) sorted by file.
fn predictions(bundle: &Path, files: &[PathBuf]) -> Vec<(String, Vec<(String, f64)>)> {
    let w = tiny_weights();
    let mut args = vec!["predict", s(bundle), "--weights", &w, "--json", "--top-k", "3", "--no-cache"];
    args.extend(files.iter().map(|f| s(f)));
    let v: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    let mut out: Vec<(String, Vec<(String, f64)>)> = v["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let top = p["top"].as_array().unwrap().iter().map(|t| (t[0].as_str().unwrap().to_string(), t[1].as_f64().unwrap())).collect();
            (p["file"].as_str().unwrap().to_string(), top)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn images(data: &Path) -> Vec<PathBuf> {
    let mut files = vec![];
    for c in std::fs::read_dir(data).unwrap() {
        for f in std::fs::read_dir(c.unwrap().path()).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    files.sort();
    files
}

/// Three shard processes give the rows, features, head and predictions of one process (and of
/// one `embed` file); the bundle runs on raw images.
#[test]
fn three_shards_equal_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::sample_set(&data);
    let (one, three) = (tmp.path().join("one"), tmp.path().join("three"));
    let o = extract(&data, "0/1", &one, &["--no-cache"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut per_shard = vec![];
    for i in 0..3 {
        let o = extract(&data, &format!("{i}/3"), &three, &["--no-cache", "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["already_done"], false);
        per_shard.push(v["rows"].as_u64().unwrap());
    }
    // Every shard holds some of the 24 images, none twice.
    assert_eq!(per_shard.iter().sum::<u64>(), 24, "{per_shard:?}");
    assert!(per_shard.iter().all(|&n| n > 0 && n < 24), "{per_shard:?}");
    let (a, b) = (load(&open_set(&one).unwrap()).unwrap(), load(&open_set(&three).unwrap()).unwrap());
    assert_eq!(a.ids, b.ids);
    assert_eq!(a.labels, b.labels);
    assert_eq!(a.features.size()[0], 24);
    let diff = (&a.features - &b.features).abs().max().double_value(&[]);
    assert!(diff <= 1e-5, "features differ by {diff}");
    assert!(a.features.abs().sum(tch::Kind::Float).double_value(&[]) > 0.0);

    let w = tiny_weights();
    let embedded = tmp.path().join("all.parquet");
    let cache = tmp.path().join("cache");
    let args = ["embed", "--data", s(&data), "--model", MODEL, "--weights", &w, "--out", s(&embedded), "--cache-dir", s(&cache)];
    let o = headstart(&[&args[..], &["--progress", "json"]].concat());
    assert!(String::from_utf8_lossy(&o.stdout).contains("24 computed, 0 from the feature cache"));
    let progress: Vec<String> = String::from_utf8_lossy(&o.stderr).lines().filter(|l| l.contains("\"stage\":\"embed\"")).map(String::from).collect();
    let last = progress.last().unwrap_or_else(|| panic!("no embed progress: {}", String::from_utf8_lossy(&o.stderr)));
    assert!(last.contains("\"done\":24") && last.contains("\"total\":24") && last.contains("finished"), "{last}");
    // A second export reads every vector from the feature cache.
    assert!(ok(&args).contains("0 computed, 24 from the feature cache"));

    let runs: Vec<PathBuf> = ["r1", "r3", "re"].iter().map(|r| tmp.path().join(r)).collect();
    for (src, run) in [&one, &three, &embedded].iter().zip(&runs) {
        let out = ok(&["train", "--features", s(src), "--out", s(run)]);
        assert!(out.contains("images      18 train, 6 validation"), "{out}");
    }
    let files = images(&data);
    // The held-out rows (here every row, out of fold: the head is chosen by cross-validation)
    // are named by the file each was extracted from, not by position.
    for run in &runs {
        let held = held_out(run);
        assert_eq!(held.len(), 24, "{held:?}");
        let distinct: std::collections::BTreeSet<&String> = held.iter().map(|h| &h.0).collect();
        assert_eq!(distinct.len(), 24, "{held:?}");
        for (origin, text) in &held {
            assert!(files.iter().any(|f| std::path::absolute(f).unwrap() == Path::new(origin)), "{origin} names none of the images");
            assert!(text.is_none(), "{origin}: {text:?}");
        }
    }
    let p1 = predictions(&runs[0].join("bundle"), &files);
    assert_eq!(p1.len(), 24);
    for run in &runs[1..] {
        let p = predictions(&run.join("bundle"), &files);
        for ((fa, ta), (fb, tb)) in p1.iter().zip(&p) {
            assert_eq!(fa, fb);
            for ((la, pa), (lb, pb)) in ta.iter().zip(tb) {
                assert_eq!(la, lb, "{fa}");
                assert!((pa - pb).abs() <= 1e-5, "{fa}: {pa} vs {pb}");
            }
        }
    }
    // The bundle records the encoder: eval on raw images runs the backbone and scores the head.
    let v: serde_json::Value = serde_json::from_str(&ok(&["eval", s(&runs[1].join("bundle")), "--data", s(&data), "--weights", &w, "--json"])).unwrap();
    assert_eq!(v["n"], 24);
    let meta = std::fs::read_to_string(runs[1].join("bundle/bundle.toml")).unwrap();
    assert!(meta.contains("kind = \"vision\"") && meta.contains(MODEL), "{meta}");
}

/// A finished shard is not redone; shards of another split or other settings in the same
/// folder are refused, and so is training on an incomplete or inconsistent folder.
#[test]
fn reruns_are_idempotent_and_mixed_shards_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::sample_set(&data);
    let dir = tmp.path().join("shards");
    let o = extract(&data, "1/3", &dir, &["--no-cache"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let file = dir.join("shard-00001-of-00003.parquet");
    let (bytes, modified) = (std::fs::read(&file).unwrap(), std::fs::metadata(&file).unwrap().modified().unwrap());
    let o = extract(&data, "1/3", &dir, &["--no-cache", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["already_done"], true);
    assert_eq!((std::fs::read(&file).unwrap(), std::fs::metadata(&file).unwrap().modified().unwrap()), (bytes.clone(), modified));
    for bad in ["3/3", "1", "a/3", "0/0"] {
        let o = extract(&data, bad, &dir, &[]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("--shard"), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // Another split into the same folder.
    let o = extract(&data, "0/2", &dir, &["--no-cache"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("one of 3 shards, not 2"), "{}", String::from_utf8_lossy(&o.stderr));
    // Incomplete: shards 0 and 2 are missing.
    let o = headstart(&["train", "--features", s(&dir), "--out", s(&tmp.path().join("r"))]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("shard(s) 0, 2 of 3 not finished"), "{}", String::from_utf8_lossy(&o.stderr));
    // A changed slice (one more image in it) is extracted again.
    let extra = data.join("Bag/zz-copy.png");
    let donor = images(&data).into_iter().find(|f| {
        std::fs::copy(f, &extra).unwrap();
        let h = headstart::cache::sha256_hex(&std::fs::read(f).unwrap());
        headstart::export::shard_of(&h, 3).unwrap() == 1
    });
    assert!(donor.is_some());
    let v: serde_json::Value = serde_json::from_slice(&extract(&data, "1/3", &dir, &["--no-cache", "--json"]).stdout).unwrap();
    assert_eq!(v["already_done"], false);
    assert_eq!(Reader::open(&file).unwrap().rows, per_rows(&bytes) + 1);
    // A manifest from other settings: refused by extract and by train.
    let manifest = dir.join("shard-00001-of-00003.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
    m["encoder"]["weights_sha256"] = "0".repeat(64).into();
    (m["shard"], m["file"]) = (0.into(), "shard-00000-of-00003.parquet".into());
    std::fs::write(dir.join("shard-00000-of-00003.json"), serde_json::to_string(&m).unwrap()).unwrap();
    let o = extract(&data, "2/3", &dir, &["--no-cache"]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(e.contains("shard-00000-of-00003.json") && e.contains("weights_sha256") && e.contains("cannot be mixed"), "{e}");
    let o = headstart(&["train", "--features", s(&dir), "--out", s(&tmp.path().join("r"))]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Rows of a Parquet file given as bytes.
fn per_rows(bytes: &[u8]) -> usize {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("f.parquet");
    std::fs::write(&p, bytes).unwrap();
    Reader::open(&p).unwrap().rows
}

/// The python that reads the Parquet back: `$HEADSTART_PYTHON`, else the project's `.venv`
/// (where `scripts/setup` installs pyarrow).
fn python() -> PathBuf {
    std::env::var_os("HEADSTART_PYTHON").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"))
}

/// A text export read back by the library's reader (equal to the library's own embeddings)
/// and by pyarrow; a head trained from it classifies raw texts.
#[test]
fn text_parquet_reads_back_in_rust_and_pyarrow() {
    let tmp = tempfile::tempdir().unwrap();
    let (csv, bert) = (fixture("embed/texts.csv"), fixture("text/bert_tiny"));
    let out = tmp.path().join("texts.parquet");
    ok(&["embed", "--data", s(&csv), "--model", s(&bert), "--out", s(&out), "--no-cache"]);
    let r = Reader::open(&out).unwrap();
    assert_eq!((r.rows, r.strings.clone()), (24, vec!["text".to_string()]));
    let record = r.meta.record.clone();
    let (mut ids, mut labels, mut vectors) = (vec![], vec![], vec![]);
    for b in r.batches(&["text", LABEL, EMBEDDING]).unwrap() {
        let b = b.unwrap();
        ids.extend(b.strings("text").into_iter().map(Option::unwrap));
        labels.extend(b.strings(LABEL));
        vectors.extend(b.vectors(&out).unwrap());
    }
    // Rows in the file's order, as the library embeds them.
    let rows: Vec<Vec<String>> = std::fs::read_to_string(&csv).unwrap().lines().skip(1).map(|l| l.split(',').map(String::from).collect()).collect();
    assert_eq!(ids, rows.iter().map(|r| r[0].clone()).collect::<Vec<_>>());
    assert_eq!(labels, rows.iter().map(|r| Some(r[1].clone())).collect::<Vec<_>>());
    let model = headstart::text::TextModel::load(&bert, &Default::default()).unwrap();
    assert_eq!((record.dim, record.weights_sha256.clone()), (model.dim() as usize, model.weights_sha256.clone()));
    let e = headstart::text::embed(&model, &ids, None, None, 32, headstart::engine::Precision::Auto, &headstart::progress::Silent).unwrap();
    let want: Vec<f32> = Vec::try_from(e.features.flatten(0, -1)).unwrap();
    let diff = want.iter().zip(&vectors).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff <= 1e-6 && want.len() == vectors.len(), "{diff}");

    let dim = record.dim;
    let expected = serde_json::json!({
        "id_column": "text", "rows": 24, "dim": dim, "model": record.model, "weights_sha256": record.weights_sha256,
        "ids": ids, "labels": labels, "embeddings": vectors.chunks(dim).collect::<Vec<_>>(),
    });
    let exp_path = tmp.path().join("expected.json");
    std::fs::write(&exp_path, expected.to_string()).unwrap();
    let py = python();
    let o = Command::new(&py)
        .arg(fixture("check_embeddings.py"))
        .args([&out, &exp_path])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/setup (it installs pyarrow into .venv) or set HEADSTART_PYTHON", py.display()));
    let said = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!said.contains("No module named 'pyarrow'"), "{}: pyarrow is missing; run scripts/setup or set HEADSTART_PYTHON", py.display());
    assert!(o.status.success() && said.starts_with("ok 24 rows"), "{said}");

    // From the feature cache the second time, progress still counting every row.
    let (cached, cache) = (tmp.path().join("cached.parquet"), tmp.path().join("cache"));
    let args = ["embed", "--data", s(&csv), "--model", s(&bert), "--out", s(&cached), "--cache-dir", s(&cache), "--progress", "json"];
    ok(&args);
    let o = headstart(&args);
    assert!(String::from_utf8_lossy(&o.stdout).contains("0 computed, 24 from the feature cache"), "{}", String::from_utf8_lossy(&o.stdout));
    let last = String::from_utf8_lossy(&o.stderr).lines().rfind(|l| l.contains("\"stage\":\"embed\"")).map(String::from).unwrap_or_default();
    assert!(last.contains("\"done\":24") && last.contains("finished"), "{last}");
    assert_eq!(std::fs::read(&cached).unwrap(), std::fs::read(&out).unwrap());

    let run = tmp.path().join("run");
    ok(&["train", "--features", s(&out), "--out", s(&run), "--val-split", "0.25"]);
    // Held-out text rows (every row, out of fold) carry their text.
    let held = held_out(&run);
    assert_eq!(held.len(), 24, "{held:?}");
    for (origin, text) in &held {
        let text = text.as_deref().unwrap_or_else(|| panic!("{origin}: no text"));
        assert!(ids.iter().any(|t| t == text), "{origin}: `{text}` is none of the rows");
    }
    let v: serde_json::Value = serde_json::from_str(&ok(&["eval", s(&run.join("bundle")), "--data", s(&csv), "--json", "--no-cache"])).unwrap();
    assert_eq!(v["n"], 24);
    let p = ok(&["predict", s(&run.join("bundle")), "--text", "a sunny walk with friends", "--no-cache"]);
    assert!(p.contains("pos") && p.contains("neg"), "{p}");
}
