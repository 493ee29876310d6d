//! Fine-tuning an audio encoder through the shared learner: the encoder and a new linear head
//! (`classifier.*`) in one variable store. `last:N` counts transformer layers (Whisper's stem,
//! Wav2Vec2's feature projection and positions come before them); Wav2Vec2's convolutional
//! feature encoder stays frozen, as `freeze_feature_encoder` leaves it. A clip trains on its
//! first 30 s window, pooled over its real frames.
//!
//! With augmentation on, training batches get SpecAugment-style masks, seeded by the run's
//! seed, the epoch and the example: two frequency masks (up to 27 mel bins each) and two time
//! masks (up to a tenth of the real frames each) on Whisper's log-mel frames, filled with the
//! clip's silence level; on a Wav2Vec2 waveform, two time masks of silence.

use tch::{nn, Device, Kind, Tensor};

use crate::audio::encoder::{AudioEncoder, AudioModel, WINDOW};
use crate::data::Rng;
use crate::engine::autocast_cpu;
use crate::error::{Error, Result};
use crate::models::audio::whisper::encoder_frames;
use crate::models::audio::Wav2Vec2Encoder;
use crate::models::{Encoder, Mode, Stage};
use crate::train::finetune::{first_trainable, FinetuneConfig, Learner};

/// Widest frequency mask, in mel bins (SpecAugment's LibriSpeech policies: F = 27).
const FREQ_MASK: usize = 27;
/// Masks of each kind.
const MASKS: usize = 2;

/// One batch: the first stage's input and each row's real length (Whisper: encoder frames;
/// Wav2Vec2: samples).
pub struct AudioBatch {
    pub x: Tensor,
    pub lengths: Vec<usize>,
}

pub struct AudioLearner<'a> {
    model: &'a AudioModel,
    head: nn::Linear,
    clips: &'a [Vec<f32>],
    labels: Tensor,
    first: usize,
    num_classes: i64,
    cfg: &'a FinetuneConfig,
}

