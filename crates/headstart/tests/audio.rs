//! Audio input and the Whisper encoder against their Python references
//! (tests/fixtures/make_audio_fixtures.py): decoding against libsndfile (`soundfile`),
//! resampling against `scipy.signal.resample_poly`, log-mel against `WhisperFeatureExtractor`,
//! tiny random Whisper encoders (over the full window and trimmed to a clip's seconds) and the
//! real tiny.en (CTranslate2 model.bin) against `transformers`.

use std::path::{Path, PathBuf};

use headstart::assets::asset_dir;
use headstart::audio::encoder::{AudioEncoder, AudioModel};
use headstart::audio::window::{bucket_seconds, AudioWindow};
use headstart::audio::{decode, resample::resample, WhisperFeatures};
use headstart::models::audio::whisper::{embed_clips, encoder_frames, pool_real};
use headstart::models::audio::{Wav2Vec2Encoder, WhisperEncoder};
use headstart::models::Mode;
use headstart::weights::ct2::Ct2File;
use headstart::weights::Weights;
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn golden(name: &str) -> Weights {
    Weights::open(fixtures().join(name)).unwrap()
}

fn vec(t: &Tensor) -> Vec<f32> {
    Vec::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max)
}

/// Decoded samples against libsndfile's, per format. PCM and FLAC are lossless and scale as
/// libsndfile does; Vorbis and MP3 go through different decoders (libvorbis, mpg123), whose
/// floating-point paths differ slightly.
#[test]
fn decoding_matches_libsndfile() {
    let g = golden("audio.golden.safetensors");
    let cases: &[(&str, f64)] = &[
        ("speech.wav", 1e-7),
        ("gen/pcm_u8.wav", 1e-7),
        ("gen/pcm_16_stereo.wav", 1e-7),
        ("gen/pcm_24_3ch.wav", 1e-7),
        ("gen/pcm_32_stereo.wav", 1e-7),
        ("gen/float_stereo.wav", 1e-7),
        ("gen/double.wav", 1e-7),
        ("gen/flac_16_stereo.flac", 1e-7),
        ("gen/flac_24.flac", 1e-7),
        ("en_B.ogg", 1e-4),
        ("hu_r.ogg", 1e-4),
        ("gen/vorbis_stereo.ogg", 1e-4),
        ("gen/mp3_stereo.mp3", 1e-4),
    ];
    for &(file, tol) in cases {
        let d = decode(&fixtures().join("audio").join(file)).unwrap_or_else(|e| panic!("{e}"));
        let want = vec(&g.tensor(&format!("decode.{file}")).unwrap());
        let rate = g.tensor(&format!("rate.{file}")).unwrap().int64_value(&[0]);
        assert_eq!(d.sample_rate as i64, rate, "{file}: sample rate");
        assert_eq!(d.samples.len(), want.len(), "{file}: sample count");
        let diff = max_diff(&d.samples, &want);
        println!("{file}: {} channels, {} samples at {} Hz, max |diff| vs libsndfile {diff:.2e}", d.channels, want.len(), d.sample_rate);
        assert!(diff <= tol, "{file}: max |diff| {diff:.3e} > {tol:.0e}");
    }
}

