//! The content-addressed feature cache, shared by every modality: a key naming everything the
//! vectors depend on (weights, preprocessing or tokenizer, layer, precision) → a directory;
//! inside it one small file per example, named by the sha256 of the example's content.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The default cache root: `$HEADSTART_CACHE`, else the user-level store
/// ([`crate::assets::home_dir`]: `$HEADSTART_HOME`, `$XDG_CACHE_HOME/headstart` or
/// `~/.cache/headstart`).
pub fn default_cache_root() -> PathBuf {
    match std::env::var_os("HEADSTART_CACHE").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => crate::assets::home_dir(),
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Features of one (weights, preprocessing, layer) combination.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    dir: PathBuf,
    dim: usize,
}

impl FeatureCache {
    /// A cache for any feature recipe: `key` must name everything the vectors depend on.
    pub fn keyed(root: &Path, key: &serde_json::Value, dim: usize) -> Result<FeatureCache> {
        let key_src = key.to_string();
        let dir = root.join("features").join(&sha256_hex(key_src.as_bytes())[..32]);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let about = dir.join("key.json");
        if !about.exists() {
            crate::fsx::atomic_write(&about, key_src.as_bytes())?;
        }
        Ok(FeatureCache { dir, dim })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(&hash[..2]).join(format!("{hash}.f32"))
    }

    /// The cached vector, if present and whole (a damaged entry reads as absent).
    pub fn get(&self, hash: &str) -> Option<Vec<f32>> {
        let bytes = std::fs::read(self.path(hash)).ok()?;
        if bytes.len() != self.dim * 4 {
            return None;
        }
        Some(bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
    }

    pub fn put(&self, hash: &str, v: &[f32]) -> Result<()> {
        let p = self.path(hash);
        let parent = p.parent().expect("has parent");
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        crate::fsx::cache_write(&p, &bytes)
    }
}
