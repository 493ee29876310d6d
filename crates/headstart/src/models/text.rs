//! Transformer text encoders laid out as Hugging Face checkpoints: BERT (and MiniLM, which is
//! the same architecture), RoBERTa / XLM-RoBERTa, DistilBERT and GPT-2.
//!
//! Variables carry the base model's names (`embeddings.*`, `encoder.layer.{i}.*` for BERT and
//! RoBERTa, `transformer.layer.{i}.*` for DistilBERT, `wte`/`wpe`/`h.{i}.*`/`ln_f` for GPT-2);
//! task-model prefixes (`bert.`, `roberta.`, `distilbert.`, `transformer.`) are stripped on
//! load and pre-trained task heads are reported as dropped.
//!
//! Stages for freezing: the embeddings, then one stage per transformer layer (GPT-2's final
//! layer norm belongs to its last layer). Dropout is active in train mode, as upstream:
//! embeddings, attention probabilities and both residual branches.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::nn::{self, VarStore};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::models::{Mode, Stage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Bert,
    Roberta,
    DistilBert,
    Gpt2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Gelu,
    GeluTanh,
    Relu,
}

impl Activation {
    fn parse(s: &str) -> Option<Activation> {
        match s {
            "gelu" => Some(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Activation::GeluTanh),
            "relu" => Some(Activation::Relu),
            _ => None,
        }
    }
    fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Relu => x.relu(),
        }
    }
}

/// How a sequence of hidden states becomes one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The first token (`[CLS]` / `<s>`).
    Cls,
    /// Mean over the tokens the attention mask keeps.
    Mean,
    /// The last token the attention mask keeps (GPT-2).
    LastToken,
}

impl std::str::FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cls" => Ok(Pooling::Cls),
            "mean" => Ok(Pooling::Mean),
            "last" | "last_token" => Ok(Pooling::LastToken),
            _ => Err(format!("`{s}`: expected cls, mean or last")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextCfg {
    pub family: Family,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_layers: i64,
    pub num_heads: i64,
    pub intermediate_size: i64,
    pub max_positions: i64,
    /// 0 when the model has no token-type embeddings.
    pub type_vocab_size: i64,
    pub layer_norm_eps: f64,
    pub hidden_dropout: f64,
    pub attention_dropout: f64,
    pub activation: Activation,
    pub pad_token_id: i64,
}

fn field<'a>(c: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().find_map(|k| c.get(*k).filter(|v| !v.is_null()))
}

/// The fields of one `config.json`, read with errors naming the file.
struct Fields<'a> {
    c: &'a Value,
    path: &'a Path,
}

impl Fields<'_> {
    fn bad(&self, m: String) -> Error {
        Error::input(self.path, m)
    }
    /// The first of `keys` present, as an integer; required.
    fn int(&self, keys: &[&str]) -> Result<i64> {
        field(self.c, keys).and_then(Value::as_i64).ok_or_else(|| self.bad(format!("missing integer field `{}`", keys[0])))
    }
    /// The first of `keys` present, as an integer, or `default`.
    fn int_or(&self, keys: &[&str], default: i64) -> i64 {
        field(self.c, keys).and_then(Value::as_i64).unwrap_or(default)
    }
    /// The first of `keys` present, as a number, or `default`.
    fn float(&self, keys: &[&str], default: f64) -> Result<f64> {
        match field(self.c, keys) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.bad(format!("field `{}` is not a number", keys[0]))),
        }
    }
    fn activation(&self, name: &str) -> Result<Activation> {
        Activation::parse(name).ok_or_else(|| self.bad(format!("activation `{name}` is not supported")))
    }
}