/// Bytes in memory decode through the same path as files: the same samples, bit for bit, in
/// every container; the length cap refuses from the header where it is exact (PCM, FLAC) and
/// while decoding where it is not (MP3); errors name what the bytes were called.
#[test]
fn decoding_from_memory_matches_files_and_caps_the_length() {
    use headstart::audio::{decode_capped, Capped, Encoded};
    let audio = fixtures().join("audio");
    for file in ["speech.wav", "gen/pcm_24_3ch.wav", "gen/float_stereo.wav", "gen/flac_16_stereo.flac", "en_B.ogg", "gen/mp3_stereo.mp3"] {
        let path = audio.join(file);
        let want = decode(&path).unwrap();
        let data = std::fs::read(&path).unwrap();
        let Capped::Clip(got) = decode_capped(Encoded::Bytes { data: data.clone(), name: "upload" }, f64::INFINITY).unwrap() else { panic!("{file}: capped") };
        assert_eq!((got.sample_rate, got.channels), (want.sample_rate, want.channels), "{file}");
        assert!(got.samples == want.samples, "{file}: samples differ between bytes and file");
        let cap = want.seconds() / 2.0;
        match decode_capped(Encoded::Bytes { data, name: "upload" }, cap).unwrap() {
            Capped::OverLong { seconds } => {
                println!("{file}: {:.3} s over a cap of {cap:.3} s: {seconds:?}", want.seconds());
                if file.ends_with(".wav") || file.ends_with(".flac") {
                    assert!((seconds.unwrap() - want.seconds()).abs() < 1e-9, "{file}: the header's length, {seconds:?}");
                }
                if file.ends_with(".mp3") {
                    assert_eq!(seconds, None, "MP3 lengths are estimates: refused while decoding");
                }
            }
            Capped::Clip(d) => panic!("{file}: {} s passed a cap of {cap} s", d.seconds()),
        }
    }
    let e = decode_capped(Encoded::Bytes { data: b"not audio at all, some text".to_vec(), name: "inputs[3]" }, 10.0).unwrap_err().to_string();
    assert!(e.starts_with("inputs[3]: ") && e.contains("not a readable audio file"), "{e}");
    let e = decode_capped(Encoded::Bytes { data: vec![], name: "inputs[0]" }, 10.0).unwrap_err().to_string();
    assert!(e.contains("inputs[0]") && e.contains("empty"), "{e}");
}

/// The resampler against scipy's resample_poly on the same input: same filter design and
/// alignment, so only f64-vs-f32 rounding remains.
#[test]
fn resampling_matches_scipy_resample_poly() {
    let g = golden("audio.golden.safetensors");
    for (file, to) in [("speech.wav", 16000), ("en_B.ogg", 16000), ("hu_r.ogg", 16000), ("gen/pcm_u8.wav", 16000), ("en_B.ogg", 22050)] {
        let x = vec(&g.tensor(&format!("decode.{file}")).unwrap());
        let from = g.tensor(&format!("rate.{file}")).unwrap().int64_value(&[0]) as u32;
        let want = vec(&g.tensor(&format!("resample.{file}.{to}")).unwrap());
        let got = resample(&x, from, to);
        let diff = max_diff(&got, &want);
        println!("{file} {from} -> {to} Hz: {} samples, max |diff| vs resample_poly {diff:.2e}", got.len());
        assert!(diff < 1e-6, "{file} {from} -> {to}: max |diff| {diff:.3e}");
    }
}

