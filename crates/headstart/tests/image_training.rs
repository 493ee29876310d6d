//! Feature-extraction training end to end on the packaged MobileNetV2 and a few images of the
//! committed Fashion-MNIST sample (needs `headstart fetch mobilenet_v2`).

use std::path::{Path, PathBuf};

use headstart::preprocess::decode_rgb;
use headstart::progress::Silent;
use headstart::run::{evaluate, predict, train_image, Predictor, TrainOutcome, TrainRequest};
use headstart::train::{ClassWeights, HeadKind, TrainConfig};

fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/sample")
}

/// `classes` × `per_class` images from the committed sample, copied into `dir`.
fn small_set(dir: &Path, classes: &[&str], per_class: usize) {
    for c in classes {
        let mut files: Vec<_> = std::fs::read_dir(sample().join(c)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        std::fs::create_dir_all(dir.join(c)).unwrap();
        for f in files.iter().take(per_class) {
            std::fs::copy(f, dir.join(c).join(f.file_name().unwrap())).unwrap();
        }
    }
}

fn request(data: &Path, out: &Path, cache: &Path, head: HeadKind) -> TrainRequest {
    TrainRequest {
        data: data.to_path_buf(),
        val: None,
        val_split: 0.25,
        model: "mobilenet_v2".into(),
        weights: None,
        out: out.to_path_buf(),
        cache: Some(cache.to_path_buf()),
        extract_batch_size: 8,
        input_override: None,
        finetune: None,
        train: TrainConfig { head, epochs: 15, ..Default::default() },
        allow_truncated: false,
        precision: Default::default(),
    }
}

fn train(req: &TrainRequest) -> TrainOutcome {
    train_image(req, &Silent).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn feature_cache_runs_the_backbone_only_on_new_or_changed_images() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, cache) = (tmp.path().join("data"), tmp.path().join("cache"));
    small_set(&data, &["Bag", "Trouser", "Sneaker"], 6);
    let o1 = train(&request(&data, &tmp.path().join("r1"), &cache, HeadKind::Logistic));
    assert_eq!((o1.backbone_computed, o1.backbone_reused), (18, 0));
    assert_eq!(o1.n_train + o1.n_val, 18);

    // Another head and other hyper-parameters: zero backbone passes.
    let mut req = request(&data, &tmp.path().join("r2"), &cache, HeadKind::Linear);
    req.train.lr = 3e-3;
    req.train.seed = 5;
    let o2 = train(&req);
    assert_eq!((o2.backbone_computed, o2.backbone_reused), (0, 18));

    // Edit one image: only that one is recomputed.
    let victim = std::fs::read_dir(data.join("Bag")).unwrap().next().unwrap().unwrap().path();
    let mut img = image::open(&victim).unwrap().to_luma8();
    let p = img.get_pixel(3, 3).0[0];
    img.put_pixel(3, 3, image::Luma([p.wrapping_add(77)]));
    img.save(&victim).unwrap();
    let o3 = train(&request(&data, &tmp.path().join("r3"), &cache, HeadKind::Mlp));
    assert_eq!((o3.backbone_computed, o3.backbone_reused), (1, 17));

    // Add a class folder: only its images are new.
    small_set(&data, &["Coat"], 6);
    let o4 = train(&request(&data, &tmp.path().join("r4"), &cache, HeadKind::Logistic));
    assert_eq!((o4.backbone_computed, o4.backbone_reused), (6, 18));
    assert_eq!(o4.classes.len(), 4);

    // Run directory contents.
    let r1 = tmp.path().join("r1");
    for f in ["config.json", "metrics.jsonl", "errors.jsonl", "bundle/bundle.toml", "bundle/head.safetensors"] {
        assert!(r1.join(f).is_file(), "{f} missing");
    }
    let lines = std::fs::read_to_string(tmp.path().join("r2/metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(rows.len() >= 2);
    let (refit, epochs) = rows.split_last().unwrap();
    for v in epochs {
        assert!(v["train_loss"].is_number() && v["val_acc"].is_number() && v["epoch"].is_number());
    }
    // Last, the refit on all 18 images, with the selection estimate it was chosen at.
    let sel = o2.selection.as_ref().unwrap();
    assert_eq!((refit["phase"].as_str(), refit["n"].as_u64(), refit["epoch"].as_u64()), (Some("refit"), Some(18), Some(o2.best_epoch as u64)));
    assert_eq!(refit["selection_estimate"].as_f64(), sel.estimate);
    assert!(refit["val_acc"].is_null());
}

#[test]
fn bad_files_are_skipped_with_reasons_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    small_set(&data, &["Bag", "Trouser"], 6);
    let good = std::fs::read(std::fs::read_dir(data.join("Bag")).unwrap().next().unwrap().unwrap().path()).unwrap();
    std::fs::write(data.join("Bag/truncated.png"), &good[..good.len() / 2]).unwrap();
    std::fs::write(data.join("Bag/corrupt.jpg"), b"\xff\xd8\xff\xe0 this is not a jpeg at all").unwrap();
    std::fs::write(data.join("Trouser/text.png"), b"hello, I am text").unwrap();
    std::fs::write(data.join("Trouser/notes.txt"), b"notes").unwrap();
    // A PNG header that claims 60000 × 60000 pixels: refused before decoding.
    let mut huge = good.clone();
    huge[16..20].copy_from_slice(&60000u32.to_be_bytes());
    huge[20..24].copy_from_slice(&60000u32.to_be_bytes());
    let crc = crc32(&huge[12..29]);
    huge[29..33].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(data.join("Trouser/huge.png"), &huge).unwrap();
    let out = tmp.path().join("run");
    let o = train(&request(&data, &out, &tmp.path().join("cache"), HeadKind::Logistic));
    assert_eq!(o.skipped, 5);
    assert_eq!(o.n_train + o.n_val, 12);
    let errors = std::fs::read_to_string(out.join("errors.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = errors.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 5);
    let reason = |name: &str| rows.iter().find(|r| r["path"].as_str().unwrap().ends_with(name)).unwrap()["reason"].as_str().unwrap().to_string();
    assert!(reason("huge.png").contains("pixel cap"), "{}", reason("huge.png"));
    assert!(reason("notes.txt").contains("not an image"));
    for f in ["truncated.png", "corrupt.jpg", "text.png"] {
        assert!(!reason(f).is_empty());
    }
}

#[test]
fn empty_class_is_an_error_and_small_class_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    small_set(&data, &["Bag", "Trouser"], 6);
    std::fs::create_dir_all(data.join("Empty")).unwrap();
    let e = train_image(&request(&data, &tmp.path().join("r"), &tmp.path().join("c"), HeadKind::Logistic), &Silent).err().unwrap().to_string();
    assert!(e.contains("Empty") && e.contains("no images"), "{e}");
    std::fs::remove_dir(data.join("Empty")).unwrap();
    small_set(&data, &["Coat"], 3);
    let o = train(&request(&data, &tmp.path().join("r"), &tmp.path().join("c"), HeadKind::Logistic));
    assert!(o.warnings.iter().any(|w| w.contains("Coat") && w.contains("only 3")), "{:?}", o.warnings);
}

#[test]
fn unusable_settings_and_non_finite_losses_stop_before_anything_is_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    small_set(&data, &["Bag", "Trouser"], 6);
    let out = tmp.path().join("run");
    let mut req = request(&data, &out, &tmp.path().join("c"), HeadKind::Linear);
    req.train.lr = 1e38;
    let e = train_image(&req, &Silent).expect_err("must fail").to_string();
    assert!(e.contains("learning rate"), "{e}");
    assert!(!out.join("bundle").exists());
    // Features so large that the logits overflow: the loss is not finite at the first step.
    use headstart::train::{fit, Split, TrainConfig};
    let x = tch::Tensor::full([8, 1280], f64::from(f32::MAX) / 2.0, tch::kind::FLOAT_CPU);
    let y = tch::Tensor::from_slice(&[0i64, 1, 0, 1, 0, 1, 0, 1]);
    let empty = tch::Tensor::zeros([0, 1280], tch::kind::FLOAT_CPU);
    let ey = tch::Tensor::zeros([0], tch::kind::INT64_CPU);
    let cfg = TrainConfig { head: HeadKind::Linear, class_weights: ClassWeights::None, ..Default::default() };
    let e = fit(&cfg, Split { x: &x, y: &y }, Split { x: &empty, y: &ey }, 2, &mut |_| {}).err().expect("must fail").to_string();
    assert!(e.contains("not finite"), "{e}");
}

#[test]
fn bundle_predicts_evaluates_and_refuses_other_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    small_set(&data, &["Bag", "Trouser", "Sandal"], 8);
    let out = tmp.path().join("run");
    let cache = tmp.path().join("c");
    let o = train(&request(&data, &out, &cache, HeadKind::Logistic));
    let p = Predictor::load(&o.bundle, None).unwrap();
    assert_eq!(p.meta.labels, vec!["Bag", "Sandal", "Trouser"]);
    let (report, skipped) = evaluate(&p, &data, Some(&cache), &Silent).unwrap();
    assert!(skipped.is_empty());
    assert_eq!(report.n, 24);
    assert_eq!(report.confusion.len(), 3);
    assert!(report.accuracy > 0.9, "training-set accuracy {}", report.accuracy);
    // predict agrees with eval file by file: its top-1 over every file gives eval's accuracy
    // and confusion matrix.
    let mut files: Vec<(PathBuf, usize)> = vec![];
    for (label, class) in p.meta.labels.iter().enumerate() {
        files.extend(std::fs::read_dir(data.join(class)).unwrap().map(|e| (e.unwrap().path(), label)));
    }
    let paths: Vec<PathBuf> = files.iter().map(|(f, _)| f.clone()).collect();
    let (preds, skipped) = predict(&p, &paths, 3, None, &Silent).unwrap();
    assert!(skipped.is_empty());
    assert_eq!(preds.len(), 24);
    let mut confusion = vec![vec![0usize; 3]; 3];
    for (pred, (file, truth)) in preds.iter().zip(&files) {
        assert_eq!(&pred.file, file);
        // All three classes: probabilities sorted, summing to one.
        assert_eq!(pred.top.len(), 3);
        assert!(pred.top.windows(2).all(|w| w[0].1 >= w[1].1), "{:?}", pred.top);
        let sum: f64 = pred.top.iter().map(|(_, q)| q).sum();
        assert!((sum - 1.0).abs() < 1e-5, "{sum}");
        confusion[*truth][p.meta.labels.iter().position(|l| *l == pred.top[0].0).unwrap()] += 1;
    }
    assert_eq!(confusion, report.confusion);
    let correct: usize = (0..3).map(|i| confusion[i][i]).sum();
    assert!((report.accuracy - correct as f64 / 24.0).abs() < 1e-12);
    // top-k = 2 keeps the first two of those, with the same probabilities.
    let (two, _) = predict(&p, &paths[..2], 2, None, &Silent).unwrap();
    for (a, b) in two.iter().zip(&preds) {
        assert_eq!(a.top.len(), 2);
        for ((la, qa), (lb, qb)) in a.top.iter().zip(&b.top) {
            assert!(la == lb && (qa - qb).abs() < 1e-6, "{:?} vs {:?}", a.top, b.top);
        }
    }
    // Other backbone weights than those the head was trained on: refused, with what to fetch.
    let lite = headstart::assets::asset_dir().join("efficientnet-lite0-57934424.pth");
    let e = Predictor::load(&o.bundle, Some(&lite)).err().unwrap().to_string();
    assert!(e.contains("not the ones this bundle was trained on") && e.contains("headstart fetch mobilenet_v2"), "{e}");
}

