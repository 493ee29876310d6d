//! Sharded extraction: process I of N embeds the examples whose content sha256 falls in slice
//! I (the first 16 hex digits modulo N), so the split does not depend on paths, listing order
//! or the machine. Each shard is `shard-IIIII-of-NNNNN.parquet` with a manifest beside it
//! (`.json`: the encoder record, classes, row counts, a digest of the slice's inputs, the
//! file's sha256), written after the Parquet file: a shard is finished when its manifest is
//! there. A rerun whose slice, encoder and file are unchanged does nothing; shards of another
//! model, other settings, another data set or another shard count in the same folder are
//! refused.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::file::{FileMeta, Writer};
use super::{featurise_rows, open_source, shard_of, EncoderRecord, Export, Exported, ModelSpec};
use crate::error::{Error, Result};
use crate::progress::Progress;

/// Version of the manifest layout.
pub const MANIFEST_FORMAT: u32 = 1;

/// What a finished shard holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub shard: usize,
    pub shards: usize,
    pub encoder: EncoderRecord,
    /// Every class of the data set, in order.
    pub classes: Vec<String>,
    /// Examples in the slice, rows written, and examples skipped (unreadable).
    pub inputs: usize,
    pub rows: usize,
    pub skipped: usize,
    /// sha256 over the slice's examples (content hash, identifier, label), in order.
    pub inputs_sha256: String,
    /// The Parquet file, beside the manifest, and its sha256.
    pub file: String,
    pub file_sha256: String,
    pub created_by: String,
}

/// The shard's file name without extension.
pub fn stem(shard: usize, shards: usize) -> String {
    format!("shard-{shard:05}-of-{shards:05}")
}

/// Every shard manifest in `dir` (none if it does not exist), by file name.
pub fn manifests(dir: &Path) -> Result<Vec<(PathBuf, Manifest)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut out = vec![];
    for e in entries {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        let name = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        if !(name.starts_with("shard-") && name.ends_with(".json")) {
            continue;
        }
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| Error::input(&p, format!("not a shard manifest: {e}")))?;
        out.push((p, m));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// An error unless `m` (at `path`) was made by the same encoder and settings, on the same
/// classes, split into the same number of shards as `record`, `classes` and `shards`.
pub fn check_compatible(path: &Path, m: &Manifest, record: &EncoderRecord, classes: &[String], shards: usize) -> Result<()> {
    let mix = |what: String| {
        Error::Usage(format!("{}: {what}; shards of different models, settings or data cannot be mixed: use another output folder", path.display()))
    };
    if let Some((field, theirs, ours)) = m.encoder.difference(record) {
        return Err(mix(format!("extracted with {field} {theirs}, not {ours}")));
    }
    if m.shards != shards {
        return Err(mix(format!("one of {} shards, not {shards}", m.shards)));
    }
    if m.classes != classes {
        return Err(mix(format!("classes {:?}, not {:?}", m.classes, classes)));
    }
    Ok(())
}

/// What `extract` did.
#[derive(Debug, Clone, Serialize)]
pub struct Extraction {
    pub shard: usize,
    pub shards: usize,
    pub file: PathBuf,
    pub manifest: PathBuf,
    /// The shard was already finished with the same inputs and settings: nothing was done.
    pub already_done: bool,
    pub inputs: usize,
    #[serde(flatten)]
    pub exported: Exported,
}

fn digest(hashes: &[String], ids: &[String], labels: &[Option<String>], rows: &[usize]) -> String {
    let mut h = Sha256::new();
    for &r in rows {
        h.update(hashes[r].as_bytes());
        h.update([0]);
        h.update(ids[r].as_bytes());
        h.update([0]);
        h.update(labels[r].as_deref().unwrap_or("").as_bytes());
        h.update([labels[r].is_some() as u8, b'\n']);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn file_sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// `headstart extract`: embeds shard `shard` of `shards` of the data at `data` into `out`.
pub fn extract<B: Export>(
    block: &B,
    spec: &ModelSpec,
    data: &Path,
    (shard, shards): (usize, usize),
    out: &Path,
    progress: &dyn Progress,
) -> Result<Extraction> {
    if shards == 0 || shard >= shards {
        return Err(Error::Usage(format!("setting `shard` must be I/N with I in 0..N, not {shard}/{shards}")));
    }
    let src = open_source(block, data)?;
    let mut warnings = src.warnings.clone();
    let model = block.load_encoder(spec, &src.data, &mut warnings)?;
    let record = block.record(spec, &model)?;
    let existing = manifests(out)?;
    for (p, m) in &existing {
        check_compatible(p, m, &record, &src.classes, shards)?;
    }
    let hashes = block.content_hashes(&src.data, progress)?;
    let mut rows = vec![];
    for (i, h) in hashes.iter().enumerate() {
        if shard_of(h, shards)? == shard {
            rows.push(i);
        }
    }
    let ids = block.string_columns(&src.data).swap_remove(0).1;
    let inputs_sha256 = digest(&hashes, &ids, &src.labels, &rows);
    let name = stem(shard, shards);
    let (file, manifest_path) = (out.join(format!("{name}.parquet")), out.join(format!("{name}.json")));
    let done = existing.iter().find(|(p, _)| *p == manifest_path).map(|(_, m)| m);
    if let Some(m) = done {
        if m.inputs_sha256 == inputs_sha256 && file.is_file() && file_sha256(&file)? == m.file_sha256 {
            let exported = Exported { rows: m.rows, warnings, ..Exported::default() };
            return Ok(Extraction { shard, shards, file, manifest: manifest_path, already_done: true, inputs: rows.len(), exported });
        }
    }
    let meta = FileMeta { record: record.clone(), classes: src.classes.clone(), shard: Some((shard, shards)) };
    let mut writer = Writer::create(&file, B::ID_COLUMN, &block.string_columns(&block.subset(&src.data, &[])), &meta)?;
    let mut e = featurise_rows(block, &model, &src.data, &src.labels, &hashes, &rows, progress, |r| writer.write(&r))?;
    writer.finish()?;
    let m = Manifest {
        format: MANIFEST_FORMAT,
        shard,
        shards,
        encoder: record,
        classes: src.classes,
        inputs: rows.len(),
        rows: e.rows,
        skipped: e.skipped.len(),
        inputs_sha256,
        file: format!("{name}.parquet"),
        file_sha256: file_sha256(&file)?,
        created_by: format!("headstart {}", env!("CARGO_PKG_VERSION")),
    };
    let text = serde_json::to_string_pretty(&m).map_err(|e| Error::Model(e.to_string()))?;
    crate::fsx::atomic_write(&manifest_path, text.as_bytes())?;
    // The data set's own skips (files outside class folders) are reported by every shard.
    e.skipped.splice(0..0, src.skipped);
    warnings.append(&mut e.warnings);
    e.warnings = warnings;
    Ok(Extraction { shard, shards, file, manifest: manifest_path, already_done: false, inputs: rows.len(), exported: e })
}
