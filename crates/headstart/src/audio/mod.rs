//! Audio input: decoding to mono ([`decode`]), band-limited resampling ([`resample`]),
//! Whisper's log-mel features ([`mel`]) and the span of its window the encoder runs over
//! ([`window`]).

pub mod decode;
pub mod encoder;
pub mod learner;
pub mod mel;
pub mod resample;
pub mod window;

use std::path::Path;

use crate::error::Result;

pub use decode::{decode, decode_capped, Capped, Decoded, Encoded};
pub use mel::WhisperFeatures;

/// A file decoded, averaged to mono and resampled to `rate` Hz.
pub fn load(path: &Path, rate: u32) -> Result<Vec<f32>> {
    if rate == 0 {
        return Err(crate::error::Error::Model("target sample rate must be positive".into()));
    }
    let d = decode(path)?;
    Ok(if d.sample_rate == rate { d.samples } else { resample::resample(&d.samples, d.sample_rate, rate) })
}

/// Zero mean, unit variance over the clip (`Wav2Vec2FeatureExtractor(do_normalize=True)`:
/// population variance, ε = 1e-7).
pub fn normalize(x: &[f32]) -> Vec<f32> {
    if x.is_empty() {
        return vec![];
    }
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let inv = 1.0 / (var + 1e-7).sqrt();
    x.iter().map(|&v| ((v as f64 - mean) * inv) as f32).collect()
}
