//! Whisper's audio encoder, laid out as Hugging Face's `WhisperEncoder`: two GELU
//! convolutions over the log-mel frames (the second with stride 2), sinusoidal positions, then
//! pre-norm transformer layers and a final layer norm.
//!
//! Variables carry the encoder's own names (`conv1.*`, `embed_positions.weight`,
//! `layers.{i}.self_attn.{q,k,v,out}_proj.*`, `layers.{i}.{self_attn_layer_norm,fc1,fc2,
//! final_layer_norm}.*`, `layer_norm.*`). Loading takes a `WhisperModel`,
//! `WhisperForConditionalGeneration` or `WhisperForAudioClassification` directory (the decoder
//! and classification head are reported as dropped), or a CTranslate2 `model.bin`.
//!
//! Hidden states follow `output_hidden_states`: state 0 is the input of the first layer, state
//! `i` the output of layer `i − 1`, and the last state is the final layer norm's output.
//! Stages for freezing: the stem (convolutions and positions), then one per layer (the final
//! layer norm belongs to the last).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::nn::{self, VarStore};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::models::{Mode, Stage};
use crate::weights::ct2::Ct2File;
use crate::weights::report::{self, LoadPlan, Mismatch, Missing, Note};
use crate::weights::{LoadReport, Weights};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhisperCfg {
    pub d_model: i64,
    pub layers: i64,
    pub heads: i64,
    pub ffn: i64,
    pub n_mels: i64,
    /// Encoder positions (1500: 30 s after the stride-2 convolution).
    pub max_positions: i64,
    pub dropout: f64,
    pub attention_dropout: f64,
    pub activation_dropout: f64,
}

impl WhisperCfg {
    /// The released layouts: `tiny`, `base`, `small`, `medium`, `large` (80 mel bins) and
    /// `large-v3` (128); `.en` variants share their layout.
    pub fn layout(name: &str) -> Option<WhisperCfg> {
        let (d_model, layers, heads, n_mels) = match name.trim_end_matches(".en") {
            "tiny" => (384, 4, 6, 80),
            "base" => (512, 6, 8, 80),
            "small" => (768, 12, 12, 80),
            "medium" => (1024, 24, 16, 80),
            "large" | "large-v2" => (1280, 32, 20, 80),
            "large-v3" => (1280, 32, 20, 128),
            _ => return None,
        };
        Some(WhisperCfg {
            d_model,
            layers,
            heads,
            ffn: 4 * d_model,
            n_mels,
            max_positions: 1500,
            dropout: 0.0,
            attention_dropout: 0.0,
            activation_dropout: 0.0,
        })
    }

    /// Reads a Hugging Face `config.json` of `model_type` `whisper`.
    pub fn from_hf(c: &Value, path: &Path) -> Result<WhisperCfg> {
        let bad = |m: String| Error::input(path, m);
        match c.get("model_type").and_then(Value::as_str) {
            Some("whisper") => {}
            other => return Err(bad(format!("model_type {other:?} is not whisper"))),
        }
        let int = |k: &str| c.get(k).and_then(Value::as_i64).ok_or_else(|| bad(format!("missing integer field `{k}`")));
        let float = |k: &str| c.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        if let Some(act) = c.get("activation_function").and_then(Value::as_str) {
            if act != "gelu" {
                return Err(bad(format!("activation_function `{act}` is not supported (gelu)")));
            }
        }
        let cfg = WhisperCfg {
            d_model: int("d_model")?,
            layers: int("encoder_layers")?,
            heads: int("encoder_attention_heads")?,
            ffn: int("encoder_ffn_dim")?,
            n_mels: int("num_mel_bins")?,
            max_positions: int("max_source_positions")?,
            dropout: float("dropout"),
            attention_dropout: float("attention_dropout"),
            activation_dropout: float("activation_dropout"),
        };
        cfg.check().map_err(bad)?;
        Ok(cfg)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.d_model <= 0 || self.heads <= 0 || self.d_model % self.heads != 0 {
            return Err(format!("d_model {} is not a multiple of {} heads", self.d_model, self.heads));
        }
        if self.layers <= 0 || self.ffn <= 0 || self.n_mels <= 0 || self.max_positions <= 0 {
            return Err("layers, FFN width, mel bins and positions must be positive".into());
        }
        Ok(())
    }

    /// Mel frames of one input window (3000).
    pub fn input_frames(&self) -> i64 {
        2 * self.max_positions
    }
}

