//! Wav2Vec2, HuBERT and WavLM encoders laid out as Hugging Face's `Wav2Vec2Model` /
//! `HubertModel` / `WavLMModel`: a convolutional feature encoder over the raw waveform
//! (group-norm variant: GroupNorm after the first convolution only; layer-norm variant:
//! LayerNorm after every convolution), a feature projection, a weight-normed grouped positional
//! convolution, then transformer layers (post-norm, or pre-norm with a final layer norm in the
//! stable-layer-norm variant).
//!
//! WavLM adds a gated relative position bias to every layer's attention scores: the first
//! layer's `rel_attn_embed` maps bucketed query–key offsets (T5-style, bidirectional, log-spaced
//! past half the buckets) to one bias per head, shared by all layers; each layer scales it per
//! query and head by a gate computed from that query's own head slice
//! (`gru_rel_pos_linear`, `gru_rel_pos_const`).
//!
//! Variables carry the base model's names (`feature_extractor.conv_layers.{i}.*`,
//! `feature_projection.*`, `encoder.pos_conv_embed.conv.*`, `encoder.layers.{i}.*`,
//! `encoder.layer_norm.*`); `wav2vec2.` / `hubert.` / `wavlm.` prefixes of task models are
//! stripped and their heads reported as dropped. The positional convolution keeps the checkpoint's own
//! weight-norm names (`parametrizations.weight.original0/1` or the older `weight_g/weight_v`).
//!
//! Hidden states follow `output_hidden_states` of `transformers` 5: state 0 is the first
//! layer's input, state `i` layer `i − 1`'s output; in the stable-layer-norm variant the final
//! layer norm is not part of them but of the encoder's output ([`Wav2Vec2Encoder::forward_from`],
//! `last_hidden_state`). Stages for freezing: the feature encoder
//! (frozen by default, as `freeze_feature_encoder`), the projection and positions, then one per
//! layer.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::nn::{self, VarStore};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::models::{Mode, Stage};
use crate::weights::report::{self, LoadPlan};
use crate::weights::{LoadReport, Weights};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureNorm {
    Group,
    Layer,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wav2Vec2Cfg {
    pub model_type: String,
    pub hidden_size: i64,
    pub layers: i64,
    pub heads: i64,
    pub intermediate_size: i64,
    pub layer_norm_eps: f64,
    pub feat_extract_norm: FeatureNorm,
    pub conv_dim: Vec<i64>,
    pub conv_kernel: Vec<i64>,
    pub conv_stride: Vec<i64>,
    pub conv_bias: bool,
    pub pos_kernel: i64,
    pub pos_groups: i64,
    pub stable_layer_norm: bool,
    /// HuBERT may leave out the projection's layer norm.
    pub feat_proj_layer_norm: bool,
    pub hidden_dropout: f64,
    pub attention_dropout: f64,
    pub activation_dropout: f64,
    pub feat_proj_dropout: f64,
    /// WavLM's relative position bias; absent for Wav2Vec2 and HuBERT.
    #[serde(default)]
    pub rel_pos: Option<RelPos>,
}

/// WavLM's bucketed relative positions: `buckets` in all (half for each direction), offsets
/// beyond `max_distance` share the last bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelPos {
    pub buckets: i64,
    pub max_distance: i64,
}