/// Log-mel features (80 and 128 bins) against WhisperFeatureExtractor on real clips.
#[test]
fn log_mel_matches_whisper_feature_extractor() {
    let g = golden("audio.golden.safetensors");
    for n in [80usize, 128] {
        let fe = WhisperFeatures::new(n).unwrap();
        let filters = headstart::audio::mel::mel_filters(n, 400, 16000, 0.0, 8000.0);
        let filters: Vec<f32> = filters.iter().map(|&v| v as f32).collect();
        let diff = max_diff(&filters, &vec(&g.tensor(&format!("mel_filters{n}")).unwrap()));
        assert!(diff < 1e-7, "mel filters ({n}): max |diff| {diff:.3e}");
        for file in ["speech.wav", "en_B.ogg", "hu_r.ogg"] {
            let x = vec(&g.tensor(&format!("resample.{file}.16000")).unwrap());
            let want = g.tensor(&format!("mel{n}.{file}")).unwrap();
            let keep = want.size()[1];
            let got = fe.extract(&[&x], Device::Cpu).get(0);
            assert_eq!(got.size(), vec![n as i64, 3000]);
            let diff = max_diff(&vec(&got.narrow(1, 0, keep)), &vec(&want));
            // Past the clip, every frame is the clamped floor.
            let tail = got.narrow(1, keep, 3000 - keep);
            let spread = (tail.max() - tail.min()).double_value(&[]);
            println!("mel{n} {file}: {keep} frames compared, max |diff| vs transformers {diff:.2e}; padding spread {spread:.1e}");
            assert!(diff < 1e-4, "mel{n} {file}: max |diff| {diff:.3e}");
            assert!(spread < 1e-6, "mel{n} {file}: padding frames differ by {spread}");
        }
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Unreadable, empty, truncated and garbage files are errors naming the file, never panics.
#[test]
fn bad_audio_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let audio = fixtures().join("audio");
    let wav = std::fs::read(audio.join("gen/pcm_16_stereo.wav")).unwrap();
    let ogg = std::fs::read(audio.join("en_B.ogg")).unwrap();
    let flac = std::fs::read(audio.join("gen/flac_24.flac")).unwrap();
    let mp3 = std::fs::read(audio.join("gen/mp3_stereo.mp3")).unwrap();
    let cases: Vec<(PathBuf, &str)> = vec![
        (dir.path().join("absent.wav"), "No such file"),
        (write(dir.path(), "empty.wav", b""), "empty"),
        (write(dir.path(), "garbage.wav", b"this is not audio at all, just some text bytes"), "not a readable audio file"),
        (write(dir.path(), "header_only.wav", &wav[..44]), ""),
        (write(dir.path(), "truncated.wav", &wav[..wav.len() / 2]), "truncated"),
        (write(dir.path(), "truncated.flac", &flac[..flac.len() / 2]), ""),
        (write(dir.path(), "truncated.ogg", &ogg[..ogg.len() / 3]), ""),
        (write(dir.path(), "cut_header.ogg", &ogg[..40]), ""),
        (write(dir.path(), "cut_header.mp3", &mp3[..3]), ""),
    ];
    for (path, want) in cases {
        match decode(&path) {
            Ok(d) => {
                // A cut stream may still decode cleanly up to a packet boundary (Vorbis, FLAC
                // frames, MP3): then it must be shorter than the whole, never garbage.
                assert!(!want.is_empty() || d.samples.iter().all(|s| s.is_finite()), "{}", path.display());
                assert!(want.is_empty(), "{}: decoded {} samples, expected an error with `{want}`", path.display(), d.samples.len());
                println!("{}: decoded {} samples up to the cut", path.display(), d.samples.len());
            }
            Err(e) => {
                let msg = e.to_string();
                println!("{msg}");
                assert!(msg.contains(path.file_name().unwrap().to_str().unwrap()), "error does not name the file: {msg}");
                assert!(msg.contains(want), "`{msg}` should mention `{want}`");
            }
        }
    }
}

fn check_encoder(enc: &WhisperEncoder, g: &Weights, prefix: &str, samples: &[f32]) {
    let fe = WhisperFeatures::new(enc.cfg.n_mels as usize).unwrap();
    let feats = fe.extract(&[samples], Device::Cpu);
    let real = encoder_frames(samples.len(), enc.cfg.max_positions as usize);
    assert_eq!(real as i64, g.tensor(&format!("{prefix}.real_frames")).unwrap().int64_value(&[0]));
    let states = tch::no_grad(|| enc.hidden_states(&feats, Mode::Eval)).unwrap();
    assert_eq!(states.len() as i64, enc.cfg.layers + 1);
    for (i, h) in states.iter().enumerate() {
        let want_head = g.tensor(&format!("{prefix}.hidden{i}.head")).unwrap();
        let head = max_diff(&vec(&h.get(0).narrow(0, 0, want_head.size()[0])), &vec(&want_head));
        let all = max_diff(&vec(&h.get(0).mean_dim(0, false, Kind::Float)), &vec(&g.tensor(&format!("{prefix}.hidden{i}.mean_all")).unwrap()));
        let pooled = vec(&pool_real(h, &[real]));
        let mean_real = max_diff(&pooled, &vec(&g.tensor(&format!("{prefix}.hidden{i}.mean_real")).unwrap()));
        println!("{prefix} hidden state {i}: max |diff| first frames {head:.2e}, mean {all:.2e}, mean over {real} real frames {mean_real:.2e}");
        assert!(head < 1e-4 && all < 1e-4 && mean_real < 1e-4, "{prefix} hidden state {i}: {head:.3e} {all:.3e} {mean_real:.3e}");
        let to = tch::no_grad(|| enc.forward_to(&feats, i, Mode::Eval)).unwrap();
        assert!(to.allclose(h, 0.0, 0.0, false), "{prefix}: forward_to({i}) differs from hidden state {i}");
    }
    let last = tch::no_grad(|| enc.forward(&feats, Mode::Eval)).unwrap();
    assert!(last.allclose(states.last().unwrap(), 0.0, 0.0, false));
}

#[test]
fn tiny_random_whisper_matches_transformers_in_every_layer() {
    let g = golden("whisper_tiny_random.golden.safetensors");
    let x = vec(&golden("audio.golden.safetensors").tensor("resample.speech.wav.16000").unwrap());
    for (dir, prefix, dropped) in [("whisper_tiny_random", "tiny", "decoder."), ("whisper_cls_random", "cls", "classifier.")] {
        let (enc, report) = WhisperEncoder::open(fixtures().join(dir).to_str().unwrap()).unwrap_or_else(|e| panic!("{e}"));
        println!("{dir}: {}", report.summary());
        report.require_complete().unwrap();
        assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
        assert!(report.dropped.iter().any(|n| n.name.starts_with(dropped)), "{dir}: nothing under {dropped} reported as dropped");
        check_encoder(&enc, &g, prefix, &x);
    }
}

/// A real Whisper encoder from its CTranslate2 package against transformers' WhisperEncoder
/// given the same weights (read by an independent Python parser), on a real clip.
fn real_whisper_matches(asset: &str, fetch_name: &str, layout: (i64, i64, i64, i64, i64)) {
    let path = asset_dir().join(asset).join("model.bin");
    let prefix = asset.replace(['-', '.'], "_");
    let reference = fixtures().join(format!("{prefix}.golden.safetensors"));
    if !path.is_file() || !reference.is_file() {
        eprintln!(
            "SKIPPED the real {asset} parity test: {} or {} is absent; run `scripts/fetch-assets {fetch_name}` then \
             `.venv-ref/bin/python tests/fixtures/make_audio_fixtures.py`",
            path.display(),
            reference.display()
        );
        return;
    }
    let (enc, report) = WhisperEncoder::open(asset).unwrap_or_else(|e| panic!("{e}"));
    println!("{}: {}", path.display(), report.summary());
    assert_eq!((enc.cfg.d_model, enc.cfg.layers, enc.cfg.heads, enc.cfg.ffn, enc.cfg.n_mels), layout);
    let layers = layout.1 as usize;
    assert_eq!(report.matched.len(), 7 + 15 * layers);
    assert!(report.unexpected.is_empty() && report.missing.is_empty(), "{report:?}");
    assert_eq!(report.adapted.len(), 5 * layers, "Q, K, V weights and Q, V biases of every layer split from the fused matrices");
    assert!(report.dropped.iter().any(|n| n.name.starts_with("decoder/")));
    let g = golden(&format!("{prefix}.golden.safetensors"));
    let x = vec(&golden("audio.golden.safetensors").tensor("resample.en_B.ogg.16000").unwrap());
    check_encoder(&enc, &g, &prefix, &x);
}

#[test]
fn real_whisper_tiny_en_from_ct2_matches_transformers() {
    real_whisper_matches("whisper-tiny.en", "whisper_tiny_en", (384, 4, 6, 1536, 80));
}

#[test]
fn real_whisper_base_from_ct2_matches_transformers() {
    real_whisper_matches("whisper-base", "whisper_base", (512, 6, 8, 2048, 80));
}

#[test]
fn bad_ct2_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = 6u32.to_le_bytes().to_vec();
    bytes.extend(12u16.to_le_bytes());
    bytes.extend(b"WhisperSpec\0");
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(1u32.to_le_bytes());
    bytes.extend(21u16.to_le_bytes());
    bytes.extend(b"encoder/conv1/weight\0");
    bytes.push(2);
    bytes.extend(4u32.to_le_bytes());
    bytes.extend(3u32.to_le_bytes());
    bytes.push(4);
    bytes.extend(24u32.to_le_bytes());
    let whole = [bytes.clone(), vec![0u8; 24]].concat();
    let ok = Ct2File::open(write(dir.path(), "ok.bin", &whole)).unwrap();
    assert_eq!(ok.tensor("encoder/conv1/weight").unwrap().size(), vec![4, 3]);
    for (name, data, want) in [
        ("short.bin", [bytes.clone(), vec![0u8; 10]].concat(), "truncated"),
        ("v5.bin", [5u32.to_le_bytes().to_vec(), bytes[4..].to_vec()].concat(), "version 5"),
        ("empty.bin", vec![], "empty"),
        ("wrong_count.bin", [bytes[..bytes.len() - 4].to_vec(), 20u32.to_le_bytes().to_vec(), vec![0u8; 20]].concat(), "expected"),
    ] {
        let err = Ct2File::open(write(dir.path(), name, &data)).unwrap_err().to_string();
        assert!(err.contains(name) && err.contains(want), "{name}: {err}");
    }
    let err = WhisperEncoder::from_ct2(&dir.path().join("ok.bin")).err().expect("a file without the encoder's variables must not load").to_string();
    assert!(err.contains("ok.bin"), "{err}");
}