/// Encoder frames (after the stride-2 convolution) that cover a clip of `samples` samples at
/// 16 kHz with hop 160: the frames to pool over, at least 1.
pub fn encoder_frames(samples: usize, max_positions: usize) -> usize {
    samples.div_ceil(160).div_ceil(2).clamp(1, max_positions)
}

/// Mean of `h` `[B, T, D]` over the first `real[b]` frames of each row: pooling that ignores
/// the padding of the 30 s window.
pub fn pool_real(h: &Tensor, real: &[usize]) -> Tensor {
    let (b, t, _) = h.size3().expect("[B, T, D]");
    assert_eq!(real.len() as i64, b, "one frame count per row");
    let counts: Vec<i64> = real.iter().map(|&n| (n as i64).clamp(1, t)).collect();
    let counts = Tensor::from_slice(&counts).to_device(h.device());
    let mask = Tensor::arange(t, (Kind::Int64, h.device())).unsqueeze(0).lt_tensor(&counts.unsqueeze(1));
    let mask = mask.to_kind(h.kind()).unsqueeze(-1);
    (h * &mask).sum_dim_intlist([1i64].as_slice(), false, h.kind()) / mask.sum_dim_intlist([1i64].as_slice(), false, h.kind())
}

/// The windows' log-mel frames `feats` through the encoder to `readout`, each row pooled over
/// its first `real` frames: `[B, D]`, or `[B, (layers + 1)·D]` for every hidden state.
///
/// Only the batch's longest real prefix is read out, so the last layer run computes its
/// queries, feed-forward and final layer norm for those frames alone (every frame still serves
/// as a key and value, as it must: the earlier layers run whole). Rows are computed
/// independently, so the result equals pooling the full output.
pub fn pooled(enc: &WhisperEncoder, feats: &Tensor, readout: super::Readout, real: &[usize]) -> Result<Tensor> {
    use super::Readout;
    let prefix = real.iter().copied().max().unwrap_or(1).max(1) as i64;
    tch::no_grad(|| {
        Ok(match readout {
            Readout::Output => pool_real(&enc.prefix_states(feats, enc.layers.len(), prefix, false)?[0], real),
            Readout::Layer(n) => pool_real(&enc.prefix_states(feats, n, prefix, false)?[0], real),
            Readout::All => {
                let states = enc.prefix_states(feats, enc.layers.len(), prefix, true)?;
                Tensor::cat(&states.iter().map(|h| pool_real(h, real)).collect::<Vec<_>>(), 1)
            }
        })
    })
}

/// One pooled vector `[D]` per clip (16 kHz samples): each clip is cut into 30 s windows, the
/// windows run through to `readout` (a hidden state number, `None` for the final output, or
/// [`super::Readout::All`]: every hidden state, stacked) in one batch, each window is
/// mean-pooled over its real frames, and a clip's windows are averaged weighted by their real
/// frames (so the result equals a mean over every real frame of the clip).
pub fn embed_clips(
    enc: &WhisperEncoder,
    fe: &crate::audio::WhisperFeatures,
    clips: &[&[f32]],
    readout: impl Into<super::Readout>,
    device: tch::Device,
) -> Result<Tensor> {
    let (windows, owner) = split_windows(clips, fe.n_samples);
    let feats = fe.extract(&windows, device);
    let real: Vec<usize> = windows.iter().map(|w| encoder_frames(w.len(), enc.cfg.max_positions as usize)).collect();
    Ok(combine_windows(&pooled(enc, &feats, readout.into(), &real)?, &owner, &real, clips.len()))
}

/// The `n_samples` windows of every clip (an empty clip keeps one empty window), and the clip
/// each window belongs to.
pub fn split_windows<'c>(clips: &[&'c [f32]], n_samples: usize) -> (Vec<&'c [f32]>, Vec<usize>) {
    let mut windows: Vec<&[f32]> = vec![];
    let mut owner = vec![];
    for (i, clip) in clips.iter().enumerate() {
        let chunks: Vec<&[f32]> = if clip.is_empty() { vec![*clip] } else { clip.chunks(n_samples).collect() };
        owner.extend(std::iter::repeat_n(i, chunks.len()));
        windows.extend(chunks);
    }
    (windows, owner)
}

