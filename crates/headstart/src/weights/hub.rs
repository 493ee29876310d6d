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

/// Whether downloads are disabled (`HF_HUB_OFFLINE=1`).
pub fn offline() -> bool {
    matches!(std::env::var("HF_HUB_OFFLINE").as_deref(), Ok("1") | Ok("true") | Ok("TRUE") | Ok("yes"))
}

/// Tokenizer and sentence-transformers files a text model needs, fetched when present.
pub const TEXT_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
];

/// The files of a model repository that a load needs: `config.json`, the tokenizer and pooling
/// files of text models, and the weights, preferring safetensors (single or sharded) over
/// `pytorch_model.bin`.
pub fn weight_files(listing: &[String], index: impl Fn(&str) -> Result<Vec<String>>) -> Result<Vec<String>> {
    let has = |f: &str| listing.iter().any(|x| x == f);
    let mut files = vec![];
    for f in std::iter::once("config.json").chain(TEXT_FILES.iter().copied()) {
        if has(f) {
            files.push(f.to_string());
        }
    }
    for (index_name, single) in [("model.safetensors.index.json", "model.safetensors"), ("pytorch_model.bin.index.json", "pytorch_model.bin")] {
        if has(index_name) {
            files.push(index_name.to_string());
            let mut shards = index(index_name)?;
            shards.sort();
            shards.dedup();
            files.extend(shards);
            return Ok(files);
        }
        if has(single) {
            files.push(single.to_string());
            return Ok(files);
        }
    }
    Err(Error::Model("the repository has no model.safetensors, pytorch_model.bin or sharded index".into()))
}

/// Downloads `repo_id` at `revision` into the hub cache `cache` (the layout `huggingface_hub`
/// uses) from `endpoint` (default: `$HF_ENDPOINT`, else the public hub), and returns the
/// snapshot directory. Files already in the cache are not fetched again.
pub fn download(cache: &Path, repo_id: &str, revision: &str, endpoint: Option<&str>) -> Result<PathBuf> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};
    if !valid_repo_id(repo_id) {
        return Err(Error::Model(format!("`{repo_id}` is not a valid hub repo id (expected org/name)")));
    }
    if offline() {
        return Err(Error::Model(format!("{repo_id}@{revision} is not in the hub cache and HF_HUB_OFFLINE is set")));
    }
    let fail = |what: &str, e: &dyn std::fmt::Display| Error::Model(format!("downloading {repo_id}@{revision}: {what}: {e}"));
    let mut builder = ApiBuilder::from_env().with_cache_dir(cache.to_path_buf()).with_progress(false);
    if let Some(ep) = endpoint {
        builder = builder.with_endpoint(ep.trim_end_matches('/').to_string());
    }
    let api = builder.build().map_err(|e| fail("client", &e))?;
    let repo = api.repo(Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string()));
    let info = repo.info().map_err(|e| fail("listing files", &e))?;
    let listing: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let files = weight_files(&listing, |index_name| {
        let p = repo.get(index_name).map_err(|e| fail(index_name, &e))?;
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::input(&p, format!("invalid JSON: {e}")))?;
        let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::input(&p, "missing `weight_map`"))?;
        Ok(map.values().filter_map(|f| f.as_str().map(str::to_string)).collect())
    })?;
    let mut snapshot = None;
    for f in &files {
        if f.contains("..") || f.starts_with('/') {
            return Err(fail(f, &"file name escapes the repository"));
        }
        let p = repo.get(f).map_err(|e| fail(f, &e))?;
        snapshot = p.parent().map(Path::to_path_buf);
    }
    snapshot.ok_or_else(|| fail("listing files", &"nothing to download"))
}
