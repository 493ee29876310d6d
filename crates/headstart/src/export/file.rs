//! The feature file: Parquet, one row per example. Columns: the identifying strings (`path`,
//! or `text` and maybe `pair`), `label` (nullable), `sha256` of the example's content, and
//! `embedding`, a fixed-size list of float32. Key-value metadata: `headstart.model`,
//! `headstart.weights_sha256`, `headstart.preprocessing` (JSON), `headstart.dim`,
//! `headstart.encoder` (the whole [`EncoderRecord`]), `headstart.classes` (JSON list, the
//! class order) and, for a shard, `headstart.shard` (`I/N`).
//!
//! Written to a temporary file beside the target, synced, then renamed over it. Read back a
//! batch of rows at a time, any subset of columns.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use super::{EncoderRecord, Rows};
use crate::error::{Error, Result};

pub const LABEL: &str = "label";
pub const HASH: &str = "sha256";
pub const EMBEDDING: &str = "embedding";
const KEY_ENCODER: &str = "headstart.encoder";
const KEY_CLASSES: &str = "headstart.classes";
const KEY_SHARD: &str = "headstart.shard";
/// Rows per batch read.
pub const READ_BATCH: usize = 4096;

/// What a feature file says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct FileMeta {
    pub record: EncoderRecord,
    /// Every class of the data set, in order (a shard may hold only some).
    pub classes: Vec<String>,
    /// `(I, N)` for shard I of N.
    pub shard: Option<(usize, usize)>,
}

impl FileMeta {
    fn key_values(&self) -> Result<Vec<KeyValue>> {
        let r = &self.record;
        let mut kv = vec![
            KeyValue::new("headstart.model".into(), r.model.clone()),
            KeyValue::new("headstart.weights_sha256".into(), r.weights_sha256.clone()),
            KeyValue::new("headstart.preprocessing".into(), r.preprocessing.to_string()),
            KeyValue::new("headstart.dim".into(), r.dim.to_string()),
            KeyValue::new(KEY_ENCODER.into(), to_json(r)?),
            KeyValue::new(KEY_CLASSES.into(), to_json(&self.classes)?),
            KeyValue::new("headstart.created_by".into(), format!("headstart {}", env!("CARGO_PKG_VERSION"))),
        ];
        if let Some((i, n)) = self.shard {
            kv.push(KeyValue::new(KEY_SHARD.into(), format!("{i}/{n}")));
        }
        Ok(kv)
    }

    fn from_key_values(path: &Path, kv: Option<&Vec<KeyValue>>) -> Result<FileMeta> {
        let map: HashMap<&str, &str> = kv.into_iter().flatten().filter_map(|k| Some((k.key.as_str(), k.value.as_deref()?))).collect();
        let get =
            |key: &str| map.get(key).copied().ok_or_else(|| Error::input(path, format!("no `{key}` in the Parquet metadata: not a headstart feature file")));
        let parse_err = |key: &str, e: serde_json::Error| Error::input(path, format!("Parquet metadata `{key}`: {e}"));
        let record: EncoderRecord = serde_json::from_str(get(KEY_ENCODER)?).map_err(|e| parse_err(KEY_ENCODER, e))?;
        let classes: Vec<String> = serde_json::from_str(get(KEY_CLASSES)?).map_err(|e| parse_err(KEY_CLASSES, e))?;
        let shard = match map.get(KEY_SHARD) {
            None => None,
            Some(s) => Some(parse_shard(s).map_err(|m| Error::input(path, format!("Parquet metadata `{KEY_SHARD}`: {m}")))?),
        };
        Ok(FileMeta { record, classes, shard })
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Model(e.to_string()))
}

/// `I/N` with `I < N`.
pub fn parse_shard(s: &str) -> std::result::Result<(usize, usize), String> {
    let (i, n) = s.split_once('/').ok_or_else(|| format!("`{s}` is not I/N (for example 0/4)"))?;
    let (i, n): (usize, usize) =
        (i.trim().parse().map_err(|_| format!("`{s}`: `{i}` is not a number"))?, n.trim().parse().map_err(|_| format!("`{s}`: `{n}` is not a number"))?);
    if n == 0 || i >= n {
        return Err(format!("`{s}`: the shard index must be in 0..{n} and the count at least 1"));
    }
    Ok((i, n))
}