/// One vector per clip from pooled windows `[W, D]`: window `w` belongs to clip `owner[w]` and
/// weighs its `real[w]` frames.
pub fn combine_windows(pooled: &Tensor, owner: &[usize], real: &[usize], clips: usize) -> Tensor {
    let mut out = vec![];
    for i in 0..clips {
        let rows: Vec<usize> = (0..owner.len()).filter(|&w| owner[w] == i).collect();
        let weights: Vec<f32> = rows.iter().map(|&w| real[w] as f32).collect();
        let idx = Tensor::from_slice(&rows.iter().map(|&w| w as i64).collect::<Vec<_>>()).to_device(pooled.device());
        let wts = Tensor::from_slice(&weights).to_device(pooled.device()).unsqueeze(1);
        out.push((pooled.index_select(0, &idx) * &wts).sum_dim_intlist([0i64].as_slice(), false, Kind::Float) / wts.sum(Kind::Float));
    }
    Tensor::stack(&out, 0)
}

/// Whisper's sinusoidal position table `[length, channels]`.
pub fn sinusoids(length: i64, channels: i64) -> Tensor {
    let half = channels / 2;
    let inc = 10000f64.ln() / (half - 1).max(1) as f64;
    let inv = (Tensor::arange(half, (Kind::Float, tch::Device::Cpu)) * -inc).exp();
    let t = Tensor::arange(length, (Kind::Float, tch::Device::Cpu)).unsqueeze(1) * inv.unsqueeze(0);
    Tensor::cat(&[t.sin(), t.cos()], 1)
}

struct Layer {
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    out: nn::Linear,
    ln_attn: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    ln_ffn: nn::LayerNorm,
}

pub struct WhisperEncoder {
    pub vs: VarStore,
    pub cfg: WhisperCfg,
    conv1: nn::Conv1D,
    conv2: nn::Conv1D,
    positions: Tensor,
    layers: Vec<Layer>,
    ln: nn::LayerNorm,
    stages: Vec<Stage>,
}

impl WhisperEncoder {
    /// An encoder with fresh weights (sinusoidal positions, as upstream).
    pub fn build(cfg: &WhisperCfg) -> Result<WhisperEncoder> {
        cfg.check().map_err(Error::Model)?;
        let vs = VarStore::new(tch::Device::Cpu);
        let root = vs.root();
        let d = cfg.d_model;
        let conv = |p: nn::Path, i: i64, stride: i64| nn::conv1d(p, i, d, 3, nn::ConvConfig { padding: 1, stride, ..Default::default() });
        let ln = |p: nn::Path| nn::layer_norm(p, vec![d], nn::LayerNormConfig { eps: 1e-5, ..Default::default() });
        let lin = |p: nn::Path, i: i64, o: i64, bias: bool| nn::linear(p, i, o, nn::LinearConfig { bias, ..Default::default() });
        let conv1 = conv(&root / "conv1", cfg.n_mels, 1);
        let conv2 = conv(&root / "conv2", d, 2);
        let positions = (&root / "embed_positions").var_copy("weight", &sinusoids(cfg.max_positions, d));
        let mut layers = vec![];
        let mut stages = vec![Stage::new("stem", &["conv1".into(), "conv2".into(), "embed_positions".into()])];
        for i in 0..cfg.layers {
            let p = &root / "layers" / i;
            let a = &p / "self_attn";
            layers.push(Layer {
                q: lin(&a / "q_proj", d, d, true),
                k: lin(&a / "k_proj", d, d, false),
                v: lin(&a / "v_proj", d, d, true),
                out: lin(&a / "out_proj", d, d, true),
                ln_attn: ln(&p / "self_attn_layer_norm"),
                fc1: lin(&p / "fc1", d, cfg.ffn, true),
                fc2: lin(&p / "fc2", cfg.ffn, d, true),
                ln_ffn: ln(&p / "final_layer_norm"),
            });
            let mut prefixes = vec![format!("layers.{i}")];
            if i == cfg.layers - 1 {
                prefixes.push("layer_norm".into());
            }
            stages.push(Stage::new(format!("layers.{i}"), &prefixes));
        }
        let ln_final = ln(&root / "layer_norm");
        Ok(WhisperEncoder { vs, cfg: cfg.clone(), conv1, conv2, positions, layers, ln: ln_final, stages })
    }

    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    pub fn hidden_size(&self) -> i64 {
        self.cfg.d_model
    }

