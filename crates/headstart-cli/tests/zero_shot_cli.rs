//! `headstart zero-shot`, run as a user would, on a tiny random CLIP saved as a Hugging Face
//! directory; probabilities compared with transformers' CLIPImageProcessor + CLIPModel
//! (tests/fixtures/make_clip_fixtures.py).

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/clip").join(name)
}

fn headstart(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_headstart")).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn images() -> Vec<String> {
    (0..3).map(|i| fixture(&format!("images/img{i}.png")).display().to_string()).collect()
}

fn run(extra: &[&str]) -> Output {
    let model = fixture("clip_hf_quick").display().to_string();
    let mut args = vec!["zero-shot", "--model", &model, "--labels", "cat, dog,bird"];
    args.extend_from_slice(extra);
    let files = images();
    args.extend(files.iter().map(String::as_str));
    headstart(&args)
}

#[test]
fn json_probabilities_match_transformers() {
    let o = run(&["--template", "a photo of a {}.", "--template", "a photo of the {}.", "--top-k", "3", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let want = headstart::weights::Weights::open(fixture("clip_cli.golden.safetensors")).unwrap().tensor("probs").unwrap();
    let want: Vec<Vec<f64>> = Vec::try_from(want.to_kind(tch::Kind::Double)).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    let mut worst = 0f64;
    for (r, w) in results.iter().zip(&want) {
        let top = r["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let probs: Vec<f64> = top.iter().map(|t| t["prob"].as_f64().unwrap()).collect();
        assert!(probs.windows(2).all(|p| p[0] >= p[1]), "not sorted: {probs:?}");
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-5);
        for t in top {
            let class = t["class"].as_u64().unwrap() as usize;
            assert_eq!(t["label"], ["cat", "dog", "bird"][class]);
            worst = worst.max((t["prob"].as_f64().unwrap() - w[class]).abs());
        }
    }
    eprintln!("zero-shot CLI against transformers: max probability difference {worst:.2e}");
    // The prepared images differ from PIL's by resampling rounding, to which a tiny random
    // model is very sensitive; on CLIPImageProcessor's own pixels the same probabilities
    // match to 1e-5 (the library's `zero_shot_on_processor_pixels` test).
    assert!(worst < 1e-2, "probabilities off by {worst}");
}

#[test]
fn text_output_and_top_k() {
    let o = run(&["--top-k", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    assert!(lines[0].ends_with("img0.png"));
    assert!(["cat", "dog", "bird"].iter().any(|l| lines[1].trim_end().ends_with(l)), "{text}");
}

#[test]
fn templates_file_and_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("templates.txt");
    std::fs::write(&t, "# ensemble\na photo of a {}.\na photo of the {}.\n").unwrap();
    let from_file = run(&["--templates-file", t.to_str().unwrap(), "--json"]);
    let inline = run(&["--template", "a photo of a {}.", "--template", "a photo of the {}.", "--json"]);
    assert!(from_file.status.success(), "{}", stderr(&from_file));
    let strip = |o: &Output| -> serde_json::Value { serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["results"].clone() };
    assert_eq!(strip(&from_file), strip(&inline));
    let o = run(&["--template", "a photo"]);
    assert!(!o.status.success() && stderr(&o).contains("--template") && stderr(&o).contains("no `{}`"), "{}", stderr(&o));
    std::fs::write(&t, "a photo of a {}.\n{} {}\n").unwrap();
    let o = run(&["--templates-file", t.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("line 2"), "{}", stderr(&o));
    let o = headstart(&["zero-shot", "--model", tmp.path().to_str().unwrap(), "--labels", "cat", &images()[0]]);
    assert!(!o.status.success() && stderr(&o).contains("neither config.json"), "{}", stderr(&o));
    let model = fixture("clip_hf_quick").display().to_string();
    let o = headstart(&["zero-shot", "--model", &model, "--labels", "cat,cat", &images()[0]]);
    assert!(!o.status.success() && stderr(&o).contains("given twice"), "{}", stderr(&o));
    let o = headstart(&["zero-shot", "--model", &model, "--labels", "cat", "/nonexistent.png"]);
    assert!(!o.status.success() && stderr(&o).contains("/nonexistent.png"), "{}", stderr(&o));
}