/// Tiny random Wav2Vec2 (group-norm and layer-norm feature encoders, post-norm and stable
/// layer norm, weight-normed positional convolution with even and odd kernels), HuBERT and
/// WavLM (gated relative position bias, clamped and log-spaced buckets) against transformers
/// in every hidden state; the stable models also on a padded batch with its attention mask.
#[test]
fn tiny_random_wav2vec2_hubert_and_wavlm_match_transformers_in_every_layer() {
    let g = golden("wav2vec2_tiny_random.golden.safetensors");
    let gw = golden("wavlm_tiny_random.golden.safetensors");
    let raw = vec(&g.tensor("w2v.raw").unwrap());
    let input = headstart::audio::normalize(&raw);
    let diff = max_diff(&input, &vec(&g.tensor("w2v.input").unwrap()));
    println!("normalisation: max |diff| vs Wav2Vec2FeatureExtractor {diff:.2e}");
    assert!(diff < 1e-5, "normalisation: {diff:.3e}");
    let wave = g.tensor("w2v.input").unwrap().unsqueeze(0);
    let cases = [
        ("wav2vec2_group", Some("classifier."), &g),
        ("wav2vec2_stable", None, &g),
        ("hubert_group", None, &g),
        ("wavlm_group", Some("classifier."), &gw),
        ("wavlm_stable", None, &gw),
    ];
    for (dir, dropped, gold) in cases {
        let (enc, report) = Wav2Vec2Encoder::from_hf_dir(&fixtures().join(dir)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(enc.cfg.rel_pos.is_some(), dir.starts_with("wavlm"), "{dir}: relative position bias");
        println!("{dir}: {}", report.summary());
        report.require_complete().unwrap();
        assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
        if let Some(p) = dropped {
            assert!(report.dropped.iter().any(|n| n.name.starts_with(p)), "{dir}: {p} not reported as dropped");
        }
        let states = tch::no_grad(|| enc.hidden_states(&wave, None, Mode::Eval)).unwrap();
        assert_eq!(states.len() as i64, enc.cfg.layers + 1);
        for (i, h) in states.iter().enumerate() {
            let diff = max_diff(&vec(h), &vec(&gold.tensor(&format!("{dir}.hidden{i}")).unwrap()));
            println!("{dir} hidden state {i}: max |diff| {diff:.2e}");
            assert!(diff < 1e-4, "{dir} hidden state {i}: {diff:.3e}");
            let to = tch::no_grad(|| enc.forward_to(&wave, None, i, Mode::Eval)).unwrap();
            assert!(to.allclose(h, 0.0, 0.0, false), "{dir}: forward_to({i})");
        }
        let frozen = enc.forward_from(&wave, None, Wav2Vec2Encoder::DEFAULT_FIRST_TRAINABLE, Mode::Eval).unwrap();
        let diff = max_diff(&vec(&frozen), &vec(&gold.tensor(&format!("{dir}.last")).unwrap()));
        println!("{dir} last_hidden_state: max |diff| {diff:.2e}");
        assert!(diff < 1e-4, "{dir} last hidden state: {diff:.3e}");
        if dir.ends_with("_stable") {
            assert!(enc.uses_attention_mask());
            let batch = g.tensor("w2v.batch_input").unwrap();
            let lengths: Vec<usize> = Vec::<i64>::try_from(g.tensor("w2v.batch_mask").unwrap().sum_dim_intlist([1i64].as_slice(), false, Kind::Int64))
                .unwrap()
                .into_iter()
                .map(|n| n as usize)
                .collect();
            let out = tch::no_grad(|| enc.forward_from(&batch, Some(&lengths), 0, Mode::Eval)).unwrap();
            let want = gold.tensor(&format!("{dir}.batch_last")).unwrap();
            for (row, frames) in enc.frame_counts(&lengths).into_iter().enumerate() {
                let f = frames as i64;
                let diff = max_diff(&vec(&out.get(row as i64).narrow(0, 0, f)), &vec(&want.get(row as i64).narrow(0, 0, f)));
                println!("{dir} padded batch row {row} ({} samples, {frames} frames): max |diff| {diff:.2e}", lengths[row]);
                assert!(diff < 1e-4, "{dir} padded row {row}: {diff:.3e}");
            }
        }
    }
}

/// Older checkpoints name the positional convolution's weight norm `weight_g` / `weight_v`:
/// the same weights under those names give the same output.
#[test]
fn wav2vec2_loads_legacy_weight_norm_names() {
    let src = fixtures().join("wav2vec2_group");
    let w = Weights::open(&src).unwrap();
    let renamed: Vec<(String, Tensor)> = w
        .names()
        .iter()
        .map(|n| {
            let new = n.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v");
            (new, w.tensor(n).unwrap())
        })
        .collect();
    assert!(renamed.iter().any(|(n, _)| n.ends_with("weight_g")));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    headstart::weights::save_safetensors(&dir.path().join("model.safetensors"), &renamed).unwrap();
    let (enc, report) = Wav2Vec2Encoder::from_hf_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.unexpected.is_empty() && report.missing.is_empty(), "{}", report.summary());
    let g = golden("wav2vec2_tiny_random.golden.safetensors");
    let out = tch::no_grad(|| enc.forward_from(&g.tensor("w2v.input").unwrap().unsqueeze(0), None, 0, Mode::Eval)).unwrap();
    let diff = max_diff(&vec(&out), &vec(&g.tensor("wav2vec2_group.last").unwrap()));
    assert!(diff < 1e-4, "legacy weight-norm names: {diff:.3e}");
}