    /// How Hugging Face checkpoints map onto the encoder.
    pub fn load_plan() -> LoadPlan {
        let why = |s: &str| s.to_string();
        LoadPlan {
            strip_prefixes: vec!["model.encoder.".into(), "encoder.".into()],
            unused: vec![
                ("decoder.".into(), why("the text decoder: only the encoder is used")),
                ("model.decoder.".into(), why("the text decoder: only the encoder is used")),
                ("proj_out.".into(), why("the decoder's output projection")),
                ("projector.".into(), why("pre-trained classification head; the model has a new head")),
                ("classifier.".into(), why("pre-trained classification head; the model has a new head")),
                ("layer_weights".into(), why("the pre-trained head's layer weighting")),
            ],
            ..Default::default()
        }
    }

    /// Opens a Whisper encoder from `spec`: a Hugging Face directory (`config.json` +
    /// weights), a CTranslate2 `model.bin` or a directory holding one, a packaged asset
    /// (`whisper-tiny.en`, `whisper-base`, see `scripts/fetch-assets`), or a hub repo id
    /// `org/name[@revision]` (hub cache, then download).
    pub fn open(spec: &str) -> Result<(WhisperEncoder, LoadReport)> {
        let p = Path::new(spec);
        let asset = crate::assets::asset_dir().join(spec);
        for dir in [p, asset.as_path()] {
            if dir.is_file() {
                return Self::from_ct2(dir);
            }
            if dir.join("config.json").is_file() && !dir.join("model.bin").is_file() {
                return Self::from_hf_dir(dir);
            }
            if dir.join("model.bin").is_file() {
                return Self::from_ct2(&dir.join("model.bin"));
            }
        }
        let (repo, revision) = spec.split_once('@').unwrap_or((spec, "main"));
        if !repo.contains('/') {
            return Err(Error::Model(format!("Whisper model `{spec}` is neither a directory, a model.bin, a fetched asset nor a hub repo id (org/name)")));
        }
        let cache = crate::weights::hub::cache_dir();
        let dir = match crate::weights::hub::resolve_snapshot(&cache, repo, revision) {
            Ok(d) => d,
            Err(_) => crate::weights::hub::download(&cache, repo, revision, None).map_err(|e| {
                Error::Model(format!("Whisper model `{spec}`: {e}; pass a model directory, or put {repo} in the hub cache ({})", cache.display()))
            })?,
        };
        Self::from_hf_dir(&dir)
    }

