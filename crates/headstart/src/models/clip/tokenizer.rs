//! CLIP's tokenizer from its `tokenizer.json` (byte-level BPE with `</w>` word ends), with the
//! text cleaning of OpenAI's `simple_tokenizer.py`: HTML entities unescaped twice, runs of
//! whitespace collapsed, lower case. Every text becomes `<|startoftext|> … <|endoftext|>`,
//! truncated to the context (the end-of-text token kept last) and padded with
//! `<|endoftext|>` as Hugging Face's `CLIPTokenizer` pads; the causal text tower never looks
//! past the first end-of-text, so padding does not change an embedding.
//!
//! Not done: `ftfy`'s mojibake repair (OpenAI's cleaning runs it first).

use std::path::{Path, PathBuf};

use tch::Tensor;
use tokenizers::Tokenizer;

use crate::error::{Error, Result};

pub struct ClipTokenizer {
    tk: Tokenizer,
    pub context_length: usize,
    pub sot: u32,
    pub eot: u32,
    pub source: PathBuf,
}

impl ClipTokenizer {
    /// Loads `tokenizer.json`; `context_length` is the text tower's (77 for every CLIP).
    pub fn load(path: &Path, context_length: usize) -> Result<ClipTokenizer> {
        if context_length < 2 {
            return Err(Error::input(path, format!("context length {context_length} is too short")));
        }
        let mut tk = Tokenizer::from_file(path).map_err(|e| Error::input(path, format!("tokenizer: {e}")))?;
        tk.with_padding(None);
        tk.with_truncation(None).map_err(|e| Error::input(path, format!("tokenizer: {e}")))?;
        let id = |t: &str| tk.token_to_id(t).ok_or_else(|| Error::input(path, format!("not a CLIP tokenizer: no `{t}` token")));
        let (sot, eot) = (id("<|startoftext|>")?, id("<|endoftext|>")?);
        Ok(ClipTokenizer { tk, context_length, sot, eot, source: path.to_path_buf() })
    }

    /// Tokens in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tk.get_vocab_size(true)
    }

    /// Token ids of one text, with start and end tokens, truncated to the context.
    pub fn ids(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self.tk.encode(clean(text), true).map_err(|e| Error::input(&self.source, format!("tokenizing {text:?}: {e}")))?;
        let mut ids: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
        // A tokenizer.json without CLIP's post-processor: add the specials here.
        if ids.first() != Some(&(self.sot as i64)) {
            ids.insert(0, self.sot as i64);
        }
        if ids.len() < 2 || ids.last() != Some(&(self.eot as i64)) {
            ids.push(self.eot as i64);
        }
        if ids.len() > self.context_length {
            ids.truncate(self.context_length);
            ids[self.context_length - 1] = self.eot as i64;
        }
        Ok(ids)
    }

    /// `[B, context_length]` ids, padded with the end-of-text id.
    pub fn encode(&self, texts: &[String]) -> Result<Tensor> {
        let mut flat = Vec::with_capacity(texts.len() * self.context_length);
        for t in texts {
            let mut ids = self.ids(t)?;
            ids.resize(self.context_length, self.eot as i64);
            flat.extend(ids);
        }
        Ok(Tensor::from_slice(&flat).view([texts.len() as i64, self.context_length as i64]))
    }
}

/// OpenAI CLIP's cleaning (without ftfy): HTML unescaped twice, whitespace collapsed and
/// trimmed, lower case.
pub fn clean(text: &str) -> String {
    let text = unescape_html(&unescape_html(text));
    text.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// Decodes numeric character references and the common named entities (`&amp;`, `&lt;`,
/// `&gt;`, `&quot;`, `&apos;`, `&#39;`, `&nbsp;`); anything else is kept as written.
pub fn unescape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        match decode_entity(tail) {
            Some((c, used)) => {
                out.push(c);
                rest = &tail[used..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The character of the entity at the start of `s` (which begins with `&`) and its length.
fn decode_entity(s: &str) -> Option<(char, usize)> {
    let end = s[1..].find(';').filter(|&e| e <= 10)? + 1;
    let body = &s[1..end];
    let c = if let Some(num) = body.strip_prefix('#') {
        let code = match num.strip_prefix('x').or_else(|| num.strip_prefix('X')) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse::<u32>().ok()?,
        };
        char::from_u32(code).filter(|&c| c != '\0').unwrap_or('\u{fffd}')
    } else {
        match body {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            "nbsp" => '\u{a0}',
            _ => return None,
        }
    };
    Some((c, end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_follows_openai() {
        assert_eq!(clean("  A PHOTO\tof the\n\n Dog!  "), "a photo of the dog!");
        assert_eq!(clean("cats &amp;amp; dogs"), "cats & dogs");
        assert_eq!(clean("&#65;&#x42; &lt;b&gt; &unknown; & x"), "ab <b> &unknown; & x");
        assert_eq!(clean("&#0;"), "\u{fffd}");
    }
}
