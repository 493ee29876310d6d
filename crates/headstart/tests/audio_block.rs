//! The audio block on the shared pipeline: class folders of generated WAV clips (tones and
//! noise of distinct spectra per class, at several sample rates) with bad files among them,
//! featurised by the tiny random Whisper and Wav2Vec2 fixtures through the feature cache,
//! trained, evaluated and predicted through an audio bundle; fine-tuning with SpecAugment
//! masks; and the real Whisper tiny.en when it has been fetched.

mod common;

use std::path::{Path, PathBuf};

use common::{fixture, wav_bytes};
use headstart::audio::encoder::{AudioModel, WINDOW};
use headstart::audio::learner::AudioLearner;
use headstart::audio::window::AudioWindow;
use headstart::blocks::audio::{train_audio, AudioBlock, AudioOptions, AudioPredictor, AudioTrainRequest};
use headstart::learn::task::Block;
use headstart::models::audio::whisper::embed_clips;
use headstart::progress::Silent;
use headstart::train::finetune::{FinetuneConfig, Learner, Unfreeze};
use tch::Kind;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// One clip of class `c`: low tones, high tones or white noise, `seconds` long at `rate`.
fn clip(c: usize, seed: u64, seconds: f32, rate: u32) -> Vec<f32> {
    let mut rng = Lcg(seed * 7919 + c as u64);
    let n = (seconds * rate as f32) as usize;
    let jitter = 1.0 + 0.05 * rng.next();
    let tone = |f: &[f32], i: usize| f.iter().map(|&f| (2.0 * std::f32::consts::PI * f * jitter * i as f32 / rate as f32).sin()).sum::<f32>() * 0.3;
    (0..n)
        .map(|i| match c {
            0 => tone(&[220.0, 440.0], i),
            1 => tone(&[2500.0, 5000.0], i),
            _ => 0.4 * rng.next(),
        } + 0.01 * rng.next())
        .collect()
}

pub const CLASSES: [&str; 3] = ["low", "high", "noise"];

/// Eight clips per class at 16, 22.05 and 8 kHz, plus bad files in `low/`.
fn write_set(dir: &Path, per_class: usize) {
    for (c, name) in CLASSES.iter().enumerate() {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        for k in 0..per_class {
            let rate = [16000, 22050, 8000][k % 3];
            let seconds = 0.5 + 0.1 * (k % 5) as f32;
            std::fs::write(dir.join(name).join(format!("{k}.wav")), wav_bytes(&clip(c, k as u64, seconds, rate), rate)).unwrap();
        }
    }
    let low = dir.join("low");
    std::fs::write(low.join("empty.wav"), b"").unwrap();
    std::fs::write(low.join("garbage.wav"), b"this is not audio at all, just some text bytes").unwrap();
    let full = wav_bytes(&clip(0, 99, 1.0, 16000), 16000);
    std::fs::write(low.join("truncated.wav"), &full[..full.len() / 2]).unwrap();
    std::fs::write(low.join("silent.wav"), wav_bytes(&vec![0.0; 16000], 16000)).unwrap();
    std::fs::write(low.join("long.wav"), wav_bytes(&clip(0, 98, 3.0, 16000), 16000)).unwrap();
    std::fs::write(low.join("tiny.wav"), wav_bytes(&clip(0, 97, 0.005, 16000), 16000)).unwrap();
    std::fs::write(low.join("notes.txt"), "recorded on a phone").unwrap();
}

fn request(data: &Path, out: &Path, model: &str, cache: Option<PathBuf>) -> AudioTrainRequest {
    AudioTrainRequest {
        audio: AudioOptions { layer: None, weighted_layers: false, max_seconds: 2.5, window: None },
        out: out.to_path_buf(),
        cache,
        model: model.to_string(),
        ..AudioTrainRequest::for_data(data.to_path_buf())
    }
}

fn skipped_reasons(run: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(run.join("errors.jsonl")).unwrap();
    let mut v: Vec<(String, String)> = text
        .lines()
        .map(|l| {
            let j: serde_json::Value = serde_json::from_str(l).unwrap();
            let p = PathBuf::from(j["path"].as_str().unwrap());
            (p.file_name().unwrap().to_string_lossy().into_owned(), j["reason"].as_str().unwrap().to_string())
        })
        .collect();
    v.sort();
    v
}

