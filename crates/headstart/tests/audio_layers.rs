//! `layer` weighted: every hidden state of an audio encoder pooled alike and stacked in one
//! row (checked slice by slice against `layer N` on the tiny random Whisper, Wav2Vec2 and
//! HuBERT fixtures, short and long clips, both Whisper windows), its own feature-cache key and
//! bundle record, and the layer-sum head trained on it through the audio block.

mod common;

use std::path::{Path, PathBuf};

use common::{fixture, wav_bytes};
use headstart::audio::encoder::{AudioModel, WINDOW};
use headstart::audio::window::AudioWindow;
use headstart::blocks::audio::{train_audio, AudioOptions, AudioPredictor, AudioTrainRequest};
use headstart::progress::Silent;
use headstart::train::{HeadKind, TrainConfig};

/// A clip of tones (class 0: low, 1: high) with a little seeded noise.
fn clip(c: usize, seed: u64, samples: usize) -> Vec<f32> {
    let mut state = seed * 7919 + c as u64 + 1;
    let f = [300.0, 3000.0][c] * (1.0 + 0.01 * (seed % 7) as f32);
    (0..samples)
        .map(|i| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let noise = ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
            0.4 * (2.0 * std::f32::consts::PI * f * i as f32 / 16000.0).sin() + 0.02 * noise
        })
        .collect()
}

/// The stacked row of every clip, slice by slice, equals the row read at that layer alone.
fn check_stacking(m: &mut AudioModel, clips: &[Vec<f32>], what: &str) {
    let (d, layers) = (m.dim(), m.num_layers());
    m.stack_layers().unwrap();
    assert_eq!((m.stacked_layers(), m.feature_dim()), (Some(layers + 1), d * (layers as i64 + 1)), "{what}");
    let stacked = m.embed(clips, 4).unwrap();
    assert_eq!(stacked.size(), [clips.len() as i64, d * (layers as i64 + 1)], "{what}");
    m.all_layers = false;
    for i in 0..=layers {
        m.set_layer(Some(i)).unwrap();
        let one = m.embed(clips, 4).unwrap();
        let slice = stacked.narrow(1, i as i64 * d, d);
        let diff = (&slice - &one).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{what}: layer {i} differs by {diff:.3e}");
        // Neighbouring layers differ, so a misplaced slice would be caught.
        if i > 0 {
            let prev = stacked.narrow(1, (i as i64 - 1) * d, d);
            assert!((&prev - &one).abs().max().double_value(&[]) > 1e-3, "{what}: layers {} and {i} alike", i - 1);
        }
    }
    m.set_layer(None).unwrap();
}

#[test]
fn stacked_rows_hold_every_layer() {
    // A short clip, a sub-second one and (for the windowing) one of 30 s and a half.
    let clips = vec![clip(0, 1, 12000), clip(1, 2, 4000), clip(0, 3, WINDOW + 8000)];
    let mut whisper = AudioModel::open(&fixture("whisper_tiny_random")).unwrap();
    check_stacking(&mut whisper, &clips, "whisper, full window");
    whisper.set_window(AudioWindow::Clip).unwrap();
    check_stacking(&mut whisper, &clips, "whisper, clip window");
    for name in ["wav2vec2_group", "wav2vec2_stable", "hubert_group"] {
        let mut m = AudioModel::open(&fixture(name)).unwrap();
        check_stacking(&mut m, &clips[..2], name);
    }
    // A hidden state and every hidden state are not both read.
    let mut m = AudioModel::open(&fixture("whisper_tiny_random")).unwrap();
    m.set_layer(Some(1)).unwrap();
    assert!(m.stack_layers().is_err());
}

/// A folder of two classes of tone clips.
fn write_set(dir: &Path, per_class: usize) {
    for (c, name) in ["low", "high"].iter().enumerate() {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        for k in 0..per_class {
            let samples = clip(c, k as u64, 8000 + 800 * (k % 4));
            std::fs::write(dir.join(name).join(format!("{k}.wav")), wav_bytes(&samples, 16000)).unwrap();
        }
    }
}