impl Wav2Vec2Cfg {
    /// Reads a `config.json` of `model_type` `wav2vec2`, `hubert` or `wavlm`.
    pub fn from_hf(c: &Value, path: &Path) -> Result<Wav2Vec2Cfg> {
        let bad = |m: String| Error::input(path, m);
        let model_type = c.get("model_type").and_then(Value::as_str).unwrap_or("");
        if !matches!(model_type, "wav2vec2" | "hubert" | "wavlm") {
            return Err(bad(format!("model_type `{model_type}` is not supported for audio (wav2vec2, hubert, wavlm)")));
        }
        let int = |k: &str| c.get(k).and_then(Value::as_i64).ok_or_else(|| bad(format!("missing integer field `{k}`")));
        let float = |k: &str, d: f64| c.get(k).and_then(Value::as_f64).unwrap_or(d);
        let flag = |k: &str, d: bool| c.get(k).and_then(Value::as_bool).unwrap_or(d);
        let ints = |k: &str| -> Result<Vec<i64>> {
            let v = c.get(k).and_then(Value::as_array).ok_or_else(|| bad(format!("missing list field `{k}`")))?;
            v.iter().map(|x| x.as_i64().filter(|&n| n > 0).ok_or_else(|| bad(format!("`{k}` holds a non-positive or non-integer entry")))).collect()
        };
        for k in ["hidden_act", "feat_extract_activation"] {
            match c.get(k).and_then(Value::as_str) {
                None | Some("gelu") => {}
                Some(other) => return Err(bad(format!("{k} `{other}` is not supported (gelu)"))),
            }
        }
        let feat_extract_norm = match c.get("feat_extract_norm").and_then(Value::as_str).unwrap_or("group") {
            "group" => FeatureNorm::Group,
            "layer" => FeatureNorm::Layer,
            other => return Err(bad(format!("feat_extract_norm `{other}`: expected group or layer"))),
        };
        let cfg = Wav2Vec2Cfg {
            model_type: model_type.into(),
            hidden_size: int("hidden_size")?,
            layers: int("num_hidden_layers")?,
            heads: int("num_attention_heads")?,
            intermediate_size: int("intermediate_size")?,
            layer_norm_eps: float("layer_norm_eps", 1e-5),
            feat_extract_norm,
            conv_dim: ints("conv_dim")?,
            conv_kernel: ints("conv_kernel")?,
            conv_stride: ints("conv_stride")?,
            conv_bias: flag("conv_bias", false),
            pos_kernel: int("num_conv_pos_embeddings")?,
            pos_groups: int("num_conv_pos_embedding_groups")?,
            stable_layer_norm: flag("do_stable_layer_norm", false),
            feat_proj_layer_norm: model_type != "hubert" || flag("feat_proj_layer_norm", true),
            hidden_dropout: float("hidden_dropout", 0.1),
            attention_dropout: float("attention_dropout", 0.1),
            activation_dropout: float("activation_dropout", 0.1),
            feat_proj_dropout: float("feat_proj_dropout", 0.0),
            rel_pos: match model_type {
                "wavlm" => Some(RelPos {
                    buckets: c.get("num_buckets").and_then(Value::as_i64).unwrap_or(320),
                    max_distance: c.get("max_bucket_distance").and_then(Value::as_i64).unwrap_or(800),
                }),
                _ => None,
            },
        };
        cfg.check().map_err(bad)?;
        Ok(cfg)
    }

    fn check(&self) -> std::result::Result<(), String> {
        let (d, h) = (self.hidden_size, self.heads);
        if d <= 0 || h <= 0 || d % h != 0 || self.pos_groups <= 0 || d % self.pos_groups != 0 {
            return Err(format!("hidden size {d} must be a multiple of {h} heads and of {} positional groups", self.pos_groups));
        }
        let n = self.conv_dim.len();
        if n == 0 || self.conv_kernel.len() != n || self.conv_stride.len() != n {
            return Err("conv_dim, conv_kernel and conv_stride must be non-empty and of one length".into());
        }
        if self.layers <= 0 || self.intermediate_size <= 0 || self.pos_kernel <= 0 {
            return Err("layers, intermediate size and positional kernel must be positive".into());
        }
        if let Some(r) = self.rel_pos {
            // Half the buckets per direction, half of those exact: the log-spaced rest needs room.
            if r.buckets < 8 || r.max_distance <= r.buckets / 4 {
                return Err(format!("num_buckets {} must be at least 8 and max_bucket_distance {} above a quarter of it", r.buckets, r.max_distance));
            }
        }
        Ok(())
    }

    /// Frames the feature encoder makes of `samples` samples (0 when too short for one).
    pub fn frames(&self, samples: usize) -> usize {
        let mut n = samples as i64;
        for (k, s) in self.conv_kernel.iter().zip(&self.conv_stride) {
            n = if n < *k { 0 } else { (n - k) / s + 1 };
        }
        n.max(0) as usize
    }
}

struct ConvLayer {
    conv: nn::Conv1D,
    norm: Option<ConvNorm>,
}

enum ConvNorm {
    Group(nn::GroupNorm),
    Layer(nn::LayerNorm),
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
    gate: Option<Gate>,
}