/// Train on Whisper features, the bad files listed with their reasons, the sub-frame clip
/// padded and counted, then the cache, a bundle's eval and predict.
#[test]
fn whisper_features_train_eval_predict_with_bad_files_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_set(&data, 8);
    let (run, cache) = (tmp.path().join("run"), tmp.path().join("cache"));
    let req = request(&data, &run, &fixture("whisper_tiny_random"), Some(cache.clone()));
    let o = train_audio(&req, false, &Silent).unwrap();
    assert_eq!(o.classes, vec!["high", "low", "noise"]);
    // 24 good clips and the padded tiny one; six files skipped.
    assert_eq!((o.n_train + o.n_val, o.skipped), (25, 6), "{o:?}");
    assert_eq!((o.backbone_computed, o.backbone_reused), (25, 0));
    assert!(o.warnings.iter().any(|w| w.contains("1 clip shorter than one encoder frame (20 ms) was padded")), "{:?}", o.warnings);
    let reasons = skipped_reasons(&run);
    let why = |f: &str| reasons.iter().find(|r| r.0 == f).unwrap_or_else(|| panic!("{f} not in errors.jsonl: {reasons:?}")).1.clone();
    assert!(why("empty.wav").contains("empty (0 bytes)"), "{}", why("empty.wav"));
    assert!(why("garbage.wav").contains("not a readable audio file"), "{}", why("garbage.wav"));
    assert!(why("truncated.wav").contains("truncated"), "{}", why("truncated.wav"));
    assert!(why("silent.wav").contains("all silent"), "{}", why("silent.wav"));
    assert!(why("long.wav").contains("over-long: 3.0 s"), "{}", why("long.wav"));
    assert!(why("notes.txt").contains("not an audio file"), "{}", why("notes.txt"));
    let estimate = o.val.as_ref().unwrap().accuracy;
    assert!(estimate >= 0.9, "distinct spectra should separate: {estimate}");

    // The same data again: every clip from the cache, the same choice.
    let again = train_audio(&AudioTrainRequest { out: tmp.path().join("run2"), ..req.clone() }, false, &Silent).unwrap();
    assert_eq!((again.backbone_computed, again.backbone_reused), (0, 25));
    assert_eq!(again.val.as_ref().unwrap().accuracy, estimate);
    // Another layer is another cache key.
    let layered = AudioTrainRequest { out: tmp.path().join("run3"), audio: AudioOptions { layer: Some(1), ..req.audio.clone() }, ..req.clone() };
    assert_eq!(train_audio(&layered, false, &Silent).unwrap().backbone_computed, 25);

    // The bundle: modality audio, eval on fresh clips, predict with the bad files skipped.
    let bundle = run.join("bundle");
    assert_eq!(headstart::bundle::modality(&bundle).unwrap(), "audio");
    let p = AudioPredictor::load(&bundle, None).unwrap();
    let test = tmp.path().join("test");
    for (c, name) in CLASSES.iter().enumerate() {
        std::fs::create_dir_all(test.join(name)).unwrap();
        for k in 0..4u64 {
            std::fs::write(test.join(name).join(format!("t{k}.wav")), wav_bytes(&clip(c, 100 + k, 0.7, 16000), 16000)).unwrap();
        }
    }
    let (report, skipped) = p.evaluate(&test, None, &Silent).unwrap();
    assert_eq!((report.n, skipped.len()), (12, 0));
    assert!(report.accuracy >= 0.9, "test accuracy {}", report.accuracy);
    let files = vec![test.join("high/t0.wav"), data.join("low/silent.wav"), test.join("noise/t1.wav")];
    let (preds, skipped) = p.predict(&files, 2, None, &Silent).unwrap();
    assert_eq!(preds.iter().map(|(f, t)| (f.clone(), t[0].0.as_str())).collect::<Vec<_>>(), vec![(files[0].clone(), "high"), (files[2].clone(), "noise")]);
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].reason.contains("all silent"));
}

