//! Texts longer than the encoder's window: cut at the window (`truncate`), or read whole as
//! consecutive windows (`chunks`) whose embeddings are pooled into one.
//!
//! A chunk is what a careful sentence-transformers user encodes: the text's tokens without
//! special tokens, cut into windows of `max_length − specials` tokens (each window starting
//! `overlap` tokens before the previous one ended), each window wrapped as the tokenizer wraps
//! one text (`[CLS] … [SEP]`, `<s> … </s>`; GPT-2 adds nothing). Only the first `max_chunks`
//! windows are read. The document's embedding is the mean (or element-wise max) of its
//! chunks' embeddings, each pooled and normalised as the model pools one text; nothing is
//! re-normalised after. A text that fits in one window gives the same embedding either way.
//!
//! Sentence pairs are always truncated (longest first): a pair classifier attends across both
//! texts in one window, which chunking one side would break.
//!
//! Batching: the chunks of many documents are embedded together, sorted by length (little
//! padding), and pooled per document once its last chunk is done. Fine-tuning keeps a
//! document's chunks in one forward pass and runs a batch in consecutive parts of at most
//! `chunk_batch` chunks (default: the batch size), each part's loss weighted by its share of
//! the batch so the accumulated gradients are the whole batch's; a pass thus holds at most
//! `max(chunk_batch, max_chunks)` chunks.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Error, Result};
use crate::models::text::TextBatch;
use crate::text::tokenizer::{Encoded, TextTokenizer};

/// What happens to text past the encoder's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LongTextPolicy {
    /// Cut at the window (what bundles made before chunks did).
    #[default]
    Truncate,
    /// Read whole as consecutive windows, their embeddings pooled.
    Chunks,
}

impl std::str::FromStr for LongTextPolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "truncate" => Ok(LongTextPolicy::Truncate),
            "chunks" => Ok(LongTextPolicy::Chunks),
            _ => Err(format!("`{s}`: expected truncate or chunks")),
        }
    }
}

/// How the chunk embeddings of one document become one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkPooling {
    #[default]
    Mean,
    /// Element-wise maximum.
    Max,
}

impl std::str::FromStr for ChunkPooling {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "mean" => Ok(ChunkPooling::Mean),
            "max" => Ok(ChunkPooling::Max),
            _ => Err(format!("`{s}`: expected mean or max")),
        }
    }
}

fn default_max_chunks() -> usize {
    LongText::DEFAULT_MAX_CHUNKS
}

/// The long-text policy of a run, recorded in its bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LongText {
    pub policy: LongTextPolicy,
    /// Tokens each window repeats from the one before.
    #[serde(default)]
    pub overlap: usize,
    /// Windows read per text at most; the rest of the text is cut.
    #[serde(default = "default_max_chunks")]
    pub max_chunks: usize,
    #[serde(default)]
    pub pooling: ChunkPooling,
}

impl Default for LongText {
    /// Truncation: the policy of bundles that record none.
    fn default() -> Self {
        LongText::truncate()
    }
}

impl LongText {
    pub const DEFAULT_MAX_CHUNKS: usize = 16;

    pub fn truncate() -> LongText {
        LongText { policy: LongTextPolicy::Truncate, overlap: 0, max_chunks: 1, pooling: ChunkPooling::Mean }
    }

    /// Chunks with the defaults: no overlap, at most 16 windows, mean pooling.
    pub fn chunks() -> LongText {
        LongText { policy: LongTextPolicy::Chunks, overlap: 0, max_chunks: Self::DEFAULT_MAX_CHUNKS, pooling: ChunkPooling::Mean }
    }

    pub fn is_chunks(&self) -> bool {
        self.policy == LongTextPolicy::Chunks
    }

    /// The default of a run that sets none: chunks for feature extraction; truncation for
    /// fine-tuning, where every chunk costs a forward and a backward pass (Hugging Face
    /// `Trainer`'s behaviour).
    pub fn default_for(finetune: bool) -> LongText {
        if finetune {
            LongText::truncate()
        } else {
            LongText::chunks()
        }
    }

