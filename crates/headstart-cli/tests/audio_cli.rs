//! Audio runs through the real binary: a folder of class folders of generated WAV clips (with
//! a bad file) read as audio, trained on the tiny random Whisper's features, then eval and
//! predict on the audio bundle; `models` lists the audio entries with their input spec.

use std::path::PathBuf;
use std::process::{Command, Output};

use common::write_audio_set as write_set;

mod common;

fn tiny_whisper() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/whisper_tiny_random").display().to_string()
}

fn headstart(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_headstart")).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn audio_folder_train_eval_predict_with_a_bad_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_set(&data, 6, 0);
    let bad = data.join("hum").join("broken.wav");
    std::fs::write(&bad, b"RIFF\x24\x00\x00\x00WAVEfmt nonsense").unwrap();
    let run = tmp.path().join("run");
    let cache = tmp.path().join("cache");
    let model = tiny_whisper();
    let args = ["train", "--data", data.to_str().unwrap(), "--model", &model, "--out", run.to_str().unwrap(), "--cache-dir", cache.to_str().unwrap()];
    let o = headstart(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("note: read as audio"), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("clips       ") && text.contains("1 skipped"), "{text}");
    assert!(text.contains("backbone    18 clips run, 0 from the feature cache"), "{text}");
    let errors = std::fs::read_to_string(run.join("errors.jsonl")).unwrap();
    assert_eq!(errors.lines().count(), 1, "{errors}");
    assert!(errors.contains("broken.wav") && errors.contains("not a readable audio file"), "{errors}");
    let bundle_toml = std::fs::read_to_string(run.join("bundle/bundle.toml")).unwrap();
    assert!(bundle_toml.contains("modality = \"audio\"") && bundle_toml.contains("kind = \"audio\""), "{bundle_toml}");

    // Again with --json: every clip from the cache.
    let o = headstart(&[&args[..], &["--json"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["backbone_computed"].as_u64(), v["backbone_reused"].as_u64()), (Some(0), Some(18)));

    // Eval on fresh clips.
    let test = tmp.path().join("test");
    write_set(&test, 3, 10);
    let bundle = run.join("bundle");
    let o = headstart(&["eval", bundle.to_str().unwrap(), "--data", test.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["n"], 9);
    let acc = r["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.85, "eval accuracy {acc}");

    // Predict: one good clip per class and the bad file, which is reported and left out.
    let files: Vec<String> = ["hum/hum10.wav", "whistle/whistle11.wav", "hiss/hiss12.wav"].iter().map(|f| test.join(f).display().to_string()).collect();
    let mut pargs = vec!["predict", bundle.to_str().unwrap(), "--top-k", "1", "--json"];
    pargs.extend(files.iter().map(String::as_str));
    pargs.push(bad.to_str().unwrap());
    let o = headstart(&pargs);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("skipped") && stderr(&o).contains("broken.wav"), "{}", stderr(&o));
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let got: Vec<&str> = p["predictions"].as_array().unwrap().iter().map(|x| x["top"][0][0].as_str().unwrap()).collect();
    assert_eq!(got, vec!["hum", "whistle", "hiss"]);
    assert_eq!(p["skipped"].as_array().unwrap().len(), 1);

    // The HTML report of an evaluation.
    let html = tmp.path().join("eval.html");
    let o = headstart(&["eval", bundle.to_str().unwrap(), "--data", test.to_str().unwrap(), "--report", html.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read_to_string(&html).unwrap().contains("hum"));

    // The learning-rate range test fine-tunes the audio encoder.
    let o = headstart(&["lr-find", "--data", data.to_str().unwrap(), "--model", &model, "--steps", "10", "--batch-size", "6", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(r["lrs"].as_array().is_some_and(|a| !a.is_empty()) && r["suggestion"].as_f64().is_some(), "{r}");

    // Only bad files: a data error (exit 3).
    let o = headstart(&["predict", bundle.to_str().unwrap(), bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    // Column flags are for text bundles.
    let o = headstart(&["eval", bundle.to_str().unwrap(), "--data", test.to_str().unwrap(), "--text-column", "x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("this is an audio bundle"), "{}", stderr(&o));
}

/// `--audio-window clip`: recorded in the bundle, which eval then runs with; fine-tuning and
/// `embed` of a Wav2Vec2 model refuse it (usage errors).
#[test]
fn audio_window_flag_is_recorded_and_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_set(&data, 4, 0);
    let run = tmp.path().join("run");
    let model = tiny_whisper();
    let (d, r) = (data.to_str().unwrap(), run.to_str().unwrap());
    let o = headstart(&["train", "--data", d, "--model", &model, "--audio-window", "clip", "--out", r, "--no-cache", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bundle_toml = std::fs::read_to_string(run.join("bundle/bundle.toml")).unwrap();
    assert!(bundle_toml.contains("window = \"clip\""), "{bundle_toml}");
    let o = headstart(&["eval", run.join("bundle").to_str().unwrap(), "--data", d, "--no-cache", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["n"], 12);
    let ft = tmp.path().join("ft");
    let o = headstart(&["train", "--data", d, "--model", &model, "--audio-window", "clip", "--mode", "finetune", "--out", ft.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("fine-tuning"), "{}", stderr(&o));
    let w2v = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wav2vec2_group").display().to_string();
    let out = tmp.path().join("e.parquet");
    let o = headstart(&["embed", "--data", d, "--model", &w2v, "--audio-window", "full", "--out", out.to_str().unwrap(), "--no-cache"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("applies to Whisper models"), "{}", stderr(&o));
}

/// `--layer weighted`: the layer-sum head with its learned layer weights in the outcome, then
/// `predict` on training clips agrees with the classes `eval` counts for them; an incompatible
/// head (flag or config file) and fine-tuning are usage errors.
#[test]
fn weighted_layers_train_then_predict_agrees_with_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_set(&data, 5, 0);
    let run = tmp.path().join("run");
    let model = tiny_whisper();
    let (d, r) = (data.to_str().unwrap(), run.to_str().unwrap());
    let o = headstart(&["train", "--data", d, "--model", &model, "--layer", "weighted", "--out", r, "--no-cache", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["head"], "layer_sum");
    let w: Vec<f64> = v["layer_weights"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(w.len(), 3, "{w:?}");
    assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-6, "{w:?}");
    let outcome: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("outcome.json")).unwrap()).unwrap();
    assert_eq!(outcome["layer_weights"], v["layer_weights"]);
    let bundle_toml = std::fs::read_to_string(run.join("bundle/bundle.toml")).unwrap();
    assert!(bundle_toml.contains("all_layers = true") && bundle_toml.contains("kind = \"layer_sum\""), "{bundle_toml}");

    // One training clip per class: eval's confusion row says what each was predicted as.
    let one = tmp.path().join("one");
    for class in ["hum", "whistle", "hiss"] {
        std::fs::create_dir_all(one.join(class)).unwrap();
        std::fs::copy(data.join(class).join(format!("{class}1.wav")), one.join(class).join(format!("{class}1.wav"))).unwrap();
    }
    let bundle = run.join("bundle");
    let o = headstart(&["eval", bundle.to_str().unwrap(), "--data", one.to_str().unwrap(), "--no-cache", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let labels = ["hiss", "hum", "whistle"];
    let eval_says: Vec<&str> =
        (0..3).map(|t| labels[e["confusion"][t].as_array().unwrap().iter().position(|c| c.as_u64() == Some(1)).expect("one clip per class")]).collect();
    let files: Vec<String> = labels.iter().map(|c| one.join(c).join(format!("{c}1.wav")).display().to_string()).collect();
    let mut pargs = vec!["predict", bundle.to_str().unwrap(), "--top-k", "1", "--no-cache", "--json"];
    pargs.extend(files.iter().map(String::as_str));
    let o = headstart(&pargs);
    assert!(o.status.success(), "{}", stderr(&o));
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let predicted: Vec<&str> = p["predictions"].as_array().unwrap().iter().map(|x| x["top"][0][0].as_str().unwrap()).collect();
    assert_eq!(predicted, eval_says);
    assert_eq!(predicted, labels, "training clips of distinct sounds");

    // Incompatible settings: usage errors naming the flags.
    let o = headstart(&["train", "--data", d, "--model", &model, "--layer", "weighted", "--head", "mlp", "--out", r]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--head mlp") && stderr(&o).contains("--layer weighted"), "{}", stderr(&o));
    let cfg = tmp.path().join("run.toml");
    std::fs::write(&cfg, "layer = \"weighted\"\nhead = \"logistic\"\n").unwrap();
    let o = headstart(&["train", "--config", cfg.to_str().unwrap(), "--data", d, "--model", &model, "--out", r]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--head logistic") && stderr(&o).contains("--layer weighted"), "{}", stderr(&o));
    let o = headstart(&["train", "--data", d, "--model", &model, "--layer", "weighted", "--mode", "finetune", "--out", r]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--layer") && stderr(&o).contains("fine-tuning"), "{}", stderr(&o));
    let o = headstart(&["train", "--data", d, "--model", &model, "--layer", "middle", "--out", r]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn models_lists_audio_entries_with_their_input_spec() {
    let o = headstart(&["models", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let audio: Vec<&serde_json::Value> = v.as_array().unwrap().iter().filter(|e| e["modality"] == "audio").collect();
    let names: Vec<&str> = audio.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["whisper_tiny_en", "whisper_base", "wav2vec2_base", "hubert_base", "wavlm_base_plus"]);
    assert_eq!(audio[0]["input"]["sample_rate"], 16000);
    assert_eq!(audio[0]["input"]["features"], "log-mel 80");
    assert_eq!(audio[2]["input"]["features"], "waveform");
    let o = headstart(&["models"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.lines().any(|l| l.starts_with("whisper_tiny_en") && l.contains("audio") && l.contains("whisper")), "{text}");
    // --layer is an audio setting.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("a")).unwrap();
    std::fs::write(tmp.path().join("a/x.png"), b"x").unwrap();
    let o = headstart(&["train", "--data", tmp.path().to_str().unwrap(), "--out", tmp.path().join("r").to_str().unwrap(), "--layer", "2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--layer, --max-seconds and --audio-window apply to audio runs"), "{}", stderr(&o));
}

/// `embed` on audio writes one row per clip with the audio encoder's record, and a head trained
/// from that file (`train --features`) is an audio bundle that `eval` runs on the raw clips.
#[test]
fn audio_embeddings_export_and_train_from_them() {
    use headstart::export::file::{Reader, EMBEDDING};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_set(&data, 6, 0);
    let out = tmp.path().join("clips.parquet");
    let model = tiny_whisper();
    let o = headstart(&["embed", "--model", &model, "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "--no-cache"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("read as audio"), "{}", stderr(&o));
    let r = Reader::open(&out).unwrap();
    assert_eq!(r.rows, 18);
    let dim = r.meta.record.dim;
    assert!(serde_json::to_string(&r.meta.record.encoder).unwrap().contains("audio"), "the record names the audio encoder");
    let mut vectors = vec![];
    for b in r.batches(&[EMBEDDING]).unwrap() {
        vectors.extend(b.unwrap().vectors(&out).unwrap());
    }
    assert_eq!(vectors.len(), 18 * dim);
    assert!(vectors.iter().all(|v| v.is_finite()) && vectors.iter().any(|&v| v != 0.0));
    let run = tmp.path().join("run");
    let t = headstart(&["train", "--features", out.to_str().unwrap(), "--out", run.to_str().unwrap(), "--json"]);
    assert!(t.status.success(), "{}", stderr(&t));
    let toml = std::fs::read_to_string(run.join("bundle/bundle.toml")).unwrap();
    assert!(toml.contains("modality = \"audio\""), "{toml}");
    let e = headstart(&["eval", run.join("bundle").to_str().unwrap(), "--data", data.to_str().unwrap(), "--no-cache", "--json"]);
    assert!(e.status.success(), "{}", stderr(&e));
    let e: serde_json::Value = serde_json::from_slice(&e.stdout).unwrap();
    assert_eq!(e["n"], 18);
    // The eval re-runs the encoder on the raw clips: on the clips the head was trained on,
    // features that matched the exported ones classify them well above chance (1/3).
    assert!(e["accuracy"].as_f64().unwrap() > 0.6, "{e}");
}