/// The block's vectors are the encoder's mean over real frames (not over Whisper's 30 s of
/// padding), and a clip longer than one window is the frame-weighted mean of its windows.
#[test]
fn whisper_features_pool_real_frames_and_split_long_clips() {
    let mut m = AudioModel::open(&fixture("whisper_tiny_random")).unwrap();
    m.set_window(AudioWindow::Full).unwrap();
    let headstart::audio::encoder::AudioEncoder::Whisper { enc, fe } = &m.encoder else { panic!("a Whisper model") };
    let short = clip(1, 1, 0.8, 16000);
    let got = m.embed(std::slice::from_ref(&short), 4).unwrap();
    let want = embed_clips(enc, fe, &[&short], None, tch::Device::Cpu).unwrap();
    assert!(got.allclose(&want, 1e-6, 1e-6, false));
    // Mean over all 1500 frames (padding included) is another vector.
    let all = tch::no_grad(|| enc.forward(&fe.extract(&[&short], tch::Device::Cpu), headstart::models::Mode::Eval)).unwrap().mean_dim(1, false, Kind::Float);
    assert!((&all - &got).abs().max().double_value(&[]) > 1e-3, "pooling must ignore the padding");
    // 31 s: one full window and 1 s, weighted 1500 : 50.
    let mut long = clip(0, 2, 31.0, 16000);
    long.truncate(WINDOW + 16000);
    let got = m.embed(std::slice::from_ref(&long), 4).unwrap();
    let w0 = m.embed(&[long[..WINDOW].to_vec()], 4).unwrap();
    let w1 = m.embed(&[long[WINDOW..].to_vec()], 4).unwrap();
    let want = (&w0 * 1500.0 + &w1 * 50.0) / 1550.0;
    assert!(got.allclose(&want, 1e-5, 1e-5, false), "{}", (&got - &want).abs().max().double_value(&[]));
    // The clip window: the first 30 s fill their bucket (the full window), the last second runs
    // over 50 positions alone; the same weights.
    m.set_window(AudioWindow::Clip).unwrap();
    let got = m.embed(std::slice::from_ref(&long), 4).unwrap();
    let w1_full = w1;
    let w1 = m.embed(&[long[WINDOW..].to_vec()], 4).unwrap();
    assert!(!w1.allclose(&w1_full, 1e-3, 1e-3, false), "the last second must run trimmed");
    let want = (w0 * 1500.0 + w1 * 50.0) / 1550.0;
    assert!(got.allclose(&want, 1e-5, 1e-5, false), "clip window: {}", (&got - &want).abs().max().double_value(&[]));
}

/// Wav2Vec2 features on the same data (waveform input, per-clip normalisation), and a layer
/// past the last one refused.
#[test]
fn wav2vec2_features_train_and_layers_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_set(&data, 6);
    let req = request(&data, &tmp.path().join("run"), &fixture("wav2vec2_group"), None);
    let o = train_audio(&req, false, &Silent).unwrap();
    assert_eq!((o.n_train + o.n_val, o.skipped), (19, 6), "{o:?}");
    assert!(o.val.as_ref().unwrap().accuracy >= 0.8, "{:?}", o.val);
    let m = AudioModel::open(&fixture("wav2vec2_group")).unwrap();
    assert_eq!(m.family(), "wav2vec2");
    // The feature encoder's receptive field (kernels 10, 3, 3; strides 5, 2, 2): 40 samples.
    let headstart::audio::encoder::AudioEncoder::Wav2Vec2 { enc, .. } = &m.encoder else { panic!("a Wav2Vec2 model") };
    assert_eq!((m.min_samples(), enc.cfg.frames(39), enc.cfg.frames(40)), (40, 0, 1));
    let bad = AudioTrainRequest { audio: AudioOptions { layer: Some(m.num_layers() + 1), ..req.audio.clone() }, ..req };
    let e = train_audio(&bad, false, &Silent).unwrap_err();
    assert_eq!(e.cause(), headstart::error::Cause::Usage, "{e}");
}