    /// The policy applied to a dataset: sentence pairs are always truncated.
    pub fn for_inputs(&self, pairs: bool) -> LongText {
        if pairs {
            LongText::truncate()
        } else {
            *self
        }
    }

    /// Checks the settings against a window of `window` text tokens.
    pub fn validate(&self, window: usize) -> Result<()> {
        if !self.is_chunks() {
            return Ok(());
        }
        if self.max_chunks == 0 {
            return Err(Error::Usage("setting `max_chunks` must be at least 1".into()));
        }
        if window == 0 || self.overlap >= window {
            return Err(Error::Usage(format!(
                "setting `chunk_overlap` {} must be below the window of {window} text tokens (the max length less the special tokens)",
                self.overlap
            )));
        }
        Ok(())
    }

    /// What the embeddings depend on beyond the model, for the feature cache key; `None` for
    /// truncation (keys stay those of runs made before chunks existed).
    pub fn cache_fields(&self) -> Option<serde_json::Value> {
        self.is_chunks().then(|| serde_json::json!({ "overlap": self.overlap, "max_chunks": self.max_chunks, "pooling": self.pooling }))
    }
}

/// The policy a run applies: the one requested, else [`LongText::default_for`] its mode;
/// sentence pairs are truncated (with a warning when chunks were asked for).
pub fn resolve(requested: Option<LongText>, finetune: bool, pairs: bool, window: usize, warnings: &mut Vec<String>) -> Result<LongText> {
    let lt = requested.unwrap_or(LongText::default_for(finetune));
    lt.validate(window)?;
    if pairs && lt.is_chunks() && requested.is_some() {
        warnings.push("sentence pairs are truncated at the max length: setting `long_text` chunks applies to single texts".into());
    }
    Ok(lt.for_inputs(pairs))
}

/// The most chunks one fine-tuning forward pass holds: `chunk_batch`, else the batch size
/// (never below `max_chunks` then). A text with more chunks than the budget runs alone, so a
/// pass holds at most `max(budget, max_chunks)` chunks.
pub fn chunk_budget(chunk_batch: Option<usize>, batch_size: usize, lt: &LongText) -> Result<usize> {
    match chunk_batch {
        Some(0) => Err(Error::Usage("setting `chunk_batch` must be at least 1".into())),
        Some(n) => Ok(n),
        None => Ok(batch_size.max(if lt.is_chunks() { lt.max_chunks } else { 1 })),
    }
}

/// The token windows of every text under `lt`: one truncated window each for truncation and
/// for sentence pairs, up to `max_chunks` for chunks.
pub fn encode_docs(tk: &TextTokenizer, texts: &[String], pairs: Option<&[String]>, lt: &LongText) -> Result<Vec<Vec<Encoded>>> {
    let lt = lt.for_inputs(pairs.is_some());
    if lt.is_chunks() {
        lt.validate(tk.window())?;
        tk.encode_windows(texts, lt.overlap, lt.max_chunks)
    } else {
        Ok(tk.encode_all(texts, pairs)?.into_iter().map(|e| vec![e]).collect())
    }
}