impl TextCfg {
    /// Reads a `config.json` of a supported `model_type`.
    pub fn from_hf(c: &Value, path: &Path) -> Result<TextCfg> {
        let f = Fields { c, path };
        let model_type = c.get("model_type").and_then(Value::as_str).ok_or_else(|| f.bad("no `model_type`".into()))?;
        let family = match model_type {
            "bert" => Family::Bert,
            "roberta" | "xlm-roberta" | "camembert" => Family::Roberta,
            "distilbert" => Family::DistilBert,
            "gpt2" => Family::Gpt2,
            other => return Err(f.bad(format!("model_type `{other}` is not supported for text (bert, roberta, xlm-roberta, distilbert, gpt2)"))),
        };
        let act_name = field(c, &["hidden_act", "activation", "activation_function"]).and_then(Value::as_str).unwrap_or("gelu");
        let activation = f.activation(act_name)?;
        if let Some(pe) = c.get("position_embedding_type").and_then(Value::as_str) {
            if pe != "absolute" {
                return Err(f.bad(format!("position_embedding_type `{pe}` is not supported (only absolute)")));
            }
        }
        let cfg = match family {
            Family::Bert | Family::Roberta => Self::bert(&f, family, activation)?,
            Family::DistilBert => Self::distilbert(&f, activation)?,
            Family::Gpt2 => Self::gpt2(&f)?,
        };
        if cfg.hidden_size <= 0 || cfg.num_heads <= 0 || cfg.hidden_size % cfg.num_heads != 0 {
            return Err(f.bad(format!("hidden size {} is not a multiple of {} heads", cfg.hidden_size, cfg.num_heads)));
        }
        if cfg.num_layers <= 0 || cfg.vocab_size <= 0 || cfg.max_positions <= 0 {
            return Err(f.bad("layers, vocabulary and positions must be positive".into()));
        }
        Ok(cfg)
    }

    /// BERT and RoBERTa field names.
    fn bert(f: &Fields, family: Family, activation: Activation) -> Result<TextCfg> {
        Ok(TextCfg {
            family,
            vocab_size: f.int(&["vocab_size"])?,
            hidden_size: f.int(&["hidden_size"])?,
            num_layers: f.int(&["num_hidden_layers"])?,
            num_heads: f.int(&["num_attention_heads"])?,
            intermediate_size: f.int(&["intermediate_size"])?,
            max_positions: f.int(&["max_position_embeddings"])?,
            type_vocab_size: f.int_or(&["type_vocab_size"], 2),
            layer_norm_eps: f.float(&["layer_norm_eps"], 1e-12)?,
            hidden_dropout: f.float(&["hidden_dropout_prob"], 0.1)?,
            attention_dropout: f.float(&["attention_probs_dropout_prob"], 0.1)?,
            activation,
            pad_token_id: f.int_or(&["pad_token_id"], if family == Family::Roberta { 1 } else { 0 }),
        })
    }

    /// DistilBERT field names (no token types, fixed layer-norm epsilon).
    fn distilbert(f: &Fields, activation: Activation) -> Result<TextCfg> {
        let dim = f.int(&["dim", "hidden_size"])?;
        Ok(TextCfg {
            family: Family::DistilBert,
            vocab_size: f.int(&["vocab_size"])?,
            hidden_size: dim,
            num_layers: f.int(&["n_layers", "num_hidden_layers"])?,
            num_heads: f.int(&["n_heads", "num_attention_heads"])?,
            intermediate_size: f.int_or(&["hidden_dim"], 4 * dim),
            max_positions: f.int(&["max_position_embeddings"])?,
            type_vocab_size: 0,
            layer_norm_eps: 1e-12,
            hidden_dropout: f.float(&["dropout"], 0.1)?,
            attention_dropout: f.float(&["attention_dropout"], 0.1)?,
            activation,
            pad_token_id: f.int_or(&["pad_token_id"], 0),
        })
    }