/// Fine-tuning the last transformer layer with SpecAugment masks: the tuned layer is saved in
/// the bundle, which predicts with it; the stem stays as loaded.
#[test]
fn whisper_fine_tuning_saves_the_tuned_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_set(&data, 4);
    let ft = FinetuneConfig {
        unfreeze: Unfreeze::Last(1),
        epochs: 2,
        head_epochs: 1,
        batch_size: 4,
        lr: 1e-3,
        augment: Some(Default::default()),
        ..headstart::blocks::audio::audio_finetune_defaults()
    };
    let run = tmp.path().join("run");
    let req = AudioTrainRequest { finetune: Some(ft), ..request(&data, &run, &fixture("whisper_tiny_random"), None) };
    let o = train_audio(&req, false, &Silent).unwrap();
    assert_eq!(o.tuned_stages, vec!["layers.1"]);
    let meta = headstart::bundle::read_meta(&run.join("bundle")).unwrap();
    assert_eq!(meta.tuned.unwrap().stages, vec!["layers.1"]);
    let names = headstart::weights::Weights::open(run.join("bundle/backbone.safetensors")).unwrap().names().to_vec();
    assert!(names.iter().all(|n| n.starts_with("layers.1.") || n.starts_with("layer_norm.")), "{names:?}");
    let p = AudioPredictor::load(&run.join("bundle"), None).unwrap();
    let (preds, _) = p.predict(&[data.join("high/0.wav")], 1, None, &Silent).unwrap();
    assert_eq!(preds.len(), 1);
    // The metrics log has both epochs.
    assert_eq!(std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().count(), 2);
    // The run reads back as an audio run, and resumes from its last checkpoint.
    let saved = headstart::learn::resume::saved_run(&run).unwrap();
    assert_eq!(saved.modality(), headstart::models::registry::Modality::Audio);
    let (modality, again) = headstart::learn::resume::resume(&run, &Silent).unwrap();
    assert_eq!((modality, again.tuned_stages), (headstart::models::registry::Modality::Audio, o.tuned_stages.clone()));
}

/// Wav2Vec2 fine-tuning: a clip's logits do not depend on the batch it is padded into, and a
/// run with SpecAugment masks trains the last layer (the feature encoder stays as loaded).
#[test]
fn wav2vec2_fine_tuning_masks_padding_and_keeps_the_feature_encoder() {
    let m = AudioModel::open(&fixture("wav2vec2_group")).unwrap();
    let clips = vec![clip(0, 1, 0.5, 16000), clip(1, 2, 1.2, 16000)];
    let ft = FinetuneConfig { unfreeze: Unfreeze::Last(1), ..headstart::blocks::audio::audio_finetune_defaults() };
    let l = AudioLearner::new(&m, &clips, &[0, 1], 2, &ft, &Silent).unwrap();
    let both = tch::no_grad(|| l.logits(&l.batch(&[0, 1], None).unwrap(), false));
    let alone = tch::no_grad(|| l.logits(&l.batch(&[0], None).unwrap(), false));
    let diff = (both.get(0) - alone.get(0)).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "padding changed the short clip's logits by {diff}");

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_set(&data, 4);
    let ft = FinetuneConfig { unfreeze: Unfreeze::All, epochs: 2, batch_size: 4, lr: 1e-3, augment: Some(Default::default()), ..ft };
    let run = tmp.path().join("run");
    let req = AudioTrainRequest { finetune: Some(ft), ..request(&data, &run, &fixture("wav2vec2_group"), None) };
    let o = train_audio(&req, false, &Silent).unwrap();
    assert!(!o.tuned_stages.iter().any(|s| s == "feature_encoder"), "{:?}", o.tuned_stages);
    // The optimiser steps are timed: two epochs of ⌈n/4⌉ batches, every training clip twice.
    let t = o.timings.as_ref().expect("train reports its timings");
    let st = t.finetune.as_ref().expect("fine-tuning reports its steps");
    assert_eq!((st.steps, st.samples), (2 * o.n_train.div_ceil(4), 2 * o.n_train), "{st:?}");
    assert!(st.step_s_total > 0.0 && st.step_s_median > 0.0 && st.step_s_median <= st.step_s_total, "{st:?}");
    assert!((st.samples_per_s - st.samples as f64 / st.step_s_total).abs() < 1e-9 * st.samples_per_s, "{st:?}");
    assert!(st.steady_samples_per_s.is_some_and(|r| r > 0.0), "{st:?}");
    // Set-up (the feature encoder over every clip) and the steps lie inside the time after loading.
    assert!(st.setup_s > 0.0 && st.setup_s + st.step_s_total <= t.head_s + 1e-3, "{st:?} {t:?}");
    let json = serde_json::to_value(t).unwrap();
    assert_eq!(json["finetune"]["steps"], st.steps, "{json}");
    assert_eq!(o.tuned_stages.first().map(String::as_str), Some("embed"));
    let p = AudioPredictor::load(&run.join("bundle"), None).unwrap();
    assert_eq!(p.predict(&[data.join("noise/1.wav")], 1, None, &Silent).unwrap().0.len(), 1);
}

