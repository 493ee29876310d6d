//! The audio block: a folder of class folders of audio files (WAV, FLAC, OGG/Vorbis, MP3) or a
//! `path,label` manifest, decoded to 16 kHz mono and featurised by a Whisper or Wav2Vec2 /
//! HuBERT encoder through the feature cache; fine-tuned by [`AudioLearner`].
//!
//! Files that cannot be used are skipped with their reason (written to `errors.jsonl`):
//! unreadable, zero-length, truncated or undecodable files, all-silent ones (peak below
//! −80 dBFS) and over-long ones (more than `max_seconds`). Clips shorter than one encoder frame
//! are padded with silence and counted in a warning.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::audio::encoder::{AudioModel, SAMPLE_RATE};
use crate::audio::learner::AudioLearner;
use crate::audio::window::AudioWindow;
use crate::bundle::{AudioEncoderRef, Bundle, EncoderRef};
use crate::cache::{sha256_hex, FeatureCache};
use crate::data::{Dataset, FileKind};
use crate::error::{Error, Result};
use crate::learn::split::Skip;
use crate::learn::task::{self, Block, Featurised, Opened, TrainBlock, TrainOutcome};
use crate::metrics::Report;
use crate::models::registry::{Modality, DEFAULT_AUDIO_MODEL};
use crate::progress::Progress;
use crate::train::finetune::{FinetuneConfig, LrFind};
use crate::train::{Head, HeadKind, HeadSpec, TrainConfig};

/// File extensions read as audio.
pub const AUDIO_EXTENSIONS: &[&str] = &["wav", "flac", "ogg", "oga", "mp3"];
/// What class folders of audio hold.
pub const AUDIO_FILES: FileKind = FileKind { extensions: AUDIO_EXTENSIONS, noun: "audio", plural: "clips" };
/// A clip whose peak is at most this (−80 dBFS) is silent.
pub const SILENCE_PEAK: f32 = 1e-4;
/// The longest clip read by default, in seconds.
pub const DEFAULT_MAX_SECONDS: f64 = 600.0;

/// How clips are read beyond the model's own input spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioOptions {
    /// Hidden state to pool (`None`: the encoder's output, or every one with
    /// `weighted_layers`).
    #[serde(default)]
    pub layer: Option<usize>,
    /// `layer` weighted: pool every hidden state and stack them, for the layer-sum head (a
    /// learned weighted sum of the layers, then a linear layer; `train.head` must be
    /// [`HeadKind::LayerSum`]). Excludes `layer`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub weighted_layers: bool,
    /// Longer clips are skipped.
    pub max_seconds: f64,
    /// Whisper: the span of the window the encoder runs over (`None`: the library's default
    /// for feature extraction; fine-tuning trains on the full window).
    #[serde(default)]
    pub window: Option<AudioWindow>,
}

impl Default for AudioOptions {
    fn default() -> Self {
        AudioOptions { layer: None, weighted_layers: false, max_seconds: DEFAULT_MAX_SECONDS, window: None }
    }
}

/// Everything an audio `train` needs; saved as the run's resolved config.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AudioTrainRequest {
    pub data: PathBuf,
    pub val: Option<PathBuf>,
    pub val_split: f64,
    /// Registry name, directory, `model.bin` or hub id.
    pub model: String,
    pub audio: AudioOptions,
    pub out: PathBuf,
    pub cache: Option<PathBuf>,
    /// Windows per encoder pass when featurising.
    pub eval_batch_size: usize,
    pub train: TrainConfig,
    pub finetune: Option<FinetuneConfig>,
}

impl AudioTrainRequest {
    /// A request on `data` with the library's defaults: Whisper tiny.en, a stratified
    /// validation split, no cache, a head on frozen features.
    pub fn for_data(data: PathBuf) -> AudioTrainRequest {
        AudioTrainRequest {
            data,
            val: None,
            val_split: task::DEFAULT_VAL_SPLIT,
            model: DEFAULT_AUDIO_MODEL.into(),
            audio: AudioOptions::default(),
            out: PathBuf::new(),
            cache: None,
            eval_batch_size: 8,
            train: TrainConfig::default(),
            finetune: None,
        }
    }
}

