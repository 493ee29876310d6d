//! Training from stored features: a folder of shards (checked complete and consistent through
//! their manifests) or one file from `embed`, read as a data block whose "encoder" is the
//! record in the files. Rows are put in one order whatever the split into files (by content
//! sha256, then identifier), so N shards train the same head as one process. Memory: the
//! features `[n, dim]` the head is fitted on, plus each row's identifier and label; the files
//! are read a batch at a time into that one buffer.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::file::{Reader, EMBEDDING, HASH, LABEL};
use super::shard::{check_compatible, manifests, stem};
use super::EncoderRecord;
use crate::blocks::image::ImageLearner;
use crate::bundle::{Bundle, FORMAT_VERSION};
use crate::error::{Error, Result};
use crate::learn::split::Skip;
use crate::learn::task::{Block, Featurised, Opened, RunRequest, RunSpec, TrainBlock};
use crate::models::{Encoder, Mode, Stage};
use crate::progress::Progress;
use crate::train::finetune::FinetuneConfig;
use crate::train::{HeadSpec, TrainConfig};

/// The files of a feature set and what they say.
pub struct FeatureSet {
    pub files: Vec<PathBuf>,
    pub record: EncoderRecord,
    pub classes: Vec<String>,
    pub rows: usize,
}

/// Opens a feature file, or a folder of finished shards (every one of the N present, all of
/// one encoder, settings and class list, each file matching its manifest).
pub fn open_set(path: &Path) -> Result<FeatureSet> {
    if path.is_file() {
        let r = Reader::open(path)?;
        return Ok(FeatureSet { files: vec![path.to_path_buf()], record: r.meta.record, classes: r.meta.classes, rows: r.rows });
    }
    if !path.is_dir() {
        return Err(Error::input(path, "no such file or folder"));
    }
    let ms = manifests(path)?;
    let Some((_, first)) = ms.first() else {
        return Err(Error::input(path, "no shard manifests (shard-*.json): not a folder written by `headstart extract`"));
    };
    for (p, m) in &ms {
        check_compatible(p, m, &first.encoder, &first.classes, first.shards)?;
        if *p != path.join(format!("{}.json", stem(m.shard, m.shards))) {
            return Err(Error::input(p, format!("names shard {}/{}, which is not its file name", m.shard, m.shards)));
        }
    }
    let missing: Vec<String> = (0..first.shards).filter(|i| !ms.iter().any(|(_, m)| m.shard == *i)).map(|i| i.to_string()).collect();
    if !missing.is_empty() {
        return Err(Error::input(
            path,
            format!(
                "incomplete: shard(s) {} of {} not finished (run `headstart extract --shard I/{}` for each)",
                missing.join(", "),
                first.shards,
                first.shards
            ),
        ));
    }
    let mut files = vec![];
    let mut rows = 0;
    for (p, m) in &ms {
        let f = path.join(&m.file);
        let r = Reader::open(&f)?;
        if r.meta.record.difference(&m.encoder).is_some() || r.rows != m.rows || r.meta.shard != Some((m.shard, m.shards)) {
            return Err(Error::input(&f, format!("does not match its manifest {}", p.display())));
        }
        rows += r.rows;
        files.push(f);
    }
    Ok(FeatureSet { files, record: first.encoder.clone(), classes: first.classes.clone(), rows })
}

/// The rows of a feature set in canonical order.
pub struct Loaded {
    /// What identifies a row (`path` for files, `text` for text) and its value per row.
    pub id_column: String,
    pub ids: Vec<String>,
    pub labels: Vec<Option<String>>,
    /// `[rows, dim]`.
    pub features: Tensor,
}

