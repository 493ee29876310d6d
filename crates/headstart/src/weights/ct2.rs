//! CTranslate2's `model.bin` (format version 6): a spec name and revision, then named
//! variables (rank, u32 dims, dtype byte, byte count, raw little-endian data), then aliases.
//!
//! Opening maps the file and validates every variable's extent before any tensor is made; a
//! short or inconsistent file is an error naming the file and the variable.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use tch::{Kind, Tensor};

use super::{bad, DType, TensorInfo};
use crate::error::{Error, Result};

struct Var {
    info: TensorInfo,
    region: std::ops::Range<usize>,
}

/// An opened CTranslate2 model file.
pub struct Ct2File {
    path: PathBuf,
    map: Mmap,
    pub spec: String,
    pub revision: u32,
    vars: Vec<Var>,
    /// `(alias, target)` pairs: names that share another variable's data.
    pub aliases: Vec<(String, String)>,
}

impl std::fmt::Debug for Ct2File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ct2File").field("path", &self.path).field("spec", &self.spec).field("variables", &self.vars.len()).finish()
    }
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize, what: &str) -> Result<std::ops::Range<usize>> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| bad(self.path, format!("truncated at byte {}: {what} needs {n} more bytes", self.pos)))?;
        let r = self.pos..end;
        self.pos = end;
        Ok(r)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        let r = self.take(1, what)?;
        Ok(self.data[r.start])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        let r = self.take(2, what)?;
        Ok(u16::from_le_bytes(self.data[r].try_into().expect("2 bytes")))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let r = self.take(4, what)?;
        Ok(u32::from_le_bytes(self.data[r].try_into().expect("4 bytes")))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u16(what)? as usize;
        let r = self.take(n, what)?;
        let bytes = &self.data[r];
        let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
        String::from_utf8(bytes.to_vec()).map_err(|_| bad(self.path, format!("{what} is not UTF-8")))
    }
}

fn dtype(code: u8) -> Option<DType> {
    Some(match code {
        0 => DType::F32,
        1 => DType::I8,
        2 => DType::I16,
        3 => DType::I32,
        4 => DType::F16,
        5 => DType::BF16,
        _ => return None,
    })
}

impl Ct2File {
    pub fn open(path: impl AsRef<Path>) -> Result<Ct2File> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        if file.metadata().map_err(|e| Error::io(path, e))?.len() == 0 {
            return Err(bad(path, "file is empty"));
        }
        // SAFETY: read-only map of a file this process does not modify.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let mut c = Cursor { data: &map, pos: 0, path };
        let version = c.u32("format version")?;
        if version != 6 {
            return Err(bad(path, format!("CTranslate2 model format version {version}; only version 6 is supported")));
        }
        let spec = c.string("spec name")?;
        let revision = c.u32("spec revision")?;
        let count = c.u32("variable count")?;
        let mut vars = Vec::new();
        for i in 0..count {
            let name = c.string(&format!("name of variable {i}"))?;
            let rank = c.u8(&name)? as usize;
            if rank > super::MAX_DIMS {
                return Err(bad(path, format!("variable `{name}` has rank {rank}")));
            }
            let shape: Vec<u64> = (0..rank).map(|_| c.u32(&name).map(u64::from)).collect::<Result<_>>()?;
            let code = c.u8(&name)?;
            let dt = dtype(code).ok_or_else(|| bad(path, format!("variable `{name}`: unknown dtype code {code}")))?;
            let nbytes = c.u32(&name)? as usize;
            let info = TensorInfo { name: name.clone(), dtype: dt, shape };
            let want = info.shape.iter().try_fold(dt.size(), |n, &s| n.checked_mul(s));
            if want != Some(nbytes as u64) {
                return Err(bad(path, format!("variable `{name}` {:?} {}: {nbytes} bytes, expected {want:?}", info.shape, dt.name())));
            }
            let region = c.take(nbytes, &format!("data of `{name}`"))?;
            vars.push(Var { info, region });
        }
        let mut aliases = vec![];
        if c.pos < c.data.len() {
            for _ in 0..c.u32("alias count")? {
                let alias = c.string("alias")?;
                aliases.push((alias, c.string("alias target")?));
            }
        }
        Ok(Ct2File { path: path.to_path_buf(), map, spec, revision, vars, aliases })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn infos(&self) -> impl Iterator<Item = &TensorInfo> {
        self.vars.iter().map(|v| &v.info)
    }
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.vars.iter().find(|v| v.info.name == name).map(|v| &v.info)
    }

    /// A variable as an owned tensor of its stored dtype.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let v = self.vars.iter().find(|v| v.info.name == name).ok_or_else(|| bad(&self.path, format!("no variable `{name}`")))?;
        let shape: Vec<i64> = v.info.shape.iter().map(|&s| s as i64).collect();
        let bytes = &self.map[v.region.clone()];
        Ok(Tensor::f_from_data_size(bytes, &shape, v.info.dtype.kind())?)
    }

    /// A scalar integer variable (`encoder/num_heads`).
    pub fn int_scalar(&self, name: &str) -> Result<Option<i64>> {
        let Some(info) = self.info(name) else { return Ok(None) };
        if info.numel() != 1 || !matches!(info.dtype, DType::I8 | DType::I16 | DType::I32) {
            return Err(bad(&self.path, format!("`{name}` is not an integer scalar")));
        }
        Ok(Some(self.tensor(name)?.to_kind(Kind::Int64).int64_value(&[])))
    }
}
