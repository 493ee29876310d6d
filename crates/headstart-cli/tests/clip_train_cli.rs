//! `train --model CLIP_DIR`, then `eval` and `predict` on its bundle, and `eval --zero-shot`,
//! run as a user would, on the tiny CLIP trained on coloured shapes
//! (tests/fixtures/make_shapes_clip.py).

use std::path::PathBuf;
use std::process::{Command, Output};

fn shapes(part: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/clip/shapes").join(part).display().to_string()
}

fn headstart(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_headstart")).args(args).output().unwrap()
}

fn ok(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn train_eval_predict_and_zero_shot_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, cache) = (tmp.path().join("run"), tmp.path().join("cache"));
    let (run, cache) = (run.to_str().unwrap(), cache.to_str().unwrap());
    let model = shapes("model");
    let t = headstart(&["train", "--model", &model, "--data", &shapes("pool"), "--out", run, "--cache-dir", cache, "--head-init", "zero-shot", "--json"]);
    let o = ok(&t);
    assert!(String::from_utf8_lossy(&t.stderr).contains("is a CLIP model"), "{}", String::from_utf8_lossy(&t.stderr));
    assert_eq!(o["classes"].as_array().unwrap().len(), 16);
    assert_eq!(o["backbone_computed"], 64);
    let toml = std::fs::read_to_string(format!("{run}/bundle/bundle.toml")).unwrap();
    assert!(toml.contains("kind = \"clip\""), "{toml}");
    let config = std::fs::read_to_string(format!("{run}/config.json")).unwrap();
    assert!(config.contains("zero_shot"), "{config}");

    // eval on the bundle: the test images run through the image tower once, then the cache.
    let bundle = format!("{run}/bundle");
    let e = ok(&headstart(&["eval", &bundle, "--data", &shapes("test"), "--cache-dir", cache, "--json"]));
    assert_eq!(e["n"], 192);
    let trained = e["accuracy"].as_f64().unwrap();
    let html = tmp.path().join("eval.html");
    let r = ok(&headstart(&["eval", &bundle, "--data", &shapes("test"), "--cache-dir", cache, "--json", "--report", html.to_str().unwrap()]));
    assert_eq!(r["accuracy"], e["accuracy"]);
    assert!(std::fs::read_to_string(&html).unwrap().contains("<svg"));

    // Zero-shot: the same report, class names from the folders.
    let z = ok(&headstart(&["eval", "--zero-shot", "--model", &model, "--data", &shapes("test"), "--cache-dir", cache, "--json"]));
    assert_eq!(z["n"], 192);
    assert_eq!(z["per_class"].as_array().unwrap().len(), 16);
    let zero_shot = z["accuracy"].as_f64().unwrap();
    assert!(trained >= zero_shot, "trained from zero-shot {trained} < zero-shot {zero_shot}");
    // Its HTML report as any eval writes it: confusion matrix, per-class table, and a
    // thumbnail of each misclassified image shown.
    let zs_html = tmp.path().join("zero_shot.html");
    let zs = ["eval", "--zero-shot", "--model", &model, "--data", &shapes("test"), "--cache-dir", cache, "--json"];
    let zr = ok(&headstart(&[&zs[..], &["--report", zs_html.to_str().unwrap()]].concat()));
    assert_eq!(zr["accuracy"], z["accuracy"]);
    let page = std::fs::read_to_string(&zs_html).unwrap();
    assert!(page.contains("<svg") && page.contains("zero-shot model"), "{page}");
    for c in z["per_class"].as_array().unwrap() {
        assert!(page.contains(c["label"].as_str().unwrap()), "{} missing from the report", c["label"]);
    }
    assert!(zero_shot < 1.0, "the tiny CLIP is expected to make mistakes: {zero_shot}");
    assert!(page.contains("data:image/png;base64,"), "no thumbnail of a misclassified image");
    let text = headstart(&["eval", "--zero-shot", "--model", &model, "--data", &shapes("test"), "--template", "a {} shape.", "--no-cache"]);
    assert!(text.status.success(), "{}", String::from_utf8_lossy(&text.stderr));
    assert!(String::from_utf8_lossy(&text.stdout).starts_with("n 192   accuracy "));

    // predict: top classes of a held-out image, probabilities summing to at most 1.
    let img = format!("{}/red_circle/00.png", shapes("test"));
    let p = ok(&headstart(&["predict", &bundle, &img, "--top-k", "3", "--json"]));
    let top = p["predictions"][0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    let sum: f64 = top.iter().map(|t| t[1].as_f64().unwrap()).sum();
    assert!(sum <= 1.0 + 1e-6 && sum > 0.0);
}

