//! An audio encoder ready to featurise clips: Whisper (log-mel frames, 30 s windows) or
//! Wav2Vec2 / HuBERT (the waveform), opened from a registry name, a directory, a CTranslate2
//! `model.bin` or a hub id, with the sha256 of its weights for the feature cache and bundles.
//!
//! Clips are 16 kHz mono. A clip longer than one window is cut into windows; each window is
//! mean-pooled over the encoder frames of real audio only (never over Whisper's padding to
//! 30 s, nor over a batch's padding), and a clip's windows are averaged weighted by their real
//! frames, so the vector is the mean over every real frame of the clip. Whisper runs over the
//! whole 30 s window or only over the clip's own seconds ([`AudioWindow`]). The vector is read
//! at the output, at one hidden state, or at every hidden state pooled alike and stacked layer
//! after layer ([`AudioModel::stack_layers`], for the layer-sum head).

use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::{Device, Kind, Tensor};

use crate::audio::window::{embed_trimmed, AudioWindow};
use crate::audio::WhisperFeatures;
use crate::error::{Error, Result};
use crate::models::audio::whisper::{embed_clips, pool_real};
use crate::models::audio::{AudioConfig, Readout, Wav2Vec2Encoder, WhisperEncoder};
use crate::models::registry::{find_audio, AUDIO_ENTRIES};
use crate::models::{Mode, Stage};
use crate::weights::{LoadReport, Weights};

/// The sample rate every supported audio encoder takes.
pub const SAMPLE_RATE: u32 = 16000;
/// Seconds of audio in one window; longer clips are split.
pub const WINDOW_SECONDS: u32 = 30;
/// Samples in one window.
pub const WINDOW: usize = (SAMPLE_RATE * WINDOW_SECONDS) as usize;

/// The encoder and what its inputs need.
pub enum AudioEncoder {
    Whisper {
        enc: WhisperEncoder,
        fe: WhisperFeatures,
    },
    /// `normalize`: zero mean, unit variance per clip (`do_normalize` of the feature extractor).
    Wav2Vec2 {
        enc: Wav2Vec2Encoder,
        normalize: bool,
    },
}

/// An audio encoder with its provenance and the hidden state it is read at.
pub struct AudioModel {
    pub encoder: AudioEncoder,
    /// The model as given (registry name, directory, file or hub id).
    pub spec: String,
    /// Where the weights were read from.
    pub source: PathBuf,
    /// The sha256 of the weight file(s).
    pub file_sha256: String,
    /// The key of the feature cache: the weights' sha256 (with any tuned stages').
    pub weights_sha256: String,
    /// Hidden state to pool (`None`: the encoder's output); see [`AudioModel::set_layer`].
    pub layer: Option<usize>,
    /// Every hidden state `0..=layers` pooled and stacked layer after layer (`layer` weighted;
    /// `layer` is then `None`); see [`AudioModel::stack_layers`].
    pub all_layers: bool,
    /// Whisper: the span of the window the encoder runs over (`None` for Wav2Vec2 / HuBERT,
    /// which run over each clip's own samples); see [`AudioModel::set_window`].
    pub window: Option<AudioWindow>,
    pub report: LoadReport,
}

/// Where an audio model's files are: a path as given, a registry entry's fetched asset, or a
/// hub snapshot (hub cache, then download).
pub fn resolve(spec: &str) -> Result<PathBuf> {
    let p = Path::new(spec);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    let (repo, revision) = match find_audio(spec) {
        Some(e) => {
            if let Some(asset) = e.source.asset {
                let d = crate::assets::asset_dir().join(asset);
                if d.join("model.bin").is_file() || d.join("config.json").is_file() {
                    return Ok(d);
                }
            }
            (e.source.repo.to_string(), e.source.revision.to_string())
        }
        None => match spec.split_once('@') {
            Some((r, rev)) => (r.to_string(), rev.to_string()),
            None => (spec.to_string(), "main".to_string()),
        },
    };
    if !repo.contains('/') {
        let names: Vec<&str> = AUDIO_ENTRIES.iter().map(|e| e.name).collect();
        return Err(Error::Model(format!("audio model `{spec}` is neither a path nor a hub repo id (org/name); known names: {}", names.join(", "))));
    }
    let cache = crate::weights::hub::cache_dir();
    crate::weights::hub::resolve_snapshot(&cache, &repo, &revision).or_else(|_| {
        crate::weights::hub::download(&cache, &repo, &revision, None).map_err(|e| {
            let fetch = find_audio(spec).and_then(|e| e.source.fetch).map(|f| format!("fetch it with `headstart fetch {f}`, ")).unwrap_or_default();
            Error::Model(format!("audio model `{spec}`: {e}; {fetch}pass a model directory, or put {repo} in the hub cache ({})", cache.display()))
        })
    })
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::input(path, format!("invalid JSON: {e}")))
}