/// The defaults for fine-tuning audio (those of `transformers`' audio-classification example):
/// AdamW at 3e-5, weight decay 0.01, linear decay after 10 % warm-up, every transformer layer
/// unfrozen (the convolutional feature encoder stays frozen), no head-only phase.
pub fn audio_finetune_defaults() -> FinetuneConfig {
    FinetuneConfig {
        unfreeze: crate::train::finetune::Unfreeze::All,
        epochs: 5,
        head_epochs: 0,
        batch_size: 8,
        lr: 3e-5,
        stage_lr_decay: 1.0,
        weight_decay: 0.01,
        schedule: crate::train::schedule::Schedule::Linear { warmup: 0 },
        warmup_ratio: Some(0.1),
        ..FinetuneConfig::default()
    }
}

/// A clip read for the encoder: 16 kHz mono samples, at least `min_samples` long.
pub struct Clip {
    pub samples: Vec<f32>,
    /// Shorter than one frame: padded with silence.
    pub padded: bool,
}

/// The message of an error without the path it names (a [`Skip`] holds the path).
fn reason(e: Error) -> String {
    match e {
        Error::Input { message, .. } => message,
        Error::Io { source, .. } => format!("cannot read: {source}"),
        other => other.to_string(),
    }
}

/// Why a clip is not used.
#[derive(Debug, Clone, PartialEq)]
pub enum Unusable {
    /// Unreadable, empty, truncated or undecodable.
    Unreadable(String),
    /// Longer than `max_seconds`.
    OverLong(String),
    /// All silent (peak at or below -80 dBFS).
    Silent(String),
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Unreadable(m) | Unusable::OverLong(m) | Unusable::Silent(m) => f.write_str(m),
        }
    }
}

/// How clips are read for an encoder: the longest clip taken, and the shortest one it makes a
/// frame of (shorter ones are padded with silence).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipReader {
    pub max_seconds: f64,
    pub min_samples: usize,
}

impl ClipReader {
    /// Decodes, checks and resamples one clip, a file or bytes in memory: the one path `train`,
    /// `eval`, `predict` and `serve` read audio through.
    pub fn read(&self, src: crate::audio::Encoded<'_>) -> std::result::Result<Clip, Unusable> {
        let max_seconds = self.max_seconds;
        let d = match crate::audio::decode_capped(src, max_seconds).map_err(|e| Unusable::Unreadable(reason(e)))? {
            crate::audio::Capped::Clip(d) => d,
            crate::audio::Capped::OverLong { seconds: Some(s) } => {
                return Err(Unusable::OverLong(format!("over-long: {s:.1} s (the limit is {max_seconds} s, setting `max_seconds`)")))
            }
            crate::audio::Capped::OverLong { seconds: None } => {
                return Err(Unusable::OverLong(format!("over-long: more than {max_seconds} s (the limit, setting `max_seconds`)")))
            }
        };
        let peak = d.samples.iter().fold(0f32, |m, &x| m.max(x.abs()));
        if peak <= SILENCE_PEAK {
            return Err(Unusable::Silent(format!("all silent: peak {peak:.1e}, at or below -80 dBFS")));
        }
        let mut samples = if d.sample_rate == SAMPLE_RATE { d.samples } else { crate::audio::resample::resample(&d.samples, d.sample_rate, SAMPLE_RATE) };
        let padded = samples.len() < self.min_samples;
        if padded {
            samples.resize(self.min_samples, 0.0);
        }
        Ok(Clip { samples, padded })
    }
}

/// Decodes, checks and resamples one file; `Err` holds why it is skipped.
pub fn read_clip(path: &Path, max_seconds: f64, min_samples: usize) -> std::result::Result<Clip, String> {
    ClipReader { max_seconds, min_samples }.read(crate::audio::Encoded::File(path)).map_err(|u| u.to_string())
}

fn padded_warning(n: usize, min_samples: usize) -> Vec<String> {
    if n == 0 {
        return vec![];
    }
    let ms = min_samples as f64 * 1000.0 / SAMPLE_RATE as f64;
    let (clips, were) = if n == 1 { ("clip", "was") } else { ("clips", "were") };
    vec![format!("{n} {clips} shorter than one encoder frame ({ms:.0} ms) {were} padded with silence")]
}

/// How audio files are read and featurised; with a request, how a run trains.
pub struct AudioBlock<'a> {
    pub req: Option<&'a AudioTrainRequest>,
    pub max_seconds: f64,
    /// Feature cache root; `None` disables the cache.
    pub cache: Option<PathBuf>,
    /// Windows per encoder pass.
    pub batch_size: usize,
    /// Whisper's window for a model this block opens (`None`: the default; a bundle's model
    /// comes with its own).
    pub window: Option<AudioWindow>,
}

