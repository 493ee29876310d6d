//! Fine-tuning an audio encoder through the shared learner: the encoder and a new linear head
//! (`classifier.*`) in one variable store. `last:N` counts transformer layers (Whisper's stem,
//! Wav2Vec2's feature projection and positions come before them); Wav2Vec2's convolutional
//! feature encoder stays frozen, as `freeze_feature_encoder` leaves it. A clip trains on its
//! first 30 s window, pooled over its real frames.
//!
//! Wav2Vec2's frozen feature encoder runs once per clip, alone (so a batch's padding never
//! reaches its group norm), when the learner is made; batches pad its output and mask the
//! padding in attention.
//!
//! With augmentation on, training batches get SpecAugment-style masks, seeded by the run's
//! seed, the epoch and the example: two frequency masks (up to 27 mel bins each) and two time
//! masks (up to a tenth of the real frames each) on Whisper's log-mel frames, filled with the
//! clip's silence level; on Wav2Vec2, the same on the feature encoder's output (channels and
//! frames set to zero, as `mask_feature_prob` / `mask_time_prob` do before the projection).

use tch::{nn, Device, Kind, Tensor};

use crate::audio::encoder::{AudioEncoder, AudioModel, WINDOW};
use crate::data::Rng;
use crate::engine::autocast_cpu;
use crate::error::{Error, Result};
use crate::models::audio::whisper::encoder_frames;
use crate::models::audio::Wav2Vec2Encoder;
use crate::models::{Encoder, Mode, Stage};
use crate::progress::Progress;
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
    /// Wav2Vec2: each clip's feature-encoder output `[C, T]` (first window).
    features: Vec<Tensor>,
}

impl<'a> AudioLearner<'a> {
    /// A learner over 16 kHz `clips` with `labels`, a fresh `num_classes`-way head, and the
    /// stages `cfg.unfreeze` names trainable.
    pub fn new(
        model: &'a AudioModel,
        clips: &'a [Vec<f32>],
        labels: &[i64],
        num_classes: i64,
        cfg: &'a FinetuneConfig,
        progress: &dyn Progress,
    ) -> Result<AudioLearner<'a>> {
        cfg.validate()?;
        if clips.len() != labels.len() {
            return Err(Error::Model(format!("{} clips but {} labels", clips.len(), labels.len())));
        }
        if let Some(c) = clips.iter().find(|c| c.len() < model.min_samples()) {
            return Err(Error::Model(format!("a clip of {} samples is shorter than one encoder frame", c.len())));
        }
        let mut first = first_trainable(cfg.unfreeze, model.stages().len())?;
        let mut features = vec![];
        if let AudioEncoder::Wav2Vec2 { enc, normalize } = &model.encoder {
            first = first.max(Wav2Vec2Encoder::DEFAULT_FIRST_TRAINABLE);
            progress.start("feature encoder", clips.len() as u64);
            for c in clips {
                let w = &c[..c.len().min(WINDOW)];
                let w = if *normalize { crate::audio::normalize(w) } else { w.to_vec() };
                features.push(enc.feature_encoder(&Tensor::from_slice(&w).unsqueeze(0))?.squeeze_dim(0));
                progress.inc(1);
            }
            progress.finish();
        }
        let head = nn::linear(model.vs().root() / "classifier", model.dim(), num_classes, Default::default());
        Ok(AudioLearner { model, head, clips, labels: Tensor::from_slice(labels), first, num_classes, cfg, features })
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

/// SpecAugment on one clip's log-mel frames `[n_mels, T]`: masks within the `real` frames of
/// audio (the padding already holds the silence level).
pub fn mask_mel(mel: &Tensor, real: usize, rng: &mut Rng) -> Tensor {
    let mel = mel.copy();
    let n_mels = mel.size()[0] as usize;
    let fill = mel.min().double_value(&[]);
    for _ in 0..MASKS {
        let (f0, w) = span(rng, n_mels, FREQ_MASK);
        if w > 0 {
            let _ = mel.narrow(1, 0, real as i64).narrow(0, f0 as i64, w as i64).fill_(fill);
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

/// SpecAugment on one clip's feature-encoder output `[C, T]`: channel and time masks of zeros.
pub fn mask_features(f: &Tensor, rng: &mut Rng) -> Tensor {
    let f = f.copy();
    let (c, t) = (f.size()[0] as usize, f.size()[1] as usize);
    for _ in 0..MASKS {
        let (c0, w) = span(rng, c, FREQ_MASK);
        if w > 0 {
            let _ = f.narrow(0, c0 as i64, w as i64).fill_(0.0);
        }
    }
    for _ in 0..MASKS {
        let (t0, w) = span(rng, t, t / 10);
        if w > 0 {
            let _ = f.narrow(1, t0 as i64, w as i64).fill_(0.0);
        }
    }
    f
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
            AudioEncoder::Wav2Vec2 { .. } => {
                let longest = rows.iter().map(|&i| self.features[i].size()[1]).max().unwrap_or(1);
                let xs: Vec<Tensor> = rows
                    .iter()
                    .map(|&i| {
                        let f = match self.rng(i, epoch) {
                            Some(mut rng) => mask_features(&self.features[i], &mut rng),
                            None => self.features[i].shallow_clone(),
                        };
                        f.constant_pad_nd([0, longest - f.size()[1]])
                    })
                    .collect();
                Ok(AudioBatch { x: Tensor::stack(&xs, 0), lengths: windows.iter().map(|w| w.len()).collect() })
            }
        }
    }

    /// Trainable stages, pooling over real frames, the head.
    fn logits(&self, b: &AudioBatch, train: bool) -> Tensor {
        let mode = if train { Mode::Train } else { Mode::Eval };
        autocast_cpu(self.cfg.precision, || {
            let h = match &self.model.encoder {
                AudioEncoder::Wav2Vec2 { enc, .. } => enc.forward_from_features(&b.x, Some(&b.lengths), self.first, mode),
                AudioEncoder::Whisper { .. } => self.model.forward_from(&b.x, &b.lengths, self.first, mode),
            };
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
        let f = Tensor::ones([64, 100], (Kind::Float, Device::Cpu));
        let m = mask_features(&f, &mut Rng(3));
        let zeros = m.eq(0.0).sum(Kind::Int64).int64_value(&[]);
        assert!(zeros > 0 && zeros <= 2 * 27 * 100 + 2 * 10 * 64, "{zeros}");
        assert!(m.equal(&mask_features(&f, &mut Rng(3))));
    }
}
