//! VGG golden parity: torchvision's VGG-11/13/16/19 with and without batch norm, narrowed
//! (tests/fixtures/make_clip_fixtures.py), compared in fp32; stages for freezing.

use std::path::PathBuf;

use headstart::models::vision::vgg::{VggCfg, VggLayout};
use headstart::models::vision::Arch;
use headstart::models::{Mode, Model};
use headstart::weights::report::{load_into, LoadPlan};
use headstart::weights::{Format, Weights};
use tch::{Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/vgg").join(name)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a - b).abs().max().double_value(&[])
}

fn cfg(depth: i64, batch_norm: bool) -> VggCfg {
    VggCfg { depth, batch_norm, widths: [4, 8, 8, 16, 16], hidden: 24, layout: VggLayout::Torchvision }
}

fn check(depth: i64, bn: bool) {
    let name = format!("vgg{depth}{}_tiny", if bn { "_bn" } else { "" });
    let (file, format) = if bn { (format!("{name}.pth"), Format::TorchZip) } else { (format!("{name}.safetensors"), Format::Safetensors) };
    let w = Weights::open(fixture(&file)).unwrap();
    assert_eq!(w.files()[0].format(), format);
    let m = Model::build(&Arch::Vgg(cfg(depth, bn)), 3, Some(5)).unwrap();
    let report = load_into(&m.vs, &w, &LoadPlan::default()).unwrap();
    report.require_exact().unwrap();
    let g = Weights::open(fixture(&format!("{name}.golden.safetensors"))).unwrap();
    let x = g.tensor("input").unwrap();
    let n = m.backbone.stages().len();
    let (conv, pooled, logits) = tch::no_grad(|| {
        let conv = m.backbone.forward_range(0..n - 1, &x, Mode::Eval);
        let pooled = m.backbone.pool(&m.backbone.forward_stage(n - 1, &conv, Mode::Eval));
        (conv, pooled, m.forward(&x, Mode::Eval).unwrap())
    });
    for (what, got) in [("features", &conv), ("pooled", &pooled), ("logits", &logits)] {
        let want = g.tensor(what).unwrap();
        let d = max_diff(got, &want);
        assert!(d < 1e-4, "{name} {what}: max abs diff {d}");
        assert!(want.abs().max().double_value(&[]) > 1e-2, "{name} {what}: a degenerate golden");
    }
    assert_eq!(m.backbone.num_features(), 24);
    // Every variable in exactly one stage (the head apart).
    let names: Vec<&str> = m.backbone.stages().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["block1", "block2", "block3", "block4", "block5", "fc"]);
    for (var, _) in m.vs.variables() {
        let k = m.backbone.stages().iter().filter(|s| s.contains(&var)).count();
        let head = var.starts_with("classifier.6.");
        assert!((k == 1 && !head) || (k == 0 && head), "{var}: in {k} stages");
    }
}

#[test]
fn vgg11() {
    check(11, false);
}
#[test]
fn vgg11_bn() {
    check(11, true);
}
#[test]
fn vgg13() {
    check(13, false);
}
#[test]
fn vgg13_bn() {
    check(13, true);
}
#[test]
fn vgg16() {
    check(16, false);
}
#[test]
fn vgg16_bn() {
    check(16, true);
}
#[test]
fn vgg19() {
    check(19, false);
}
#[test]
fn vgg19_bn() {
    check(19, true);
}

#[test]
fn wrong_depth_or_layout_is_an_error() {
    assert!(Model::build(&Arch::Vgg(cfg(12, false)), 3, None).err().unwrap().to_string().contains("not one of 11, 13, 16, 19"));
    // VGG-11 weights into a VGG-13: the report names what does not fit.
    let m = Model::build(&Arch::Vgg(cfg(13, false)), 3, Some(5)).unwrap();
    let report = load_into(&m.vs, &Weights::open(fixture("vgg11_tiny.safetensors")).unwrap(), &LoadPlan::default()).unwrap();
    assert!(!report.is_complete());
    assert!(report.require_complete().unwrap_err().to_string().contains("features."));
}

#[test]
fn full_size_shapes_match_torchvision() {
    // torchvision's vgg16 has 138,357,544 parameters; vgg11_bn 132,868,840.
    for (depth, bn, want) in [(16, false, 138_357_544i64), (11, true, 132_868_840)] {
        let c = VggCfg { depth, batch_norm: bn, widths: [64, 128, 256, 512, 512], hidden: 4096, layout: VggLayout::Torchvision };
        let m = Model::build(&Arch::Vgg(c), 3, Some(1000)).unwrap();
        let n: i64 = m.vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
        assert_eq!(n, want, "vgg{depth}{}", if bn { "_bn" } else { "" });
    }
}

/// timm's layout (the registry's hub weights): fc6/fc7 as convolutions, `head.fc`; the same
/// features and logits as timm's own forward pass at 224 × 224, the same stages.
#[test]
fn vgg11_bn_timm_layout() {
    let w = Weights::open(fixture("vgg11_bn_timm_tiny.safetensors")).unwrap();
    let c = VggCfg { layout: VggLayout::Timm, ..cfg(11, true) };
    let m = Model::build(&Arch::Vgg(c), 3, Some(5)).unwrap();
    load_into(&m.vs, &w, &LoadPlan::default()).unwrap().require_exact().unwrap();
    let g = Weights::open(fixture("vgg11_bn_timm_tiny.golden.safetensors")).unwrap();
    // The fixture script's input formula.
    let ar = |n: i64| Tensor::arange(n, (Kind::Float, tch::Device::Cpu));
    let (c, h, w) = (ar(3).view([3, 1, 1]), ar(224).view([1, 224, 1]), ar(224).view([1, 1, 224]));
    let x = (((c + 1.0) * &h * 0.1).sin() * (&w * 0.07).cos() + (&h * &w * 0.013).sin() * 0.3).unsqueeze(0);
    let n = m.backbone.stages().len();
    let (conv, pooled, logits) = tch::no_grad(|| {
        let conv = m.backbone.forward_range(0..n - 1, &x, Mode::Eval);
        let pooled = m.backbone.pool(&m.backbone.forward_stage(n - 1, &conv, Mode::Eval));
        (conv, pooled, m.forward(&x, Mode::Eval).unwrap())
    });
    for (what, got) in [("features", &conv), ("pooled", &pooled), ("logits", &logits)] {
        let d = max_diff(got, &g.tensor(what).unwrap());
        assert!(d < 1e-3, "timm layout {what}: max abs diff {d}");
    }
    for (var, _) in m.vs.variables() {
        let k = m.backbone.stages().iter().filter(|s| s.contains(&var)).count();
        let head = var.starts_with("head.fc.");
        assert!((k == 1 && !head) || (k == 0 && head), "{var}: in {k} stages");
    }
    // Every VGG of the registry is in timm's layout, and its head is `head.fc`.
    let vggs: Vec<_> = headstart::models::registry::ENTRIES.iter().filter(|e| matches!(e.arch, Arch::Vgg(_))).collect();
    assert_eq!(vggs.len(), 8);
    assert!(vggs.iter().all(|e| matches!(&e.arch, Arch::Vgg(c) if c.layout == VggLayout::Timm) && e.classifier == ["head.fc.weight", "head.fc.bias"]));
}