/// The default freeze plan leaves the feature encoder without gradients and trains the rest;
/// Whisper's stem likewise when frozen.
#[test]
fn frozen_stages_get_no_gradients() {
    let (enc, _) = Wav2Vec2Encoder::from_hf_dir(&fixtures().join("wav2vec2_stable")).unwrap();
    let wave = Tensor::randn([2, 4000], (Kind::Float, Device::Cpu));
    let out = enc.forward_from(&wave, Some(&[4000, 3000]), Wav2Vec2Encoder::DEFAULT_FIRST_TRAINABLE, Mode::Train).unwrap();
    out.sum(Kind::Float).backward();
    for (name, var) in enc.vs.variables() {
        let has = var.grad().defined() && var.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0;
        assert_eq!(has, !name.starts_with("feature_extractor."), "{name}: gradient {has}");
    }
    let (w, _) = WhisperEncoder::open(fixtures().join("whisper_tiny_random").to_str().unwrap()).unwrap();
    let feats = WhisperFeatures::new(80).unwrap().extract(&[&[0.1f32; 8000]], Device::Cpu);
    w.forward_from(&feats, 1, Mode::Train).unwrap().sum(Kind::Float).backward();
    for (name, var) in w.vs.variables() {
        let has = var.grad().defined() && var.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0;
        let stem = ["conv1.", "conv2.", "embed_positions."].iter().any(|p| name.starts_with(p));
        assert_eq!(has, !stem, "{name}: gradient {has}");
    }
}