    /// GPT-2 field names (its activation under `activation_function`, default `gelu_new`).
    fn gpt2(f: &Fields) -> Result<TextCfg> {
        let dim = f.int(&["n_embd", "hidden_size"])?;
        let eps = f.float(&["layer_norm_epsilon"], 1e-5)?;
        let act = field(f.c, &["activation_function"]).and_then(Value::as_str).unwrap_or("gelu_new");
        Ok(TextCfg {
            family: Family::Gpt2,
            vocab_size: f.int(&["vocab_size"])?,
            hidden_size: dim,
            num_layers: f.int(&["n_layer", "num_hidden_layers"])?,
            num_heads: f.int(&["n_head", "num_attention_heads"])?,
            intermediate_size: f.int_or(&["n_inner"], 4 * dim),
            max_positions: f.int(&["n_positions", "max_position_embeddings"])?,
            type_vocab_size: 0,
            layer_norm_eps: eps,
            hidden_dropout: f.float(&["resid_pdrop"], 0.1)?,
            attention_dropout: f.float(&["attn_pdrop"], 0.1)?,
            activation: f.activation(act)?,
            pad_token_id: f.int_or(&["pad_token_id", "eos_token_id"], 0),
        })
    }

    /// The longest input the position embeddings allow (RoBERTa's positions start after the
    /// padding index).
    pub fn max_tokens(&self) -> usize {
        match self.family {
            Family::Roberta => (self.max_positions - self.pad_token_id - 1).max(1) as usize,
            _ => self.max_positions as usize,
        }
    }

    /// Pooling when neither the user nor a sentence-transformers config says otherwise.
    pub fn default_pooling(&self) -> Pooling {
        match self.family {
            Family::Gpt2 => Pooling::LastToken,
            _ => Pooling::Cls,
        }
    }
}

/// A boolean attention mask `[B, 1, T|1, T]` (true: attend), or none; `causal` asks for the
/// causal mask alone.
struct Mask {
    tensor: Option<Tensor>,
    causal: bool,
}

/// Token ids, attention mask (1 = real token) and token types, all `[B, T]` int64.
pub struct TextBatch {
    pub ids: Tensor,
    pub mask: Tensor,
    pub type_ids: Tensor,
}

struct Attention {
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    out: nn::Linear,
}

/// One transformer layer. BERT-style layers normalise after each residual sum; GPT-2 before.
struct Layer {
    attn: Attention,
    ln_attn: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    ln_ffn: nn::LayerNorm,
}

/// GPT-2's `Conv1D`: a linear layer whose weight is stored `[in, out]`.
struct Conv1D {
    w: Tensor,
    b: Tensor,
}

impl Conv1D {
    fn new(p: nn::Path, i: i64, o: i64) -> Conv1D {
        Conv1D { w: p.var("weight", &[i, o], nn::Init::Randn { mean: 0.0, stdev: 0.02 }), b: p.var("bias", &[o], nn::Init::Const(0.0)) }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        x.matmul(&self.w) + &self.b
    }
}

struct Gpt2Layer {
    ln_1: nn::LayerNorm,
    c_attn: Conv1D,
    c_proj: Conv1D,
    ln_2: nn::LayerNorm,
    c_fc: Conv1D,
    mlp_proj: Conv1D,
}

enum Layers {
    Bert(Vec<Layer>),
    Gpt2(Vec<Gpt2Layer>, nn::LayerNorm),
}

struct Embeddings {
    word: nn::Embedding,
    position: nn::Embedding,
    token_type: Option<nn::Embedding>,
    ln: Option<nn::LayerNorm>,
}

pub struct TextEncoder {
    pub vs: VarStore,
    pub cfg: TextCfg,
    emb: Embeddings,
    layers: Layers,
    stages: Vec<Stage>,
}

fn layer_norm(p: nn::Path, cfg: &TextCfg) -> nn::LayerNorm {
    nn::layer_norm(p, vec![cfg.hidden_size], nn::LayerNormConfig { eps: cfg.layer_norm_eps, ..Default::default() })
}

fn linear(p: nn::Path, i: i64, o: i64) -> nn::Linear {
    nn::linear(p, i, o, Default::default())
}

fn embedding(p: nn::Path, n: i64, d: i64) -> nn::Embedding {
    nn::embedding(p, n, d, nn::EmbeddingConfig { ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 }, ..Default::default() })
}