#[test]
fn preprocessing_override_is_warned_about_and_travels_with_the_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    small_set(&data, &["Bag", "Trouser"], 6);
    let mut req = request(&data, &tmp.path().join("r"), &tmp.path().join("c"), HeadKind::Logistic);
    let mut input = headstart::models::registry::find("mobilenet_v2").unwrap().input.clone();
    input.size = 160;
    req.input_override = Some(input.clone());
    let o = train(&req);
    assert!(o.warnings.iter().any(|w| w.contains("preprocessing overridden")), "{:?}", o.warnings);
    let p = Predictor::load(&o.bundle, None).unwrap();
    assert_eq!(p.meta.pretrained_cfg.input, input);
    let (report, _) = evaluate(&p, &data, None, &Silent).unwrap();
    assert_eq!(report.n, 12);
}

#[test]
fn finetune_mode_writes_tuned_stages_and_skips_features_without_a_head_phase() {
    use headstart::train::finetune::{FinetuneConfig, Unfreeze};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    small_set(&data, &["Bag", "Trouser"], 6);
    let mut req = request(&data, &tmp.path().join("r"), &tmp.path().join("c"), HeadKind::Linear);
    req.finetune = Some(FinetuneConfig { unfreeze: Unfreeze::Last(2), epochs: 1, batch_size: 4, head_epochs: 0, ..Default::default() });
    let o = train(&req);
    assert_eq!((o.backbone_computed, o.backbone_reused), (0, 0), "no frozen-feature pass without a head phase");
    assert_eq!(o.tuned_stages, vec!["stage7", "head_conv"]);
    assert!(o.bundle.join("backbone.safetensors").is_file());
    let p = Predictor::load(&o.bundle, None).unwrap();
    assert_eq!(p.meta.tuned.as_ref().unwrap().stages.len(), 2);
    let (report, _) = evaluate(&p, &data, None, &Silent).unwrap();
    assert_eq!(report.n, 12);
}