impl<'a> AudioBlock<'a> {
    pub fn for_request(req: &'a AudioTrainRequest) -> AudioBlock<'a> {
        AudioBlock {
            req: Some(req),
            max_seconds: req.audio.max_seconds,
            cache: req.cache.clone(),
            batch_size: req.eval_batch_size.max(1),
            window: req.audio.window,
        }
    }

    fn req(&self) -> &'a AudioTrainRequest {
        self.req.expect("a training block has a request")
    }

    /// Decodes every file of `paths` (no encoder): the usable clips, and the files skipped.
    fn read_all(&self, m: &AudioModel, paths: &[PathBuf], progress: &dyn Progress) -> (Featurised, Vec<Vec<f32>>) {
        progress.start("decode", paths.len() as u64);
        let (mut f, mut clips, mut padded) = (Featurised::all(0), vec![], 0);
        for (i, p) in paths.iter().enumerate() {
            match read_clip(p, self.max_seconds, m.min_samples()) {
                Ok(c) => {
                    padded += c.padded as usize;
                    f.ok.push(i);
                    clips.push(c.samples);
                }
                Err(reason) => f.skipped.push(Skip { path: p.clone(), reason }),
            }
            progress.inc(1);
        }
        progress.finish();
        f.features = Tensor::zeros([f.ok.len() as i64, 0], tch::kind::FLOAT_CPU);
        f.warnings = padded_warning(padded, m.min_samples());
        (f, clips)
    }
}

/// Clips decoded but not yet through the encoder: (row, cache key, samples).
type Pending = Vec<(usize, String, Vec<f32>)>;

impl AudioBlock<'_> {
    fn flush(&self, m: &AudioModel, pending: &mut Pending, rows: &mut [Option<Vec<f32>>], cache: Option<&FeatureCache>) -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let clips: Vec<Vec<f32>> = pending.iter_mut().map(|p| std::mem::take(&mut p.2)).collect();
        let x = m.embed(&clips, self.batch_size)?;
        let dim = m.feature_dim() as usize;
        let flat: Vec<f32> = Vec::try_from(x.flatten(0, -1))?;
        for (j, (row, key, _)) in pending.drain(..).enumerate() {
            let v = flat[j * dim..(j + 1) * dim].to_vec();
            if let Some(c) = cache {
                c.put(&key, &v)?;
            }
            rows[row] = Some(v);
        }
        Ok(())
    }
}

impl<'a> Block for AudioBlock<'a> {
    type Data = Vec<PathBuf>;
    type Model = AudioModel;
    type Inputs = Vec<Vec<f32>>;
    type Learner<'l>
        = AudioLearner<'l>
    where
        Self: 'l;
    const NOUN: &'static str = "clips";

    fn open(&self, path: &Path, classes: Option<&[String]>) -> Result<Opened<Vec<PathBuf>>> {
        let ds = Dataset::open_kind(path, classes, AUDIO_FILES)?;
        let labels = ds.items.iter().map(|i| i.label).collect();
        Ok(Opened { data: ds.items.into_iter().map(|i| i.path).collect(), labels, classes: ds.classes, skipped: ds.skipped, warnings: ds.warnings })
    }

    fn append(&self, data: &mut Vec<PathBuf>, more: Vec<PathBuf>) {
        data.extend(more);
    }