/// Trained through the audio block: the layer-sum head and its weights in the outcome, the
/// stacked rows under their own cache key, the bundle's record, and the bundle's predictions
/// equal to the head on freshly stacked rows.
#[test]
fn weighted_layers_train_a_layer_sum_head() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_set(&data, 10);
    let cache = tmp.path().join("cache");
    let req = AudioTrainRequest {
        // Whisper over each clip's own second (fast), recorded in the bundle like the layers.
        audio: AudioOptions { weighted_layers: true, window: Some(AudioWindow::Clip), ..AudioOptions::default() },
        out: tmp.path().join("run"),
        cache: Some(cache.clone()),
        model: fixture("whisper_tiny_random"),
        train: TrainConfig { head: HeadKind::LayerSum, ..TrainConfig::default() },
        ..AudioTrainRequest::for_data(data.clone())
    };
    let o = train_audio(&req, false, &Silent).unwrap();
    assert_eq!(o.head, HeadKind::LayerSum);
    let w = o.layer_weights.clone().unwrap();
    assert_eq!(w.len(), 3, "two layers: hidden states 0..=2");
    assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-6 && w.iter().all(|&x| x > 0.0), "{w:?}");
    assert!(o.val.as_ref().unwrap().accuracy >= 0.9, "{:?}", o.val);
    // The output alone is another cache key; the stacked rows again come from the cache.
    let plain = AudioTrainRequest {
        out: tmp.path().join("plain"),
        audio: AudioOptions { weighted_layers: false, ..req.audio.clone() },
        train: TrainConfig::default(),
        ..req.clone()
    };
    assert_eq!(train_audio(&plain, false, &Silent).unwrap().backbone_computed, 20);
    let again = train_audio(&AudioTrainRequest { out: tmp.path().join("again"), ..req.clone() }, false, &Silent).unwrap();
    assert_eq!((again.backbone_computed, again.backbone_reused), (0, 20));
    assert_eq!(again.layer_weights, o.layer_weights);

    let bundle = req.out.join("bundle");
    let toml = std::fs::read_to_string(bundle.join("bundle.toml")).unwrap();
    assert!(toml.contains("all_layers = true") && toml.contains("kind = \"layer_sum\"") && toml.contains("layers = 3"), "{toml}");
    let p = AudioPredictor::load(&bundle, None).unwrap();
    assert!(p.encoder.all_layers && p.encoder.layer.is_none());
    let clips = vec![clip(0, 50, 9000), clip(1, 51, 9000)];
    let probs = p.probabilities_clips(&clips).unwrap();
    let files: Vec<PathBuf> = ["low/0.wav", "high/0.wav"].iter().map(|f| data.join(f)).collect();
    let (preds, skipped) = p.predict(&files, 1, None, &Silent).unwrap();
    assert!(skipped.is_empty());
    assert_eq!(preds.iter().map(|(_, t)| t[0].0.as_str()).collect::<Vec<_>>(), vec!["low", "high"]);
    let top: Vec<i64> = Vec::try_from(probs.argmax(-1, false)).unwrap();
    // Labels are sorted: high, low.
    assert_eq!(top, vec![1, 0]);

    // Mismatched settings are usage errors.
    for (audio, head) in [
        (req.audio.clone(), HeadKind::Mlp),
        (AudioOptions::default(), HeadKind::LayerSum),
        (AudioOptions { layer: Some(1), ..req.audio.clone() }, HeadKind::LayerSum),
    ] {
        let bad = AudioTrainRequest { audio, train: TrainConfig { head, ..TrainConfig::default() }, out: tmp.path().join("bad"), ..req.clone() };
        let e = train_audio(&bad, false, &Silent).unwrap_err();
        assert_eq!(e.cause(), headstart::error::Cause::Usage, "{e}");
    }
    let ft = AudioTrainRequest {
        audio: AudioOptions { window: None, ..req.audio.clone() },
        finetune: Some(headstart::blocks::audio::audio_finetune_defaults()),
        out: tmp.path().join("ft"),
        ..req
    };
    let e = train_audio(&ft, false, &Silent).unwrap_err();
    assert!(e.to_string().contains("fine-tuning"), "{e}");
}