/// Pools chunk embeddings `[C, D]` into document embeddings `[N, D]`: `counts[i]` consecutive
/// rows belong to document `i`. Differentiable; one chunk each returns the rows as they are.
pub fn combine(reps: &Tensor, counts: &[usize], pooling: ChunkPooling) -> Tensor {
    if counts.iter().all(|&c| c == 1) {
        return reps.shallow_clone();
    }
    let (c, d) = reps.size2().expect("[C, D]");
    let (n, m) = (counts.len(), counts.iter().copied().max().unwrap_or(1));
    // Row `c` is a filler that neither mean (0) nor max (−∞) sees.
    let mut idx = vec![c; n * m];
    let mut start = 0;
    for (i, &k) in counts.iter().enumerate() {
        for j in 0..k {
            idx[i * m + j] = start + j as i64;
        }
        start += k as i64;
    }
    let fill = match pooling {
        ChunkPooling::Mean => 0.0,
        ChunkPooling::Max => f64::NEG_INFINITY,
    };
    let padded = Tensor::cat(&[reps.shallow_clone(), Tensor::full([1, d], fill, (reps.kind(), reps.device()))], 0);
    let g = padded.index_select(0, &Tensor::from_slice(&idx)).view([n as i64, m as i64, d]);
    match pooling {
        ChunkPooling::Mean => {
            let k: Vec<f32> = counts.iter().map(|&k| k as f32).collect();
            g.sum_dim_intlist(&[1i64][..], false, reps.kind()) / Tensor::from_slice(&k).to_kind(reps.kind()).unsqueeze(-1)
        }
        ChunkPooling::Max => g.amax(&[1i64][..], false),
    }
}

/// Pools rows of f32 (one per chunk, in chunk order) as [`combine`] does.
pub fn combine_rows(rows: &[&[f32]], pooling: ChunkPooling, out: &mut [f32]) {
    match pooling {
        ChunkPooling::Mean => {
            out.fill(0.0);
            for r in rows {
                out.iter_mut().zip(r.iter()).for_each(|(o, &x)| *o += x);
            }
            let k = rows.len().max(1) as f32;
            out.iter_mut().for_each(|o| *o /= k);
        }
        ChunkPooling::Max => {
            out.fill(f32::NEG_INFINITY);
            for r in rows {
                out.iter_mut().zip(r.iter()).for_each(|(o, &x)| *o = o.max(x));
            }
        }
    }
}

/// Embeds the chunks of `docs` in batches of `batch_size` chunks sorted by length (longest
/// first), and hands each document's pooled embedding to `done(doc, embedding)` as soon as
/// its last chunk is embedded. `embed_batch` maps a padded batch to `[B, dim]` f32 rows.
pub fn embed_docs(
    docs: &[Vec<Encoded>],
    dim: usize,
    batch_size: usize,
    pooling: ChunkPooling,
    mut embed_batch: impl FnMut(&[&Encoded]) -> Result<Vec<f32>>,
    mut done: impl FnMut(usize, &[f32]) -> Result<()>,
) -> Result<()> {
    let mut owner = vec![];
    let mut offsets = vec![0usize];
    for (j, d) in docs.iter().enumerate() {
        if d.is_empty() {
            return Err(Error::Model(format!("text {j} has no tokens to embed")));
        }
        owner.extend(std::iter::repeat_n(j, d.len()));
        offsets.push(offsets[j] + d.len());
    }
    let chunk = |f: usize| &docs[owner[f]][f - offsets[owner[f]]];
    let mut order: Vec<usize> = (0..owner.len()).collect();
    order.sort_by_key(|&f| std::cmp::Reverse(chunk(f).ids.len()));
    let mut reps = vec![0f32; owner.len() * dim];
    let mut remaining: Vec<usize> = docs.iter().map(Vec::len).collect();
    let mut pooled = vec![0f32; dim];
    for batch in order.chunks(batch_size.max(1)) {
        let flat = embed_batch(&batch.iter().map(|&f| chunk(f)).collect::<Vec<_>>())?;
        for (r, &f) in batch.iter().enumerate() {
            reps[f * dim..(f + 1) * dim].copy_from_slice(&flat[r * dim..(r + 1) * dim]);
            let j = owner[f];
            remaining[j] -= 1;
            if remaining[j] == 0 {
                let rows: Vec<&[f32]> = (offsets[j]..offsets[j + 1]).map(|g| &reps[g * dim..(g + 1) * dim]).collect();
                combine_rows(&rows, pooling, &mut pooled);
                done(j, &pooled)?;
            }
        }
    }
    Ok(())
}