impl Layer {
    /// A BERT / RoBERTa layer at `encoder.layer.{i}`.
    fn bert(p: &nn::Path, cfg: &TextCfg) -> Layer {
        let (d, a) = (cfg.hidden_size, p / "attention");
        Layer {
            attn: Attention {
                q: linear(&a / "self" / "query", d, d),
                k: linear(&a / "self" / "key", d, d),
                v: linear(&a / "self" / "value", d, d),
                out: linear(&a / "output" / "dense", d, d),
            },
            ln_attn: layer_norm(&a / "output" / "LayerNorm", cfg),
            fc1: linear(p / "intermediate" / "dense", d, cfg.intermediate_size),
            fc2: linear(p / "output" / "dense", cfg.intermediate_size, d),
            ln_ffn: layer_norm(p / "output" / "LayerNorm", cfg),
        }
    }

    /// A DistilBERT layer at `transformer.layer.{i}`.
    fn distilbert(p: &nn::Path, cfg: &TextCfg) -> Layer {
        let (d, a) = (cfg.hidden_size, p / "attention");
        Layer {
            attn: Attention { q: linear(&a / "q_lin", d, d), k: linear(&a / "k_lin", d, d), v: linear(&a / "v_lin", d, d), out: linear(&a / "out_lin", d, d) },
            ln_attn: layer_norm(p / "sa_layer_norm", cfg),
            fc1: linear(p / "ffn" / "lin1", d, cfg.intermediate_size),
            fc2: linear(p / "ffn" / "lin2", cfg.intermediate_size, d),
            ln_ffn: layer_norm(p / "output_layer_norm", cfg),
        }
    }
}

impl Gpt2Layer {
    /// A GPT-2 layer at `h.{i}`.
    fn new(p: &nn::Path, cfg: &TextCfg) -> Gpt2Layer {
        let d = cfg.hidden_size;
        Gpt2Layer {
            ln_1: layer_norm(p / "ln_1", cfg),
            c_attn: Conv1D::new(p / "attn" / "c_attn", d, 3 * d),
            c_proj: Conv1D::new(p / "attn" / "c_proj", d, d),
            ln_2: layer_norm(p / "ln_2", cfg),
            c_fc: Conv1D::new(p / "mlp" / "c_fc", d, cfg.intermediate_size),
            mlp_proj: Conv1D::new(p / "mlp" / "c_proj", cfg.intermediate_size, d),
        }
    }
}

/// GPT-2's embeddings and layers, and their stages (the final layer norm in the last).
fn build_gpt2(root: &nn::Path, cfg: &TextCfg) -> (Embeddings, Layers, Vec<Stage>) {
    let d = cfg.hidden_size;
    let emb =
        Embeddings { word: embedding(root / "wte", cfg.vocab_size, d), position: embedding(root / "wpe", cfg.max_positions, d), token_type: None, ln: None };
    let mut stages = vec![Stage::new("embeddings", &["wte".into(), "wpe".into()])];
    let mut layers = vec![];
    for i in 0..cfg.num_layers {
        layers.push(Gpt2Layer::new(&(root / "h" / i), cfg));
        let mut prefixes = vec![format!("h.{i}")];
        if i == cfg.num_layers - 1 {
            prefixes.push("ln_f".into());
        }
        stages.push(Stage::new(format!("layer{i}"), &prefixes));
    }
    (emb, Layers::Gpt2(layers, layer_norm(root / "ln_f", cfg)), stages)
}

