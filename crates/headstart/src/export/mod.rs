//! Embeddings out of headstart and back in: `embed` (one Parquet file of a data set's pooled
//! features), `extract` (the same, split over N processes by content hash into shards with
//! manifests) and training a head from those files ([`stored`]).
//!
//! Any data block whose encoder featurises plugs in by implementing [`Export`]: how its
//! encoder is loaded from a [`ModelSpec`], what identifies each example in the file, the
//! sha256 of each example's content (which decides its shard), and the encoder's record (what
//! a bundle trained on the features needs to run on raw inputs).

pub mod blocks;
pub mod file;
pub mod shard;
pub mod stored;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::bundle::EncoderRef;
use crate::error::{Error, Result};
use crate::learn::split::Skip;
use crate::learn::task::{Block, Featurised};
use crate::models::registry::Modality;
use crate::progress::Progress;
use crate::text::data::Columns;
use crate::text::TextModelOptions;

/// Which encoder to export with, as the command line names it.
#[derive(Debug, Clone, Default)]
pub struct ModelSpec {
    /// Registry name, model directory or hub id.
    pub name: String,
    /// Where the weights are read from instead of the registry's source.
    pub weights: Option<PathBuf>,
    /// Text encoders: truncation, pooling, long-text policy.
    pub text: TextModelOptions,
}

/// The encoder behind a feature file: what produced the vectors (compared when files are
/// combined) and how a bundle trained on them runs on raw inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderRecord {
    pub modality: Modality,
    /// The model as named (registry name, directory or hub id).
    pub model: String,
    pub weights_sha256: String,
    /// Everything the vectors depend on besides the weights (image preprocessing; tokenizer,
    /// truncation, pooling, long-text policy, precision).
    pub preprocessing: serde_json::Value,
    pub dim: usize,
    /// The bundle's encoder section.
    pub encoder: EncoderRef,
    /// Text: the columns the data was read with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Columns>,
    /// The precision the vectors were computed at (concrete; records without it: fp32).
    #[serde(default)]
    pub precision: crate::engine::Precision,
}

impl EncoderRecord {
    /// The first setting in which `self` and `other` differ (where the weights were read from
    /// does not count), as `(name, self's, other's)`.
    pub fn difference(&self, other: &EncoderRecord) -> Option<(&'static str, String, String)> {
        let fields: [(&str, String, String); 5] = [
            ("modality", self.modality.name().into(), other.modality.name().into()),
            ("model", self.model.clone(), other.model.clone()),
            ("weights_sha256", self.weights_sha256.clone(), other.weights_sha256.clone()),
            ("preprocessing", self.preprocessing.to_string(), other.preprocessing.to_string()),
            ("dim", self.dim.to_string(), other.dim.to_string()),
        ];
        fields.into_iter().find(|(_, a, b)| a != b)
    }
}

/// What an embedding export needs from a data block beyond featurising.
pub trait Export: Block {
    /// The name of the column that identifies an example (`path`, `text`).
    const ID_COLUMN: &'static str;
    /// Loads the encoder for `data` (its settings may depend on the data, as sentence pairs
    /// do); warnings about the settings go to `warnings`.
    fn load_encoder(&self, spec: &ModelSpec, data: &Self::Data, warnings: &mut Vec<String>) -> Result<Self::Model>;
    /// The identifying string columns of every example, the first named [`Export::ID_COLUMN`].
    fn string_columns(&self, data: &Self::Data) -> Vec<(&'static str, Vec<String>)>;
    /// The sha256 of each example's content (a file's bytes, a text); an example that cannot
    /// be read gets a hash of what names it, and is skipped when featurised.
    fn content_hashes(&self, data: &Self::Data, progress: &dyn Progress) -> Result<Vec<String>>;
    /// The examples at `rows`, in that order.
    fn subset(&self, data: &Self::Data, rows: &[usize]) -> Self::Data;
    /// The encoder's record.
    fn record(&self, spec: &ModelSpec, model: &Self::Model) -> Result<EncoderRecord>;
}

/// Rows of one part of a feature file: identifying columns, labels, hashes, vectors.
pub struct Rows {
    pub strings: Vec<(&'static str, Vec<String>)>,
    pub labels: Vec<Option<String>>,
    pub hashes: Vec<String>,
    /// `[len * dim]`, row-major.
    pub vectors: Vec<f32>,
}

/// A progress that spans several calls of work reporting their own stages: started once, it
/// passes the units on (counting them) and ignores the inner stages' starts and finishes.
struct Spanning<'a>(&'a dyn Progress, AtomicU64);

impl Spanning<'_> {
    /// Brings the count up to `n` (work that reports only what it computed, not what it read
    /// from the cache).
    fn reach(&self, n: u64) {
        let done = self.1.load(Ordering::Relaxed);
        if done < n {
            self.inc(n - done);
        }
    }
}

