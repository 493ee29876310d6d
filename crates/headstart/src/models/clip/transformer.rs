//! The pre-norm transformer block CLIP uses in both towers, under either checkpoint layout:
//! Hugging Face (`layer_norm1`, `self_attn.{q,k,v,out}_proj`, `layer_norm2`, `mlp.fc1/fc2`) or
//! open_clip / OpenAI (`ln_1`, `attn.in_proj_weight` fused q·k·v, `attn.out_proj`, `ln_2`,
//! `mlp.c_fc/c_proj`).

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::Tensor;

/// Which names the checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Hugging Face `CLIPModel`.
    Hf,
    /// open_clip (and OpenAI's original state dicts).
    OpenClip,
}

/// The MLP activation: OpenAI's CLIP models use `x·σ(1.702x)`; later ones the exact gelu.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Act {
    QuickGelu,
    Gelu,
    /// gelu's tanh approximation (`gelu_pytorch_tanh`, SigLIP).
    GeluTanh,
}

impl Act {
    pub fn parse(s: &str) -> Option<Act> {
        match s {
            "quick_gelu" => Some(Act::QuickGelu),
            "gelu" => Some(Act::Gelu),
            "gelu_pytorch_tanh" | "gelu_new" => Some(Act::GeluTanh),
            _ => None,
        }
    }
    pub(crate) fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Act::QuickGelu => x * (x * 1.702).sigmoid(),
            Act::Gelu => x.gelu("none"),
            Act::GeluTanh => x.gelu("tanh"),
        }
    }
}

enum Qkv {
    Split(nn::Linear, nn::Linear, nn::Linear),
    Fused { w: Tensor, b: Tensor },
}

pub(crate) struct Block {
    ln1: nn::LayerNorm,
    qkv: Qkv,
    out: nn::Linear,
    ln2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    heads: i64,
    act: Act,
}

pub(crate) fn layer_norm(p: nn::Path, d: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(p, vec![d], nn::LayerNormConfig { eps, ..Default::default() })
}

/// Shapes of one block.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockCfg {
    pub width: i64,
    pub heads: i64,
    pub mlp: i64,
    pub eps: f64,
    pub act: Act,
}

impl Block {
    pub fn new(p: &nn::Path, c: BlockCfg, layout: Layout) -> Block {
        let d = c.width;
        let lin = |p: nn::Path, i, o| nn::linear(p, i, o, Default::default());
        match layout {
            Layout::Hf => {
                let a = p / "self_attn";
                Block {
                    ln1: layer_norm(p / "layer_norm1", d, c.eps),
                    qkv: Qkv::Split(lin(&a / "q_proj", d, d), lin(&a / "k_proj", d, d), lin(&a / "v_proj", d, d)),
                    out: lin(&a / "out_proj", d, d),
                    ln2: layer_norm(p / "layer_norm2", d, c.eps),
                    fc1: lin(p / "mlp" / "fc1", d, c.mlp),
                    fc2: lin(p / "mlp" / "fc2", c.mlp, d),
                    heads: c.heads,
                    act: c.act,
                }
            }
            Layout::OpenClip => {
                let a = p / "attn";
                let w = a.var("in_proj_weight", &[3 * d, d], nn::Init::Randn { mean: 0.0, stdev: 0.02 });
                let b = a.zeros("in_proj_bias", &[3 * d]);
                Block {
                    ln1: layer_norm(p / "ln_1", d, c.eps),
                    qkv: Qkv::Fused { w, b },
                    out: lin(&a / "out_proj", d, d),
                    ln2: layer_norm(p / "ln_2", d, c.eps),
                    fc1: lin(p / "mlp" / "c_fc", d, c.mlp),
                    fc2: lin(p / "mlp" / "c_proj", c.mlp, d),
                    heads: c.heads,
                    act: c.act,
                }
            }
        }
    }

    fn attention(&self, x: &Tensor, causal: bool) -> Tensor {
        let (b, n, d) = x.size3().expect("[B, N, D]");
        let h = self.heads;
        let (q, k, v) = match &self.qkv {
            Qkv::Split(q, k, v) => (q.forward(x), k.forward(x), v.forward(x)),
            Qkv::Fused { w, b } => {
                let all = x.linear(w, Some(b)).chunk(3, -1);
                (all[0].shallow_clone(), all[1].shallow_clone(), all[2].shallow_clone())
            }
        };
        let split = |t: Tensor| t.view([b, n, h, d / h]).transpose(1, 2);
        let ctx = Tensor::scaled_dot_product_attention(&split(q), &split(k), &split(v), None::<Tensor>, 0.0, causal, None, false);
        self.out.forward(&ctx.transpose(1, 2).reshape([b, n, d]))
    }

    /// `x` is `[B, N, D]`; `causal` masks attention to later tokens (the text tower).
    pub fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let x = x + self.attention(&x.apply(&self.ln1), causal);
        let m = self.act.apply(&x.apply(&self.ln2).apply(&self.fc1)).apply(&self.fc2);
        x + m
    }
}

/// A projection into the joint embedding space: a bias-free `nn.Linear` (`weight`, `[E, D]`)
/// in Hugging Face checkpoints, a bare matrix (`[D, E]`, applied as `x @ P`) in open_clip's.
pub(crate) struct Projection {
    w: Tensor,
    transposed: bool,
}

impl Projection {
    pub fn new(p: &nn::Path, name: &str, width: i64, embed: i64, layout: Layout) -> Projection {
        let init = nn::Init::Randn { mean: 0.0, stdev: (width as f64).powf(-0.5) };
        match layout {
            Layout::Hf => Projection { w: (p / name).var("weight", &[embed, width], init), transposed: true },
            Layout::OpenClip => Projection { w: p.var(name, &[width, embed], init), transposed: false },
        }
    }
    pub fn apply(&self, x: &Tensor) -> Tensor {
        if self.transposed {
            x.matmul(&self.w.tr())
        } else {
            x.matmul(&self.w)
        }
    }
}
