//! One call per parser, shared by the in-process mutation test (`tests/fuzz.rs`) and the
//! cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`, which include this file by path). Each body
//! feeds bytes to the library's public entry point and returns `Ok(true)` when the input was
//! accepted, `Ok(false)` when it was refused with an error; a panic is the bug being hunted.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use headstart::text::data::{Columns, TextDataset};

/// Decodes an image with the library's decoder, whole and straight to a model's input crop
/// (the path `train` takes); both must agree on accepting it. The one place to adapt when
/// their signatures change.
pub fn decode_image(bytes: &[u8]) -> Result<bool, String> {
    use headstart::preprocess::{decode_prepared, DecodeOptions, Source};
    let input = headstart::models::registry::find("mobilenet_v2").expect("registered").input.clone();
    let prepared = decode_prepared(Source::Bytes(bytes), &input, &DecodeOptions::default());
    match headstart::preprocess::decode_rgb_u8(bytes) {
        Ok(t) => {
            let size = t.size();
            if size.len() != 3 || size[0] != 3 || size[1] < 1 || size[2] < 1 {
                return Err(format!("decoded an image of shape {size:?}"));
            }
            match prepared {
                Ok((x, _)) if x.size() == [3, input.size, input.size] => Ok(true),
                Ok((x, _)) => Err(format!("prepared an input of shape {:?}", x.size())),
                Err(e) => Err(format!("decoded whole but not to the crop: {e}")),
            }
        }
        Err(_) if prepared.is_ok() => Err("decoded to the crop but not whole".into()),
        Err(_) => Ok(false),
    }
}

/// A folder that holds each case's files.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch { dir: tempfile::tempdir().expect("temporary folder") }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    /// Writes `bytes` as `name` in the scratch folder and returns its path.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).expect("writing a case");
        p
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

/// Opens a weight file or HF folder and, when that succeeds, materialises every tensor and
/// checks that each has the shape and dtype its metadata promised.
pub fn load_weights(path: &Path) -> Result<bool, String> {
    let w = match headstart::weights::Weights::open(path) {
        Ok(w) => w,
        Err(_) => return Ok(false),
    };
    let infos: Vec<_> = w.infos().cloned().collect();
    for info in infos {
        let _ = (info.numel(), info.bytes());
        let t = match w.tensor(&info.name) {
            Ok(t) => t,
            Err(_) => return Ok(false),
        };
        let want: Vec<i64> = info.shape.iter().map(|&s| s as i64).collect();
        if t.size() != want || t.kind() != info.dtype.kind() {
            return Err(format!("tensor `{}`: metadata says {want:?} {:?}, got {:?} {:?}", info.name, info.dtype, t.size(), t.kind()));
        }
    }
    let _ = w.sha256();
    Ok(true)
}

/// A weight file's bytes, written as `name` (the extension does not matter: the format is
/// sniffed from the first bytes).
pub fn weight_bytes(scratch: &Scratch, name: &str, bytes: &[u8]) -> Result<bool, String> {
    load_weights(&scratch.write(name, bytes))
}

/// A sharded HF folder: `index` as `model.safetensors.index.json` beside `shards`.
pub fn hf_folder(scratch: &Scratch, index: &[u8], shards: &[(&str, &[u8])]) -> Result<bool, String> {
    let dir = scratch.path().join("hf");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("model.safetensors.index.json"), index).map_err(|e| e.to_string())?;
    for (name, bytes) in shards {
        std::fs::write(dir.join(name), bytes).map_err(|e| e.to_string())?;
    }
    load_weights(&dir)
}

/// Labelled text (`ext` is `csv`, `tsv` or `jsonl`), read as training data with `cols`, and
/// as prediction input (labels optional).
pub fn text_dataset(scratch: &Scratch, ext: &str, bytes: &[u8], cols: &Columns, lossy: bool) -> Result<bool, String> {
    let p = scratch.write(&format!("data.{ext}"), bytes);
    let _ = headstart::text::data::read_rows(&p, cols, false, lossy);
    match TextDataset::open(&p, cols, None, lossy) {
        Ok(ds) => {
            if ds.labels.iter().any(|&l| l >= ds.classes.len()) || ds.texts.len() != ds.labels.len() || ds.origins.len() != ds.texts.len() {
                return Err("dataset with inconsistent lengths or labels".into());
            }
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

/// An image CSV manifest, opened on its own and against a fixed class list.
pub fn image_manifest(scratch: &Scratch, bytes: &[u8]) -> Result<bool, String> {
    let p = scratch.write("manifest.csv", bytes);
    let fixed = ["cat".to_string(), "dog".to_string()];
    let _ = headstart::data::Dataset::open(&p, Some(&fixed));
    match headstart::data::Dataset::open(&p, None) {
        Ok(ds) => {
            if ds.items.iter().any(|i| i.label >= ds.classes.len()) {
                return Err("item label out of range".into());
            }
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}