/// Bytes overwritten through every format's files: each decode ends in samples or an error
/// naming the file, never a panic or a non-finite sample.
#[test]
fn corrupted_audio_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let audio = fixtures().join("audio");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut ok, mut errors) = (0, 0);
    for file in ["en_B.ogg", "gen/flac_16_stereo.flac", "gen/mp3_stereo.mp3", "gen/pcm_24_3ch.wav", "gen/float_stereo.wav", "gen/vorbis_stereo.ogg"] {
        let bytes = std::fs::read(audio.join(file)).unwrap();
        for round in 0..12 {
            let mut b = bytes.clone();
            for _ in 0..(1 + round * 4) {
                let i = (next() % b.len() as u64) as usize;
                b[i] = next() as u8;
            }
            let name = format!("{}_{round}.{}", file.replace('/', "_"), file.rsplit('.').next().unwrap());
            let path = write(dir.path(), &name, &b);
            match headstart::audio::load(&path, 16000) {
                Ok(x) => {
                    assert!(x.iter().all(|s| s.is_finite()), "{name}: non-finite samples");
                    ok += 1;
                }
                Err(e) => {
                    assert!(e.to_string().contains(&name), "{e}");
                    errors += 1;
                }
            }
        }
    }
    println!("corrupted files: {ok} decoded, {errors} clear errors");
}