fn schema(strings: &[&str], dim: usize, meta: &FileMeta) -> Result<SchemaRef> {
    let mut fields: Vec<Field> = strings.iter().map(|n| Field::new(*n, DataType::Utf8, false)).collect();
    fields.push(Field::new(LABEL, DataType::Utf8, true));
    fields.push(Field::new(HASH, DataType::Utf8, false));
    fields.push(Field::new(EMBEDDING, DataType::FixedSizeList(item_field(), dim as i32), false));
    let md = meta.key_values()?.into_iter().filter_map(|k| Some((k.key, k.value?))).collect();
    Ok(Arc::new(Schema::new(fields).with_metadata(md)))
}

fn item_field() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Float32, false))
}

fn parquet_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::input(path, format!("Parquet: {e}"))
}

/// A feature file being written: rows go to a temporary file, renamed into place by
/// [`Writer::finish`]; dropped unfinished, the temporary file is removed.
pub struct Writer {
    path: PathBuf,
    tmp: PathBuf,
    inner: Option<ArrowWriter<File>>,
    schema: SchemaRef,
    dim: usize,
    pub rows: usize,
}

impl Writer {
    /// Starts `path`; `strings` are the identifying columns (their values are ignored).
    pub fn create(path: &Path, id: &str, strings: &[(&'static str, Vec<String>)], meta: &FileMeta) -> Result<Writer> {
        let names: Vec<&str> = strings.iter().map(|(n, _)| *n).collect();
        if names.first() != Some(&id) {
            return Err(Error::Model(format!("the first column must be `{id}`")));
        }
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let name = path.file_name().ok_or_else(|| Error::input(path, "not a file path"))?.to_string_lossy().to_string();
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let dim = meta.record.dim;
        let schema = schema(&names, dim, meta)?;
        let props = WriterProperties::builder().set_key_value_metadata(Some(meta.key_values()?)).build();
        let inner = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| parquet_err(path, e))?;
        Ok(Writer { path: path.to_path_buf(), tmp, inner: Some(inner), schema, dim, rows: 0 })
    }

    pub fn write(&mut self, rows: &Rows) -> Result<()> {
        let n = rows.hashes.len();
        if rows.vectors.len() != n * self.dim || rows.labels.len() != n {
            return Err(Error::Model(format!("{n} rows with {} labels and {} values of width {}", rows.labels.len(), rows.vectors.len(), self.dim)));
        }
        if n == 0 {
            return Ok(());
        }
        let mut cols: Vec<ArrayRef> = rows.strings.iter().map(|(_, v)| Arc::new(StringArray::from_iter_values(v)) as ArrayRef).collect();
        cols.push(Arc::new(StringArray::from(rows.labels.clone())));
        cols.push(Arc::new(StringArray::from_iter_values(&rows.hashes)));
        let values = Arc::new(Float32Array::from(rows.vectors.clone()));
        let list = FixedSizeListArray::try_new(item_field(), self.dim as i32, values, None).map_err(|e| parquet_err(&self.path, e))?;
        cols.push(Arc::new(list));
        let batch = RecordBatch::try_new(self.schema.clone(), cols).map_err(|e| parquet_err(&self.path, e))?;
        let w = self.inner.as_mut().expect("not finished");
        w.write(&batch).map_err(|e| self.write_err(e))?;
        self.rows += n;
        Ok(())
    }

    fn write_err(&self, e: parquet::errors::ParquetError) -> Error {
        match e {
            parquet::errors::ParquetError::External(b) => match b.downcast::<std::io::Error>() {
                Ok(io) => Error::io(&self.path, *io),
                Err(b) => parquet_err(&self.path, b),
            },
            e => parquet_err(&self.path, e),
        }
    }

    /// Closes the file, syncs it and renames it over the target.
    pub fn finish(mut self) -> Result<()> {
        let w = self.inner.take().expect("not finished");
        let file = w.into_inner().map_err(|e| self.write_err(e))?;
        file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        if let Some(d) = self.path.parent().and_then(|d| File::open(if d.as_os_str().is_empty() { Path::new(".") } else { d }).ok()) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.inner.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A feature file opened for reading.
pub struct Reader {
    pub path: PathBuf,
    pub meta: FileMeta,
    pub rows: usize,
    /// The identifying string columns, in file order.
    pub strings: Vec<String>,
    builder: Option<ParquetRecordBatchReaderBuilder<File>>,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| parquet_err(path, e))?;
        let fm = builder.metadata().file_metadata();
        let meta = FileMeta::from_key_values(path, fm.key_value_metadata())?;
        let rows = usize::try_from(fm.num_rows()).map_err(|_| Error::input(path, "negative row count"))?;
        let schema = builder.schema().clone();
        let mut strings = vec![];
        for f in schema.fields() {
            let name = f.name().as_str();
            let want = match name {
                LABEL | HASH => Some(DataType::Utf8),
                EMBEDDING => Some(DataType::FixedSizeList(item_field(), meta.record.dim as i32)),
                _ => None,
            };
            match want {
                Some(t) if !same_type(f.data_type(), &t) => {
                    return Err(Error::input(path, format!("column `{name}` is {}, expected {t}", f.data_type())));
                }
                Some(_) => {}
                None if f.data_type() == &DataType::Utf8 => strings.push(name.to_string()),
                None => return Err(Error::input(path, format!("unexpected column `{name}` of type {}", f.data_type()))),
            }
        }
        for need in [LABEL, HASH, EMBEDDING] {
            if schema.field_with_name(need).is_err() {
                return Err(Error::input(path, format!("no column `{need}`")));
            }
        }
        if strings.is_empty() {
            return Err(Error::input(path, "no identifying column (`path`, `text`)"));
        }
        Ok(Reader { path: path.to_path_buf(), meta, rows, strings, builder: Some(builder) })
    }

    /// Batches of the columns `names`, [`READ_BATCH`] rows at a time.
    pub fn batches(mut self, names: &[&str]) -> Result<Batches> {
        let b = self.builder.take().expect("read once");
        let schema = b.schema().clone();
        let mut roots = vec![];
        for n in names {
            roots.push(schema.index_of(n).map_err(|_| Error::input(&self.path, format!("no column `{n}`")))?);
        }
        let mask = ProjectionMask::roots(b.parquet_schema(), roots);
        let inner = b.with_projection(mask).with_batch_size(READ_BATCH).build().map_err(|e| parquet_err(&self.path, e))?;
        Ok(Batches { path: self.path, dim: self.meta.record.dim, inner })
    }
}

/// Field types equal up to the nullability and name of list items.
fn same_type(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (DataType::FixedSizeList(fa, na), DataType::FixedSizeList(fb, nb)) => na == nb && fa.data_type() == fb.data_type(),
        _ => a == b,
    }
}