/// `do_normalize` of a Wav2Vec2 directory's `preprocessor_config.json` (true without one, as
/// `Wav2Vec2FeatureExtractor` defaults).
fn wants_normalize(dir: &Path) -> Result<bool> {
    let p = dir.join("preprocessor_config.json");
    if !p.is_file() {
        return Ok(true);
    }
    Ok(read_json(&p)?.get("do_normalize").and_then(Value::as_bool).unwrap_or(true))
}

impl AudioModel {
    /// Opens `spec` (see [`resolve`]): a Hugging Face Whisper, Wav2Vec2 or HuBERT directory, or
    /// a CTranslate2 Whisper `model.bin` (or a directory holding one).
    pub fn open(spec: &str) -> Result<AudioModel> {
        let path = resolve(spec)?;
        let ct2 = if path.is_file() { Some(path.clone()) } else { Some(path.join("model.bin")).filter(|p| p.is_file()) };
        let (encoder, report, file_sha256) = match ct2 {
            Some(bin) => {
                let (enc, report) = WhisperEncoder::from_ct2(&bin)?;
                let fe = WhisperFeatures::new(enc.cfg.n_mels as usize)?;
                (AudioEncoder::Whisper { enc, fe }, report, crate::weights::file_sha256(&bin)?)
            }
            None => {
                let cfg_path = path.join("config.json");
                let json = read_json(&cfg_path)?;
                let sha = Weights::open(&path)?.sha256()?;
                match json.get("model_type").and_then(Value::as_str) {
                    Some("whisper") => {
                        let (enc, report) = WhisperEncoder::from_hf_dir(&path)?;
                        let fe = WhisperFeatures::new(enc.cfg.n_mels as usize)?;
                        (AudioEncoder::Whisper { enc, fe }, report, sha)
                    }
                    Some("wav2vec2" | "hubert" | "wavlm") => {
                        let (enc, report) = Wav2Vec2Encoder::from_hf_dir(&path)?;
                        (AudioEncoder::Wav2Vec2 { enc, normalize: wants_normalize(&path)? }, report, sha)
                    }
                    other => {
                        return Err(Error::input(&cfg_path, format!("model_type {other:?} is not an audio encoder (whisper, wav2vec2, hubert, wavlm)")));
                    }
                }
            }
        };
        let window = matches!(encoder, AudioEncoder::Whisper { .. }).then_some(crate::audio::window::DEFAULT_WINDOW);
        Ok(AudioModel {
            encoder,
            spec: spec.to_string(),
            source: path,
            weights_sha256: file_sha256.clone(),
            file_sha256,
            layer: None,
            all_layers: false,
            window,
            report,
        })
    }

    /// Runs Whisper over `window`; refused for Wav2Vec2 / HuBERT, which have no fixed window.
    pub fn set_window(&mut self, window: AudioWindow) -> Result<()> {
        if self.window.is_none() {
            return Err(Error::Usage(format!(
                "setting `audio_window` ({window}) applies to Whisper models; {} ({}) runs over each clip's own samples",
                self.spec,
                self.family()
            )));
        }
        self.window = Some(window);
        Ok(())
    }

    /// How much of a full-window pass a clip of `samples` costs (see [`crate::audio::window::cost`]).
    pub fn cost(&self, samples: usize) -> f64 {
        crate::audio::window::cost(self.window.unwrap_or(AudioWindow::Full), samples, WINDOW)
    }

    /// Reads hidden state `layer` instead of the output (`0`: the first layer's input; the
    /// last: the output, after Whisper's final layer norm).
    pub fn set_layer(&mut self, layer: Option<usize>) -> Result<()> {
        if let Some(n) = layer {
            if n > self.num_layers() {
                return Err(Error::Usage(format!("setting `layer` {n}: {} has hidden states 0..={}", self.spec, self.num_layers())));
            }
        }
        self.layer = layer;
        Ok(())
    }

    /// Reads every hidden state `0..=layers` (the same pooling, windows and weighting as
    /// [`Self::set_layer`]) into one row, layer after layer: `[N, (layers + 1)·dim]`. Refused
    /// with a single layer set.
    pub fn stack_layers(&mut self) -> Result<()> {
        if let Some(n) = self.layer {
            return Err(Error::Usage(format!("setting `layer` is either a hidden state ({n}) or `weighted`, not both")));
        }
        self.all_layers = true;
        Ok(())
    }

    /// What each clip's row holds.
    pub fn readout(&self) -> Readout {
        if self.all_layers {
            Readout::All
        } else {
            self.layer.into()
        }
    }