/// Pooled clip vectors: a short clip equals the golden mean over its real frames; a clip longer
/// than the 30 s window is the frame-weighted mean of its windows.
#[test]
fn whisper_clip_embeddings_pool_real_frames_across_windows() {
    let g = golden("whisper_tiny_random.golden.safetensors");
    let x = vec(&golden("audio.golden.safetensors").tensor("resample.speech.wav.16000").unwrap());
    let (enc, _) = WhisperEncoder::open(fixtures().join("whisper_tiny_random").to_str().unwrap()).unwrap();
    let fe = WhisperFeatures::new(80).unwrap();
    let long: Vec<f32> = x.iter().cycle().take(480_000 + x.len()).copied().collect();
    let out = embed_clips(&enc, &fe, &[&x, &long], None, Device::Cpu).unwrap();
    assert_eq!(out.size(), vec![2, 64]);
    let diff = max_diff(&vec(&out.get(0)), &vec(&g.tensor("tiny.hidden2.mean_real").unwrap()));
    assert!(diff < 1e-4, "short clip: {diff:.3e}");
    let layer1 = embed_clips(&enc, &fe, &[&x], Some(1), Device::Cpu).unwrap();
    assert!(max_diff(&vec(&layer1.get(0)), &vec(&g.tensor("tiny.hidden1.mean_real").unwrap())) < 1e-4);
    let first = embed_clips(&enc, &fe, &[&long[..480_000]], None, Device::Cpu).unwrap().get(0);
    let second = embed_clips(&enc, &fe, &[&long[480_000..]], None, Device::Cpu).unwrap().get(0);
    let (a, b) = (1500.0, encoder_frames(x.len(), 1500) as f64);
    let want = (first * a + second * b) / (a + b);
    let diff = max_diff(&vec(&out.get(1)), &vec(&want));
    assert!(diff < 1e-5, "long clip: {diff:.3e}");
}

/// Pooling reads only the batch's longest real prefix, and so computes the last layer run for
/// those frames alone: every readout equals pooling the whole window's states.
#[test]
fn whisper_pooling_on_the_real_prefix_equals_pooling_the_whole_window() {
    use headstart::models::audio::whisper::pooled;
    use headstart::models::audio::Readout;
    let x = vec(&golden("audio.golden.safetensors").tensor("resample.speech.wav.16000").unwrap());
    let (enc, _) = WhisperEncoder::open(fixtures().join("whisper_tiny_random").to_str().unwrap()).unwrap();
    let fe = WhisperFeatures::new(80).unwrap();
    let clips: Vec<&[f32]> = vec![&x[..4000], &x, &x[..900]];
    let feats = fe.extract(&clips, Device::Cpu);
    let real: Vec<usize> = clips.iter().map(|c| encoder_frames(c.len(), 1500)).collect();
    assert!(real.iter().all(|&r| r < 1500), "{real:?}");
    let states = tch::no_grad(|| enc.hidden_states(&feats, Mode::Eval)).unwrap();
    let last = states.len() - 1;
    let readouts = [(Readout::Output, vec![last]), (Readout::Layer(1), vec![1]), (Readout::Layer(0), vec![0]), (Readout::All, (0..=last).collect())];
    for (readout, layers) in readouts {
        let got = pooled(&enc, &feats, readout, &real).unwrap();
        let want = Tensor::cat(&layers.iter().map(|&i| pool_real(&states[i], &real)).collect::<Vec<_>>(), 1);
        let diff = max_diff(&vec(&got), &vec(&want));
        println!("{readout:?}: max |diff| {diff:.2e}");
        assert!(diff < 1e-5, "{readout:?}: {diff:.3e}");
    }
}