/// WavLM through the same block: features and a head, then fine-tuning every layer, where the
/// relative position embedding that all layers share (it lives in the first) is tuned and saved.
#[test]
fn wavlm_features_and_fine_tuning_tune_the_shared_position_bias() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_set(&data, 4);
    let m = AudioModel::open(&fixture("wavlm_group")).unwrap();
    assert_eq!(m.family(), "wavlm");
    let o = train_audio(&request(&data, &tmp.path().join("fe"), &fixture("wavlm_group"), None), false, &Silent).unwrap();
    assert_eq!(o.n_train + o.n_val, 13, "{o:?}");
    let ft =
        FinetuneConfig { unfreeze: Unfreeze::All, epochs: 1, head_epochs: 1, batch_size: 4, lr: 1e-2, ..headstart::blocks::audio::audio_finetune_defaults() };
    let run = tmp.path().join("ft");
    let req = AudioTrainRequest { finetune: Some(ft), ..request(&data, &run, &fixture("wavlm_group"), None) };
    let o = train_audio(&req, false, &Silent).unwrap();
    assert!(o.tuned_stages.iter().any(|s| s == "layers.0"), "{:?}", o.tuned_stages);
    let saved = headstart::weights::Weights::open(run.join("bundle/backbone.safetensors")).unwrap();
    let name = saved.names().iter().find(|n| n.ends_with("rel_attn_embed.weight")).cloned().expect("the position embedding is saved");
    let loaded = headstart::weights::Weights::open(fixture("wavlm_group")).unwrap();
    let before = loaded.tensor("wavlm.encoder.layers.0.attention.rel_attn_embed.weight").unwrap();
    assert!(!saved.tensor(&name).unwrap().allclose(&before, 1e-6, 1e-6, false), "{name} did not change");
    let p = AudioPredictor::load(&run.join("bundle"), None).unwrap();
    assert_eq!(p.predict(&[data.join("noise/1.wav")], 1, None, &Silent).unwrap().0.len(), 1);
}

/// The block's screen (fine-tuning) skips exactly what featurising skips.
#[test]
fn screening_skips_what_featurising_skips() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_set(&data, 3);
    let m = AudioModel::open(&fixture("wav2vec2_group")).unwrap();
    let block = AudioBlock { req: None, max_seconds: 2.5, cache: None, batch_size: 4, window: None };
    let opened = block.open(&data, None).unwrap();
    assert_eq!(opened.skipped.len(), 1, "notes.txt");
    let f = block.featurise(&m, &opened.data, &Silent).unwrap();
    let (s, clips) = block.screen(&m, &opened.data, &Silent).unwrap();
    assert_eq!(f.ok, s.ok);
    assert_eq!(f.skipped.len(), 5);
    assert_eq!(s.skipped.iter().map(|k| k.path.clone()).collect::<Vec<_>>(), f.skipped.iter().map(|k| k.path.clone()).collect::<Vec<_>>());
    assert!(clips.iter().all(|c| c.len() >= m.min_samples()));
    // Whisper needs two hops (20 ms): the 5 ms clip is padded to it.
    let w = AudioModel::open(&fixture("whisper_tiny_random")).unwrap();
    let (s, clips) = block.screen(&w, &opened.data, &Silent).unwrap();
    assert_eq!(s.warnings, vec!["1 clip shorter than one encoder frame (20 ms) was padded with silence".to_string()]);
    assert_eq!(clips.iter().map(Vec::len).min(), Some(320));
}