/// WavLM's per-layer gate on the shared relative position bias.
struct Gate {
    linear: nn::Linear,
    scale: Tensor,
}

/// The weight-normed positional convolution: `weight = g · v / ‖v‖` over all but the kernel axis.
struct PosConv {
    g: Tensor,
    v: Tensor,
    bias: Tensor,
    kernel: i64,
    groups: i64,
}

pub struct Wav2Vec2Encoder {
    pub vs: VarStore,
    pub cfg: Wav2Vec2Cfg,
    convs: Vec<ConvLayer>,
    proj_ln: Option<nn::LayerNorm>,
    proj: nn::Linear,
    pos: PosConv,
    ln: nn::LayerNorm,
    layers: Vec<Layer>,
    /// WavLM: `[buckets, heads]`, the first layer's relative position embedding.
    rel_embed: Option<Tensor>,
    stages: Vec<Stage>,
}

/// Frames of real audio, `[B, T]` bool, from per-row sample counts.
pub struct FrameMask(pub Tensor);

impl Wav2Vec2Encoder {
    /// Builds the encoder. `legacy_weight_norm` names the positional convolution's weight-norm
    /// variables `weight_g` / `weight_v` (older checkpoints) instead of
    /// `parametrizations.weight.original0` / `original1`.
    pub fn build(cfg: &Wav2Vec2Cfg, legacy_weight_norm: bool) -> Result<Wav2Vec2Encoder> {
        cfg.check().map_err(Error::Model)?;
        let vs = VarStore::new(tch::Device::Cpu);
        let root = vs.root();
        let d = cfg.hidden_size;
        let ln = |p: nn::Path, n: i64, eps: f64| nn::layer_norm(p, vec![n], nn::LayerNormConfig { eps, ..Default::default() });
        let lin = |p: nn::Path, i: i64, o: i64| nn::linear(p, i, o, Default::default());
        let fe = &root / "feature_extractor" / "conv_layers";
        let mut convs = vec![];
        let mut c_in = 1;
        for (i, ((&c, &k), &s)) in cfg.conv_dim.iter().zip(&cfg.conv_kernel).zip(&cfg.conv_stride).enumerate() {
            let p = &fe / i;
            let conv = nn::conv1d(&p / "conv", c_in, c, k, nn::ConvConfig { stride: s, bias: cfg.conv_bias, ..Default::default() });
            let norm = match cfg.feat_extract_norm {
                FeatureNorm::Group if i == 0 => Some(ConvNorm::Group(nn::group_norm(&p / "layer_norm", c, c, Default::default()))),
                FeatureNorm::Group => None,
                FeatureNorm::Layer => Some(ConvNorm::Layer(ln(&p / "layer_norm", c, 1e-5))),
            };
            convs.push(ConvLayer { conv, norm });
            c_in = c;
        }
        let fp = &root / "feature_projection";
        let proj_ln = cfg.feat_proj_layer_norm.then(|| ln(&fp / "layer_norm", c_in, cfg.layer_norm_eps));
        let proj = lin(&fp / "projection", c_in, d);
        let pc = &root / "encoder" / "pos_conv_embed" / "conv";
        let (k, groups) = (cfg.pos_kernel, cfg.pos_groups);
        let (gp, (gn, vn)) =
            if legacy_weight_norm { (pc.clone(), ("weight_g", "weight_v")) } else { (&pc / "parametrizations" / "weight", ("original0", "original1")) };
        let pos = PosConv {
            g: gp.var(gn, &[1, 1, k], nn::Init::Const(1.0)),
            v: gp.var(vn, &[d, d / groups, k], nn::Init::Randn { mean: 0.0, stdev: 0.02 }),
            bias: pc.var("bias", &[d], nn::Init::Const(0.0)),
            kernel: k,
            groups,
        };
        let enc = &root / "encoder";
        let mut layers = vec![];
        let head_dim = d / cfg.heads;
        let rel_embed = cfg
            .rel_pos
            .map(|r| (&enc / "layers" / 0 / "attention" / "rel_attn_embed").var("weight", &[r.buckets, cfg.heads], nn::Init::Randn { mean: 0.0, stdev: 1.0 }));
        for i in 0..cfg.layers {
            let p = &enc / "layers" / i;
            let a = &p / "attention";
            let f = &p / "feed_forward";
            let gate = cfg.rel_pos.map(|_| Gate {
                linear: lin(&a / "gru_rel_pos_linear", head_dim, 8),
                scale: a.var("gru_rel_pos_const", &[1, cfg.heads, 1, 1], nn::Init::Const(1.0)),
            });
            layers.push(Layer {
                q: lin(&a / "q_proj", d, d),
                k: lin(&a / "k_proj", d, d),
                v: lin(&a / "v_proj", d, d),
                out: lin(&a / "out_proj", d, d),
                ln_attn: ln(&p / "layer_norm", d, cfg.layer_norm_eps),
                fc1: lin(&f / "intermediate_dense", d, cfg.intermediate_size),
                fc2: lin(&f / "output_dense", cfg.intermediate_size, d),
                ln_ffn: ln(&p / "final_layer_norm", d, cfg.layer_norm_eps),
                gate,
            });
        }
        let ln_enc = ln(&enc / "layer_norm", d, cfg.layer_norm_eps);
        Ok(Wav2Vec2Encoder { stages: stages(cfg), vs, cfg: cfg.clone(), convs, proj_ln, proj, pos, ln: ln_enc, layers, rel_embed })
    }

    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// The first trainable stage by default: the feature encoder stays frozen.
    pub const DEFAULT_FIRST_TRAINABLE: usize = 1;