    /// Loads a Hugging Face Whisper directory (`config.json` + weights).
    pub fn from_hf_dir(dir: &Path) -> Result<(WhisperEncoder, LoadReport)> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| Error::input(&cfg_path, format!("invalid JSON: {e}")))?;
        let enc = Self::build(&WhisperCfg::from_hf(&json, &cfg_path)?)?;
        let weights = Weights::open(dir)?;
        let report = report::load_into(&enc.vs, &weights, &Self::load_plan())?;
        report.require_complete()?;
        Ok((enc, report))
    }

    /// Loads the encoder of a CTranslate2 Whisper `model.bin`, its layout read from the file.
    pub fn from_ct2(path: &Path) -> Result<(WhisperEncoder, LoadReport)> {
        let file = Ct2File::open(path)?;
        if !file.spec.starts_with("Whisper") {
            return Err(Error::input(path, format!("a CTranslate2 `{}` model, not Whisper", file.spec)));
        }
        let cfg = ct2_cfg(&file)?;
        let enc = Self::build(&cfg)?;
        let (tensors, mut report) = ct2_to_hf(&file, cfg.d_model)?;
        fill(&enc.vs, tensors, &mut report)?;
        report.require_complete()?;
        Ok((enc, report))
    }

    /// The stem: convolutions, positions. `features` is `[B, n_mels, T]` with `T` at most
    /// [`WhisperCfg::input_frames`].
    fn stem(&self, features: &Tensor, mode: Mode) -> Tensor {
        let x = features.apply(&self.conv1).gelu("none").apply(&self.conv2).gelu("none").transpose(1, 2);
        let t = x.size()[1];
        (x + self.positions.narrow(0, 0, t)).dropout(self.cfg.dropout, mode.is_train())
    }

    fn layer(&self, i: usize, x: &Tensor, mode: Mode) -> Tensor {
        self.layer_rows(i, x, None, mode)
    }

    /// Layer `i`; with `rows = Some(k)` only the first `k` positions' outputs are computed
    /// (queries, attention output, feed-forward), while every position is a key and value.
    fn layer_rows(&self, i: usize, x: &Tensor, rows: Option<i64>, mode: Mode) -> Tensor {
        let (l, train) = (&self.layers[i], mode.is_train());
        let (b, t, d) = x.size3().expect("[B, T, D]");
        let k = rows.map_or(t, |k| k.clamp(1, t));
        let heads = |y: Tensor, n: i64| y.view([b, n, self.cfg.heads, -1]).transpose(1, 2);
        let h = x.apply(&l.ln_attn);
        let p = if train { self.cfg.attention_dropout } else { 0.0 };
        let q = heads(if k < t { h.narrow(1, 0, k) } else { h.shallow_clone() }.apply(&l.q), k);
        let ctx = Tensor::scaled_dot_product_attention(&q, &heads(h.apply(&l.k), t), &heads(h.apply(&l.v), t), None::<&Tensor>, p, false, None, false);
        let a = ctx.transpose(1, 2).reshape([b, k, d]).apply(&l.out).dropout(self.cfg.dropout, train);
        let x = if k < t { x.narrow(1, 0, k) } else { x.shallow_clone() } + a;
        let h = x.apply(&l.ln_ffn).apply(&l.fc1).gelu("none").dropout(self.cfg.activation_dropout, train);
        &x + h.apply(&l.fc2).dropout(self.cfg.dropout, train)
    }

    fn check_input(&self, features: &Tensor) -> Result<()> {
        let s = features.size();
        if s.len() != 3 || s[1] != self.cfg.n_mels || s[2] < 1 || s[2] > self.cfg.input_frames() {
            return Err(Error::Model(format!("Whisper input {s:?}: expected [B, {}, 1..={}] log-mel frames", self.cfg.n_mels, self.cfg.input_frames())));
        }
        Ok(())
    }

    /// Every hidden state (`layers + 1` of them), as `output_hidden_states` gives them.
    pub fn hidden_states(&self, features: &Tensor, mode: Mode) -> Result<Vec<Tensor>> {
        self.states(features, self.layers.len(), None, true, mode)
    }

    /// Hidden state `n` (`layers` = the final output) for the first `prefix` frames, in eval
    /// mode: one tensor, or with `all` every state `0..=n` (each cut to the prefix). The layers
    /// before the `n`-th run over every frame; the `n`-th computes only the prefix's outputs.
    pub fn prefix_states(&self, features: &Tensor, n: usize, prefix: i64, all: bool) -> Result<Vec<Tensor>> {
        self.states(features, n, Some(prefix), all, Mode::Eval)
    }

    /// Hidden state `n` (0 = after the stem, `layers` = the final output) without running the
    /// layers after it: `--layer N`.
    pub fn forward_to(&self, features: &Tensor, n: usize, mode: Mode) -> Result<Tensor> {
        Ok(self.states(features, n, None, false, mode)?.remove(0))
    }

    /// Hidden state `n`, or with `all` every state `0..=n`; with `prefix`, each cut to its
    /// first frames, the `n`-th layer computing only those.
    fn states(&self, features: &Tensor, n: usize, prefix: Option<i64>, all: bool, mode: Mode) -> Result<Vec<Tensor>> {
        self.check_input(features)?;
        if n > self.layers.len() {
            return Err(Error::Model(format!("layer {n}: the encoder has hidden states 0..={}", self.layers.len())));
        }
        let cut = |h: Tensor| match prefix {
            Some(p) => h.narrow(1, 0, p.clamp(1, h.size()[1])),
            None => h,
        };
        let mut x = self.stem(features, mode);
        let mut states = vec![];
        for i in 0..n {
            if all {
                states.push(cut(x.shallow_clone()));
            }
            x = self.layer_rows(i, &x, prefix.filter(|_| i + 1 == n), mode);
        }
        let x = cut(x);
        states.push(if n == self.layers.len() { x.apply(&self.ln) } else { x });
        Ok(states)
    }

    /// The final hidden states `[B, T/2, D]`. Stages before `first_trainable` run without
    /// autograd and in eval mode; the rest in `mode`.
    pub fn forward_from(&self, features: &Tensor, first_trainable: usize, mode: Mode) -> Result<Tensor> {
        self.check_input(features)?;
        let n = self.stages.len();
        let run = |s: usize, x: Option<&Tensor>, mode: Mode| if s == 0 { self.stem(features, mode) } else { self.layer(s - 1, x.expect("stem ran"), mode) };
        let first = first_trainable.min(n);
        let mut x: Option<Tensor> = None;
        for s in 0..n {
            let next = if s < first { tch::no_grad(|| run(s, x.as_ref(), Mode::Eval)) } else { run(s, x.as_ref(), mode) };
            x = Some(next);
        }
        let x = x.expect("at least the stem");
        Ok(if first >= n { tch::no_grad(|| x.apply(&self.ln)) } else { x.apply(&self.ln) })
    }

    pub fn forward(&self, features: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forward_from(features, 0, mode)
    }
}