/// The real Whisper tiny.en (CTranslate2 weights, `scripts/fetch-assets whisper_tiny_en`):
/// its features separate the three kinds of sound.
#[test]
fn real_whisper_tiny_en_features_separate_distinct_sounds() {
    let asset = headstart::assets::asset_dir().join("whisper-tiny.en/model.bin");
    if !asset.is_file() {
        eprintln!("SKIPPED: {} is absent; run scripts/fetch-assets whisper_tiny_en", asset.display());
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_set(&data, 5);
    let o = train_audio(&request(&data, &tmp.path().join("run"), "whisper_tiny_en", None), false, &Silent).unwrap();
    assert_eq!((o.n_train + o.n_val, o.skipped), (16, 6));
    let acc = o.val.as_ref().unwrap().accuracy;
    println!("whisper tiny.en, 3 classes of generated sounds: selection estimate {acc:.3}");
    assert!(acc >= 0.9, "{acc}");
}

/// Whisper's window is a setting of the run: `clip` and `full` features live under different
/// cache keys, the bundle records the window and its predictor runs with it (a bundle without
/// the record runs the full window, as bundles made before the setting did); fine-tuning
/// refuses `clip`, Wav2Vec2 refuses the setting.
#[test]
fn whisper_window_is_recorded_in_the_bundle_and_the_cache_key() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_set(&data, 4);
    let cache = tmp.path().join("cache");
    let with = |w: AudioWindow, out: &str| {
        let req = request(&data, &tmp.path().join(out), &fixture("whisper_tiny_random"), Some(cache.clone()));
        AudioTrainRequest { audio: AudioOptions { window: Some(w), ..req.audio.clone() }, ..req }
    };
    let full = train_audio(&with(AudioWindow::Full, "full"), false, &Silent).unwrap();
    let clip = train_audio(&with(AudioWindow::Clip, "clip"), false, &Silent).unwrap();
    assert!(full.backbone_computed > 0);
    assert_eq!((clip.backbone_computed, clip.backbone_reused), (full.backbone_computed, 0), "clip features must not come from the full window's cache");
    let again = train_audio(&with(AudioWindow::Clip, "clip2"), false, &Silent).unwrap();
    assert_eq!((again.backbone_computed, again.backbone_reused), (0, clip.backbone_computed));
    for (run, want) in [("full", AudioWindow::Full), ("clip", AudioWindow::Clip)] {
        let meta = headstart::bundle::read_meta(&tmp.path().join(run).join("bundle")).unwrap();
        let headstart::bundle::EncoderRef::Audio(e) = &meta.encoder else { panic!("an audio bundle") };
        assert_eq!(e.window, Some(want), "{run}");
    }
    let bundle = tmp.path().join("clip/bundle");
    let files = vec![data.join("high/0.wav"), data.join("noise/1.wav")];
    let p = AudioPredictor::load(&bundle, None).unwrap();
    assert_eq!(p.encoder.window, Some(AudioWindow::Clip));
    let (probs, ok, _) = p.probabilities(&files, None, &Silent).unwrap();
    assert_eq!(ok, vec![0, 1]);
    let toml_path = bundle.join(headstart::bundle::META);
    let toml = std::fs::read_to_string(&toml_path).unwrap();
    assert!(toml.contains("window = \"clip\"\n"), "{toml}");
    std::fs::write(&toml_path, toml.replace("window = \"clip\"\n", "")).unwrap();
    let legacy = AudioPredictor::load(&bundle, None).unwrap();
    assert_eq!(legacy.encoder.window, None);
    let (old, _, _) = legacy.probabilities(&files, None, &Silent).unwrap();
    assert!(!old.allclose(&probs, 1e-6, 1e-6, false), "a bundle without the record must run the full window");

    let ft = AudioTrainRequest { finetune: Some(headstart::blocks::audio::audio_finetune_defaults()), ..with(AudioWindow::Clip, "ft") };
    let e = train_audio(&ft, false, &Silent).unwrap_err();
    assert!(e.cause() == headstart::error::Cause::Usage && e.to_string().contains("fine-tuning"), "{e}");
    let w2v = AudioTrainRequest { model: fixture("wav2vec2_group"), ..with(AudioWindow::Full, "w2v") };
    let e = train_audio(&w2v, false, &Silent).unwrap_err();
    assert!(e.cause() == headstart::error::Cause::Usage && e.to_string().contains("Whisper"), "{e}");
}
