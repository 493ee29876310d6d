//! [`Export`] for the image, CLIP, text and audio blocks.

use std::io::Read;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::{EncoderRecord, Export, ModelSpec};
use crate::audio::encoder::AudioModel;
use crate::blocks::audio::{encoder_ref, AudioBlock};
use crate::blocks::clip::{ClipBlock, ClipEncoder};
use crate::blocks::image::{entry_of, open_weights, ImageBlock, ImageModel};
use crate::blocks::text::{TextBlock, TextData};
use crate::bundle::{EncoderRef, PretrainedCfg, TextEncoderRef, VisionRef};
use crate::cache::sha256_hex;
use crate::error::Result;
use crate::models::registry::Modality;
use crate::models::{pretrained, Encoder, HeadInit};
use crate::progress::Progress;
use crate::text::{chunks, resolve_model_dir, TextModel};

/// The sha256 of a file's bytes, read a block at a time; `None` if it cannot be read.
fn file_sha256(path: &std::path::Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
    Some(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl Export for ImageBlock<'_> {
    const ID_COLUMN: &'static str = "path";

    fn load_encoder(&self, spec: &ModelSpec, _: &Vec<PathBuf>, _: &mut Vec<String>) -> Result<ImageModel> {
        let entry = entry_of(&spec.name)?;
        let weights = open_weights(entry, spec.weights.as_deref())?;
        let sha = weights.sha256()?;
        let (model, report) = pretrained(entry, &weights, 3, HeadInit::None)?;
        report.require_exact()?;
        let input = entry.input.clone();
        Ok(ImageModel { entry, model, input, weights_sha256: sha.clone(), file_sha256: sha, source: weights.source.display().to_string() })
    }

    fn string_columns(&self, paths: &Vec<PathBuf>) -> Vec<(&'static str, Vec<String>)> {
        path_columns(paths)
    }

    fn content_hashes(&self, paths: &Vec<PathBuf>, progress: &dyn Progress) -> Result<Vec<String>> {
        Ok(file_hashes(paths, progress))
    }

    fn subset(&self, paths: &Vec<PathBuf>, rows: &[usize]) -> Vec<PathBuf> {
        path_subset(paths, rows)
    }

    fn record(&self, _: &ModelSpec, m: &ImageModel) -> Result<EncoderRecord> {
        let vision = VisionRef {
            name: m.entry.name.to_string(),
            weights_sha256: m.file_sha256.clone(),
            weights_source: m.source.clone(),
            pretrained_cfg: PretrainedCfg { arch: m.model.arch.clone(), input: m.input.clone() },
        };
        let precision = self.precision.resolve(m.model.arch.family());
        Ok(EncoderRecord {
            modality: Modality::Image,
            model: m.entry.name.to_string(),
            weights_sha256: m.file_sha256.clone(),
            preprocessing: serde_json::json!({ "input": m.input, "layer": "pooled", "precision": precision }),
            dim: m.num_features() as usize,
            encoder: EncoderRef::Vision(vision),
            columns: None,
            precision,
        })
    }
}

/// The identifying column of files: their paths as given.
fn path_columns(paths: &[PathBuf]) -> Vec<(&'static str, Vec<String>)> {
    vec![("path", paths.iter().map(|p| p.display().to_string()).collect())]
}

/// The files at `rows`, in that order.
fn path_subset(paths: &[PathBuf], rows: &[usize]) -> Vec<PathBuf> {
    rows.iter().map(|&i| paths[i].clone()).collect()
}

/// The sha256 of every file's bytes (of what names it, for a file that cannot be read).
fn file_hashes(paths: &[PathBuf], progress: &dyn Progress) -> Vec<String> {
    progress.start("hash", paths.len() as u64);
    let hashes = paths
        .iter()
        .map(|p| {
            progress.inc(1);
            file_sha256(p).unwrap_or_else(|| sha256_hex(format!("unreadable file {}", p.display()).as_bytes()))
        })
        .collect();
    progress.finish();
    hashes
}

impl Export for ClipBlock<'_> {
    const ID_COLUMN: &'static str = "path";

    fn load_encoder(&self, spec: &ModelSpec, _: &Vec<PathBuf>, _: &mut Vec<String>) -> Result<ClipEncoder> {
        let mut m = ClipEncoder::load(&spec.name, spec.weights.as_deref())?;
        m.set_precision(self.precision);
        Ok(m)
    }

    fn string_columns(&self, paths: &Vec<PathBuf>) -> Vec<(&'static str, Vec<String>)> {
        path_columns(paths)
    }

    fn content_hashes(&self, paths: &Vec<PathBuf>, progress: &dyn Progress) -> Result<Vec<String>> {
        Ok(file_hashes(paths, progress))
    }

    fn subset(&self, paths: &Vec<PathBuf>, rows: &[usize]) -> Vec<PathBuf> {
        path_subset(paths, rows)
    }

    fn record(&self, _: &ModelSpec, m: &ClipEncoder) -> Result<EncoderRecord> {
        Ok(EncoderRecord {
            modality: Modality::Image,
            model: m.model.clone(),
            weights_sha256: m.weights_sha256.clone(),
            // The same vectors as zero-shot and a CLIP linear probe use, at the tower's precision.
            preprocessing: serde_json::json!({ "input": m.clip.input, "layer": "clip-image-embeds", "precision": m.precision() }),
            dim: m.num_features() as usize,
            encoder: EncoderRef::Clip(m.record()),
            columns: None,
            precision: m.precision(),
        })
    }
}