/// The chunks of some documents in one padded batch, documents in order.
pub struct ChunkBatch {
    pub tokens: TextBatch,
    /// Chunks of each document.
    pub counts: Vec<usize>,
}

impl ChunkBatch {
    pub fn new(tk: &TextTokenizer, docs: &[&Vec<Encoded>]) -> ChunkBatch {
        let rows: Vec<&Encoded> = docs.iter().flat_map(|d| d.iter()).collect();
        ChunkBatch { tokens: tk.pad(&rows), counts: docs.iter().map(|d| d.len()).collect() }
    }
}

/// Splits `sizes` (chunks per document, in order) into consecutive runs of at most `budget`
/// chunks; a document larger than the budget runs alone.
pub fn split_by_budget(sizes: &[usize], budget: usize) -> Vec<std::ops::Range<usize>> {
    let mut parts = vec![];
    let (mut start, mut held) = (0, 0);
    for (i, &k) in sizes.iter().enumerate() {
        if i > start && held + k > budget {
            parts.push(start..i);
            (start, held) = (i, 0);
        }
        held += k;
    }
    if start < sizes.len() {
        parts.push(start..sizes.len());
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn combine_means_and_maxes_per_document_with_gradients() {
        let reps = Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6., -1., 8.]).view([4, 2]).set_requires_grad(true);
        let mean = combine(&reps, &[1, 3], ChunkPooling::Mean);
        assert_eq!(Vec::<f32>::try_from(mean.flatten(0, -1)).unwrap(), vec![1., 2., 7. / 3., 6.]);
        mean.sum(Kind::Float).backward();
        let g = Vec::<f32>::try_from(reps.grad().flatten(0, -1)).unwrap();
        assert_eq!(g, vec![1., 1., 1. / 3., 1. / 3., 1. / 3., 1. / 3., 1. / 3., 1. / 3.]);
        let max = combine(&reps, &[2, 2], ChunkPooling::Max);
        assert_eq!(Vec::<f32>::try_from(max.flatten(0, -1)).unwrap(), vec![3., 4., 5., 8.]);
        let mut out = [0f32; 2];
        combine_rows(&[&[3., 4.], &[5., 6.], &[-1., 8.]], ChunkPooling::Mean, &mut out);
        assert_eq!(out, [7. / 3., 6.]);
        combine_rows(&[&[3., 4.], &[5., 6.], &[-1., 8.]], ChunkPooling::Max, &mut out);
        assert_eq!(out, [5., 8.]);
    }

    #[test]
    fn budgets_split_batches_between_documents() {
        assert_eq!(split_by_budget(&[1, 1, 1, 1], 16), vec![0..4]);
        assert_eq!(split_by_budget(&[3, 4, 2, 5, 1], 6), vec![0..1, 1..3, 3..5]);
        assert_eq!(split_by_budget(&[9, 1], 4), vec![0..1, 1..2]);
        assert!(split_by_budget(&[], 4).is_empty());
    }

    #[test]
    fn settings_parse_validate_and_default_to_truncation_for_old_bundles() {
        assert_eq!("chunks".parse::<LongTextPolicy>(), Ok(LongTextPolicy::Chunks));
        assert!("split".parse::<LongTextPolicy>().is_err());
        assert_eq!("max".parse::<ChunkPooling>(), Ok(ChunkPooling::Max));
        let old: LongText = toml::from_str("policy = \"chunks\"").unwrap();
        assert_eq!(old, LongText::chunks());
        assert_eq!(LongText::default(), LongText::truncate());
        assert!(LongText { overlap: 254, ..LongText::chunks() }.validate(254).is_err());
        assert!(LongText { max_chunks: 0, ..LongText::chunks() }.validate(254).is_err());
        assert!(LongText { overlap: 64, ..LongText::chunks() }.validate(254).is_ok());
        assert_eq!(LongText::chunks().for_inputs(true), LongText::truncate());
        assert!(LongText::truncate().cache_fields().is_none());
    }
}
