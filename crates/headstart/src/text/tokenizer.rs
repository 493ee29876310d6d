//! Tokenisation with the `tokenizers` crate: from a `tokenizer.json`, or built from
//! `vocab.txt` (BERT WordPiece) or `vocab.json` + `merges.txt` (byte-level BPE, GPT-2 and
//! RoBERTa). Whatever padding a `tokenizer.json` has baked in is switched off (batches are
//! padded to their longest member) and truncation is set to the run's maximum length.

use std::path::{Path, PathBuf};

use tch::Tensor;
use tokenizers::models::bpe::BPE;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{EncodeInput, PostProcessor, Tokenizer, TruncationParams, TruncationStrategy};

use crate::error::{Error, Result};
use crate::models::text::{Family, TextBatch};

pub struct TextTokenizer {
    tk: Tokenizer,
    pub max_length: usize,
    pub pad_id: i64,
    /// The file(s) it was built from, for errors and the cache key.
    pub source: PathBuf,
    /// sha256 of the tokenizer's serialised form (with the run's truncation).
    pub sha256: String,
}

fn tk_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::input(path, format!("tokenizer: {e}"))
}

/// `do_lower_case` from `tokenizer_config.json` (BERT vocab.txt directories); default true.
fn lowercase(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("do_lower_case").and_then(|b| b.as_bool()))
        .unwrap_or(true)
}