    /// Features of every usable file: a file whose bytes the cache has seen is not decoded.
    fn featurise(&self, m: &AudioModel, paths: &Vec<PathBuf>, progress: &dyn Progress) -> Result<Featurised> {
        let dim = m.feature_dim() as usize;
        let mut key = m.cache_key();
        key["max_seconds"] = serde_json::json!(self.max_seconds);
        let cache = self.cache.as_deref().map(|root| FeatureCache::keyed(root, &key, dim)).transpose()?;
        let mut rows: Vec<Option<Vec<f32>>> = vec![None; paths.len()];
        let (mut f, mut pending, mut padded, mut cost) = (Featurised::all(0), Pending::new(), 0, 0.0);
        progress.start("embed", paths.len() as u64);
        for (i, p) in paths.iter().enumerate() {
            let hash = match std::fs::read(p) {
                Ok(bytes) => sha256_hex(&bytes),
                Err(e) => {
                    f.skipped.push(Skip { path: p.clone(), reason: format!("cannot read: {e}") });
                    progress.inc(1);
                    continue;
                }
            };
            if let Some(v) = cache.as_ref().and_then(|c| c.get(&hash)) {
                rows[i] = Some(v);
                f.reused += 1;
                progress.inc(1);
                continue;
            }
            match read_clip(p, self.max_seconds, m.min_samples()) {
                Ok(c) => {
                    padded += c.padded as usize;
                    cost += m.cost(c.samples.len());
                    pending.push((i, hash, c.samples));
                    f.computed += 1;
                }
                Err(reason) => {
                    f.skipped.push(Skip { path: p.clone(), reason });
                    progress.inc(1);
                }
            }
            if cost >= self.batch_size as f64 {
                progress.inc(pending.len() as u64);
                self.flush(m, &mut pending, &mut rows, cache.as_ref())?;
                cost = 0.0;
            }
        }
        progress.inc(pending.len() as u64);
        self.flush(m, &mut pending, &mut rows, cache.as_ref())?;
        progress.finish();
        let mut flat = vec![];
        for (i, r) in rows.into_iter().enumerate() {
            if let Some(v) = r {
                f.ok.push(i);
                flat.extend(v);
            }
        }
        f.features = Tensor::from_slice(&flat).view([f.ok.len() as i64, dim as i64]);
        f.warnings = padded_warning(padded, m.min_samples());
        Ok(f)
    }

    fn screen(&self, m: &AudioModel, paths: &Vec<PathBuf>, progress: &dyn Progress) -> Result<(Featurised, Vec<Vec<f32>>)> {
        Ok(self.read_all(m, paths, progress))
    }

    fn inputs(&self, m: &AudioModel, paths: &Vec<PathBuf>, ok: &[usize], _: &dyn Progress) -> Result<Vec<Vec<f32>>> {
        ok.iter().map(|&i| read_clip(&paths[i], self.max_seconds, m.min_samples()).map(|c| c.samples).map_err(|r| Error::input(&paths[i], r))).collect()
    }

    fn learner<'l>(
        &'l self,
        m: &'l AudioModel,
        clips: &'l Vec<Vec<f32>>,
        labels: &[i64],
        num_classes: i64,
        ft: &'l FinetuneConfig,
        progress: &dyn Progress,
    ) -> Result<AudioLearner<'l>> {
        // The new head's initial weights come from the seed, like everything else.
        tch::manual_seed(ft.seed as i64);
        AudioLearner::new(m, clips, labels, num_classes, ft, progress)
    }

    fn describe(&self, data: &Vec<PathBuf>, i: usize) -> (String, Option<String>) {
        // The report names the clip by its path (no thumbnail for audio).
        (super::describe_path(&data[i]), None)
    }
}

impl TrainBlock for AudioBlock<'_> {
    type Request = AudioTrainRequest;

    fn request(&self) -> &AudioTrainRequest {
        self.req()
    }

    fn model_name(&self) -> String {
        self.req().model.clone()
    }

    fn load(&self, _: &[String], _: &Vec<PathBuf>, _: &mut Vec<String>) -> Result<AudioModel> {
        let req = self.req();
        if req.audio.max_seconds.is_nan() || req.audio.max_seconds <= 0.0 {
            return Err(Error::Usage(format!("setting `max_seconds` must be positive, not {}", req.audio.max_seconds)));
        }
        if req.finetune.is_some() && (req.audio.layer.is_some() || req.audio.weighted_layers) {
            return Err(Error::Usage("setting `layer` applies to feature extraction; fine-tuning trains on the encoder's output".into()));
        }
        check_layer_head(&req.audio, &req.train)?;
        let mut m = AudioModel::open(&req.model)?;
        m.set_layer(req.audio.layer)?;
        if req.audio.weighted_layers {
            m.stack_layers()?;
        }
        set_window(&mut m, req.audio.window, req.finetune.is_some())?;
        Ok(m)
    }

    fn stacked_layers(&self, m: &AudioModel) -> Option<usize> {
        m.stacked_layers()
    }

    fn bundle_meta(&self, m: &AudioModel, labels: Vec<String>, head: HeadSpec) -> Result<Bundle> {
        Ok(Bundle {
            format_version: crate::bundle::FORMAT_VERSION,
            modality: Modality::Audio,
            created_by: format!("headstart {}", env!("CARGO_PKG_VERSION")),
            labels,
            encoder: EncoderRef::Audio(encoder_ref(m, self.max_seconds)),
            columns: None,
            head,
            tuned: None,
            precision: crate::engine::Precision::Fp32,
        })
    }
}