/// Reads every row of `set`: identifiers, labels and hashes first, to fix the order; then the
/// vectors, a batch at a time, each into its place.
pub fn load(set: &FeatureSet) -> Result<Loaded> {
    let dim = set.record.dim;
    let mut keys: Vec<(String, String, usize, usize)> = Vec::with_capacity(set.rows);
    let mut labels_in: Vec<Vec<Option<String>>> = vec![];
    let mut id_column = String::new();
    for (fi, f) in set.files.iter().enumerate() {
        let r = Reader::open(f)?;
        let id = r.strings[0].clone();
        if fi == 0 {
            id_column = id.clone();
        }
        let mut labels = vec![];
        for b in r.batches(&[&id, LABEL, HASH])? {
            let b = b?;
            let (ids, hashes, ls) = (b.strings(&id), b.strings(HASH), b.strings(LABEL));
            for ((i, h), l) in ids.into_iter().zip(hashes).zip(ls) {
                let (Some(i), Some(h)) = (i, h) else { return Err(Error::input(f, format!("null in column `{id}` or `{HASH}`"))) };
                keys.push((h, i, fi, labels.len()));
                labels.push(l);
            }
        }
        labels_in.push(labels);
    }
    keys.sort();
    let mut place: Vec<Vec<usize>> = labels_in.iter().map(|l| vec![0; l.len()]).collect();
    for (pos, (_, _, fi, row)) in keys.iter().enumerate() {
        place[*fi][*row] = pos;
    }
    let mut out = vec![0f32; keys.len() * dim];
    for (fi, f) in set.files.iter().enumerate() {
        let mut row = 0;
        for b in Reader::open(f)?.batches(&[EMBEDDING])? {
            let v = b?.vectors(f)?;
            for chunk in v.chunks_exact(dim) {
                let p = *place[fi].get(row).ok_or_else(|| Error::input(f, "more embeddings than rows"))?;
                out[p * dim..(p + 1) * dim].copy_from_slice(chunk);
                row += 1;
            }
        }
    }
    let labels = keys.iter().map(|(_, _, fi, row)| labels_in[*fi][*row].take()).collect();
    let ids = keys.into_iter().map(|k| k.1).collect();
    let features = Tensor::from_slice(&out).view([-1, dim as i64]);
    Ok(Loaded { id_column, ids, labels, features })
}

/// The encoder of stored features: it never runs, the vectors are already computed.
pub struct StoredEncoder {
    pub record: EncoderRecord,
}

impl Encoder for StoredEncoder {
    type Input = ();
    fn stages(&self) -> &[Stage] {
        &[]
    }
    fn forward_from(&self, x: &Tensor, _: &(), _: usize, _: Mode) -> Tensor {
        x.shallow_clone()
    }
    fn pool(&self, h: &Tensor, _: &()) -> Tensor {
        h.shallow_clone()
    }
    fn num_features(&self) -> i64 {
        self.record.dim as i64
    }
}

/// A `train` on stored features.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FeatureTrainRequest {
    /// A shard folder or a feature file.
    pub features: PathBuf,
    pub val: Option<PathBuf>,
    pub val_split: f64,
    pub out: PathBuf,
    pub train: TrainConfig,
}

impl RunRequest for FeatureTrainRequest {
    fn spec(&self) -> RunSpec<'_> {
        RunSpec { data: &self.features, val: self.val.as_deref(), val_split: self.val_split, out: &self.out, train: &self.train, finetune: None }
    }
}

/// Rows of stored features.
pub struct StoredRows {
    /// The identifying column (`path`, `text`) and its value per row.
    pub id_column: String,
    pub ids: Vec<String>,
    pub features: Tensor,
}

/// Stored features as a data block (training a head only: fine-tuning needs raw inputs).
pub struct FeatureBlock<'a> {
    pub req: &'a FeatureTrainRequest,
    /// The encoder record of the first set opened; later sets must match it.
    record: Mutex<Option<EncoderRecord>>,
}

impl<'a> FeatureBlock<'a> {
    pub fn new(req: &'a FeatureTrainRequest) -> FeatureBlock<'a> {
        FeatureBlock { req, record: Mutex::new(None) }
    }

    fn record(&self) -> Result<EncoderRecord> {
        self.record.lock().expect("not poisoned").clone().ok_or_else(|| Error::Model("no features opened yet".into()))
    }
}

fn raw_inputs_needed() -> Error {
    Error::Usage("fine-tuning needs the raw inputs: train on stored features trains a head only".into())
}

impl<'a> Block for FeatureBlock<'a> {
    type Data = StoredRows;
    type Model = StoredEncoder;
    type Inputs = ();
    type Learner<'l>
        = ImageLearner<'l>
    where
        Self: 'l;
    const NOUN: &'static str = "examples";

