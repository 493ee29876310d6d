//! PyTorch `.pth` checkpoints: the zip format (PyTorch ≥ 1.6) and the legacy stream format.
//!
//! Legacy layout: pickled magic number, protocol version and system info, the state-dict
//! pickle (storages as persistent ids), a pickle listing storage keys, then per storage an
//! int64 element count followed by the raw bytes. Zip layout: `<prefix>/data.pkl` plus one
//! stored (uncompressed) entry `<prefix>/data/<key>` per storage.

use std::collections::HashMap;
use std::io::{Cursor, Read};

use super::pickle::{self, Limits, StorageRef, TensorRef, Value};
use super::{bad, check_extent, Entry, TensorInfo, WeightFile};
use crate::error::Result;

/// The legacy format's magic number 0x1950a86a20f9469cfc6c, little-endian.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

fn unpickle(wf: &WeightFile, data: &[u8], base: usize, what: &str) -> Result<(Value, usize)> {
    pickle::load(data, &Limits::default()).map_err(|e| bad(&wf.path, format!("{what}: pickle byte {}: {}", base + e.offset, e.message)))
}

/// Turns collected tensor refs into entries, given each storage's region and element count.
fn build_entries(wf: &WeightFile, tensors: Vec<(String, TensorRef)>, storages: &HashMap<String, (std::ops::Range<usize>, u64)>) -> Result<Vec<Entry>> {
    let mut entries = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let Some((region, numel)) = storages.get(&t.storage.key) else {
            return Err(bad(&wf.path, format!("tensor `{name}` refers to storage `{}`, which the file does not contain", t.storage.key)));
        };
        check_extent(&wf.path, &name, &t.shape, &t.stride, t.offset, *numel, t.storage.dtype.size())?;
        entries.push(Entry { info: TensorInfo { name, dtype: t.storage.dtype, shape: t.shape }, stride: t.stride, offset: t.offset, region: region.clone() });
    }
    Ok(entries)
}

/// Every storage a tensor refers to, with one dtype per key.
fn storage_refs(wf: &WeightFile, tensors: &[(String, TensorRef)]) -> Result<HashMap<String, StorageRef>> {
    let mut out: HashMap<String, StorageRef> = HashMap::new();
    for (name, t) in tensors {
        if let Some(prev) = out.get(&t.storage.key) {
            if prev.dtype != t.storage.dtype || prev.numel != t.storage.numel {
                return Err(bad(&wf.path, format!("tensor `{name}`: storage `{}` is declared twice with different types", t.storage.key)));
            }
        } else {
            out.insert(t.storage.key.clone(), t.storage.clone());
        }
    }
    Ok(out)
}

pub(super) fn read_legacy(wf: &mut WeightFile) -> Result<()> {
    let limits = Limits::default();
    let len = wf.map.len();
    let data: &[u8] = &wf.map;
    let mut pos = 0usize;
    let (magic, n) = unpickle(wf, data, pos, "magic number")?;
    pos += n;
    match &magic {
        Value::BigInt(b) if **b == LEGACY_MAGIC => {}
        _ => return Err(bad(&wf.path, "not a PyTorch legacy checkpoint (wrong magic number)")),
    }
    let (proto, n) = unpickle(wf, &data[pos..], pos, "protocol version")?;
    pos += n;
    if !matches!(proto, Value::Int(1001)) {
        return Err(bad(&wf.path, "unsupported legacy protocol version (expected 1001)"));
    }
    let (_sysinfo, n) = unpickle(wf, &data[pos..], pos, "system info")?;
    pos += n;
    let (root, n) = unpickle(wf, &data[pos..], pos, "state dict")?;
    pos += n;
    let tensors = pickle::collect_tensors(&root, &limits).map_err(|m| bad(&wf.path, m))?;
    drop(root);
    let (keys, n) = unpickle(wf, &data[pos..], pos, "storage key list")?;
    pos += n;
    let Value::List(keys) = &keys else { return Err(bad(&wf.path, "storage key list is not a list")) };
    let refs = storage_refs(wf, &tensors)?;
    let mut storages = HashMap::new();
    for k in keys.borrow().iter() {
        let Value::Str(k) = k else { return Err(bad(&wf.path, "storage key is not a string")) };
        let Some(r) = refs.get(&**k) else {
            return Err(bad(&wf.path, format!("storage `{k}` is listed but no tensor uses it; its element size is unknown")));
        };
        if len - pos < 8 {
            return Err(bad(&wf.path, format!("truncated at byte {pos}: storage `{k}` header missing")));
        }
        let count = u64::from_le_bytes(data[pos..pos + 8].try_into().unwrap());
        pos += 8;
        if count != r.numel {
            return Err(bad(&wf.path, format!("storage `{k}` holds {count} elements, the state dict declares {}", r.numel)));
        }
        let bytes = count
            .checked_mul(r.dtype.size())
            .filter(|&b| b <= (len - pos) as u64)
            .ok_or_else(|| bad(&wf.path, format!("storage `{k}` declares {count} elements, more than the {} bytes left in the file", len - pos)))?
            as usize;
        storages.insert(k.to_string(), (pos..pos + bytes, count));
        pos += bytes;
    }
    wf.entries = build_entries(wf, tensors, &storages)?;
    Ok(())
}

