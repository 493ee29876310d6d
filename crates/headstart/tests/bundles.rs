//! Bundles of format 1 (one layout per modality, written by earlier builds) still load and
//! predict exactly as they did; format 2 (one layout, modality-tagged) round-trips.

use std::path::PathBuf;

use headstart::bundle::{self, EncoderRef};
use headstart::models::registry::Modality;
use headstart::progress::Silent;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("tests/fixtures/bundles_v1/expected.json")).unwrap()).unwrap()
}

fn assert_top(got: &[(String, f64)], want: &serde_json::Value) {
    let want = want.as_array().unwrap();
    assert_eq!(got.len(), want.len());
    for ((label, p), w) in got.iter().zip(want) {
        assert_eq!(label, w[0].as_str().unwrap());
        assert!((p - w[1].as_f64().unwrap()).abs() < 1e-5, "{label}: {p} vs {}", w[1]);
    }
}

#[test]
fn format_1_image_bundle_loads_and_predicts_as_before() {
    let dir = root().join("tests/fixtures/bundles_v1/image");
    let meta = bundle::read_meta(&dir).unwrap();
    assert_eq!(meta.modality, Modality::Image);
    assert!(matches!(&meta.encoder, EncoderRef::Vision(v) if v.name == "vit_small_patch16_224.augreg_in21k_ft_in1k"));
    assert_eq!(bundle::modality(&dir).unwrap(), "image");
    let p = headstart::run::Predictor::load(&dir, Some(&root().join("tests/fixtures/vit_tiny"))).unwrap();
    let want = expected();
    let files: Vec<PathBuf> = want["image"].as_array().unwrap().iter().map(|x| root().join(x["file"].as_str().unwrap())).collect();
    let (preds, skipped) = headstart::run::predict(&p, &files, 2, None, &Silent).unwrap();
    assert!(skipped.is_empty());
    for (pr, w) in preds.iter().zip(want["image"].as_array().unwrap()) {
        assert_top(&pr.top, &w["top"]);
    }
    // A text predictor refuses it, by cause.
    let e = headstart::text::TextPredictor::load(&dir, None).err().unwrap();
    assert_eq!(e.cause(), headstart::error::Cause::Bundle, "{e}");
}

#[test]
fn format_1_text_bundle_loads_and_predicts_as_before() {
    let dir = root().join("tests/fixtures/bundles_v1/text");
    let meta = bundle::read_meta(&dir).unwrap();
    assert_eq!(meta.modality, Modality::Text);
    assert_eq!(meta.columns.as_ref().unwrap().text, "review");
    assert_eq!(bundle::modality(&dir).unwrap(), "text");
    let model = root().join("tests/fixtures/text/bert_tiny").display().to_string();
    let p = headstart::text::TextPredictor::load(&dir, Some(&model)).unwrap();
    let want = expected();
    let texts: Vec<String> = want["text"].as_array().unwrap().iter().map(|x| x["text"].as_str().unwrap().to_string()).collect();
    let top = p.predict(&texts, None, 2, &Silent).unwrap();
    for (t, w) in top.iter().zip(want["text"].as_array().unwrap()) {
        assert_top(t, &w["top"]);
    }
    assert!(bundle::read(&dir).is_err(), "the image reader refuses a text bundle");
}

#[test]
fn format_2_is_one_tagged_layout_that_round_trips() {
    for m in ["image", "text"] {
        let old = root().join("tests/fixtures/bundles_v1").join(m);
        let meta = bundle::read_meta(&old).unwrap();
        let d = tempfile::tempdir().unwrap();
        std::fs::copy(old.join("head.safetensors"), d.path().join("head.safetensors")).unwrap();
        let text = bundle::to_toml(&meta).unwrap();
        assert!(text.contains("format_version = 2") && text.contains(&format!("modality = \"{m}\"")), "{text}");
        assert!(text.contains(&format!("kind = \"{}\"", if m == "image" { "vision" } else { "text" })), "{text}");
        std::fs::write(d.path().join("bundle.toml"), &text).unwrap();
        assert_eq!(bundle::read_meta(d.path()).unwrap(), meta);
        // A format this build does not know is refused by name.
        std::fs::write(d.path().join("bundle.toml"), text.replace("format_version = 2", "format_version = 9")).unwrap();
        let e = bundle::read_meta(d.path()).unwrap_err().to_string();
        assert!(e.contains("bundle format 9 is not supported"), "{e}");
    }
}