    pub fn load_plan() -> LoadPlan {
        let drop = |p: &str, why: &str| (p.to_string(), why.to_string());
        LoadPlan {
            strip_prefixes: vec!["wav2vec2.".into(), "hubert.".into(), "wavlm.".into()],
            unused: vec![
                drop("projector.", "pre-trained classification head; the model has a new head"),
                drop("classifier.", "pre-trained classification head; the model has a new head"),
                drop("layer_weights", "the pre-trained head's layer weighting"),
                drop("masked_spec_embed", "SpecAugment's mask embedding, used in pre-training only"),
                drop("lm_head.", "the CTC head"),
                drop("quantizer.", "the pre-training quantizer"),
                drop("project_q.", "the pre-training quantizer projection"),
                drop("project_hid.", "the pre-training projection"),
                drop("label_embeddings_concat", "HuBERT's pre-training targets"),
                drop("final_proj.", "HuBERT's pre-training projection"),
            ],
            ..Default::default()
        }
    }

    /// Loads a Hugging Face `Wav2Vec2Model`, `Wav2Vec2ForSequenceClassification`, `HubertModel`,
    /// `WavLMModel` (or similar task) directory.
    pub fn from_hf_dir(dir: &Path) -> Result<(Wav2Vec2Encoder, LoadReport)> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| Error::input(&cfg_path, format!("invalid JSON: {e}")))?;
        let cfg = Wav2Vec2Cfg::from_hf(&json, &cfg_path)?;
        let weights = Weights::open(dir)?;
        let legacy = weights.names().iter().any(|n| n.ends_with("pos_conv_embed.conv.weight_g"));
        let enc = Self::build(&cfg, legacy)?;
        let report = report::load_into(&enc.vs, &weights, &Self::load_plan())?;
        report.require_complete()?;
        Ok((enc, report))
    }
}

fn stages(cfg: &Wav2Vec2Cfg) -> Vec<Stage> {
    let mut embed = vec!["feature_projection".to_string(), "encoder.pos_conv_embed".into()];
    if !cfg.stable_layer_norm {
        embed.push("encoder.layer_norm".into());
    }
    let mut stages = vec![Stage::new("feature_encoder", &["feature_extractor".into()]), Stage::new("embed", &embed)];
    for i in 0..cfg.layers {
        let mut prefixes = vec![format!("encoder.layers.{i}")];
        if cfg.stable_layer_norm && i == cfg.layers - 1 {
            prefixes.push("encoder.layer_norm".into());
        }
        stages.push(Stage::new(format!("layers.{i}"), &prefixes));
    }
    stages
}

impl Wav2Vec2Encoder {
    /// Whether the model's own preprocessing passes an attention mask: layer-norm feature
    /// encoders do; group-norm ones were trained on zero padding and take none.
    pub fn uses_attention_mask(&self) -> bool {
        self.cfg.feat_extract_norm == FeatureNorm::Layer
    }

