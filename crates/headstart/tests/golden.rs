//! Golden parity: tiny random-weight models in the upstream layouts, outputs from
//! torchvision / PyTorch (tests/fixtures/make_fixtures.py), compared in fp32.

use std::path::PathBuf;

use headstart::models::vision::efficientnet::LiteCfg;
use headstart::models::vision::mobilenet::MobileNetV2Cfg;
use headstart::models::vision::resnet::ResNetCfg;
use headstart::models::vision::Arch;
use headstart::models::{Mode, Model};
use headstart::weights::report::{load_into, LoadPlan};
use headstart::weights::{Format, Weights};
use tch::Tensor;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a - b).abs().max().double_value(&[])
}

fn check(arch: Arch, weights: &str, format: Format, golden: &str, classes: i64) {
    let w = Weights::open(fixture(weights)).unwrap();
    assert_eq!(w.files()[0].format(), format);
    let m = Model::build(&arch, 3, Some(classes)).unwrap();
    let report = load_into(&m.vs, &w, &LoadPlan::default()).unwrap();
    report.require_complete().unwrap();
    assert!(report.unexpected.is_empty(), "unexpected: {:?}", report.unexpected);
    assert!(report.dropped.is_empty() && report.adapted.is_empty());
    let g = Weights::open(fixture(golden)).unwrap();
    let x = g.tensor("input").unwrap();
    let (feats, pooled, logits) = tch::no_grad(|| {
        let f = m.backbone.forward_features(&x, Mode::Eval);
        let p = m.backbone.pool(&f);
        (f, p, m.forward(&x, Mode::Eval).unwrap())
    });
    for (name, got) in [("features", &feats), ("pooled", &pooled), ("logits", &logits)] {
        let want = g.tensor(name).unwrap();
        let d = max_diff(got, &want);
        assert!(d < 1e-4, "{golden} {name}: max abs diff {d}");
    }
    assert_eq!(m.backbone.num_features(), pooled.size()[1]);
}

#[test]
fn mobilenet_v2_matches_torchvision() {
    check(Arch::MobileNetV2(MobileNetV2Cfg { width_mult: 0.25 }), "mobilenet_v2_tiny.pth", Format::TorchZip, "mobilenet_v2_tiny.golden.safetensors", 10);
}

#[test]
fn resnet_basic_matches_torchvision() {
    let cfg = ResNetCfg { bottleneck: false, layers: [1, 1, 1, 1], widths: [8, 16, 24, 32] };
    check(Arch::ResNet(cfg), "resnet_basic_tiny.pth", Format::TorchLegacy, "resnet_basic_tiny.golden.safetensors", 10);
}

#[test]
fn resnet_bottleneck_matches_torchvision() {
    let cfg = ResNetCfg { bottleneck: true, layers: [1, 2, 1, 1], widths: [8, 8, 16, 16] };
    check(Arch::ResNet(cfg), "resnet_bottleneck_tiny.safetensors", Format::Safetensors, "resnet_bottleneck_tiny.golden.safetensors", 7);
}

#[test]
fn efficientnet_lite_matches_reference() {
    let cfg = LiteCfg { width: 0.25, depth: 1.0, dropout: 0.2, drop_connect: 0.2 };
    check(Arch::EfficientNetLite(cfg), "efficientnet_lite_tiny.safetensors", Format::Safetensors, "efficientnet_lite_tiny.golden.safetensors", 10);
}

/// An HF classification directory: `config.json` sizes the registry architecture, the `vit.` /
/// `convnext.` prefix is stripped, the tiny 3-way classifier loads as the head.
fn hf_model(entry: &str, dir: &str) -> (Model, headstart::weights::LoadReport) {
    let entry = headstart::models::registry::find(entry).unwrap();
    let dir = fixture(dir);
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let arch = entry.arch.with_hf_config(&config).unwrap();
    let w = Weights::open(&dir).unwrap();
    let m = Model::build(&arch, 3, Some(3)).unwrap();
    let plan = LoadPlan {
        strip_prefixes: entry.strip_prefixes.iter().map(|s| s.to_string()).collect(),
        unused: entry.unused.iter().map(|(p, w)| (p.to_string(), w.to_string())).collect(),
        ..Default::default()
    };
    let report = load_into(&m.vs, &w, &plan).unwrap();
    report.require_complete().unwrap();
    assert!(report.unexpected.is_empty(), "unexpected: {:?}", report.unexpected);
    (m, report)
}

fn compare(m: &Model, g: &Weights, suffix: &str, what: &str) {
    let x = g.tensor(&format!("input{suffix}")).unwrap();
    let (f, p, l) = tch::no_grad(|| {
        let f = m.backbone.forward_features(&x, Mode::Eval);
        let p = m.backbone.pool(&f);
        (f, p, m.forward(&x, Mode::Eval).unwrap())
    });
    for (name, got) in [("features", &f), ("pooled", &p), ("logits", &l)] {
        let d = max_diff(got, &g.tensor(&format!("{name}{suffix}")).unwrap());
        assert!(d < 1e-4, "{what} {name}{suffix}: max abs diff {d}");
    }
}

#[test]
fn vit_matches_transformers_including_resized_position_embeddings() {
    let (m, _) = hf_model("vit_base_patch16_224", "vit_tiny");
    let g = Weights::open(fixture("vit_tiny.golden.safetensors")).unwrap();
    compare(&m, &g, "_32", "vit");
    compare(&m, &g, "_48", "vit");
}

#[test]
fn convnext_matches_transformers() {
    let (m, _) = hf_model("convnext_tiny_224", "convnext_tiny");
    let g = Weights::open(fixture("convnext_tiny.golden.safetensors")).unwrap();
    compare(&m, &g, "", "convnext");
}

/// Regression: a safetensors header of 128..=255 bytes starts with 0x80, the pickle protocol
/// opcode; it must still be read as safetensors.
#[test]
fn safetensors_with_a_0x80_header_length_is_not_taken_for_a_pickle() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("small.safetensors");
    let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    for name_len in 1..200 {
        let name = "w".repeat(name_len);
        headstart::weights::save_safetensors(&p, &[(name.clone(), t.shallow_clone())]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let w = Weights::open(&p).unwrap_or_else(|e| panic!("header length byte {:#x}: {e}", bytes[0]));
        assert_eq!(w.files()[0].format(), Format::Safetensors);
        assert!(w.tensor(&name).unwrap().equal(&t));
    }
}
