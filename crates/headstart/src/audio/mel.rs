//! Whisper's log-mel spectrogram, computed as `transformers`' `WhisperFeatureExtractor` does
//! with torch: every clip padded with zeros (or cut) to 30 s at 16 kHz, a centred STFT (400-point
//! periodic Hann window, hop 160, reflect padding), power spectrum without the last frame, a
//! Slaney-normalised Slaney-scale mel filter bank (0–8 kHz, 80 or 128 bins), `log10` floored at
//! 1e-10, clamped to 8 below the clip's maximum, then `(x + 4) / 4`.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Slaney's mel scale: linear below 1 kHz, logarithmic above.
fn hz_to_mel(hz: f64) -> f64 {
    let (min_log_hz, min_log_mel, logstep) = (1000.0, 15.0, 27.0 / 6.4f64.ln());
    if hz >= min_log_hz {
        min_log_mel + (hz / min_log_hz).ln() * logstep
    } else {
        3.0 * hz / 200.0
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    let (min_log_hz, min_log_mel, logstep) = (1000.0, 15.0, 6.4f64.ln() / 27.0);
    if mel >= min_log_mel {
        min_log_hz * (logstep * (mel - min_log_mel)).exp()
    } else {
        200.0 * mel / 3.0
    }
}

/// Triangular Slaney-normalised mel filters, `[n_fft / 2 + 1, n_mels]` row-major, as
/// `transformers.audio_utils.mel_filter_bank(.., norm="slaney", mel_scale="slaney")`.
pub fn mel_filters(n_mels: usize, n_fft: usize, sample_rate: u32, f_min: f64, f_max: f64) -> Vec<f64> {
    let n_freqs = n_fft / 2 + 1;
    let (lo, hi) = (hz_to_mel(f_min), hz_to_mel(f_max));
    let edges: Vec<f64> = (0..n_mels + 2).map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64)).collect();
    let nyquist = (sample_rate / 2) as f64;
    let mut out = vec![0.0; n_freqs * n_mels];
    for f in 0..n_freqs {
        let freq = nyquist * f as f64 / (n_freqs - 1) as f64;
        for m in 0..n_mels {
            let down = (freq - edges[m]) / (edges[m + 1] - edges[m]);
            let up = (edges[m + 2] - freq) / (edges[m + 2] - edges[m + 1]);
            let enorm = 2.0 / (edges[m + 2] - edges[m]);
            out[f * n_mels + m] = down.min(up).max(0.0) * enorm;
        }
    }
    out
}

/// The feature extractor's settings (those of every released Whisper checkpoint, with 80 or
/// 128 mel bins).
#[derive(Debug)]
pub struct WhisperFeatures {
    pub n_mels: usize,
    pub n_fft: usize,
    pub hop_length: usize,
    pub sample_rate: u32,
    /// Samples per window: 30 s.
    pub n_samples: usize,
    filters: Tensor,
    window: Tensor,
}

impl WhisperFeatures {
    pub fn new(n_mels: usize) -> Result<WhisperFeatures> {
        if n_mels == 0 || n_mels > 256 {
            return Err(Error::Model(format!("{n_mels} mel bins: expected 80 or 128")));
        }
        let (n_fft, sample_rate) = (400, 16000);
        let f = mel_filters(n_mels, n_fft, sample_rate, 0.0, 8000.0);
        let filters = Tensor::from_slice(&f).reshape([(n_fft / 2 + 1) as i64, n_mels as i64]).to_kind(Kind::Float);
        let window = Tensor::hann_window(n_fft as i64, (Kind::Float, Device::Cpu));
        Ok(WhisperFeatures { n_mels, n_fft, hop_length: 160, sample_rate, n_samples: 480_000, filters, window })
    }

    /// Mel frames per window (3000).
    pub fn frames(&self) -> usize {
        self.n_samples / self.hop_length
    }

    /// Mel frames that cover a clip of `n` samples (the rest is padding), at least 1.
    pub fn real_frames(&self, n: usize) -> usize {
        n.min(self.n_samples).div_ceil(self.hop_length).clamp(1, self.frames())
    }

    /// A clip at [`WhisperFeatures::sample_rate`], zero-padded or cut to one window, as a
    /// `[n_samples]` f32 tensor.
    pub fn pad(&self, clip: &[f32]) -> Tensor {
        let mut v = vec![0f32; self.n_samples];
        let n = clip.len().min(self.n_samples);
        v[..n].copy_from_slice(&clip[..n]);
        Tensor::from_slice(&v)
    }

