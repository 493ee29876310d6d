//! The Hugging Face hub cache layout:
//! `<cache>/models--{org}--{name}/refs/{revision}` holds a commit hash and
//! `<cache>/models--{org}--{name}/snapshots/{hash}/` holds the files.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The hub cache directory: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

fn valid_repo_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('/').collect();
    !parts.is_empty()
        && parts.len() <= 2
        && parts.iter().all(|p| !p.is_empty() && *p != "." && *p != ".." && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
}

/// Resolves `repo_id` at `revision` (a branch, tag or commit hash) to its snapshot directory.
pub fn resolve_snapshot(cache: &Path, repo_id: &str, revision: &str) -> Result<PathBuf> {
    if !valid_repo_id(repo_id) {
        return Err(Error::Model(format!("`{repo_id}` is not a valid hub repo id (expected org/name)")));
    }
    let repo = cache.join(format!("models--{}", repo_id.replace('/', "--")));
    if !repo.is_dir() {
        return Err(Error::Model(format!("{repo_id} is not in the hub cache {}", cache.display())));
    }
    let is_hash = revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit());
    let commit = if is_hash {
        revision.to_string()
    } else {
        if revision.contains("..") || revision.starts_with('/') {
            return Err(Error::Model(format!("invalid revision `{revision}`")));
        }
        let r = repo.join("refs").join(revision);
        let text = std::fs::read_to_string(&r).map_err(|e| Error::io(&r, e))?;
        let c = text.trim().to_string();
        if !(c.len() == 40 && c.chars().all(|c| c.is_ascii_hexdigit())) {
            return Err(Error::input(&r, "does not hold a commit hash"));
        }
        c
    };
    let snap = repo.join("snapshots").join(&commit);
    if !snap.is_dir() {
        return Err(Error::Model(format!("{repo_id}@{revision}: snapshot {commit} missing from {}", repo.display())));
    }
    Ok(snap)
}