#[test]
fn csv_manifest_and_separate_validation_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    small_set(&data, &["Bag", "Trouser"], 8);
    let mut csv = String::from("path,label\n");
    for c in ["Bag", "Trouser"] {
        for f in std::fs::read_dir(data.join(c)).unwrap() {
            let f = f.unwrap().path();
            csv += &format!("data/{c}/{},{c}\n", f.file_name().unwrap().to_string_lossy());
        }
    }
    std::fs::write(tmp.path().join("train.csv"), csv).unwrap();
    let o = train(&request(&tmp.path().join("train.csv"), &tmp.path().join("r"), &tmp.path().join("c"), HeadKind::Logistic));
    assert_eq!(o.classes, vec!["Bag", "Trouser"]);
    assert_eq!(o.n_train + o.n_val, 16);
    let val = tmp.path().join("val");
    small_set(&val, &["Bag"], 3);
    let mut req = request(&data, &tmp.path().join("r2"), &tmp.path().join("c"), HeadKind::Logistic);
    req.val = Some(val);
    req.val_split = 0.0;
    let o = train(&req);
    assert_eq!((o.n_train, o.n_val), (16, 3));
}

// ---- decoding ----

fn encode(img: &image::DynamicImage, fmt: image::ImageFormat) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(vec![]);
    img.write_to(&mut buf, fmt).unwrap();
    buf.into_inner()
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