    /// Real frames per row for per-row sample counts.
    pub fn frame_counts(&self, lengths: &[usize]) -> Vec<usize> {
        lengths.iter().map(|&n| self.cfg.frames(n)).collect()
    }

    /// `[B, T]` bool: true on the frames of real audio.
    fn frame_mask(&self, lengths: &[usize], t: i64, device: tch::Device) -> Tensor {
        let counts: Vec<i64> = self.frame_counts(lengths).iter().map(|&n| n as i64).collect();
        Tensor::arange(t, (Kind::Int64, device)).unsqueeze(0).lt_tensor(&Tensor::from_slice(&counts).to_device(device).unsqueeze(1))
    }

    /// Stage 0, the convolutional feature encoder: `[B, N]` → `[B, C, T]`.
    fn extract(&self, wave: &Tensor) -> Tensor {
        let mut x = wave.to_kind(Kind::Float).unsqueeze(1);
        for c in &self.convs {
            x = x.apply(&c.conv);
            x = match &c.norm {
                Some(ConvNorm::Group(g)) => x.apply(g),
                Some(ConvNorm::Layer(l)) => x.transpose(1, 2).apply(l).transpose(1, 2),
                None => x,
            };
            x = x.gelu("none");
        }
        x
    }

    fn pos_conv(&self, h: &Tensor) -> Tensor {
        let p = &self.pos;
        let w = Tensor::internal_weight_norm(&p.v, &p.g, 2);
        let x = h.transpose(1, 2).conv1d(&w, Some(&p.bias), [1], [p.kernel / 2], [1], p.groups);
        // An even kernel makes one frame too many: dropped at the end, as upstream.
        let x = if p.kernel % 2 == 0 { x.narrow(2, 0, x.size()[2] - 1) } else { x };
        x.gelu("none").transpose(1, 2)
    }

    /// Stage 1: projection and positions, giving the first layer's input.
    fn embed(&self, feats: &Tensor, mask: Option<&Tensor>, mode: Mode) -> Tensor {
        let train = mode.is_train();
        let x = feats.transpose(1, 2);
        let x = match &self.proj_ln {
            Some(l) => x.apply(l),
            None => x,
        };
        let mut h = x.apply(&self.proj).dropout(self.cfg.feat_proj_dropout, train);
        if let Some(m) = mask {
            h *= m.unsqueeze(-1).to_kind(Kind::Float);
        }
        let h = &h + self.pos_conv(&h);
        let h = if self.cfg.stable_layer_norm { h } else { h.apply(&self.ln) };
        h.dropout(self.cfg.hidden_dropout, train)
    }

    /// WavLM's relative position bias `[heads, T, T]` for `t` frames (before the per-layer
    /// gates), computed as `transformers` does: offset `j − i` to a bucket, the bucket to one
    /// learned value per head.
    fn position_bias(&self, t: i64, device: tch::Device) -> Option<Tensor> {
        let (r, embed) = (self.cfg.rel_pos?, self.rel_embed.as_ref()?);
        let half = r.buckets / 2;
        let exact = half / 2;
        // Every offset -(t-1)..=t-1 once, then gathered into the [t, t] grid.
        let rel = Tensor::arange_start(-(t - 1), t, (Kind::Int64, device));
        let dist = rel.abs();
        let far = (dist.to_kind(Kind::Float) / exact as f64).log() / (r.max_distance as f64 / exact as f64).ln() * (half - exact);
        let far = (far + exact).to_kind(Kind::Int64).clamp_max(half - 1);
        let bucket = rel.gt(0i64).to_kind(Kind::Int64) * half + dist.where_self(&dist.lt(exact), &far);
        let pos = Tensor::arange(t, (Kind::Int64, device));
        let grid = pos.unsqueeze(0) - pos.unsqueeze(1) + (t - 1);
        let buckets = bucket.index_select(0, &grid.view([-1])).view([t, t]);
        Some(embed.index_select(0, &buckets.view([-1])).view([t, t, -1]).permute([2, 0, 1]))
    }