    /// Log-mel features `[B, n_mels, 3000]` of clips at 16 kHz (each padded or cut to 30 s).
    pub fn extract(&self, clips: &[&[f32]], device: Device) -> Tensor {
        let batch: Vec<Tensor> = clips.iter().map(|c| self.pad(c)).collect();
        self.log_mel(&Tensor::stack(&batch, 0).to_device(device))
    }

    /// Log-mel features `[B, n_mels, seconds × 100]` of clips of at most `seconds` (whole, at
    /// most 30): the first frames of [`WhisperFeatures::extract`]'s, computed over the clip and
    /// enough zeros for every frame that reaches its audio, so the frames and the clip's
    /// maximum (which the floor is set from) are the full window's.
    pub fn extract_trimmed(&self, clips: &[&[f32]], seconds: usize, device: Device) -> Tensor {
        let frames = (seconds * self.sample_rate as usize / self.hop_length).min(self.frames());
        if frames == self.frames() {
            return self.extract(clips, device);
        }
        // Frame j spans samples [160 j - 200, 160 j + 200): one n_fft of zeros past the bucket
        // covers every frame that sees the clip, and keeps the reflection padding on zeros.
        let n = frames * self.hop_length + self.n_fft;
        let batch: Vec<Tensor> = clips
            .iter()
            .map(|c| {
                assert!(c.len() <= frames * self.hop_length, "a clip of {} samples is longer than {seconds} s", c.len());
                let mut v = vec![0f32; n];
                v[..c.len()].copy_from_slice(c);
                Tensor::from_slice(&v)
            })
            .collect();
        self.log_mel(&Tensor::stack(&batch, 0).to_device(device)).narrow(2, 0, frames as i64)
    }

    /// Log-mel features `[B, n_mels, frames]` of already padded waveforms `[B, samples]`.
    pub fn log_mel(&self, waves: &Tensor) -> Tensor {
        let device = waves.device();
        let window = self.window.to_device(device);
        // A centred STFT, padded as torch.stft(center=True) pads: reflect, n_fft / 2 each side.
        let half = (self.n_fft / 2) as i64;
        let padded = waves.to_kind(Kind::Float).unsqueeze(1).reflection_pad1d([half, half]).squeeze_dim(1);
        let stft = padded.stft(self.n_fft as i64, self.hop_length as i64, None::<i64>, Some(&window), false, true, true, false);
        let frames = stft.size()[2];
        let power = stft.narrow(2, 0, frames - 1).abs().pow_tensor_scalar(2);
        let mel = self.filters.to_device(device).transpose(0, 1).matmul(&power);
        let log = mel.clamp_min(1e-10).log10();
        let max = log.amax([1i64, 2].as_slice(), true);
        (log.maximum(&(max - 8.0)) + 4.0) / 4.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mel_scale_round_trips() {
        for hz in [0.0, 440.0, 999.0, 1000.0, 4000.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-9);
        }
    }

    #[test]
    fn shapes_and_real_frames() {
        let fe = WhisperFeatures::new(80).unwrap();
        let x = fe.extract(&[&vec![0.1f32; 16000], &[0.0; 5]], Device::Cpu);
        assert_eq!(x.size(), vec![2, 80, 3000]);
        assert_eq!(fe.real_frames(16000), 100);
        assert_eq!(fe.real_frames(16001), 101);
        assert_eq!(fe.real_frames(0), 1);
        assert_eq!(fe.real_frames(10_000_000), 3000);
    }

    /// The trimmed frames are the full window's first frames, also for a clip that fills its
    /// bucket to the last sample and for one of a few samples.
    #[test]
    fn trimmed_frames_are_the_full_windows_first_frames() {
        let fe = WhisperFeatures::new(80).unwrap();
        let tone = |n: usize| (0..n).map(|i| (i as f32 * 0.07).sin() * 0.5 + (i as f32 * 0.31).cos() * 0.1).collect::<Vec<f32>>();
        for (n, seconds) in [(32000, 2), (31_990, 2), (12_345, 1), (320, 1), (479_000, 30)] {
            let x = tone(n);
            let full = fe.extract(&[&x], Device::Cpu);
            let cut = fe.extract_trimmed(&[&x], seconds, Device::Cpu);
            assert_eq!(cut.size(), vec![1, 80, seconds as i64 * 100]);
            let diff = (full.narrow(2, 0, seconds as i64 * 100) - &cut).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "{n} samples in {seconds} s: {diff:.3e}");
        }
    }
}