/// The `clip` window: Whisper run over a clip's own seconds against transformers'
/// `WhisperEncoder` modules run by hand over the same first frames of `WhisperFeatureExtractor`'s
/// features (its forward insists on 30 s), in every hidden state, for clips in 1, 2 and 3 s
/// buckets (one ending 49 samples before its bucket does); then the pooled vectors of
/// `AudioModel::embed`, the four clips batched together, and each alone.
#[test]
fn trimmed_whisper_window_matches_transformers_modules() {
    let g = golden("whisper_trimmed.golden.safetensors");
    let audio = golden("audio.golden.safetensors");
    let speech = vec(&audio.tensor("resample.speech.wav.16000").unwrap());
    let clips: Vec<(&str, Vec<f32>)> = vec![
        ("speech", speech.clone()),
        ("speech_03", speech[..4800].to_vec()),
        ("en_B", vec(&audio.tensor("resample.en_B.ogg.16000").unwrap())),
        ("hu_r", vec(&audio.tensor("resample.hu_r.ogg.16000").unwrap())),
    ];
    for (dir, prefix) in [("whisper_tiny_random", "tiny"), ("whisper_cls_random", "cls")] {
        let mut m = AudioModel::open(fixtures().join(dir).to_str().unwrap()).unwrap();
        m.set_window(AudioWindow::Clip).unwrap();
        let AudioEncoder::Whisper { enc, fe } = &m.encoder else { panic!("{dir} is a Whisper model") };
        let last = enc.cfg.layers as usize;
        for (name, x) in &clips {
            let key = format!("{prefix}.{name}");
            let seconds = g.tensor(&format!("{key}.seconds")).unwrap().int64_value(&[0]) as usize;
            let real = g.tensor(&format!("{key}.real_frames")).unwrap().int64_value(&[0]) as usize;
            assert_eq!((bucket_seconds(x.len()), encoder_frames(x.len(), 1500)), (seconds, real), "{key}");
            let feats = fe.extract_trimmed(&[x], seconds, Device::Cpu);
            let states = tch::no_grad(|| enc.hidden_states(&feats, Mode::Eval)).unwrap();
            assert_eq!(states.len(), last + 1);
            for (i, h) in states.iter().enumerate() {
                assert_eq!(h.size()[1], seconds as i64 * 50, "{key}: encoder positions");
                let head = max_diff(&vec(&h.get(0).narrow(0, 0, 16)), &vec(&g.tensor(&format!("{key}.hidden{i}.head")).unwrap()));
                let mean = max_diff(&vec(&pool_real(h, &[real])), &vec(&g.tensor(&format!("{key}.hidden{i}.mean_real")).unwrap()));
                assert!(head < 1e-4 && mean < 1e-4, "{key} hidden state {i}: {head:.3e} {mean:.3e}");
            }
        }
        let all: Vec<Vec<f32>> = clips.iter().map(|c| c.1.clone()).collect();
        for layer in [None, Some(1)] {
            m.set_layer(layer).unwrap();
            let together = m.embed(&all, 2).unwrap();
            for (j, (name, x)) in clips.iter().enumerate() {
                let want = g.tensor(&format!("{prefix}.{name}.hidden{}.mean_real", layer.unwrap_or(last))).unwrap();
                let diff = max_diff(&vec(&together.get(j as i64)), &vec(&want));
                assert!(diff < 1e-4, "{prefix}.{name} pooled at {layer:?}: {diff:.3e}");
                let alone = m.embed(std::slice::from_ref(x), 8).unwrap();
                assert!(alone.get(0).allclose(&together.get(j as i64), 1e-5, 1e-5, false), "{prefix}.{name}: the batch changed its vector");
            }
        }
    }
}