/// A 2×1 palette PNG: red then blue.
fn palette_png() -> Vec<u8> {
    let chunk = |kind: &[u8], body: &[u8]| {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend(kind);
        v.extend(body);
        v.extend(crc32(&[kind, body].concat()).to_be_bytes());
        v
    };
    let mut ihdr = vec![];
    ihdr.extend(2u32.to_be_bytes());
    ihdr.extend(1u32.to_be_bytes());
    ihdr.extend([8, 3, 0, 0, 0]);
    // zlib stored block of the scanline [filter 0, index 0, index 1].
    let raw = [0u8, 0, 1];
    let adler = {
        let (mut a, mut b) = (1u32, 0u32);
        for &x in &raw {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    };
    let mut z = vec![0x78, 0x01, 0x01, 3, 0, 0xfc, 0xff];
    z.extend(raw);
    z.extend(adler.to_be_bytes());
    [b"\x89PNG\r\n\x1a\n".to_vec(), chunk(b"IHDR", &ihdr), chunk(b"PLTE", &[255, 0, 0, 0, 0, 255]), chunk(b"IDAT", &z), chunk(b"IEND", &[])].concat()
}

/// Inserts an EXIF APP1 segment with the given orientation after a JPEG's SOI marker.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"II*\x00\x08\x00\x00\x00".to_vec();
    tiff.extend(1u16.to_le_bytes());
    tiff.extend(0x0112u16.to_le_bytes());
    tiff.extend(3u16.to_le_bytes());
    tiff.extend(1u32.to_le_bytes());
    tiff.extend(orientation.to_le_bytes());
    tiff.extend([0, 0]);
    tiff.extend(0u32.to_le_bytes());
    let body = [b"Exif\x00\x00".to_vec(), tiff].concat();
    let mut seg = vec![0xff, 0xe1];
    seg.extend(((body.len() + 2) as u16).to_be_bytes());
    seg.extend(body);
    [jpeg[..2].to_vec(), seg, jpeg[2..].to_vec()].concat()
}

