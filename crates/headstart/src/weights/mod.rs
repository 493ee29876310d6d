//! Weight files: safetensors (memory-mapped), PyTorch `.pth` (zip and legacy formats, through a
//! data-only pickle reader), Hugging Face model directories (single or sharded) and the
//! Hugging Face hub cache layout.
//!
//! Opening a file reads and validates only metadata: every tensor's declared extent is checked
//! against the bytes the file really holds before any tensor memory is allocated.

pub mod ct2;
pub mod hub;
pub mod pickle;
mod pth;
pub mod report;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

pub use report::LoadReport;

/// Element types found in weight files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    pub fn size(self) -> u64 {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }
    pub fn kind(self) -> Kind {
        match self {
            DType::F64 => Kind::Double,
            DType::F32 => Kind::Float,
            DType::F16 => Kind::Half,
            DType::BF16 => Kind::BFloat16,
            DType::I64 => Kind::Int64,
            DType::I32 => Kind::Int,
            DType::I16 => Kind::Int16,
            DType::I8 => Kind::Int8,
            DType::U8 => Kind::Uint8,
            DType::Bool => Kind::Bool,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "f64",
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::I16 => "i16",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::Bool => "bool",
        }
    }
}

/// The on-disk format of one weight file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Format {
    Safetensors,
    TorchZip,
    TorchLegacy,
}

/// Metadata of one tensor in a weight file.
#[derive(Debug, Clone, Serialize)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
}

impl TensorInfo {
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
    pub fn bytes(&self) -> u64 {
        self.numel() * self.dtype.size()
    }
}

#[derive(Debug, Clone)]
struct Entry {
    info: TensorInfo,
    stride: Vec<u64>,
    /// Offset into the storage, in elements.
    offset: u64,
    /// The storage's byte range in the mapped file.
    region: std::ops::Range<usize>,
}

/// One opened weight file.
pub struct WeightFile {
    path: PathBuf,
    format: Format,
    map: Mmap,
    entries: Vec<Entry>,
}

impl std::fmt::Debug for WeightFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightFile").field("path", &self.path).field("format", &self.format).field("tensors", &self.entries.len()).finish()
    }
}

pub(crate) fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::Weights { path: path.to_path_buf(), message: message.into() }
}

/// Most bytes a tensor may materialise beyond its storage's size. Overlapping strides (as
/// `expand` makes) repeat storage elements; past this cap a file of a few hundred bytes could
/// make [`Weights::tensor`] allocate gigabytes.
pub const MAX_EXPANDED_BYTES: u64 = 64 << 20;

/// Most dimensions a tensor may have.
pub const MAX_DIMS: usize = 64;

/// Checks that a strided view fits its storage (`offset + Σ (size_i − 1)·stride_i < numel`),
/// that its element and byte counts fit in 64 bits, and that it does not expand a small
/// storage into more than [`MAX_EXPANDED_BYTES`].
pub(crate) fn check_extent(path: &Path, name: &str, shape: &[u64], stride: &[u64], offset: u64, storage_numel: u64, elem_size: u64) -> Result<()> {
    if shape.len() != stride.len() {
        return Err(bad(path, format!("tensor `{name}`: shape and stride ranks differ")));
    }
    if shape.len() > MAX_DIMS {
        return Err(bad(path, format!("tensor `{name}` has {} dimensions; at most {MAX_DIMS} are supported", shape.len())));
    }
    let numel = shape.iter().try_fold(1u64, |n, &s| n.checked_mul(s)).filter(|n| n.checked_mul(elem_size).is_some());
    let numel = numel.ok_or_else(|| bad(path, format!("tensor `{name}` {shape:?}: element count overflows")))?;
    if numel == 0 {
        return Ok(());
    }
    let mut last = offset;
    for (&s, &st) in shape.iter().zip(stride) {
        let step = (s - 1).checked_mul(st).and_then(|x| last.checked_add(x));
        last = step.ok_or_else(|| bad(path, format!("tensor `{name}`: size overflows")))?;
    }
    if last >= storage_numel {
        return Err(bad(path, format!("tensor `{name}` {shape:?} needs {} elements but its storage holds {storage_numel}", last + 1)));
    }
    if numel > storage_numel && numel * elem_size > MAX_EXPANDED_BYTES {
        return Err(bad(
            path,
            format!(
                "tensor `{name}` {shape:?} repeats its storage of {storage_numel} elements into {numel} (overlapping strides): \
                 {} MiB, more than the {} MiB allowed",
                (numel * elem_size) >> 20,
                MAX_EXPANDED_BYTES >> 20
            ),
        ));
    }
    Ok(())
}

