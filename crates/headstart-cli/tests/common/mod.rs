//! Helpers shared by the binary's test files (each uses some of them).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use headstart::weights::Weights;

/// Every tensor of a run's bundle (head and tuned backbone), named `file:tensor`, sorted.
pub fn bundle_tensors(run: &Path) -> Vec<(String, tch::Tensor)> {
    let mut all = vec![];
    for f in ["head.safetensors", "backbone.safetensors"] {
        let w = Weights::open(run.join("bundle").join(f)).unwrap();
        for n in w.names() {
            all.push((format!("{f}:{n}"), w.tensor(n).unwrap()));
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// The same names and bitwise-equal tensors.
pub fn assert_same(a: &[(String, tch::Tensor)], b: &[(String, tch::Tensor)]) {
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs from the uninterrupted run");
    }
}

/// Eight Fashion-MNIST images of each of three classes from `data/sample`, as a class folder.
pub fn sample_set(dir: &Path) {
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/sample");
    for c in ["Bag", "Trouser", "Sandal"] {
        std::fs::create_dir_all(dir.join(c)).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(sample.join(c)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files.iter().take(8) {
            std::fs::copy(f, dir.join(c).join(f.file_name().unwrap())).unwrap();
        }
    }
}

/// A mono 16-bit PCM WAV file's bytes.
pub fn wav_bytes(samples: &[f32], rate: u32) -> Vec<u8> {
    let data: Vec<u8> = samples.iter().flat_map(|&x| ((x.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes()).collect();
    let mut b = b"RIFF".to_vec();
    b.extend((36 + data.len() as u32).to_le_bytes());
    b.extend(b"WAVEfmt ");
    for v in [16u32.to_le_bytes().to_vec(), 1u16.to_le_bytes().to_vec(), 1u16.to_le_bytes().to_vec(), rate.to_le_bytes().to_vec()] {
        b.extend(v);
    }
    b.extend((rate * 2).to_le_bytes());
    b.extend(2u16.to_le_bytes());
    b.extend(16u16.to_le_bytes());
    b.extend(b"data");
    b.extend((data.len() as u32).to_le_bytes());
    b.extend(data);
    b
}

/// A mono 16-bit PCM WAV file.
pub fn wav(path: &Path, samples: &[f32], rate: u32) {
    std::fs::write(path, wav_bytes(samples, rate)).unwrap();
}

/// Class `hum` (150 Hz), `whistle` (3 kHz) or `hiss` (noise), `k` picks the variant (0.6 to
/// 0.9 s long).
pub fn sound(class: &str, k: u32, rate: u32) -> Vec<f32> {
    let mut state = 12345u64 + k as u64;
    let mut noise = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let n = rate as usize * (6 + k as usize % 4) / 10;
    let f = match class {
        "hum" => 150.0,
        "whistle" => 3000.0,
        _ => 0.0,
    } * (1.0 + 0.02 * k as f32);
    (0..n).map(|i| if f > 0.0 { 0.4 * (2.0 * std::f32::consts::PI * f * i as f32 / rate as f32).sin() } else { 0.3 * noise() }).collect()
}

/// Class folders `hum`, `whistle` and `hiss` of `per_class` WAV clips each (16 kHz and
/// 44.1 kHz alternately), numbered from `offset`.
pub fn write_audio_set(dir: &Path, per_class: u32, offset: u32) {
    for class in ["hum", "whistle", "hiss"] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for k in 0..per_class {
            let rate = if k % 2 == 0 { 16000 } else { 44100 };
            wav(&dir.join(class).join(format!("{class}{}.wav", k + offset)), &sound(class, k + offset, rate), rate);
        }
    }
}