/// BERT, RoBERTa or DistilBERT embeddings and layers, and their stages.
fn build_bert(root: &nn::Path, cfg: &TextCfg) -> (Embeddings, Layers, Vec<Stage>) {
    let (d, e) = (cfg.hidden_size, root / "embeddings");
    let emb = Embeddings {
        word: embedding(&e / "word_embeddings", cfg.vocab_size, d),
        position: embedding(&e / "position_embeddings", cfg.max_positions, d),
        token_type: (cfg.type_vocab_size > 0).then(|| embedding(&e / "token_type_embeddings", cfg.type_vocab_size, d)),
        ln: Some(layer_norm(&e / "LayerNorm", cfg)),
    };
    let mut stages = vec![Stage::new("embeddings", &["embeddings".into()])];
    let mut layers = vec![];
    for i in 0..cfg.num_layers {
        let (layer, prefix) = if cfg.family == Family::DistilBert {
            (Layer::distilbert(&(root / "transformer" / "layer" / i), cfg), format!("transformer.layer.{i}"))
        } else {
            (Layer::bert(&(root / "encoder" / "layer" / i), cfg), format!("encoder.layer.{i}"))
        };
        layers.push(layer);
        stages.push(Stage::new(format!("layer{i}"), &[prefix]));
    }
    (emb, Layers::Bert(layers), stages)
}

impl TextEncoder {
    pub fn build(cfg: &TextCfg) -> TextEncoder {
        let vs = VarStore::new(tch::Device::Cpu);
        let (emb, layers, stages) = match cfg.family {
            Family::Gpt2 => build_gpt2(&vs.root(), cfg),
            Family::Bert | Family::Roberta | Family::DistilBert => build_bert(&vs.root(), cfg),
        };
        TextEncoder { vs, cfg: cfg.clone(), emb, layers, stages }
    }

    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    pub fn hidden_size(&self) -> i64 {
        self.cfg.hidden_size
    }

    /// Task-model prefixes to strip and pre-trained heads / buffers to drop, for loading.
    pub fn load_plan(&self) -> crate::weights::report::LoadPlan {
        let mut unused: Vec<(String, String)> = vec![
            ("pooler.".into(), "BERT pooler (features come from the hidden states)".into()),
            ("cls.".into(), "pre-training head".into()),
            ("lm_head.".into(), "language-model head".into()),
            ("classifier.".into(), "pre-trained task head; the model gets a new one".into()),
            ("pre_classifier.".into(), "pre-trained task head; the model gets a new one".into()),
            ("score.".into(), "pre-trained task head; the model gets a new one".into()),
            ("vocab_".into(), "masked-LM head".into()),
            ("qa_outputs.".into(), "pre-trained task head".into()),
            ("embeddings.position_ids".into(), "buffer recomputed at run time".into()),
        ];
        if self.cfg.family == Family::Gpt2 {
            for i in 0..self.cfg.num_layers {
                unused.push((format!("h.{i}.attn.bias"), "causal-mask buffer".into()));
                unused.push((format!("h.{i}.attn.masked_bias"), "causal-mask buffer".into()));
            }
        }
        crate::weights::report::LoadPlan { strip_prefixes: vec![self.task_prefix().to_string()], unused, ..Default::default() }
    }

