//! Few-shot training on CLIP image embeddings, with the zero-shot classifier as the head's start.
//!
//! The fixture is a tiny CLIP trained contrastively on synthetic coloured shapes with captions
//! (`tests/fixtures/make_shapes_clip.py`), so it really classifies by name: 16 classes
//! (`red_circle`, …), 4 labelled images per class in `pool/`, 12 held-out images per class in
//! `test/`, none of them seen in its training. With 1, 2 and 4 labelled images per class, a
//! head started from the zero-shot classifier (`head_init` zero-shot) must score higher on the
//! held-out images than the usual head started from zeros, and never lower than zero-shot.

use std::path::{Path, PathBuf};

use headstart::blocks::clip::{evaluate_zero_shot, train_clip, ClipEncoder, ClipPredictor};
use headstart::preprocess::DecodeOptions;
use headstart::progress::Silent;
use headstart::run::TrainRequest;
use headstart::train::{fit, HeadKind, HeadStart, InitialHead, Split, TrainConfig};
use tch::{Kind, Tensor};

fn shapes(part: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/clip/shapes").join(part)
}

/// The first `k` images of every class of `pool/`, as a class-folder data set under `root`.
fn few_shot_set(root: &Path, k: usize) -> PathBuf {
    let dst = root.join(format!("shots{k}"));
    for class in std::fs::read_dir(shapes("pool")).unwrap() {
        let class = class.unwrap().path();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&class).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let d = dst.join(class.file_name().unwrap());
        std::fs::create_dir_all(&d).unwrap();
        for f in &files[..k] {
            std::fs::copy(f, d.join(f.file_name().unwrap())).unwrap();
        }
    }
    dst
}

/// Trains a head on `data` (starting per `start`) and scores its bundle on `test/`.
fn trained_accuracy(data: &Path, out: &Path, cache: &Path, start: HeadStart) -> f64 {
    let mut req = TrainRequest::for_data(data.to_path_buf());
    req.model = shapes("model").display().to_string();
    req.out = out.to_path_buf();
    req.cache = Some(cache.to_path_buf());
    req.train = TrainConfig { head_init: start, ..TrainConfig::default() };
    let o = train_clip(&req, &Silent).unwrap();
    let p = ClipPredictor::load(&o.bundle, None).unwrap();
    let acc = p.evaluate(&shapes("test"), Some(cache), &Silent).unwrap().0.accuracy;
    let s = o.selection.as_ref().unwrap();
    eprintln!("{}: l2 {:?}, {:?} estimate {:?}, test {acc:.4}", out.display(), o.l2, s.method, s.estimate);
    acc
}

#[test]
fn zero_shot_start_beats_zeros_and_never_falls_below_zero_shot() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let enc = ClipEncoder::load(&shapes("model").display().to_string(), None).unwrap();
    let (zs, skipped) = evaluate_zero_shot(&enc, &shapes("test"), &[], DecodeOptions::default(), Some(&cache), &Silent).unwrap();
    assert!(skipped.is_empty());
    // The same zero-shot accuracy as transformers' CLIPModel on the same files.
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(shapes("reference.json")).unwrap()).unwrap();
    let want = reference["zero_shot_accuracy"].as_f64().unwrap();
    assert_eq!(zs.n, reference["n"].as_u64().unwrap() as usize);
    assert!((zs.accuracy - want).abs() < 1.5 / zs.n as f64, "zero-shot {} vs transformers {want}", zs.accuracy);
    // Well above chance (1/16), and not perfect, so a few labels have something to add.
    assert!(zs.accuracy > 0.3 && zs.accuracy < 0.95, "zero-shot accuracy {}", zs.accuracy);
    let mut rows = vec![];
    for k in [1, 2, 4] {
        let data = few_shot_set(tmp.path(), k);
        let zeros = trained_accuracy(&data, &tmp.path().join(format!("zeros{k}")), &cache, HeadStart::Default);
        let started = trained_accuracy(&data, &tmp.path().join(format!("zs{k}")), &cache, HeadStart::ZeroShot { templates: vec![] });
        rows.push((k, zeros, started));
    }
    eprintln!("zero-shot accuracy {:.4} (transformers {want:.4}) on {} held-out images", zs.accuracy, zs.n);
    eprintln!("{:>14} {:>12} {:>17}", "shots/class", "zeros head", "zero-shot start");
    for (k, z, s) in &rows {
        eprintln!("{k:>14} {z:>12.4} {s:>17.4}");
    }
    for (k, zeros, started) in rows {
        assert!(started > zeros, "{k} shots: zero-shot start {started} not above the zeros start {zeros}");
        assert!(started >= zs.accuracy, "{k} shots: zero-shot start {started} fell below zero-shot {}", zs.accuracy);
    }
}