/// The layer-sum head and `layer` weighted go together: the stacked hidden states need the
/// head that learns their weighting, and that head needs them.
fn check_layer_head(audio: &AudioOptions, train: &TrainConfig) -> Result<()> {
    match (audio.weighted_layers, train.head) {
        (true, _) if audio.layer.is_some() => {
            Err(Error::Usage(format!("setting `layer` is either a hidden state ({}) or `weighted`, not both", audio.layer.unwrap_or_default())))
        }
        (true, HeadKind::LayerSum) | (false, HeadKind::Logistic | HeadKind::Linear | HeadKind::Mlp) => Ok(()),
        (true, other) => Err(Error::Usage(format!(
            "setting `head` {} does not take setting `layer` weighted: the stacked hidden states train the layer-sum head (a learned weighted sum of the layers, then a linear layer)",
            format!("{other:?}").to_lowercase()
        ))),
        (false, HeadKind::LayerSum) => Err(Error::Usage("setting `head` layer_sum needs setting `layer` weighted (every hidden state, stacked)".into())),
    }
}

/// Sets the window a run asked for: fine-tuning trains Whisper on its full window (its batches
/// are padded to it), so `clip` is refused there.
fn set_window(m: &mut AudioModel, window: Option<AudioWindow>, finetune: bool) -> Result<()> {
    match (window, finetune) {
        (Some(AudioWindow::Clip), true) => {
            Err(Error::Usage("setting `audio_window` `clip` applies to feature extraction; fine-tuning trains on Whisper's full 30 s window".into()))
        }
        (_, true) if m.window.is_some() => m.set_window(AudioWindow::Full),
        (Some(w), false) => m.set_window(w),
        _ => Ok(()),
    }
}

/// The bundle's record of `m` read with clips of at most `max_seconds`.
pub(crate) fn encoder_ref(m: &AudioModel, max_seconds: f64) -> AudioEncoderRef {
    AudioEncoderRef {
        model: m.spec.clone(),
        family: m.family().into(),
        weights_sha256: m.file_sha256.clone(),
        weights_source: m.source.display().to_string(),
        config: m.config(),
        layer: m.layer,
        all_layers: m.all_layers,
        sample_rate: SAMPLE_RATE,
        window_seconds: crate::audio::encoder::WINDOW_SECONDS,
        window: m.window,
        normalize: m.normalize(),
        max_seconds,
    }
}

/// Trains an audio classifier per `req`; with `resume`, continues a fine-tuning run.
pub fn train_audio(req: &AudioTrainRequest, resume: bool, progress: &dyn Progress) -> Result<TrainOutcome> {
    task::train(&AudioBlock::for_request(req), resume, progress)
}

/// The learning-rate range test for fine-tuning an audio model on `req.data`.
pub fn lr_find_audio(req: &AudioTrainRequest, min_lr: f64, max_lr: f64, steps: usize, progress: &dyn Progress) -> Result<LrFind> {
    let ft = req.finetune.clone().unwrap_or_else(audio_finetune_defaults);
    let req = AudioTrainRequest { finetune: Some(ft.clone()), ..req.clone() };
    task::lr_find(&AudioBlock::for_request(&req), &ft, min_lr, max_lr, steps, progress)
}

/// Windows per encoder pass when a bundle predicts.
const PREDICT_WINDOWS: usize = 8;

/// An audio bundle ready to run.
pub struct AudioPredictor {
    pub meta: Bundle,
    pub encoder: AudioEncoderRef,
    model: AudioModel,
    head: Head,
}