    /// The base model's name inside task checkpoints (`BertForSequenceClassification` →
    /// `bert.`).
    fn task_prefix(&self) -> &'static str {
        match self.cfg.family {
            Family::Bert => "bert.",
            Family::Roberta => "roberta.",
            Family::DistilBert => "distilbert.",
            Family::Gpt2 => "transformer.",
        }
    }

    /// Stage 0: token, position (and token-type) embeddings.
    fn embed(&self, b: &TextBatch, mode: Mode) -> Tensor {
        let t = b.ids.size()[1];
        let positions = match self.cfg.family {
            // RoBERTa counts positions over non-padding tokens, starting after the padding index.
            Family::Roberta => {
                let keep = b.ids.ne(self.cfg.pad_token_id).to_kind(Kind::Int64);
                keep.cumsum(1, Kind::Int64) * &keep + self.cfg.pad_token_id
            }
            _ => Tensor::arange(t, (Kind::Int64, b.ids.device())).unsqueeze(0),
        };
        let mut x = b.ids.apply(&self.emb.word) + positions.apply(&self.emb.position);
        if let Some(tt) = &self.emb.token_type {
            x += b.type_ids.apply(tt);
        }
        if let Some(ln) = &self.emb.ln {
            x = x.apply(ln);
        }
        x.dropout(self.cfg.hidden_dropout, mode.is_train())
    }

    fn heads(&self, x: &Tensor) -> Tensor {
        let (b, t, _) = x.size3().expect("[B, T, D]");
        x.view([b, t, self.cfg.num_heads, -1]).transpose(1, 2)
    }

    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: &Mask, mode: Mode) -> Tensor {
        let (b, t, d) = q.size3().expect("[B, T, D]");
        let p = if mode.is_train() { self.cfg.attention_dropout } else { 0.0 };
        let ctx = Tensor::scaled_dot_product_attention(&self.heads(q), &self.heads(k), &self.heads(v), mask.tensor.as_ref(), p, mask.causal, None, false);
        ctx.transpose(1, 2).reshape([b, t, d])
    }

    /// Stage `i ≥ 1`: transformer layer `i − 1`. `mask` is the boolean attention mask,
    /// `[B, 1, T|1, T]`, true where attention is allowed.
    fn layer(&self, i: usize, x: &Tensor, mask: &Mask, mode: Mode) -> Tensor {
        let train = mode.is_train();
        let pd = self.cfg.hidden_dropout;
        match &self.layers {
            Layers::Bert(layers) => {
                let l = &layers[i];
                let a = self.attend(&x.apply(&l.attn.q), &x.apply(&l.attn.k), &x.apply(&l.attn.v), mask, mode);
                let x = (a.apply(&l.attn.out).dropout(pd, train) + x).apply(&l.ln_attn);
                let h = self.cfg.activation.apply(&x.apply(&l.fc1)).apply(&l.fc2).dropout(pd, train);
                (h + x).apply(&l.ln_ffn)
            }
            Layers::Gpt2(layers, _) => {
                let l = &layers[i];
                let qkv = l.c_attn.forward(&x.apply(&l.ln_1)).chunk(3, -1);
                let a = self.attend(&qkv[0], &qkv[1], &qkv[2], mask, mode);
                let x = l.c_proj.forward(&a).dropout(pd, train) + x;
                let h = l.mlp_proj.forward(&self.cfg.activation.apply(&l.c_fc.forward(&x.apply(&l.ln_2)))).dropout(pd, train);
                h + x
            }
        }
    }

    /// The attention mask of a batch. Without padding there is none (GPT-2: just causal), which
    /// lets libtorch pick its fused attention kernels.
    fn attention_mask(&self, b: &TextBatch) -> Mask {
        let causal = self.cfg.family == Family::Gpt2;
        let keep = b.mask.ne(0);
        if bool::try_from(keep.all()).unwrap_or(false) {
            return Mask { tensor: None, causal };
        }
        let keys = keep.unsqueeze(1).unsqueeze(1); // [B, 1, 1, T]
        let tensor = if causal {
            let t = b.ids.size()[1];
            let tri = Tensor::ones([t, t], (Kind::Bool, b.ids.device())).tril(0);
            keys.logical_and(&tri.unsqueeze(0).unsqueeze(0))
        } else {
            keys
        };
        Mask { tensor: Some(tensor), causal: false }
    }

    /// Hidden states `[B, T, D]`. Stages before `first_trainable` run without autograd and in
    /// eval mode (frozen: no dropout); the rest in `mode`.
    pub fn forward_from(&self, b: &TextBatch, first_trainable: usize, mode: Mode) -> Tensor {
        let mask = self.attention_mask(b);
        let n = self.stages.len();
        let run = |range: std::ops::Range<usize>, x: Option<Tensor>, mode: Mode| -> Tensor {
            let mut x = x;
            for s in range {
                x = Some(if s == 0 { self.embed(b, mode) } else { self.layer(s - 1, x.as_ref().expect("embedded"), &mask, mode) });
            }
            x.expect("at least one stage")
        };
        let first = first_trainable.min(n);
        let x = if first > 0 { Some(tch::no_grad(|| run(0..first, None, Mode::Eval))) } else { None };
        let x = if first < n { run(first..n, x, mode) } else { x.expect("frozen stages ran") };
        match &self.layers {
            Layers::Gpt2(_, ln_f) => x.apply(ln_f),
            Layers::Bert(_) => x,
        }
    }

    pub fn forward(&self, b: &TextBatch, mode: Mode) -> Tensor {
        self.forward_from(b, 0, mode)
    }
}