#[test]
fn every_supported_format_and_pixel_layout_decodes_to_rgb() {
    use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgba};
    let rgb = DynamicImage::ImageRgb8(ImageBuffer::from_fn(20, 10, |x, y| image::Rgb([(x * 12) as u8, (y * 25) as u8, 128])));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("jpeg", encode(&rgb, ImageFormat::Jpeg)),
        ("png", encode(&rgb, ImageFormat::Png)),
        ("webp", encode(&rgb, ImageFormat::WebP)),
        ("bmp", encode(&rgb, ImageFormat::Bmp)),
        ("tiff", encode(&rgb, ImageFormat::Tiff)),
        ("gif", encode(&DynamicImage::ImageRgba8(rgb.to_rgba8()), ImageFormat::Gif)),
        ("grey png", encode(&DynamicImage::ImageLuma8(rgb.to_luma8()), ImageFormat::Png)),
        ("16-bit png", encode(&DynamicImage::ImageLuma16(ImageBuffer::from_fn(20, 10, |x, _| Luma([x as u16 * 3000]))), ImageFormat::Png)),
        ("rgba png", encode(&DynamicImage::ImageRgba8(ImageBuffer::from_fn(20, 10, |x, _| Rgba([200, x as u8, 0, 50]))), ImageFormat::Png)),
    ];
    for (name, bytes) in cases {
        let t = decode_rgb(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.size(), vec![3, 10, 20], "{name}");
        let (lo, hi) = (t.min().double_value(&[]), t.max().double_value(&[]));
        assert!((0.0..=1.0).contains(&lo) && hi <= 1.0 && hi > lo, "{name}: range {lo}..{hi}");
    }
    // Palette: red then blue.
    let t = decode_rgb(&palette_png()).unwrap();
    let px: Vec<f32> = Vec::try_from(t.flatten(0, -1)).unwrap();
    assert_eq!(px, vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
    // 16-bit grey keeps its relative levels; alpha is dropped (as PIL's convert("RGB")).
    let t = decode_rgb(&encode(&DynamicImage::ImageRgba8(ImageBuffer::from_fn(2, 1, |_, _| Rgba([200, 100, 0, 0]))), ImageFormat::Png)).unwrap();
    assert!((t.double_value(&[0, 0, 0]) - 200.0 / 255.0).abs() < 1e-6);
    // EXIF orientation 6 (rotate 90° clockwise): a 20×10 JPEG comes out 10 wide, 20 high.
    let jpeg = with_exif_orientation(&encode(&rgb, ImageFormat::Jpeg), 6);
    assert_eq!(decode_rgb(&jpeg).unwrap().size(), vec![3, 20, 10]);
}