impl AudioPredictor {
    /// Loads an audio bundle; `model` overrides where the encoder is found (else the bundle's
    /// own reference). The weights must be the very bytes it was trained on.
    pub fn load(dir: &Path, model: Option<&str>) -> Result<AudioPredictor> {
        let (meta, head) = crate::bundle::read_bundle(dir)?;
        let EncoderRef::Audio(e) = &meta.encoder else {
            return Err(Error::bundle(&dir.join(crate::bundle::META), format!("a {} bundle, not an audio bundle", meta.modality.name())));
        };
        let e = e.clone();
        let spec = model.unwrap_or(&e.model);
        let mut m = AudioModel::open(spec).map_err(|err| Error::Model(format!("{err} (needed by the bundle {})", dir.display())))?;
        if m.file_sha256 != e.weights_sha256 {
            return Err(Error::bundle(
                dir,
                format!("{}: the encoder weights differ from the ones the bundle was trained on (from {})", m.source.display(), e.weights_source),
            ));
        }
        if m.config() != e.config || m.normalize() != e.normalize || e.sample_rate != SAMPLE_RATE {
            return Err(Error::bundle(dir, format!("{}: the encoder's layout or input differs from the bundle's", m.source.display())));
        }
        m.set_layer(e.layer)?;
        if e.all_layers {
            m.stack_layers()?;
        }
        if m.window.is_some() {
            m.set_window(e.window.unwrap_or_else(AudioWindow::legacy))?;
        }
        m.weights_sha256 = crate::bundle::load_tuned(dir, meta.tuned.as_ref(), m.vs(), &m.file_sha256)?;
        if m.feature_dim() != meta.head.in_features || m.stacked_layers().map(|s| s as i64) != meta.head.layers {
            return Err(Error::bundle(dir, format!("head expects {} features, the encoder gives {}", meta.head.in_features, m.feature_dim())));
        }
        Ok(AudioPredictor { meta, encoder: e, model: m, head })
    }

    pub fn labels(&self) -> &[String] {
        &self.meta.labels
    }

    pub fn block(&self, cache_root: Option<&Path>) -> AudioBlock<'static> {
        AudioBlock { req: None, max_seconds: self.encoder.max_seconds, cache: cache_root.map(Path::to_path_buf), batch_size: PREDICT_WINDOWS, window: None }
    }

    /// How this bundle reads clips: its `max_seconds`, the encoder's shortest clip.
    pub fn reader(&self) -> ClipReader {
        ClipReader { max_seconds: self.encoder.max_seconds, min_samples: self.model.min_samples() }
    }

    /// What the encoder is fed: `log-mel N` (Whisper) or `waveform` (Wav2Vec2, HuBERT).
    pub fn feature_extractor(&self) -> String {
        match &self.model.encoder {
            crate::audio::encoder::AudioEncoder::Whisper { fe, .. } => format!("log-mel {}", fe.n_mels),
            crate::audio::encoder::AudioEncoder::Wav2Vec2 { .. } => "waveform".into(),
        }
    }

    /// Class probabilities `[N, classes]` of clips already read by [`Self::reader`]: the same
    /// encoder passes and head as [`Self::probabilities`], without files or the feature cache.
    pub fn probabilities_clips(&self, clips: &[Vec<f32>]) -> Result<Tensor> {
        let x = self.model.embed(clips, PREDICT_WINDOWS)?;
        Ok(self.head.forward(&x.to_kind(tch::Kind::Float))?.softmax(-1, tch::Kind::Float))
    }

    /// Class probabilities of the usable files, which rows they are, and the files skipped.
    pub fn probabilities(&self, files: &[PathBuf], cache_root: Option<&Path>, progress: &dyn Progress) -> Result<(Tensor, Vec<usize>, Vec<Skip>)> {
        task::probabilities(&self.block(cache_root), &self.model, &self.head, &files.to_vec(), progress)
    }

    /// Scores the bundle on labelled data (class folders or a manifest), example by example.
    pub fn score(&self, data: &Path, cache_root: Option<&Path>, progress: &dyn Progress) -> Result<task::Scored> {
        task::score(&self.block(cache_root), &self.model, &self.head, &self.meta.labels, data, progress)
    }

    /// Scores the bundle on labelled data (class folders or a manifest).
    pub fn evaluate(&self, data: &Path, cache_root: Option<&Path>, progress: &dyn Progress) -> Result<(Report, Vec<Skip>)> {
        task::evaluate(&self.block(cache_root), &self.model, &self.head, &self.meta.labels, data, progress)
    }

    /// The top-k labels of each usable file (file, labels with probabilities), and the skipped.
    #[allow(clippy::type_complexity)]
    pub fn predict(
        &self,
        files: &[PathBuf],
        top_k: usize,
        cache_root: Option<&Path>,
        progress: &dyn Progress,
    ) -> Result<(Vec<(PathBuf, Vec<(String, f64)>)>, Vec<Skip>)> {
        let (probs, ok, skipped) = self.probabilities(files, cache_root, progress)?;
        let top = task::top_k(&probs, &self.meta.labels, top_k)?;
        Ok((ok.iter().map(|&i| files[i].clone()).zip(top).collect(), skipped))
    }
}