/// The encoder layout of a CTranslate2 Whisper file, read from its variables.
fn ct2_cfg(f: &Ct2File) -> Result<WhisperCfg> {
    let shape = |name: &str| f.info(name).map(|i| i.shape.clone()).ok_or_else(|| Error::input(f.path(), format!("no variable `{name}`")));
    let conv1 = shape("encoder/conv1/weight")?;
    let positions = shape("encoder/position_encodings/encodings")?;
    let ffn = shape("encoder/layer_0/ffn/linear_0/weight")?;
    if conv1.len() != 3 || positions.len() != 2 || ffn.len() != 2 {
        return Err(Error::input(f.path(), "unexpected ranks of encoder/conv1, position encodings or FFN weights"));
    }
    let layers = f.infos().filter_map(|i| i.name.strip_prefix("encoder/layer_")?.split('/').next()?.parse::<i64>().ok()).max().map_or(0, |m| m + 1);
    let d = conv1[0] as i64;
    // Every Whisper size uses 64-wide heads; the file says so when it stores the count.
    let heads = f.int_scalar("encoder/num_heads")?.unwrap_or(d / 64);
    let cfg = WhisperCfg {
        d_model: d,
        layers,
        heads,
        ffn: ffn[0] as i64,
        n_mels: conv1[1] as i64,
        max_positions: positions[0] as i64,
        dropout: 0.0,
        attention_dropout: 0.0,
        activation_dropout: 0.0,
    };
    cfg.check().map_err(|m| Error::input(f.path(), m))?;
    Ok(cfg)
}

/// The Hugging Face name of a CTranslate2 encoder variable that maps one to one.
fn ct2_name(name: &str) -> Option<String> {
    fn leaf(s: &str) -> Option<&'static str> {
        match s {
            "gamma" | "weight" => Some("weight"),
            "beta" | "bias" => Some("bias"),
            _ => None,
        }
    }
    let rest = name.strip_prefix("encoder/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    Some(match parts.as_slice() {
        [c @ ("conv1" | "conv2"), w] => format!("{c}.{}", leaf(w)?),
        ["position_encodings", "encodings"] => "embed_positions.weight".into(),
        ["layer_norm", w] => format!("layer_norm.{}", leaf(w)?),
        [layer, block, module, w] => {
            let i: usize = layer.strip_prefix("layer_")?.parse().ok()?;
            let hf = match (*block, *module) {
                ("self_attention", "layer_norm") => "self_attn_layer_norm",
                ("self_attention", "linear_1") => "self_attn.out_proj",
                ("ffn", "layer_norm") => "final_layer_norm",
                ("ffn", "linear_0") => "fc1",
                ("ffn", "linear_1") => "fc2",
                _ => return None,
            };
            format!("layers.{i}.{hf}.{}", leaf(w)?)
        }
        _ => return None,
    })
}

type Named = BTreeMap<String, (String, Tensor)>;

/// Splits a fused `linear_0` (Q, K and V stacked by rows) into the three projections. Whisper's
/// K projection has no bias: the K block of the fused bias is dropped, which is exact whatever
/// it holds, since a key bias adds the same amount to every score of a query.
fn split_qkv(f: &Ct2File, name: &str, d: i64, out: &mut Named, report: &mut LoadReport) -> Result<()> {
    let t = f.tensor(name)?;
    if t.size().first() != Some(&(3 * d)) {
        return Err(Error::input(f.path(), format!("`{name}` {:?}: expected {} rows (Q, K, V)", t.size(), 3 * d)));
    }
    let layer = name.split('/').nth(1).and_then(|l| l.strip_prefix("layer_")).unwrap_or("?");
    let kind = if name.ends_with("weight") { "weight" } else { "bias" };
    for (j, proj) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
        let part = t.narrow(0, j as i64 * d, d);
        let hf = format!("layers.{layer}.self_attn.{proj}.{kind}");
        if kind == "bias" && *proj == "k_proj" {
            let max = part.to_kind(Kind::Float).abs().max().double_value(&[]);
            report.dropped.push(Note {
                name: format!("{name}[{d}..{}]", 2 * d),
                why: format!("K bias (max |x| {max:.3e}): no K bias in Whisper, and softmax ignores it"),
            });
            continue;
        }
        report.adapted.push(Note { name: hf.clone(), why: format!("rows {}..{} of fused `{name}`", j as i64 * d, (j as i64 + 1) * d) });
        out.insert(hf, (name.to_string(), part));
    }
    Ok(())
}