impl<'a> AudioLearner<'a> {
    /// A learner over 16 kHz `clips` with `labels`, a fresh `num_classes`-way head, and the
    /// stages `cfg.unfreeze` names trainable.
    pub fn new(model: &'a AudioModel, clips: &'a [Vec<f32>], labels: &[i64], num_classes: i64, cfg: &'a FinetuneConfig) -> Result<AudioLearner<'a>> {
        cfg.validate()?;
        if clips.len() != labels.len() {
            return Err(Error::Model(format!("{} clips but {} labels", clips.len(), labels.len())));
        }
        if let Some(c) = clips.iter().find(|c| c.len() < model.min_samples()) {
            return Err(Error::Model(format!("a clip of {} samples is shorter than one encoder frame", c.len())));
        }
        let mut first = first_trainable(cfg.unfreeze, model.stages().len())?;
        if matches!(model.encoder, AudioEncoder::Wav2Vec2 { .. }) {
            first = first.max(Wav2Vec2Encoder::DEFAULT_FIRST_TRAINABLE);
        }
        let head = nn::linear(model.vs().root() / "classifier", model.dim(), num_classes, Default::default());
        Ok(AudioLearner { model, head, clips, labels: Tensor::from_slice(labels), first, num_classes, cfg })
    }

    fn rng(&self, row: usize, epoch: Option<usize>) -> Option<Rng> {
        let e = epoch.filter(|_| self.cfg.augment.is_some())?;
        Some(Rng(self.cfg.seed ^ ((e as u64 + 1) << 32) ^ (row as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
    }
}

/// `[start, start + width)` with width below `max + 1` and the span inside `0..n`.
fn span(rng: &mut Rng, n: usize, max: usize) -> (usize, usize) {
    let w = rng.below(max.min(n) + 1);
    let start = rng.below(n - w + 1);
    (start, w)
}

/// SpecAugment on one clip's log-mel frames `[n_mels, T]` (`real` frames of audio).
pub fn mask_mel(mel: &Tensor, real: usize, rng: &mut Rng) -> Tensor {
    let mel = mel.copy();
    let n_mels = mel.size()[0] as usize;
    let fill = mel.min().double_value(&[]);
    for _ in 0..MASKS {
        let (f0, w) = span(rng, n_mels, FREQ_MASK);
        if w > 0 {
            let _ = mel.narrow(0, f0 as i64, w as i64).fill_(fill);
        }
    }
    for _ in 0..MASKS {
        let (t0, w) = span(rng, real, real / 10);
        if w > 0 {
            let _ = mel.narrow(1, t0 as i64, w as i64).fill_(fill);
        }
    }
    mel
}

/// Time masks of silence on a waveform (a tenth of the clip at most each).
pub fn mask_wave(wave: &mut [f32], rng: &mut Rng) {
    let n = wave.len();
    for _ in 0..MASKS {
        let (t0, w) = span(rng, n, n / 10);
        wave[t0..t0 + w].fill(0.0);
    }
}

impl Learner for AudioLearner<'_> {
    type Batch = AudioBatch;

    fn vs(&self) -> &nn::VarStore {
        self.model.vs()
    }
    fn stages(&self) -> &[Stage] {
        self.model.stages()
    }
    fn first_trainable(&self) -> usize {
        self.first
    }
    fn labels(&self) -> &Tensor {
        &self.labels
    }
    fn num_classes(&self) -> i64 {
        self.num_classes
    }
    fn head(&self) -> &nn::Linear {
        &self.head
    }

    fn batch(&self, rows: &[usize], epoch: Option<usize>) -> Result<AudioBatch> {
        let windows: Vec<&[f32]> = rows.iter().map(|&i| &self.clips[i][..self.clips[i].len().min(WINDOW)]).collect();
        match &self.model.encoder {
            AudioEncoder::Whisper { enc, fe } => {
                let mel = fe.extract(&windows, Device::Cpu);
                let max = enc.cfg.max_positions as usize;
                let lengths: Vec<usize> = windows.iter().map(|w| encoder_frames(w.len(), max)).collect();
                let rows_mel: Vec<Tensor> = (0..rows.len())
                    .map(|j| match self.rng(rows[j], epoch) {
                        Some(mut rng) => mask_mel(&mel.get(j as i64), fe.real_frames(windows[j].len()), &mut rng),
                        None => mel.get(j as i64),
                    })
                    .collect();
                Ok(AudioBatch { x: Tensor::stack(&rows_mel, 0), lengths })
            }
            AudioEncoder::Wav2Vec2 { normalize, .. } => {
                let longest = windows.iter().map(|w| w.len()).max().unwrap_or(0);
                let mut flat = Vec::with_capacity(longest * rows.len());
                for (j, w) in windows.iter().enumerate() {
                    let mut w = if *normalize { crate::audio::normalize(w) } else { w.to_vec() };
                    if let Some(mut rng) = self.rng(rows[j], epoch) {
                        mask_wave(&mut w, &mut rng);
                    }
                    w.resize(longest, 0.0);
                    flat.extend(w);
                }
                let x = Tensor::from_slice(&flat).view([rows.len() as i64, longest as i64]);
                Ok(AudioBatch { x, lengths: windows.iter().map(|w| w.len()).collect() })
            }
        }
    }

    /// Trainable stages, pooling over real frames, dropout-free head.
    fn logits(&self, b: &AudioBatch, train: bool) -> Tensor {
        let mode = if train { Mode::Train } else { Mode::Eval };
        autocast_cpu(self.cfg.precision, || {
            let h = self.model.forward_from(&b.x, &b.lengths, self.first, mode);
            self.model.pool(&h, &b.lengths).apply(&self.head)
        })
        .to_kind(Kind::Float)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_seeded_and_stay_inside_the_real_frames() {
        let mel = Tensor::arange(80 * 300, (Kind::Float, Device::Cpu)).view([80, 300]) + 1.0;
        let a = mask_mel(&mel, 200, &mut Rng(7));
        let b = mask_mel(&mel, 200, &mut Rng(7));
        assert!(a.equal(&b), "same seed, same masks");
        assert!(!a.equal(&mask_mel(&mel, 200, &mut Rng(8))), "another seed, other masks");
        // Frames past the real ones are never masked.
        assert!(a.narrow(1, 200, 100).equal(&mel.narrow(1, 200, 100)));
        let masked = a.eq(1.0).sum(Kind::Int64).int64_value(&[]);
        assert!(masked > 1 && masked < 80 * 300 / 2, "{masked} masked values");
        let mut w = vec![1f32; 1000];
        mask_wave(&mut w, &mut Rng(3));
        let zeros = w.iter().filter(|&&x| x == 0.0).count();
        assert!(zeros <= 200, "{zeros}");
    }
}