/// Record batches of a feature file.
pub struct Batches {
    path: PathBuf,
    dim: usize,
    inner: ParquetRecordBatchReader,
}

impl Iterator for Batches {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        let b = self.inner.next()?;
        Some(b.map_err(|e| parquet_err(&self.path, e)).map(|batch| Batch { batch, dim: self.dim }))
    }
}

/// One batch of rows, with typed access to its columns.
pub struct Batch {
    pub batch: RecordBatch,
    dim: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A string column; `None` for nulls.
    pub fn strings(&self, name: &str) -> Vec<Option<String>> {
        let Some(col) = self.batch.column_by_name(name) else { return vec![None; self.len()] };
        let Some(a) = col.as_any().downcast_ref::<StringArray>() else { return vec![None; self.len()] };
        (0..a.len()).map(|i| (!a.is_null(i)).then(|| a.value(i).to_string())).collect()
    }

    /// The embeddings, row-major `[len * dim]`; an error naming `path` if any is null.
    pub fn vectors(&self, path: &Path) -> Result<Vec<f32>> {
        let col = self.batch.column_by_name(EMBEDDING).ok_or_else(|| Error::input(path, "no column `embedding` read"))?;
        let list = col.as_any().downcast_ref::<FixedSizeListArray>().ok_or_else(|| Error::input(path, "column `embedding` is not a fixed-size list"))?;
        if list.null_count() > 0 {
            return Err(Error::input(path, "column `embedding` holds nulls"));
        }
        let mut out = Vec::with_capacity(list.len() * self.dim);
        for i in 0..list.len() {
            let v = list.value(i);
            let f = v.as_any().downcast_ref::<Float32Array>().ok_or_else(|| Error::input(path, "column `embedding` is not float32"))?;
            if f.null_count() > 0 {
                return Err(Error::input(path, format!("embedding of a row holds nulls (row {i} of a batch)")));
            }
            out.extend_from_slice(f.values());
        }
        Ok(out)
    }
}