/// Resize-then-crop on the whole image, as torchvision does it (the reference for the cropped
/// resampling that `prepare` does).
fn resize_then_crop(img: &tch::Tensor, input: &headstart::models::registry::ImageInput) -> tch::Tensor {
    use headstart::models::registry::{Interpolation, ResizeMode};
    let (h, w) = (img.size()[1], img.size()[2]);
    let c = input.size;
    let (nh, nw) = match input.resize_mode {
        ResizeMode::Squash => (c, c),
        ResizeMode::ShorterSideThenCrop => {
            let r = input.resize();
            if h <= w {
                (r, (r as f64 * w as f64 / h as f64) as i64)
            } else {
                ((r as f64 * h as f64 / w as f64) as i64, r)
            }
        }
    };
    let b = img.unsqueeze(0);
    let resized = match input.interpolation {
        Interpolation::Bilinear => b.internal_upsample_bilinear2d_aa([nh, nw], false, None, None),
        Interpolation::Bicubic => b.internal_upsample_bicubic2d_aa([nh, nw], false, None, None),
    };
    let top = ((nh - c) as f64 / 2.0).round() as i64;
    let left = ((nw - c) as f64 / 2.0).round() as i64;
    let x = resized.narrow(2, top, c).narrow(3, left, c).squeeze_dim(0);
    let mean = tch::Tensor::from_slice(&input.mean).view([3, 1, 1]).to_kind(tch::Kind::Float);
    let std = tch::Tensor::from_slice(&input.std).view([3, 1, 1]).to_kind(tch::Kind::Float);
    (x - mean) / std
}

#[test]
fn cropped_resampling_equals_resize_then_crop() {
    use headstart::models::registry::{Interpolation, ResizeMode};
    use headstart::preprocess::prepare;
    let base = headstart::models::registry::find("mobilenet_v2").unwrap().input.clone();
    tch::manual_seed(3);
    let shapes = [(28, 28), (1, 300), (300, 1), (2, 5000), (37, 500), (500, 37), (480, 640), (640, 480), (225, 224), (1000, 999)];
    let mut worst = 0f64;
    for interpolation in [Interpolation::Bilinear, Interpolation::Bicubic] {
        for resize_mode in [ResizeMode::ShorterSideThenCrop, ResizeMode::Squash] {
            for size in [224, 64] {
                let input = headstart::models::registry::ImageInput { interpolation, resize_mode, size, ..base.clone() };
                for &(h, w) in &shapes {
                    let u8img = tch::Tensor::randint(256, [3, h, w], (tch::Kind::Uint8, tch::Device::Cpu));
                    let float = u8img.to_kind(tch::Kind::Float) / 255.0;
                    let want = resize_then_crop(&float, &input);
                    for (what, img) in [("float", &float), ("u8", &u8img)] {
                        let got = prepare(img, &input).unwrap();
                        assert_eq!(got.size(), vec![3, size, size]);
                        let diff = (&got - &want).abs().max().double_value(&[]);
                        // Normalised units (÷ std ≈ 0.23): float rounding only.
                        assert!(diff < 1e-4, "{interpolation:?} {resize_mode:?} {size} {h}×{w} {what}: max diff {diff}");
                        worst = worst.max(diff);
                    }
                }
            }
        }
    }
    println!("worst difference from resize-then-crop: {worst:e}");
}