impl WeightFile {
    /// Opens and validates a weight file, detecting its format from its first bytes.
    pub fn open(path: impl AsRef<Path>) -> Result<WeightFile> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len == 0 {
            return Err(bad(path, "file is empty"));
        }
        // SAFETY: the map is read-only; the file is not modified by this process. A concurrent
        // writer truncating the file could fault, as with any mmap reader.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let head: Vec<u8> = map[..map.len().min(16)].to_vec();
        let mut wf = WeightFile { path: path.to_path_buf(), format: Format::Safetensors, map, entries: vec![] };
        // safetensors first: its little-endian header length can begin with 0x80, the pickle
        // protocol opcode.
        let st_header = (head.len() >= 9 && head[8] == b'{').then(|| u64::from_le_bytes(head[..8].try_into().unwrap()));
        if st_header.is_some_and(|n| n <= len - 8) {
            wf.read_safetensors()?;
        } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
            wf.format = Format::TorchZip;
            pth::read_zip(&mut wf)?;
        } else if head.first() == Some(&0x80) {
            wf.format = Format::TorchLegacy;
            pth::read_legacy(&mut wf)?;
        } else if st_header.is_some() {
            wf.read_safetensors()?;
        } else {
            return Err(bad(path, "not a safetensors, zip .pth or legacy .pth file (unrecognised first bytes)"));
        }
        Ok(wf)
    }

    fn read_safetensors(&mut self) -> Result<()> {
        let st = safetensors::SafeTensors::deserialize(&self.map).map_err(|e| bad(&self.path, format!("safetensors: {e}")))?;
        let base = self.map.as_ptr() as usize;
        let mut names = st.names();
        names.sort();
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            let view = st.tensor(name).map_err(|e| bad(&self.path, format!("safetensors: {e}")))?;
            use safetensors::Dtype as S;
            let dtype = match view.dtype() {
                S::F64 => DType::F64,
                S::F32 => DType::F32,
                S::F16 => DType::F16,
                S::BF16 => DType::BF16,
                S::I64 => DType::I64,
                S::I32 => DType::I32,
                S::I16 => DType::I16,
                S::I8 => DType::I8,
                S::U8 => DType::U8,
                S::BOOL => DType::Bool,
                other => return Err(bad(&self.path, format!("tensor `{name}`: unsupported dtype {other:?}"))),
            };
            let shape: Vec<u64> = view.shape().iter().map(|&s| s as u64).collect();
            let stride = contiguous_stride(&shape);
            let data = view.data();
            entries.push(Entry {
                info: TensorInfo { name: name.to_string(), dtype, shape },
                stride,
                offset: 0,
                region: {
                    let start = data.as_ptr() as usize - base;
                    start..start + data.len()
                },
            });
        }
        self.entries = entries;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn format(&self) -> Format {
        self.format
    }
    pub fn infos(&self) -> impl Iterator<Item = &TensorInfo> {
        self.entries.iter().map(|e| &e.info)
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Materialises tensor `i` as a contiguous CPU tensor of its stored dtype.
    fn tensor_at(&self, i: usize) -> Result<Tensor> {
        let e = &self.entries[i];
        let bytes = &self.map[e.region.clone()];
        let esize = e.info.dtype.size() as usize;
        let numel = (bytes.len() / esize) as i64;
        let flat = Tensor::f_from_data_size(&bytes[..numel as usize * esize], &[numel], e.info.dtype.kind())?;
        let shape: Vec<i64> = e.info.shape.iter().map(|&s| s as i64).collect();
        let stride: Vec<i64> = e.stride.iter().map(|&s| s as i64).collect();
        if e.offset == 0 && stride == contiguous_stride(&e.info.shape).iter().map(|&s| s as i64).collect::<Vec<_>>() && e.info.numel() as i64 == numel {
            return Ok(flat.f_reshape(&shape)?);
        }
        Ok(flat.f_as_strided(&shape, &stride, Some(e.offset as i64))?.f_contiguous()?)
    }
}

pub(crate) fn contiguous_stride(shape: &[u64]) -> Vec<u64> {
    let mut stride = vec![1u64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        stride[i] = stride[i + 1].saturating_mul(shape[i + 1].max(1));
    }
    stride
}

/// A set of weight files seen as one name → tensor map (a single file, or an HF directory,
/// possibly sharded).
#[derive(Debug)]
pub struct Weights {
    files: Vec<WeightFile>,
    index: HashMap<String, (usize, usize)>,
    order: Vec<String>,
    /// The directory or file the set was opened from.
    pub source: PathBuf,
}

impl Weights {
    /// Opens a weight file or a Hugging Face model directory.
    pub fn open(path: impl AsRef<Path>) -> Result<Weights> {
        let path = path.as_ref();
        if path.is_dir() {
            return Self::open_hf_dir(path);
        }
        let f = WeightFile::open(path)?;
        Ok(Self::from_files(path, vec![(f, None)]))
    }

    fn from_files(source: &Path, files: Vec<(WeightFile, Option<Vec<String>>)>) -> Weights {
        let mut index = HashMap::new();
        let mut order = vec![];
        let mut out = vec![];
        for (fi, (f, only)) in files.into_iter().enumerate() {
            let only: Option<HashSet<&str>> = only.as_ref().map(|o| o.iter().map(String::as_str).collect());
            for (ei, e) in f.entries.iter().enumerate() {
                if only.as_ref().is_some_and(|o| !o.contains(e.info.name.as_str())) {
                    continue;
                }
                if index.insert(e.info.name.clone(), (fi, ei)).is_none() {
                    order.push(e.info.name.clone());
                }
            }
            out.push(f);
        }
        Weights { files: out, index, order, source: source.to_path_buf() }
    }

