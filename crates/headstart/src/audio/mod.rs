//! Audio input: decoding to mono ([`decode`]), band-limited resampling ([`resample`]) and
//! Whisper's log-mel features ([`mel`]).

pub mod decode;
pub mod mel;
pub mod resample;

use std::path::Path;

use crate::error::Result;

pub use decode::{decode, Decoded};
pub use mel::WhisperFeatures;

/// A file decoded, averaged to mono and resampled to `rate` Hz.
pub fn load(path: &Path, rate: u32) -> Result<Vec<f32>> {
    let d = decode(path)?;
    Ok(if d.sample_rate == rate { d.samples } else { resample::resample(&d.samples, d.sample_rate, rate) })
}