#[test]
fn decoding_prepared_applies_exif_orientation_like_the_image_crate() {
    use headstart::preprocess::{decode_prepared, decode_rgb_u8, prepare, DecodeOptions, Source};
    use image::{DynamicImage, ImageBuffer, ImageFormat};
    let input = headstart::models::registry::find("mobilenet_v2").unwrap().input.clone();
    let src = DynamicImage::ImageRgb8(ImageBuffer::from_fn(40, 17, |x, y| image::Rgb([(x * 6) as u8, (y * 15) as u8, ((x * y) % 256) as u8])));
    let plain = encode(&src, ImageFormat::Jpeg);
    let decoded_plain = image::load_from_memory(&plain).unwrap();
    for o in 1..=8u16 {
        let tagged = with_exif_orientation(&plain, o);
        let mut want = decoded_plain.clone();
        want.apply_orientation(image::metadata::Orientation::from_exif(o as u8).unwrap());
        let want = want.to_rgb8();
        let got = decode_rgb_u8(&tagged).unwrap();
        assert_eq!(got.size(), vec![3, want.height() as i64, want.width() as i64], "orientation {o}");
        let got_hwc: Vec<u8> = Vec::try_from(got.permute([1, 2, 0]).contiguous().flatten(0, -1)).unwrap();
        assert_eq!(&got_hwc, want.as_raw(), "orientation {o}");
        // Decoding straight to the crop reads the same pixels as decoding everything first.
        let (direct, truncated) = decode_prepared(Source::Bytes(&tagged), &input, &DecodeOptions::default()).unwrap();
        assert!(!truncated);
        let full = prepare(&got, &input).unwrap();
        assert!((direct - full).abs().max().double_value(&[]) < 1e-6, "orientation {o}");
    }
}

#[test]
fn truncated_files_are_refused_unless_allowed() {
    use headstart::preprocess::{decode_rgb_u8, decode_rgb_u8_with, jpeg_truncated, DecodeOptions, TRUNCATED};
    use image::{DynamicImage, ImageBuffer, ImageFormat};
    let src = DynamicImage::ImageRgb8(ImageBuffer::from_fn(256, 192, |x, y| image::Rgb([(x * 7 + y * 13) as u8, (x * y) as u8, (y * 5) as u8])));
    let jpeg = encode(&src, ImageFormat::Jpeg);
    assert!(!jpeg_truncated(&jpeg));
    // Bytes after the end marker are not truncation; an EXIF block before the scan is skipped.
    assert!(decode_rgb_u8(&[jpeg.clone(), vec![0u8; 10]].concat()).is_ok());
    assert!(decode_rgb_u8(&with_exif_orientation(&jpeg, 1)).is_ok());
    let allow = DecodeOptions { allow_truncated: true, ..DecodeOptions::default() };
    for cut in [jpeg.len() / 2, jpeg.len() * 9 / 10, jpeg.len() - 2] {
        let short = &jpeg[..cut];
        assert!(jpeg_truncated(short), "cut at {cut}");
        assert_eq!(decode_rgb_u8(short).unwrap_err(), TRUNCATED, "cut at {cut}");
        let (t, truncated) = decode_rgb_u8_with(short, &allow).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert!(truncated);
        assert_eq!(t.size(), vec![3, 192, 256]);
    }
    // Cut inside the headers: nothing to keep either way.
    assert!(decode_rgb_u8_with(&jpeg[..40], &allow).is_err());
    // Other formats whose data ends early are named truncated too.
    let png = encode(&src, ImageFormat::Png);
    assert_eq!(decode_rgb_u8(&png[..png.len() * 2 / 3]).unwrap_err(), TRUNCATED);
}