impl Progress for Spanning<'_> {
    fn start(&self, _: &str, _: u64) {}
    fn inc(&self, n: u64) {
        self.1.fetch_add(n, Ordering::Relaxed);
        self.0.inc(n)
    }
    fn finish(&self) {}
    fn message(&self, text: &str) {
        self.0.message(text)
    }
}

/// Examples featurised at a time: bounds the memory of an export whatever the data's size.
pub const EXPORT_CHUNK: usize = 4096;

/// What an export did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Exported {
    pub rows: usize,
    pub computed: usize,
    pub reused: usize,
    pub skipped: Vec<Skip>,
    pub warnings: Vec<String>,
}

/// Featurises the examples `rows` of `data` a chunk at a time, handing each chunk's usable
/// rows to `sink` in order.
pub fn featurise_rows<B: Export>(
    block: &B,
    model: &B::Model,
    data: &B::Data,
    labels: &[Option<String>],
    hashes: &[String],
    rows: &[usize],
    progress: &dyn Progress,
    mut sink: impl FnMut(Rows) -> Result<()>,
) -> Result<Exported> {
    let mut out = Exported::default();
    progress.start("embed", rows.len() as u64);
    let spanning = Spanning(progress, AtomicU64::new(0));
    let mut done = 0;
    for chunk in rows.chunks(EXPORT_CHUNK) {
        let part = block.subset(data, chunk);
        let Featurised { features, ok, skipped, computed, reused, warnings, .. } = block.featurise(model, &part, &spanning)?;
        done += chunk.len() as u64;
        spanning.reach(done);
        (out.computed, out.reused) = (out.computed + computed, out.reused + reused);
        out.skipped.extend(skipped);
        out.warnings.extend(warnings);
        let vectors: Vec<f32> = Vec::try_from(features.contiguous().view(-1))?;
        let strings = block.string_columns(&part).into_iter().map(|(n, v)| (n, ok.iter().map(|&i| v[i].clone()).collect())).collect();
        let labels = ok.iter().map(|&i| labels[chunk[i]].clone()).collect();
        let hashes = ok.iter().map(|&i| hashes[chunk[i]].clone()).collect();
        out.rows += ok.len();
        sink(Rows { strings, labels, hashes, vectors })?;
    }
    progress.finish();
    Ok(out)
}

/// A labelled data set opened for export: the examples, each one's label name and the classes.
pub struct Source<D> {
    pub data: D,
    pub labels: Vec<Option<String>>,
    pub classes: Vec<String>,
    pub skipped: Vec<Skip>,
    pub warnings: Vec<String>,
}

/// Opens `path` with the block.
pub fn open_source<B: Export>(block: &B, path: &Path) -> Result<Source<B::Data>> {
    let o = block.open(path, None)?;
    let labels = o.labels.iter().map(|&l| o.classes.get(l).cloned()).collect();
    Ok(Source { data: o.data, labels, classes: o.classes, skipped: o.skipped, warnings: o.warnings })
}

/// `headstart embed`: every example of `data` as one row of the Parquet file `out`, written
/// atomically, rows in the data's order.
pub fn embed<B: Export>(block: &B, spec: &ModelSpec, data: &Path, out: &Path, progress: &dyn Progress) -> Result<Exported> {
    let src = open_source(block, data)?;
    let mut warnings = src.warnings.clone();
    let model = block.load_encoder(spec, &src.data, &mut warnings)?;
    let record = block.record(spec, &model)?;
    let hashes = block.content_hashes(&src.data, progress)?;
    let all: Vec<usize> = (0..hashes.len()).collect();
    let meta = file::FileMeta { record, classes: src.classes.clone(), shard: None };
    let mut writer = file::Writer::create(out, B::ID_COLUMN, &block.string_columns(&block.subset(&src.data, &[])), &meta)?;
    let mut e = featurise_rows(block, &model, &src.data, &src.labels, &hashes, &all, progress, |rows| writer.write(&rows))?;
    writer.finish()?;
    e.skipped.splice(0..0, src.skipped);
    warnings.append(&mut e.warnings);
    e.warnings = warnings;
    Ok(e)
}

/// The first 16 hex digits of a sha256 as a number: where an example falls among shards.
pub fn shard_of(hash: &str, shards: usize) -> Result<usize> {
    let head = hash.get(..16).and_then(|h| u64::from_str_radix(h, 16).ok()).ok_or_else(|| Error::Model(format!("not a sha256: `{hash}`")))?;
    Ok((head % shards as u64) as usize)
}