impl TextTokenizer {
    /// Loads the tokenizer of a model directory for `family`. `max_length` is the run's
    /// truncation length (already capped to what the model allows).
    pub fn load(dir: &Path, family: Family, max_length: usize, pad_id: i64) -> Result<TextTokenizer> {
        if max_length < 2 {
            return Err(Error::Model(format!("max_length {max_length} is too short")));
        }
        let json = dir.join("tokenizer.json");
        let vocab_txt = dir.join("vocab.txt");
        let (vocab_json, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        let (mut tk, source) = if json.is_file() {
            (Tokenizer::from_file(&json).map_err(|e| tk_err(&json, e))?, json)
        } else if vocab_txt.is_file() {
            let s = vocab_txt.to_string_lossy().to_string();
            let wp = WordPiece::from_file(&s).unk_token("[UNK]".into()).build().map_err(|e| tk_err(&vocab_txt, e))?;
            let mut tk = Tokenizer::new(wp);
            let id = |t: &str| tk.token_to_id(t).ok_or_else(|| tk_err(&vocab_txt, format!("vocabulary has no `{t}`")));
            let (sep, cls) = (id("[SEP]")?, id("[CLS]")?);
            let specials: Vec<tokenizers::AddedToken> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                .iter()
                .filter(|t| tk.token_to_id(t).is_some())
                .map(|t| tokenizers::AddedToken::from(t.to_string(), true))
                .collect();
            tk.add_special_tokens(&specials);
            tk.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase(dir))));
            tk.with_pre_tokenizer(Some(BertPreTokenizer));
            tk.with_post_processor(Some(BertProcessing::new(("[SEP]".into(), sep), ("[CLS]".into(), cls))));
            tk.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
            (tk, vocab_txt)
        } else if vocab_json.is_file() && merges.is_file() {
            let bpe = BPE::from_file(&vocab_json.to_string_lossy(), &merges.to_string_lossy()).build().map_err(|e| tk_err(&vocab_json, e))?;
            let mut tk = Tokenizer::new(bpe);
            tk.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
            tk.with_decoder(Some(ByteLevel::default()));
            // The special tokens the upstream tokenizers register for this vocabulary format.
            let specials: &[&str] = if family == Family::Roberta { &["<s>", "<pad>", "</s>", "<unk>", "<mask>"] } else { &["<|endoftext|>"] };
            let present: Vec<tokenizers::AddedToken> =
                specials.iter().filter(|t| tk.token_to_id(t).is_some()).map(|t| tokenizers::AddedToken::from(t.to_string(), true)).collect();
            tk.add_special_tokens(&present);
            if family == Family::Roberta {
                let id = |t: &str| tk.token_to_id(t).ok_or_else(|| tk_err(&vocab_json, format!("vocabulary has no `{t}`")));
                let (sep, cls) = (id("</s>")?, id("<s>")?);
                tk.with_post_processor(Some(RobertaProcessing::new(("</s>".into(), sep), ("<s>".into(), cls)).add_prefix_space(false)));
            } else {
                tk.with_post_processor(Some(ByteLevel::new(false, true, true)));
            }
            (tk, vocab_json)
        } else {
            return Err(Error::input(dir, "no tokenizer: expected tokenizer.json, vocab.txt, or vocab.json + merges.txt"));
        };
        tk.with_padding(None);
        tk.with_truncation(Some(TruncationParams { max_length, strategy: TruncationStrategy::LongestFirst, stride: 0, ..Default::default() }))
            .map_err(|e| tk_err(&source, e))?;
        let serialised = tk.to_string(false).map_err(|e| tk_err(&source, e))?;
        let sha256 = crate::cache::sha256_hex(serialised.as_bytes());
        Ok(TextTokenizer { tk, max_length, pad_id, source, sha256 })
    }

    /// Token ids of one text (or pair), special tokens included, truncated.
    pub fn ids(&self, text: &str, pair: Option<&str>) -> Result<Vec<u32>> {
        let input: EncodeInput = match pair {
            Some(p) => (text, p).into(),
            None => text.into(),
        };
        let enc = self.tk.encode(input, true).map_err(|e| tk_err(&self.source, e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids and types of every text (and pair), special tokens included, truncated.
    pub fn encode_all(&self, texts: &[String], pairs: Option<&[String]>) -> Result<Vec<Encoded>> {
        let mut out = Vec::with_capacity(texts.len());
        for start in (0..texts.len()).step_by(1024) {
            let end = (start + 1024).min(texts.len());
            let inputs: Vec<EncodeInput> = match pairs {
                Some(p) => (start..end).map(|i| (texts[i].as_str(), p[i].as_str()).into()).collect(),
                None => (start..end).map(|i| texts[i].as_str().into()).collect(),
            };
            for e in self.tk.encode_batch(inputs, true).map_err(|e| tk_err(&self.source, e))? {
                out.push(Encoded { ids: e.get_ids().to_vec(), types: e.get_type_ids().to_vec() });
            }
        }
        Ok(out)
    }

    /// Special tokens the tokenizer wraps one text in (`[CLS]`/`[SEP]`: 2, `<s>`/`</s>`: 2,
    /// GPT-2: 0).
    pub fn special_tokens(&self) -> usize {
        self.tk.get_post_processor().map_or(0, |p| p.added_tokens(false))
    }

    /// Text tokens one window holds: the maximum length less the special tokens.
    pub fn window(&self) -> usize {
        self.max_length.saturating_sub(self.special_tokens())
    }

    /// Every text cut into consecutive windows of [`window`](Self::window) tokens, each window
    /// starting `overlap` tokens before the previous one ended and wrapped in the special tokens
    /// (Hugging Face's `return_overflowing_tokens` with `stride = overlap`); at most
    /// `max_chunks` windows per text, the first ones. A text that fits is one window, the same
    /// ids as [`encode_all`](Self::encode_all).
    pub fn encode_windows(&self, texts: &[String], overlap: usize, max_chunks: usize) -> Result<Vec<Vec<Encoded>>> {
        let window = self.window();
        if overlap >= window || max_chunks == 0 {
            return Err(Error::Model(format!("chunks of {window} tokens (max length {} less {} special tokens) need an overlap below {window} (got {overlap}) and at least one chunk (got {max_chunks})", self.max_length, self.special_tokens())));
        }
        let mut tk = self.tk.clone();
        tk.with_truncation(Some(TruncationParams {
            max_length: self.max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: overlap,
            ..Default::default()
        }))
        .map_err(|e| tk_err(&self.source, e))?;
        let mut out = Vec::with_capacity(texts.len());
        for start in (0..texts.len()).step_by(256) {
            let end = (start + 256).min(texts.len());
            let inputs: Vec<EncodeInput> = (start..end).map(|i| texts[i].as_str().into()).collect();
            for mut e in tk.encode_batch(inputs, true).map_err(|e| tk_err(&self.source, e))? {
                let rest = e.take_overflowing();
                let chunks = std::iter::once(e).chain(rest).take(max_chunks);
                out.push(chunks.map(|c| Encoded { ids: c.get_ids().to_vec(), types: c.get_type_ids().to_vec() }).collect());
            }
        }
        Ok(out)
    }

    /// One batch, padded to its longest member, with the attention mask.
    pub fn pad(&self, rows: &[&Encoded]) -> TextBatch {
        let t = rows.iter().map(|e| e.ids.len()).max().unwrap_or(0).max(1);
        let b = rows.len();
        let (mut ids, mut mask, mut types) = (vec![self.pad_id; b * t], vec![0i64; b * t], vec![0i64; b * t]);
        for (r, e) in rows.iter().enumerate() {
            for (c, (&id, &ty)) in e.ids.iter().zip(&e.types).enumerate() {
                ids[r * t + c] = id as i64;
                mask[r * t + c] = 1;
                types[r * t + c] = ty as i64;
            }
        }
        let shape = [b as i64, t as i64];
        TextBatch { ids: Tensor::from_slice(&ids).view(shape), mask: Tensor::from_slice(&mask).view(shape), type_ids: Tensor::from_slice(&types).view(shape) }
    }

    /// Encodes and pads in one go.
    pub fn batch(&self, texts: &[String], pairs: Option<&[String]>) -> Result<TextBatch> {
        let enc = self.encode_all(texts, pairs)?;
        Ok(self.pad(&enc.iter().collect::<Vec<_>>()))
    }
}

/// One tokenised example.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub types: Vec<u32>,
}