/// The bundle's head starts exactly as the zero-shot classifier scores: with an overwhelming
/// pull toward the start, the fitted logistic head is the zero-shot head.
#[test]
fn strong_pull_keeps_the_zero_shot_head() {
    let enc = ClipEncoder::load(&shapes("model").display().to_string(), None).unwrap();
    let classes: Vec<String> = ["red_circle", "blue_square", "green_triangle"].iter().map(|s| s.to_string()).collect();
    let init = enc.zero_shot_head(&classes, &[]).unwrap();
    let x = Tensor::randn([30, init.weight.size()[1]], (Kind::Float, tch::Device::Cpu));
    let x = &x / x.norm_scalaropt_dim(2, [-1i64].as_slice(), true);
    let y = Tensor::from_slice(&(0..30).map(|i| i % 3).collect::<Vec<i64>>());
    let empty = (Tensor::zeros([0, x.size()[1]], (Kind::Float, tch::Device::Cpu)), Tensor::zeros([0], (Kind::Int64, tch::Device::Cpu)));
    let fitted = |l2: f64| {
        let cfg = TrainConfig { head: HeadKind::Logistic, l2: Some(l2), init: Some(InitialHead::clone(&init)), ..TrainConfig::default() };
        let f = fit(&cfg, Split { x: &x, y: &y }, Split { x: &empty.0, y: &empty.1 }, 3, &mut |_| {}).unwrap();
        f.head.tensors.iter().find(|(n, _)| n == "weight").unwrap().1.shallow_clone()
    };
    let near = fitted(1e7);
    let gap = (&near - &init.weight).abs().max().double_value(&[]);
    assert!(gap < 1e-3 * init.weight.abs().max().double_value(&[]), "strong pull moved the head by {gap}");
    // A weak pull lets the labels move it: the anchor is a prior, not a constraint.
    let far = fitted(1e-4);
    assert!((&far - &init.weight).abs().max().double_value(&[]) > 10.0 * gap.max(1e-6));
}

/// CLIP models are recognised by name, directory or hub id, nothing loaded; others are not.
#[test]
fn clip_models_are_recognised() {
    use headstart::blocks::clip::{is_clip_model, prompt_name};
    use headstart::models::registry::find_clip;
    for name in ["clip-vit-b-32", "ViT-B/32", "vit-b-32", "openai/clip-vit-base-patch32"] {
        assert_eq!(find_clip(name).map(|e| e.repo), Some("openai/clip-vit-base-patch32"), "{name}");
    }
    assert_eq!(find_clip("RN50").map(|e| e.name), Some("clip-rn50"));
    assert!(find_clip("ViT-B/8").is_none());
    assert!(is_clip_model("ViT-L/14"));
    assert!(is_clip_model(&shapes("model").display().to_string()));
    let open_clip = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/clip/clip_openclip_vit");
    assert!(is_clip_model(&open_clip.display().to_string()));
    assert!(!is_clip_model(&shapes("pool").display().to_string()));
    assert!(!is_clip_model("mobilenet_v2"));
    let bert = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/text/bert_tiny");
    assert!(!is_clip_model(&bert.display().to_string()));
    assert_eq!(prompt_name("golden_retriever"), "golden retriever");
}

/// The features a head trains on are the zero-shot path's image embeddings: the pipeline's
/// decode, CLIP preprocessing and clipping, normalised, equal `Clip::load_image` +
/// `encode_image` on the same files.
#[test]
fn pipeline_features_are_the_normalised_image_embeddings() {
    use headstart::blocks::clip::ClipBlock;
    use headstart::learn::task::Block;
    let enc = ClipEncoder::load(&shapes("model").display().to_string(), None).unwrap();
    let files: Vec<PathBuf> = ["red_circle/00.png", "blue_cross/03.png", "yellow_triangle/07.png"].iter().map(|f| shapes("test").join(f)).collect();
    let f = ClipBlock::reading(DecodeOptions::default(), None).featurise(&enc, &files, &Silent).unwrap();
    assert_eq!(f.ok, [0, 1, 2]);
    let images: Vec<Tensor> = files.iter().map(|p| enc.clip.load_image(p).unwrap()).collect();
    let e = tch::no_grad(|| enc.clip.encode_image(&Tensor::stack(&images, 0)).unwrap());
    let want = &e / e.norm_scalaropt_dim(2, [-1i64].as_slice(), true);
    let d = (&f.features - &want).abs().max().double_value(&[]);
    assert!(d < 1e-5, "pipeline features differ from the zero-shot path's by {d}");
}

#[test]
fn bf16_image_tower_stays_close_to_fp32_and_is_cached_apart() {
    use headstart::blocks::clip::ClipBlock;
    use headstart::engine::Precision;
    use headstart::learn::task::Block;
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let mut enc = ClipEncoder::load(&shapes("model").display().to_string(), None).unwrap();
    // `auto` keeps CLIP at fp32 (not measured on real weights).
    enc.set_precision(Precision::Auto);
    assert_eq!(enc.precision(), Precision::Fp32);
    let (fp32, _) = evaluate_zero_shot(&enc, &shapes("test"), &[], DecodeOptions::default(), Some(&cache), &Silent).unwrap();
    let files: Vec<PathBuf> = ["red_circle/00.png", "blue_cross/03.png", "yellow_triangle/07.png"].iter().map(|f| shapes("test").join(f)).collect();
    let block = ClipBlock::reading(DecodeOptions::default(), Some(&cache));
    let a = block.featurise(&enc, &files, &Silent).unwrap();
    enc.set_precision(Precision::Bf16);
    let b = block.featurise(&enc, &files, &Silent).unwrap();
    // Computed again, not read from the fp32 entries.
    assert_eq!((b.computed, b.reused), (3, 0));
    let diff = (&a.features - &b.features).abs().max().double_value(&[]);
    let cos = (&a.features * &b.features).sum_dim_intlist([1i64].as_slice(), false, Kind::Float).min().double_value(&[]);
    assert!(diff > 0.0, "bf16 features equal the fp32 ones: autocast did not run");
    assert!(cos > 0.99, "bf16 embeddings drift from fp32: cosine {cos}");
    let (bf16, _) = evaluate_zero_shot(&enc, &shapes("test"), &[], DecodeOptions::default(), Some(&cache), &Silent).unwrap();
    assert_eq!(bf16.n, fp32.n);
    assert!((bf16.accuracy - fp32.accuracy).abs() <= 2.5 / fp32.n as f64, "zero-shot accuracy bf16 {} vs fp32 {}", bf16.accuracy, fp32.accuracy);
}