    /// An HF model directory: `model.safetensors`, `pytorch_model.bin`, or either's sharded
    /// `*.index.json`.
    pub fn open_hf_dir(dir: &Path) -> Result<Weights> {
        for index in ["model.safetensors.index.json", "pytorch_model.bin.index.json"] {
            let p = dir.join(index);
            if p.is_file() {
                return Self::open_sharded(dir, &p);
            }
        }
        for single in ["model.safetensors", "pytorch_model.bin"] {
            let p = dir.join(single);
            if p.is_file() {
                let f = WeightFile::open(&p)?;
                return Ok(Self::from_files(dir, vec![(f, None)]));
            }
        }
        Err(bad(dir, "no model.safetensors, pytorch_model.bin or sharded index in this directory"))
    }

    fn open_sharded(dir: &Path, index: &Path) -> Result<Weights> {
        let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(index, format!("invalid JSON: {e}")))?;
        let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad(index, "missing `weight_map` object"))?;
        let mut by_file: Vec<(String, Vec<String>)> = vec![];
        let mut slot: HashMap<&str, usize> = HashMap::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| bad(index, format!("weight_map[`{name}`] is not a file name")))?;
            if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                return Err(bad(index, format!("weight_map[`{name}`] names `{file}`, outside the directory")));
            }
            let i = *slot.entry(file).or_insert_with(|| {
                by_file.push((file.to_string(), vec![]));
                by_file.len() - 1
            });
            by_file[i].1.push(name.clone());
        }
        let mut files = vec![];
        for (file, names) in by_file {
            let f = WeightFile::open(dir.join(&file))?;
            let held: HashSet<&str> = f.entries.iter().map(|e| e.info.name.as_str()).collect();
            for n in &names {
                if !held.contains(n.as_str()) {
                    return Err(bad(index, format!("`{n}` is mapped to {file}, which does not contain it")));
                }
            }
            files.push((f, Some(names)));
        }
        Ok(Self::from_files(dir, files))
    }

    pub fn files(&self) -> &[WeightFile] {
        &self.files
    }
    pub fn names(&self) -> &[String] {
        &self.order
    }
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&(f, e)| &self.files[f].entries[e].info)
    }
    pub fn infos(&self) -> impl Iterator<Item = &TensorInfo> {
        self.order.iter().filter_map(|n| self.info(n))
    }
    /// Materialises one tensor (contiguous, CPU, stored dtype).
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let &(f, e) = self.index.get(name).ok_or_else(|| Error::Model(format!("no tensor `{name}` in {}", self.source.display())))?;
        self.files[f].tensor_at(e)
    }

    /// sha256 of the weight bytes: of the single file, or of the files' hashes in name order.
    pub fn sha256(&self) -> Result<String> {
        if self.files.len() == 1 {
            return file_sha256(&self.files[0].path);
        }
        let mut names: Vec<_> = self.files.iter().map(|f| f.path.clone()).collect();
        names.sort();
        let mut h = Sha256::new();
        for p in names {
            h.update(file_sha256(&p)?.as_bytes());
        }
        Ok(hex(&h.finalize()))
    }
}

pub fn file_sha256(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes tensors to a safetensors file atomically (temporary name, fsync, rename).
pub fn save_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut owned = vec![];
    for (name, t) in tensors {
        let t = t.f_contiguous()?.f_to_device(tch::Device::Cpu)?;
        let dtype = match t.kind() {
            Kind::Double => safetensors::Dtype::F64,
            Kind::Float => safetensors::Dtype::F32,
            Kind::Half => safetensors::Dtype::F16,
            Kind::BFloat16 => safetensors::Dtype::BF16,
            Kind::Int64 => safetensors::Dtype::I64,
            Kind::Int => safetensors::Dtype::I32,
            Kind::Int16 => safetensors::Dtype::I16,
            Kind::Int8 => safetensors::Dtype::I8,
            Kind::Uint8 => safetensors::Dtype::U8,
            Kind::Bool => safetensors::Dtype::BOOL,
            k => return Err(Error::Model(format!("tensor `{name}`: cannot save kind {k:?}"))),
        };
        let shape: Vec<usize> = t.size().iter().map(|&s| s as usize).collect();
        let numel = t.numel();
        let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        if numel > 0 {
            t.f_copy_data_u8(&mut data, numel)?;
        }
        owned.push((name.clone(), dtype, shape, data));
    }
    let mut views = Vec::with_capacity(owned.len());
    for (name, dtype, shape, data) in &owned {
        let v = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).map_err(|e| bad(path, e.to_string()))?;
        views.push((name.clone(), v));
    }
    let bytes = safetensors::serialize(views, None).map_err(|e| bad(path, e.to_string()))?;
    crate::fsx::atomic_write(path, &bytes)
}
