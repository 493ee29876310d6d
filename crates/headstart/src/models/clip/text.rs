//! CLIP's text tower: token and learned position embeddings, causally masked pre-norm blocks,
//! a final layer norm, the hidden state at the end-of-text token, and a bias-free projection
//! into the joint space (OpenAI's `encode_text`, Hugging Face's `CLIPTextTransformer`).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::transformer::{layer_norm, Act, Block, BlockCfg, Layout, Projection};
use crate::models::Stage;
use tch::nn;

/// Which position's hidden state represents the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "id")]
pub enum EotPool {
    /// The largest token id (OpenAI's rule: `<|endoftext|>` is the last id of the vocabulary;
    /// also Hugging Face's for configs with the legacy `eos_token_id` 2).
    Argmax,
    /// The first position holding this id (Hugging Face, with a real `eos_token_id`).
    FirstId(i64),
    /// The last position (open_clip's `pool_type: last`).
    Last,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextCfg {
    pub vocab_size: i64,
    pub width: i64,
    pub layers: i64,
    pub heads: i64,
    pub mlp: i64,
    pub context_length: i64,
    pub eps: f64,
    pub act: Act,
    pub pool: EotPool,
}

pub struct TextTransformer {
    pub cfg: TextCfg,
    token: Tensor,
    pos: Tensor,
    blocks: Vec<Block>,
    ln_final: nn::LayerNorm,
    proj: Projection,
    pub stages: Vec<Stage>,
}

impl TextTransformer {
    pub fn new(root: &nn::Path, cfg: &TextCfg, embed_dim: i64, layout: Layout) -> TextTransformer {
        let d = cfg.width;
        let init = nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        let bc = BlockCfg { width: d, heads: cfg.heads, mlp: cfg.mlp, eps: cfg.eps, act: cfg.act };
        let n = cfg.layers as usize;
        let (token, pos, blocks, ln_final, proj, names): (_, _, Vec<Block>, _, _, [&str; 4]) = match layout {
            Layout::Hf => {
                let t = root / "text_model";
                let e = &t / "embeddings";
                let token = (&e / "token_embedding").var("weight", &[cfg.vocab_size, d], init);
                let pos = (&e / "position_embedding").var("weight", &[cfg.context_length, d], init);
                let blocks = (0..n).map(|i| Block::new(&(&t / "encoder" / "layers" / i), bc, layout)).collect();
                let proj = Projection::new(root, "text_projection", d, embed_dim, layout);
                let names = ["text_model.embeddings.", "text_model.encoder.layers", "text_model.final_layer_norm.", "text_projection."];
                (token, pos, blocks, layer_norm(&t / "final_layer_norm", d, cfg.eps), proj, names)
            }
            Layout::OpenClip => {
                let token = (root / "token_embedding").var("weight", &[cfg.vocab_size, d], init);
                let pos = root.var("positional_embedding", &[cfg.context_length, d], init);
                let blocks = (0..n).map(|i| Block::new(&(root / "transformer" / "resblocks" / i), bc, layout)).collect();
                let proj = Projection::new(root, "text_projection", d, embed_dim, layout);
                (
                    token,
                    pos,
                    blocks,
                    layer_norm(root / "ln_final", d, cfg.eps),
                    proj,
                    ["token_embedding.", "transformer.resblocks", "ln_final.", "text_projection"],
                )
            }
        };
        let mut stages = vec![super::vision::stage("embed", &[names[0].into(), "positional_embedding".into()])];
        stages.extend((0..n).map(|i| super::vision::stage(&format!("block{i}"), &[format!("{}.{i}.", names[1])])));
        stages.push(super::vision::stage("head", &[names[2].into(), names[3].into()]));
        TextTransformer { cfg: cfg.clone(), token, pos, blocks, ln_final, proj, stages }
    }

    /// The positions pooled for `ids` (`[B, L]`).
    fn pool_index(&self, ids: &Tensor) -> Tensor {
        match self.cfg.pool {
            EotPool::Argmax => ids.argmax(-1, false),
            EotPool::FirstId(id) => ids.eq(id).to_kind(Kind::Int).argmax(-1, false),
            EotPool::Last => Tensor::full([ids.size()[0]], ids.size()[1] - 1, (Kind::Int64, ids.device())),
        }
    }

    /// Unnormalised text embeddings `[B, E]` of token ids `[B, L]`, `L ≤ context_length`.
    ///
    /// Attention is causal, so no position after the pooled ones can change them: unless the
    /// last position is pooled, the padding after the longest text's pooled position is not
    /// run (a prompt of ten tokens padded to 77 costs ten positions, not 77).
    pub fn encode(&self, ids: &Tensor) -> Tensor {
        let idx = self.pool_index(ids);
        let ids = match self.cfg.pool {
            EotPool::Last => ids.shallow_clone(),
            EotPool::Argmax | EotPool::FirstId(_) => ids.narrow(1, 0, idx.max().int64_value(&[]) + 1),
        };
        let (b, l) = ids.size2().expect("[B, L]");
        let mut x = Tensor::embedding(&self.token, &ids, -1, false, false) + self.pos.narrow(0, 0, l);
        for blk in &self.blocks {
            x = blk.forward(&x, true);
        }
        let x = x.apply(&self.ln_final);
        let idx = idx.to_device(x.device());
        let pooled = x.gather(1, &idx.view([b, 1, 1]).expand([b, 1, self.cfg.width], false), false);
        self.proj.apply(&pooled.squeeze_dim(1))
    }
}