    fn open(&self, path: &Path, classes: Option<&[String]>) -> Result<Opened<StoredRows>> {
        let set = open_set(path)?;
        {
            let mut seen = self.record.lock().expect("not poisoned");
            match seen.as_ref().and_then(|r| r.difference(&set.record)) {
                Some((field, ours, theirs)) => return Err(Error::input(path, format!("features of another encoder: {field} {theirs}, not {ours}"))),
                None => *seen = Some(set.record.clone()),
            }
        }
        let classes = classes.map(<[String]>::to_vec).unwrap_or_else(|| set.classes.clone());
        let loaded = load(&set)?;
        let (mut keep, mut labels, mut skipped) = (vec![], vec![], vec![]);
        for (i, l) in loaded.labels.iter().enumerate() {
            match l {
                None => skipped.push(Skip { path: PathBuf::from(&loaded.ids[i]), reason: "no label".into() }),
                Some(l) => match classes.iter().position(|c| c == l) {
                    Some(c) => {
                        keep.push(i as i64);
                        labels.push(c);
                    }
                    None => return Err(Error::input(path, format!("`{}` has label `{l}`, not one of the classes {classes:?}", loaded.ids[i]))),
                },
            }
        }
        let (features, ids) = if skipped.is_empty() {
            (loaded.features, loaded.ids)
        } else {
            let ids = keep.iter().map(|&i| loaded.ids[i as usize].clone()).collect();
            (loaded.features.index_select(0, &Tensor::from_slice(&keep)), ids)
        };
        Ok(Opened { data: StoredRows { id_column: loaded.id_column, ids, features }, labels, classes, skipped, warnings: vec![] })
    }

    fn append(&self, data: &mut StoredRows, more: StoredRows) {
        data.ids.extend(more.ids);
        data.features = Tensor::cat(&[&data.features, &more.features], 0);
    }

    fn featurise(&self, _: &StoredEncoder, data: &StoredRows, _: &dyn Progress) -> Result<Featurised> {
        let mut f = Featurised::all(data.ids.len());
        f.features = data.features.shallow_clone();
        f.reused = data.ids.len();
        Ok(f)
    }

    fn screen(&self, _: &StoredEncoder, _: &StoredRows, _: &dyn Progress) -> Result<(Featurised, ())> {
        Err(raw_inputs_needed())
    }

    fn inputs(&self, _: &StoredEncoder, _: &StoredRows, _: &[usize], _: &dyn Progress) -> Result<()> {
        Err(raw_inputs_needed())
    }

    fn learner<'l>(&'l self, _: &'l StoredEncoder, _: &'l (), _: &[i64], _: i64, _: &'l FinetuneConfig, _: &dyn Progress) -> Result<ImageLearner<'l>> {
        Err(raw_inputs_needed())
    }

    /// A file's path as the features record it; text rows show their text.
    fn describe(&self, data: &StoredRows, i: usize) -> (String, Option<String>) {
        let id = &data.ids[i];
        if data.id_column == "text" {
            (format!("example {}", i + 1), Some(id.chars().take(500).collect()))
        } else {
            (crate::blocks::describe_path(Path::new(id)), None)
        }
    }
}

impl TrainBlock for FeatureBlock<'_> {
    type Request = FeatureTrainRequest;

    fn request(&self) -> &FeatureTrainRequest {
        self.req
    }

    fn model_name(&self) -> String {
        self.record().map(|r| r.model).unwrap_or_default()
    }

    fn load(&self, _: &[String], _: &StoredRows, _: &mut Vec<String>) -> Result<StoredEncoder> {
        Ok(StoredEncoder { record: self.record()? })
    }

    fn bundle_meta(&self, _: &StoredEncoder, labels: Vec<String>, head: HeadSpec) -> Result<Bundle> {
        let r = self.record()?;
        Ok(Bundle {
            format_version: FORMAT_VERSION,
            modality: r.modality,
            created_by: format!("headstart {}", env!("CARGO_PKG_VERSION")),
            labels,
            encoder: r.encoder,
            columns: r.columns,
            head,
            tuned: None,
            precision: r.precision,
        })
    }
}

/// Trains a head on stored features per `req`.
pub fn train_features(req: &FeatureTrainRequest, progress: &dyn Progress) -> Result<crate::learn::task::TrainOutcome> {
    crate::learn::task::train(&FeatureBlock::new(req), false, progress)
}