/// The encoder variables of a CTranslate2 file under Hugging Face names, with the report of
/// everything else.
fn ct2_to_hf(f: &Ct2File, d: i64) -> Result<(Named, LoadReport)> {
    let mut report = LoadReport { source: f.path().display().to_string(), ..Default::default() };
    let mut out = Named::new();
    for info in f.infos() {
        let name = info.name.as_str();
        if name.starts_with("decoder/") {
            report.dropped.push(Note { name: name.into(), why: "the text decoder: only the encoder is used".into() });
        } else if name == "encoder/num_heads" {
            report.ignored.push(name.into());
        } else if name.contains("/self_attention/linear_0/") {
            split_qkv(f, name, d, &mut out, &mut report)?;
        } else if let Some(hf) = ct2_name(name) {
            out.insert(hf, (name.to_string(), f.tensor(name)?));
        } else {
            report.unexpected.push(name.into());
        }
    }
    for (alias, target) in &f.aliases {
        report.ignored.push(format!("{alias} (alias of {target})"));
    }
    Ok((out, report))
}

/// Copies named tensors into `vs` (cast to each variable's kind), completing `report`.
fn fill(vs: &VarStore, mut tensors: Named, report: &mut LoadReport) -> Result<()> {
    let unused: Vec<String> = tensors.values().map(|(src, _)| src.clone()).collect();
    for (name, var) in vs.variables() {
        let Some((src, value)) = tensors.remove(&name) else {
            let nearest = report::nearest(&name, &unused);
            report.missing.push(Missing { name, shape: var.size(), nearest });
            continue;
        };
        if value.size() != var.size() {
            let found = value.size().iter().map(|&s| s as u64).collect();
            report.shape_mismatched.push(Mismatch { name: format!("{name} (from {src})"), expected: var.size(), found });
            continue;
        }
        tch::no_grad(|| var.shallow_clone().f_copy_(&value.to_kind(var.kind())))?;
        report.matched.push(name);
    }
    report.unexpected.extend(tensors.into_values().map(|(src, _)| src));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct2_names_map_to_hf() {
        assert_eq!(ct2_name("encoder/conv1/weight").as_deref(), Some("conv1.weight"));
        assert_eq!(ct2_name("encoder/layer_3/ffn/linear_1/bias").as_deref(), Some("layers.3.fc2.bias"));
        assert_eq!(ct2_name("encoder/layer_0/self_attention/layer_norm/gamma").as_deref(), Some("layers.0.self_attn_layer_norm.weight"));
        assert_eq!(ct2_name("encoder/layer_norm/beta").as_deref(), Some("layer_norm.bias"));
        assert_eq!(ct2_name("encoder/layer_x/ffn/linear_1/bias"), None);
        assert_eq!(ct2_name("decoder/embeddings/weight"), None);
    }

    #[test]
    fn pooling_ignores_padding_frames() {
        let h = Tensor::from_slice(&[1f32, 3., 100., 2., 4., 6.]).view([2, 3, 1]);
        let p = pool_real(&h, &[2, 3]);
        assert_eq!(Vec::<f32>::try_from(p.flatten(0, -1)).unwrap(), vec![2.0, 4.0]);
        assert_eq!(encoder_frames(16000, 1500), 50);
        assert_eq!(encoder_frames(0, 1500), 1);
        assert_eq!(encoder_frames(10_000_000, 1500), 1500);
    }

    #[test]
    fn layouts_are_consistent() {
        for name in ["tiny", "tiny.en", "base", "small", "large-v3"] {
            let c = WhisperCfg::layout(name).unwrap();
            assert!(c.check().is_ok(), "{name}");
            assert_eq!(c.d_model / c.heads, 64);
        }
        assert!(WhisperCfg::layout("huge").is_none());
    }
}