pub(super) fn read_zip(wf: &mut WeightFile) -> Result<()> {
    let limits = Limits::default();
    let file_len = wf.map.len() as u64;
    let mut zip = zip::ZipArchive::new(Cursor::new(&wf.map[..])).map_err(|e| bad(&wf.path, format!("zip: {e}")))?;
    let mut names = HashMap::new();
    for i in 0..zip.len() {
        let f = zip.by_index_raw(i).map_err(|e| bad(&wf.path, format!("zip entry {i}: {e}")))?;
        let name = f.name().map_err(|e| bad(&wf.path, format!("zip entry {i}: {e}")))?.to_string();
        names.insert(name, i);
    }
    let pkl = names.keys().filter(|n| n.ends_with("/data.pkl") || *n == "data.pkl").cloned().collect::<Vec<_>>();
    let [pkl] = pkl.as_slice() else {
        return Err(bad(&wf.path, format!("zip holds {} data.pkl entries, expected one (is this a PyTorch checkpoint?)", pkl.len())));
    };
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    if let Some(&i) = names.get(&format!("{prefix}byteorder")) {
        let mut f = zip.by_index(i).map_err(|e| bad(&wf.path, format!("zip: {e}")))?;
        let mut s = String::new();
        f.by_ref().take(16).read_to_string(&mut s).map_err(|e| bad(&wf.path, format!("byteorder: {e}")))?;
        if s.trim() != "little" {
            return Err(bad(&wf.path, format!("big-endian checkpoints are not supported (byteorder `{}`)", s.trim())));
        }
    }
    let pkl_bytes = {
        let f = zip.by_index(names[pkl]).map_err(|e| bad(&wf.path, format!("{pkl}: {e}")))?;
        if f.size() > file_len.saturating_mul(4) {
            return Err(bad(&wf.path, format!("{pkl} declares {} bytes, implausible for a {file_len}-byte file", f.size())));
        }
        let mut buf = Vec::with_capacity(f.size() as usize);
        f.take(file_len.saturating_mul(4)).read_to_end(&mut buf).map_err(|e| bad(&wf.path, format!("{pkl}: {e}")))?;
        buf
    };
    let (root, _) = pickle::load(&pkl_bytes, &limits).map_err(|e| bad(&wf.path, format!("{pkl}: {e}")))?;
    let tensors = pickle::collect_tensors(&root, &limits).map_err(|m| bad(&wf.path, m))?;
    drop(root);
    let refs = storage_refs(wf, &tensors)?;
    let mut storages = HashMap::new();
    for (key, r) in refs {
        let entry = format!("{prefix}data/{key}");
        let Some(&i) = names.get(&entry) else {
            return Err(bad(&wf.path, format!("storage entry `{entry}` is missing")));
        };
        let f = zip.by_index(i).map_err(|e| bad(&wf.path, format!("{entry}: {e}")))?;
        let need = r.numel.checked_mul(r.dtype.size()).ok_or_else(|| bad(&wf.path, format!("{entry}: size overflows")))?;
        if f.size() < need {
            return Err(bad(&wf.path, format!("{entry} holds {} bytes, its tensors need {need}", f.size())));
        }
        if f.compression() != zip::CompressionMethod::Stored {
            return Err(bad(&wf.path, format!("{entry} is compressed; PyTorch never writes compressed storages")));
        }
        let start = f.data_start().ok_or_else(|| bad(&wf.path, format!("{entry}: data offset unknown")))?;
        if start.checked_add(need).is_none_or(|end| end > file_len) {
            return Err(bad(&wf.path, format!("{entry} runs past the end of the file")));
        }
        storages.insert(key, (start as usize..(start + need) as usize, r.numel));
    }
    wf.entries = build_entries(wf, tensors, &storages)?;
    Ok(())
}