    /// The gated bias of one WavLM layer, `[B, H, T, T]`: each query's gate comes from its own
    /// head slice of the attention input `x`.
    fn gated_bias(&self, g: &Gate, x: &Tensor, bias: &Tensor) -> Tensor {
        let (b, t, _) = x.size3().expect("[B, T, D]");
        let slices = x.view([b, t, self.cfg.heads, -1]).transpose(1, 2);
        let proj = slices.apply(&g.linear).view([b, self.cfg.heads, t, 2, 4]).sum_dim_intlist(&[-1i64][..], false, None::<Kind>).sigmoid();
        let (a, c) = (proj.narrow(-1, 0, 1), proj.narrow(-1, 1, 1));
        let gate = &a * (&c * &g.scale - 1.0) + 2.0;
        gate * bias.unsqueeze(0)
    }

    fn attend(&self, l: &Layer, x: &Tensor, mask: Option<&Tensor>, bias: Option<&Tensor>, mode: Mode) -> Tensor {
        let (b, t, d) = x.size3().expect("[B, T, D]");
        let heads = |y: Tensor| y.view([b, t, self.cfg.heads, -1]).transpose(1, 2);
        let p = if mode.is_train() { self.cfg.attention_dropout } else { 0.0 };
        let m = match (l.gate.as_ref().zip(bias), mask) {
            (Some((g, bias)), mask) => {
                let gated = self.gated_bias(g, x, bias);
                Some(match mask {
                    Some(m) => gated.masked_fill(&m.logical_not().unsqueeze(1).unsqueeze(1), f64::NEG_INFINITY),
                    None => gated,
                })
            }
            (None, mask) => mask.map(|m| m.unsqueeze(1).unsqueeze(1)),
        };
        let ctx = Tensor::scaled_dot_product_attention(&heads(x.apply(&l.q)), &heads(x.apply(&l.k)), &heads(x.apply(&l.v)), m.as_ref(), p, false, None, false);
        ctx.transpose(1, 2).reshape([b, t, d]).apply(&l.out).dropout(self.cfg.hidden_dropout, mode.is_train())
    }

    fn feed_forward(&self, l: &Layer, x: &Tensor, mode: Mode) -> Tensor {
        let train = mode.is_train();
        x.apply(&l.fc1).gelu("none").dropout(self.cfg.activation_dropout, train).apply(&l.fc2).dropout(self.cfg.hidden_dropout, train)
    }

    fn layer(&self, i: usize, x: &Tensor, mask: Option<&Tensor>, bias: Option<&Tensor>, mode: Mode) -> Tensor {
        let l = &self.layers[i];
        if self.cfg.stable_layer_norm {
            let x = x + self.attend(l, &x.apply(&l.ln_attn), mask, bias, mode);
            &x + self.feed_forward(l, &x.apply(&l.ln_ffn), mode)
        } else {
            let x = (x + self.attend(l, x, mask, bias, mode)).apply(&l.ln_attn);
            (&x + self.feed_forward(l, &x, mode)).apply(&l.ln_ffn)
        }
    }

    fn check_input(&self, wave: &Tensor, lengths: Option<&[usize]>) -> Result<()> {
        let s = wave.size();
        if s.len() != 2 || self.cfg.frames(s[1] as usize) == 0 {
            return Err(Error::Model(format!("Wav2Vec2 input {s:?}: expected [B, samples] with at least one frame of audio")));
        }
        if let Some(l) = lengths {
            if l.len() as i64 != s[0] || l.iter().any(|&n| n as i64 > s[1] || self.cfg.frames(n) == 0) {
                return Err(Error::Model(format!("lengths {l:?} do not fit input {s:?} (each row needs at least one frame)")));
            }
        }
        Ok(())
    }