/// Pools `[B, T, D]` hidden states to `[B, D]` under the attention mask; `normalize` divides
/// by the L2 norm (sentence-transformers' `Normalize`).
pub fn pool(h: &Tensor, mask: &Tensor, pooling: Pooling, normalize: bool) -> Tensor {
    let v = match pooling {
        Pooling::Cls => h.select(1, 0),
        Pooling::Mean => {
            let m = mask.to_kind(h.kind()).unsqueeze(-1);
            (h * &m).sum_dim_intlist(&[1i64][..], false, h.kind()) / m.sum_dim_intlist(&[1i64][..], false, h.kind()).clamp_min(1e-9)
        }
        Pooling::LastToken => {
            let last = (mask.sum_dim_intlist(&[1i64][..], false, Kind::Int64) - 1).clamp_min(0);
            let (b, _, d) = h.size3().expect("[B, T, D]");
            h.gather(1, &last.view([b, 1, 1]).expand([b, 1, d], false), false).squeeze_dim(1)
        }
    };
    if normalize {
        let n = v.norm_scalaropt_dim(2.0, &[-1i64][..], true).clamp_min(1e-12);
        &v / n
    } else {
        v
    }
}

/// sentence-transformers' module files in a model directory, when present: pooling mode,
/// whether a `Normalize` module follows, and `max_seq_length`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SentenceConfig {
    pub pooling: Option<Pooling>,
    pub normalize: bool,
    pub max_seq_length: Option<usize>,
}

pub fn sentence_config(dir: &Path) -> Result<SentenceConfig> {
    let read = |p: &Path| -> Result<Option<Value>> {
        if !p.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
        serde_json::from_str(&text).map(Some).map_err(|e| Error::input(p, format!("invalid JSON: {e}")))
    };
    let mut out = SentenceConfig::default();
    let modules_path = dir.join("modules.json");
    let Some(modules) = read(&modules_path)? else {
        return Ok(out);
    };
    let modules = modules.as_array().ok_or_else(|| Error::input(&modules_path, "expected a list of modules"))?;
    for m in modules {
        let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
        let sub = dir.join(m.get("path").and_then(Value::as_str).unwrap_or(""));
        if ty.ends_with(".Pooling") {
            let p = sub.join("config.json");
            let c = read(&p)?.ok_or_else(|| Error::input(&p, "the Pooling module has no config.json"))?;
            let on = |k: &str| c.get(k).and_then(Value::as_bool).unwrap_or(false);
            out.pooling = Some(if on("pooling_mode_cls_token") {
                Pooling::Cls
            } else if on("pooling_mode_mean_tokens") {
                Pooling::Mean
            } else if on("pooling_mode_lasttoken") {
                Pooling::LastToken
            } else {
                let mode = c.get("pooling_mode").and_then(Value::as_str).unwrap_or("(none)");
                match mode {
                    "cls" => Pooling::Cls,
                    "mean" => Pooling::Mean,
                    "lasttoken" => Pooling::LastToken,
                    _ => return Err(Error::input(&p, format!("pooling mode `{mode}` is not supported (cls, mean, lasttoken)"))),
                }
            });
        } else if ty.ends_with(".Normalize") {
            out.normalize = true;
        }
    }
    let sb = dir.join("sentence_bert_config.json");
    if let Some(c) = read(&sb)? {
        out.max_seq_length = c.get("max_seq_length").and_then(Value::as_u64).map(|n| n as usize);
    }
    Ok(out)
}