#[test]
fn truncated_images_are_listed_in_errors_or_kept_with_a_warning() {
    use image::{DynamicImage, ImageBuffer, ImageFormat};
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    small_set(&data, &["Bag", "Trouser"], 8);
    let jpeg = encode(&DynamicImage::ImageRgb8(ImageBuffer::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 0]))), ImageFormat::Jpeg);
    let cut = data.join("Bag").join("cut.jpg");
    std::fs::write(&cut, &jpeg[..jpeg.len() * 3 / 4]).unwrap();
    let req = request(&data, &d.path().join("run"), &d.path().join("cache"), HeadKind::Logistic);
    let o = train(&req);
    assert_eq!(o.n_train + o.n_val, 16);
    let errors = std::fs::read_to_string(d.path().join("run").join("errors.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = errors.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 1, "{errors}");
    assert_eq!(rows[0]["reason"], "truncated");
    assert!(rows[0]["path"].as_str().unwrap().ends_with("cut.jpg"));
    assert!(!o.warnings.iter().any(|w| w.contains("truncated")));

    let kept = TrainRequest { allow_truncated: true, out: d.path().join("run2"), ..req };
    let o = train(&kept);
    assert_eq!(o.n_train + o.n_val, 17);
    assert!(o.warnings.iter().any(|w| w.starts_with("1 truncated images kept")), "{:?}", o.warnings);
    assert_eq!(std::fs::read_to_string(d.path().join("run2").join("errors.jsonl")).unwrap().trim(), "");
}

#[test]
fn tiffs_read_by_strips_equal_the_image_crate() {
    use headstart::preprocess::{decode_prepared, decode_rgb_u8, prepare, DecodeOptions, Source};
    use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgb, Rgba};
    let input = headstart::models::registry::find("mobilenet_v2").unwrap().input.clone();
    let (w, h) = (300u32, 170u32);
    let cases = vec![
        ("rgb8", DynamicImage::ImageRgb8(ImageBuffer::from_fn(w, h, |x, y| Rgb([(x % 256) as u8, (y * 3 % 256) as u8, ((x ^ y) % 256) as u8])))),
        ("rgb16", DynamicImage::ImageRgb16(ImageBuffer::from_fn(w, h, |x, y| Rgb([(x * 211) as u16, (y * 377) as u16, ((x * y) % 65536) as u16])))),
        ("rgba16", DynamicImage::ImageRgba16(ImageBuffer::from_fn(w, h, |x, y| Rgba([(x * 97) as u16, (y * 385) as u16, 40_000, (x * 13) as u16])))),
        ("grey16", DynamicImage::ImageLuma16(ImageBuffer::from_fn(w, h, |x, y| Luma([(x * 200 + y * 7) as u16])))),
        ("grey8", DynamicImage::ImageLuma8(ImageBuffer::from_fn(w, h, |x, y| Luma([(x + y) as u8])))),
    ];
    for (name, img) in cases {
        let tiff = encode(&img, ImageFormat::Tiff);
        let want = image::load_from_memory(&tiff).unwrap().to_rgb8();
        let got = decode_rgb_u8(&tiff).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got_hwc: Vec<u8> = Vec::try_from(got.permute([1, 2, 0]).contiguous().flatten(0, -1)).unwrap();
        assert!(got_hwc == *want.as_raw(), "{name}: pixels differ from the image crate's");
        let (direct, _) = decode_prepared(Source::Bytes(&tiff), &input, &DecodeOptions::default()).unwrap();
        assert!((direct - prepare(&got, &input).unwrap()).abs().max().double_value(&[]) < 1e-6, "{name}");
        // Read from a file (the path large files take) as from memory.
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), &tiff).unwrap();
        let (from_file, _) = decode_prepared(Source::File(f.path()), &input, &DecodeOptions::default()).unwrap();
        assert!(from_file.equal(&decode_prepared(Source::Bytes(&tiff), &input, &DecodeOptions::default()).unwrap().0), "{name}");
    }
    // A file cut short is named truncated.
    let tiff = encode(&cases_rgb(w, h), ImageFormat::Tiff);
    assert_eq!(decode_rgb_u8(&tiff[..tiff.len() / 2]).unwrap_err(), "truncated");
}

fn cases_rgb(w: u32, h: u32) -> image::DynamicImage {
    image::DynamicImage::ImageRgb8(image::ImageBuffer::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])))
}