    /// Hidden states stacked in each row (`None`: one vector of [`Self::dim`]).
    pub fn stacked_layers(&self) -> Option<usize> {
        self.all_layers.then(|| self.num_layers() + 1)
    }

    /// Width of a clip's row: [`Self::dim`], times the hidden states when they are stacked.
    pub fn feature_dim(&self) -> i64 {
        self.dim() * self.stacked_layers().unwrap_or(1) as i64
    }

    pub fn family(&self) -> &'static str {
        match &self.encoder {
            AudioEncoder::Whisper { .. } => "whisper",
            AudioEncoder::Wav2Vec2 { enc, .. } if enc.cfg.model_type == "hubert" => "hubert",
            AudioEncoder::Wav2Vec2 { enc, .. } if enc.cfg.model_type == "wavlm" => "wavlm",
            AudioEncoder::Wav2Vec2 { .. } => "wav2vec2",
        }
    }

    pub fn config(&self) -> AudioConfig {
        match &self.encoder {
            AudioEncoder::Whisper { enc, .. } => AudioConfig::Whisper(enc.cfg.clone()),
            AudioEncoder::Wav2Vec2 { enc, .. } => AudioConfig::Wav2vec2(enc.cfg.clone()),
        }
    }

    pub fn normalize(&self) -> bool {
        matches!(self.encoder, AudioEncoder::Wav2Vec2 { normalize: true, .. })
    }

    pub fn vs(&self) -> &tch::nn::VarStore {
        match &self.encoder {
            AudioEncoder::Whisper { enc, .. } => &enc.vs,
            AudioEncoder::Wav2Vec2 { enc, .. } => &enc.vs,
        }
    }

    pub fn stages(&self) -> &[Stage] {
        match &self.encoder {
            AudioEncoder::Whisper { enc, .. } => enc.stages(),
            AudioEncoder::Wav2Vec2 { enc, .. } => enc.stages(),
        }
    }

    /// Transformer layers.
    pub fn num_layers(&self) -> usize {
        match &self.encoder {
            AudioEncoder::Whisper { enc, .. } => enc.cfg.layers as usize,
            AudioEncoder::Wav2Vec2 { enc, .. } => enc.cfg.layers as usize,
        }
    }

    /// Width of the pooled vector.
    pub fn dim(&self) -> i64 {
        match &self.encoder {
            AudioEncoder::Whisper { enc, .. } => enc.cfg.d_model,
            AudioEncoder::Wav2Vec2 { enc, .. } => enc.cfg.hidden_size,
        }
    }

    /// The shortest clip that makes one encoder frame (Whisper: one frame after the stride-2
    /// convolution; Wav2Vec2: the feature encoder's receptive field). Shorter clips are padded.
    pub fn min_samples(&self) -> usize {
        match &self.encoder {
            AudioEncoder::Whisper { fe, .. } => 2 * fe.hop_length,
            AudioEncoder::Wav2Vec2 { enc, .. } => {
                let (k, s) = (&enc.cfg.conv_kernel, &enc.cfg.conv_stride);
                k.iter().zip(s).rev().fold(1i64, |r, (&k, &s)| (r - 1) * s + k) as usize
            }
        }
    }

    /// Everything the pooled vectors depend on, for the feature cache key.
    pub fn cache_key(&self) -> Value {
        let mut key = serde_json::json!({
            "audio_encoder": self.family(), "config": self.config(), "weights": self.weights_sha256, "layer": self.layer,
            "pooling": "mean_real_frames", "sample_rate": SAMPLE_RATE, "window_seconds": WINDOW_SECONDS,
            "normalize": self.normalize(), "dim": self.dim(),
        });
        // Full-window keys stay as they were before the setting, so their caches still hit.
        if self.window == Some(AudioWindow::Clip) {
            key["window"] = serde_json::json!(AudioWindow::Clip);
        }
        // As do keys of the output and of one layer.
        if self.all_layers {
            key["layers"] = serde_json::json!("all_stacked");
            key["feature_dim"] = serde_json::json!(self.feature_dim());
        }
        key
    }

    /// Pooled vectors `[N, feature_dim]` of 16 kHz clips (each at least [`Self::min_samples`] long), at
    /// most `batch` windows per encoder pass (with Whisper's `clip` window, at most as many
    /// encoder positions as `batch` full windows).
    pub fn embed(&self, clips: &[Vec<f32>], batch: usize) -> Result<Tensor> {
        if clips.is_empty() {
            return Ok(Tensor::zeros([0, self.feature_dim()], tch::kind::FLOAT_CPU));
        }
        if let (AudioEncoder::Whisper { enc, fe }, Some(AudioWindow::Clip)) = (&self.encoder, self.window) {
            let refs: Vec<&[f32]> = clips.iter().map(Vec::as_slice).collect();
            return embed_trimmed(enc, fe, &refs, self.readout(), batch.max(1) * enc.cfg.max_positions as usize);
        }
        let mut out = vec![];
        let mut start = 0;
        while start < clips.len() {
            // Whole clips per pass, at most `batch` windows (one long clip may exceed it).
            let (mut end, mut windows) = (start, 0);
            while end < clips.len() && (end == start || windows + clips[end].len().div_ceil(WINDOW).max(1) <= batch.max(1)) {
                windows += clips[end].len().div_ceil(WINDOW).max(1);
                end += 1;
            }
            out.push(self.embed_group(&clips[start..end])?);
            start = end;
        }
        Ok(Tensor::cat(&out, 0))
    }

    fn embed_group(&self, clips: &[Vec<f32>]) -> Result<Tensor> {
        match &self.encoder {
            AudioEncoder::Whisper { enc, fe } => {
                let refs: Vec<&[f32]> = clips.iter().map(Vec::as_slice).collect();
                embed_clips(enc, fe, &refs, self.readout(), Device::Cpu)
            }
            AudioEncoder::Wav2Vec2 { enc, normalize } => {
                let rows: Vec<Tensor> = clips.iter().map(|c| self.embed_wav2vec2(enc, c, *normalize)).collect::<Result<_>>()?;
                Ok(Tensor::stack(&rows, 0))
            }
        }
    }

    /// One clip through Wav2Vec2: normalised whole (as the feature extractor does), cut into
    /// windows, each window pooled over its frames, the windows weighted by their frames.
    fn embed_wav2vec2(&self, enc: &Wav2Vec2Encoder, clip: &[f32], normalize: bool) -> Result<Tensor> {
        let clip = if normalize { crate::audio::normalize(clip) } else { clip.to_vec() };
        let min = self.min_samples();
        let windows: Vec<Vec<f32>> = clip
            .chunks(WINDOW)
            .map(|w| {
                let mut w = w.to_vec();
                w.resize(w.len().max(min), 0.0);
                w
            })
            .collect();
        let (mut sum, mut frames) = (Tensor::zeros([self.feature_dim()], tch::kind::FLOAT_CPU), 0usize);
        // One window per pass: a model without an attention mask would see a batch's padding.
        for w in &windows {
            let wave = Tensor::from_slice(w).unsqueeze(0);
            let n = enc.cfg.frames(w.len());
            let pooled = tch::no_grad(|| -> Result<Tensor> {
                Ok(match self.readout() {
                    Readout::Layer(l) => pool_real(&enc.forward_to(&wave, None, l, Mode::Eval)?, &[n]),
                    Readout::Output => pool_real(&enc.forward_from(&wave, None, enc.stages().len(), Mode::Eval)?, &[n]),
                    Readout::All => Tensor::cat(&enc.hidden_states(&wave, None, Mode::Eval)?.iter().map(|h| pool_real(h, &[n])).collect::<Vec<_>>(), 1),
                })
            })?;
            sum += pooled.squeeze_dim(0).to_kind(Kind::Float) * n as f64;
            frames += n;
        }
        Ok(sum / frames.max(1) as f64)
    }
}