#[test]
fn zero_shot_start_needs_a_clip_model_and_templates_need_it() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let o = headstart(&["train", "--data", &shapes("pool"), "--out", run.to_str().unwrap(), "--template", "a {}.", "--no-cache"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--head-init zero-shot"));
    let o = headstart(&["eval", "--zero-shot", "--data", &shapes("test")]);
    assert_eq!(o.status.code(), Some(2));
}

/// `head_init` and `templates` in a `--config` file, as the flags.
#[test]
fn config_file_sets_the_zero_shot_start() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let cfg = tmp.path().join("run.toml");
    let toml = format!(
        "model = {:?}\ndata = {:?}\noutput_dir = {:?}\nhead_init = \"zero-shot\"\ntemplates = [\"a photo of a {{}}.\", \"a {{}} shape.\"]\n",
        shapes("model"),
        shapes("pool"),
        run.display().to_string()
    );
    std::fs::write(&cfg, toml).unwrap();
    let o = headstart(&["train", "--config", cfg.to_str().unwrap(), "--no-cache", "--json"]);
    ok(&o);
    let config = std::fs::read_to_string(run.join("config.json")).unwrap();
    assert!(config.contains("zero_shot") && config.contains("a {} shape."), "{config}");
    std::fs::write(&cfg, "head_init = \"sometimes\"\n").unwrap();
    let o = headstart(&["train", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("head_init"), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `embed` with a CLIP model writes the image tower's normalised embeddings, and a head
/// trained on that file (`train --features`) is a CLIP bundle that runs on raw images.
#[test]
fn clip_embeddings_export_and_train_from_them() {
    use headstart::export::file::{Reader, EMBEDDING};
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pool.parquet");
    let model = shapes("model");
    let o = headstart(&["embed", "--model", &model, "--data", &shapes("pool"), "--out", out.to_str().unwrap(), "--no-cache"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = Reader::open(&out).unwrap();
    assert_eq!(r.rows, 64);
    let dim = r.meta.record.dim;
    assert!(serde_json::to_string(&r.meta.record.encoder).unwrap().contains("clip"), "the record names the CLIP encoder");
    let mut vectors = vec![];
    for b in r.batches(&[EMBEDDING]).unwrap() {
        vectors.extend(b.unwrap().vectors(&out).unwrap());
    }
    assert_eq!(vectors.len(), 64 * dim);
    for v in vectors.chunks(dim) {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "CLIP embeddings are unit length, got {norm}");
    }
    let run = tmp.path().join("run");
    let t = ok(&headstart(&["train", "--features", out.to_str().unwrap(), "--out", run.to_str().unwrap(), "--json"]));
    assert_eq!(t["classes"].as_array().unwrap().len(), 16);
    let toml = std::fs::read_to_string(run.join("bundle/bundle.toml")).unwrap();
    assert!(toml.contains("kind = \"clip\""), "{toml}");
    let e = ok(&headstart(&["eval", run.join("bundle").to_str().unwrap(), "--data", &shapes("test"), "--no-cache", "--json"]));
    assert_eq!(e["n"], 192);
    // Chance is 1/16; the probe on exported features must be well above it.
    assert!(e["accuracy"].as_f64().unwrap() > 0.3, "{e}");
}

#[test]
fn bf16_image_tower_is_recorded_and_used_by_the_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let run = run.to_str().unwrap();
    let model = shapes("model");
    let o = ok(&headstart(&["train", "--model", &model, "--data", &shapes("pool"), "--out", run, "--no-cache", "--precision", "bf16", "--json"]));
    assert_eq!(o["precision"], "bf16", "{o}");
    let toml = std::fs::read_to_string(format!("{run}/bundle/bundle.toml")).unwrap();
    assert!(toml.contains("precision = \"bf16\""), "{toml}");
    // eval runs the tower at the bundle's bf16 without a word; fp32 asked for is warned about.
    let bundle = format!("{run}/bundle");
    let e = headstart(&["eval", &bundle, "--data", &shapes("test"), "--no-cache", "--json"]);
    assert!(e.status.success() && !String::from_utf8_lossy(&e.stderr).contains("warning"), "{}", String::from_utf8_lossy(&e.stderr));
    let f = headstart(&["eval", &bundle, "--data", &shapes("test"), "--no-cache", "--json", "--precision", "fp32"]);
    assert!(String::from_utf8_lossy(&f.stderr).contains("trained on bf16 features but fp32 was asked for"), "{}", String::from_utf8_lossy(&f.stderr));
    let (acc_bf16, acc_fp32) = (ok(&e)["accuracy"].as_f64().unwrap(), ok(&f)["accuracy"].as_f64().unwrap());
    assert!((acc_bf16 - acc_fp32).abs() <= 3.0 / 192.0, "bf16 {acc_bf16} vs fp32 {acc_fp32}");
    // The zero-shot command takes the precision too.
    let img = format!("{}/red_circle/00.png", shapes("test"));
    let z = ok(&headstart(&["zero-shot", "--model", &model, "--labels", "red circle,blue cross", "--precision", "bf16", "--json", &img]));
    assert_eq!(z["results"][0]["top"].as_array().unwrap().len(), 2, "{z}");
}