    /// Runs stages `range` on `x` (the waveform for stage 0).
    ///
    /// `bias` holds WavLM's position bias once a layer stage has computed it, for a later call
    /// over the following stages: it comes from the first layer, so when that layer is frozen
    /// the bias of the frozen call is the one the trainable call needs, and when it trains the
    /// frozen call runs no layer and leaves it to the trainable one.
    fn run(
        &self,
        range: std::ops::Range<usize>,
        x: Tensor,
        lengths: Option<&[usize]>,
        mode: Mode,
        states: &mut Option<Vec<Tensor>>,
        bias: &mut Option<Tensor>,
    ) -> Tensor {
        let mut x = x;
        let mut mask = None;
        for s in range {
            if s >= 1 && mask.is_none() {
                let t = if s == 1 { x.size()[2] } else { x.size()[1] };
                mask = lengths.map(|l| self.frame_mask(l, t, x.device()));
            }
            if s >= 2 && bias.is_none() {
                *bias = self.position_bias(x.size()[1], x.device());
            }
            x = match s {
                0 => self.extract(&x),
                1 => self.embed(&x, mask.as_ref(), mode),
                _ => self.layer(s - 2, &x, mask.as_ref(), bias.as_ref(), mode),
            };
            if let Some(st) = states.as_mut().filter(|_| s >= 1) {
                st.push(x.shallow_clone());
            }
        }
        x
    }

    fn finish(&self, x: Tensor) -> Tensor {
        if self.cfg.stable_layer_norm {
            x.apply(&self.ln)
        } else {
            x
        }
    }

    /// Every hidden state (`layers + 1`), as `output_hidden_states` gives them. `lengths`
    /// (samples per row) masks padding; pass it only when [`Self::uses_attention_mask`].
    pub fn hidden_states(&self, wave: &Tensor, lengths: Option<&[usize]>, mode: Mode) -> Result<Vec<Tensor>> {
        self.check_input(wave, lengths)?;
        let mut states = Some(vec![]);
        let _last = self.run(0..self.stages.len(), wave.shallow_clone(), lengths, mode, &mut states, &mut None);
        Ok(states.expect("collected"))
    }

    /// Hidden state `n` without running the layers after it (`--layer N`); the stable variant's
    /// final layer norm is not applied (it belongs to [`Self::forward_from`]).
    pub fn forward_to(&self, wave: &Tensor, lengths: Option<&[usize]>, n: usize, mode: Mode) -> Result<Tensor> {
        self.check_input(wave, lengths)?;
        if n > self.layers.len() {
            return Err(Error::Model(format!("layer {n}: the encoder has hidden states 0..={}", self.layers.len())));
        }
        Ok(self.run(0..n + 2, wave.shallow_clone(), lengths, mode, &mut None, &mut None))
    }

    /// Stage 0 alone, without autograd: the convolutional feature encoder's output `[B, C, T]`
    /// (what fine-tuning with a frozen feature encoder can compute once per clip).
    pub fn feature_encoder(&self, wave: &Tensor) -> Result<Tensor> {
        self.check_input(wave, None)?;
        Ok(tch::no_grad(|| self.extract(wave)))
    }

    /// The final hidden states `[B, T, D]` from the feature encoder's output `feats` `[B, C, T]`
    /// on (stage 1 onwards); `lengths` are the rows' samples. Stages before `first_trainable`
    /// run without autograd in eval mode.
    pub fn forward_from_features(&self, feats: &Tensor, lengths: Option<&[usize]>, first_trainable: usize, mode: Mode) -> Tensor {
        let n = self.stages.len();
        let first = first_trainable.clamp(1, n);
        let mut bias = None;
        let x = tch::no_grad(|| self.run(1..first, feats.shallow_clone(), lengths, Mode::Eval, &mut None, &mut bias));
        if first == n {
            return tch::no_grad(|| self.finish(x));
        }
        self.finish(self.run(first..n, x, lengths, mode, &mut None, &mut bias))
    }

    /// The final hidden states `[B, T, D]`; stages before `first_trainable` run without autograd
    /// in eval mode ([`Self::DEFAULT_FIRST_TRAINABLE`] freezes the feature encoder).
    pub fn forward_from(&self, wave: &Tensor, lengths: Option<&[usize]>, first_trainable: usize, mode: Mode) -> Result<Tensor> {
        self.check_input(wave, lengths)?;
        let n = self.stages.len();
        let first = first_trainable.min(n);
        let mut bias = None;
        let x = tch::no_grad(|| self.run(0..first, wave.shallow_clone(), lengths, Mode::Eval, &mut None, &mut bias));
        if first == n {
            return Ok(tch::no_grad(|| self.finish(x)));
        }
        Ok(self.finish(self.run(first..n, x, lengths, mode, &mut None, &mut bias)))
    }
}