/// The encoder for the shared run code. The input of stage 0 is Whisper's log-mel frames
/// `[B, n_mels, 3000]` or the waveform `[B, samples]`; `Input` holds each row's real length
/// (Whisper: encoder frames of real audio; Wav2Vec2: samples), which pooling honours.
impl crate::models::Encoder for AudioModel {
    type Input = Vec<usize>;
    fn stages(&self) -> &[Stage] {
        AudioModel::stages(self)
    }
    fn forward_from(&self, x: &Tensor, lengths: &Vec<usize>, first: usize, mode: Mode) -> Tensor {
        let h = match &self.encoder {
            AudioEncoder::Whisper { enc, .. } => enc.forward_from(x, first, mode),
            AudioEncoder::Wav2Vec2 { enc, .. } => enc.forward_from(x, enc.uses_attention_mask().then_some(lengths.as_slice()), first, mode),
        };
        h.expect("audio batches are built to the encoder's input shape")
    }
    fn pool(&self, h: &Tensor, lengths: &Vec<usize>) -> Tensor {
        match &self.encoder {
            AudioEncoder::Whisper { .. } => pool_real(h, lengths),
            AudioEncoder::Wav2Vec2 { enc, .. } => pool_real(h, &enc.frame_counts(lengths)),
        }
    }
    fn num_features(&self) -> i64 {
        self.dim()
    }
}