impl Export for AudioBlock<'_> {
    const ID_COLUMN: &'static str = "path";

    fn load_encoder(&self, spec: &ModelSpec, _: &Vec<PathBuf>, _: &mut Vec<String>) -> Result<AudioModel> {
        let mut m = AudioModel::open(&spec.name)?;
        if let Some(w) = self.window {
            m.set_window(w)?;
        }
        Ok(m)
    }

    fn string_columns(&self, paths: &Vec<PathBuf>) -> Vec<(&'static str, Vec<String>)> {
        path_columns(paths)
    }

    fn content_hashes(&self, paths: &Vec<PathBuf>, progress: &dyn Progress) -> Result<Vec<String>> {
        Ok(file_hashes(paths, progress))
    }

    fn subset(&self, paths: &Vec<PathBuf>, rows: &[usize]) -> Vec<PathBuf> {
        path_subset(paths, rows)
    }

    fn record(&self, _: &ModelSpec, m: &AudioModel) -> Result<EncoderRecord> {
        let encoder = encoder_ref(m, self.max_seconds);
        Ok(EncoderRecord {
            modality: Modality::Audio,
            model: encoder.model.clone(),
            weights_sha256: encoder.weights_sha256.clone(),
            preprocessing: serde_json::json!({
                "sample_rate": encoder.sample_rate, "window_seconds": encoder.window_seconds, "layer": encoder.layer,
                "normalize": encoder.normalize, "max_seconds": self.max_seconds, "window": encoder.window,
            }),
            dim: m.num_features() as usize,
            encoder: EncoderRef::Audio(encoder),
            columns: None,
            precision: crate::engine::Precision::Fp32,
        })
    }
}

impl Export for TextBlock<'_> {
    const ID_COLUMN: &'static str = "text";

    fn load_encoder(&self, spec: &ModelSpec, data: &TextData, warnings: &mut Vec<String>) -> Result<TextModel> {
        let mut model = TextModel::load(&resolve_model_dir(&spec.name)?, &spec.text)?;
        model.long_text = chunks::resolve(spec.text.long_text, false, data.pairs.is_some(), model.tokenizer.window(), warnings)?;
        Ok(model)
    }

    fn string_columns(&self, data: &TextData) -> Vec<(&'static str, Vec<String>)> {
        let mut cols = vec![("text", data.texts.clone())];
        if let Some(p) = &data.pairs {
            cols.push(("pair", p.clone()));
        }
        cols
    }

    /// The text's bytes, then (for a pair) a zero byte and the pair's: the feature cache's key.
    fn content_hashes(&self, data: &TextData, _: &dyn Progress) -> Result<Vec<String>> {
        Ok((0..data.texts.len())
            .map(|i| {
                let mut h = data.texts[i].as_bytes().to_vec();
                if let Some(p) = &data.pairs {
                    h.push(0);
                    h.extend_from_slice(p[i].as_bytes());
                }
                sha256_hex(&h)
            })
            .collect())
    }

    fn subset(&self, data: &TextData, rows: &[usize]) -> TextData {
        TextData {
            texts: rows.iter().map(|&i| data.texts[i].clone()).collect(),
            pairs: data.pairs.as_ref().map(|p| rows.iter().map(|&i| p[i].clone()).collect()),
            origins: if data.origins.is_empty() { vec![] } else { rows.iter().map(|&i| data.origins[i].clone()).collect() },
        }
    }

    fn record(&self, spec: &ModelSpec, m: &TextModel) -> Result<EncoderRecord> {
        let encoder = TextEncoderRef {
            model: spec.name.clone(),
            weights_sha256: m.weights_sha256.clone(),
            tokenizer_sha256: m.tokenizer.sha256.clone(),
            config: m.encoder.cfg.clone(),
            max_length: m.tokenizer.max_length,
            pooling: m.pooling,
            normalize: m.normalize,
            long_text: m.long_text,
        };
        let preprocessing = serde_json::json!({
            "tokenizer_sha256": encoder.tokenizer_sha256, "max_length": encoder.max_length, "pooling": encoder.pooling,
            "normalize": encoder.normalize, "long_text": encoder.long_text, "precision": self.precision,
        });
        Ok(EncoderRecord {
            modality: Modality::Text,
            model: spec.name.clone(),
            weights_sha256: m.weights_sha256.clone(),
            preprocessing,
            dim: m.dim() as usize,
            encoder: EncoderRef::Text(encoder),
            columns: Some(self.columns.clone()),
            precision: self.precision,
        })
    }
}
