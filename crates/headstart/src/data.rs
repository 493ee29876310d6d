//! Labelled image datasets: a folder with one sub-folder per class (torchvision's
//! ImageFolder), or a CSV manifest of `path,label` rows. Files that cannot be used are listed
//! with their reason, never dropped silently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"];
/// Classes with fewer images than this get a warning.
pub const FEW_IMAGES: usize = 5;

#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub path: PathBuf,
    pub label: usize,
}

/// A file left out, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skip {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub source: PathBuf,
    pub classes: Vec<String>,
    pub items: Vec<Item>,
    pub skipped: Vec<Skip>,
    pub warnings: Vec<String>,
}

fn is_image(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

impl Dataset {
    /// A class folder or a `.csv` manifest. With `classes`, labels are mapped onto that list
    /// (a bundle's), and a class it lacks is an error.
    pub fn open(path: &Path, classes: Option<&[String]>) -> Result<Dataset> {
        let mut ds = if path.is_dir() {
            Self::from_folder(path)?
        } else if path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
            Self::from_csv(path)?
        } else if path.exists() {
            return Err(Error::input(path, "expected a folder of class folders or a .csv manifest"));
        } else {
            return Err(Error::input(path, "no such file or folder"));
        };
        if let Some(fixed) = classes {
            ds.remap(fixed)?;
        }
        ds.check_counts()?;
        Ok(ds)
    }

    fn from_folder(dir: &Path) -> Result<Dataset> {
        let mut classes = vec![];
        let mut skipped = vec![];
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut dirs = vec![];
        for e in entries {
            let e = e.map_err(|e| Error::io(dir, e))?;
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                skipped.push(Skip { path: p, reason: "file at the top level, outside any class folder".into() });
            }
        }
        dirs.sort();
        let mut items = vec![];
        for d in dirs {
            let name = d.file_name().and_then(|n| n.to_str()).ok_or_else(|| Error::input(&d, "class folder name is not UTF-8"))?.to_string();
            let label = classes.len();
            classes.push(name);
            let mut files = vec![];
            collect_files(&d, &mut files, 0)?;
            files.sort();
            for f in files {
                if is_image(&f) {
                    items.push(Item { path: f, label });
                } else {
                    skipped.push(Skip { path: f, reason: "not an image file (unsupported extension)".into() });
                }
            }
        }
        if classes.is_empty() {
            return Err(Error::input(dir, "no class folders found (expected one sub-folder per class)"));
        }
        Ok(Dataset { source: dir.to_path_buf(), classes, items, skipped, warnings: vec![] })
    }

    fn from_csv(path: &Path) -> Result<Dataset> {
        let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let text = String::from_utf8(text).map_err(|e| Error::input(path, format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to())))?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let base = path.parent().unwrap_or(Path::new("."));
        let mut by_name: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        let mut skipped = vec![];
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let Some((p, label)) = line.rsplit_once(',') else {
                return Err(Error::input(path, format!("line {}: expected `path,label`", i + 1)));
            };
            let (p, label) = (unquote(p.trim()), unquote(label.trim()));
            if i == 0 && p.eq_ignore_ascii_case("path") && label.eq_ignore_ascii_case("label") {
                continue;
            }
            if p.is_empty() {
                return Err(Error::input(path, format!("line {}: empty path", i + 1)));
            }
            if label.is_empty() {
                skipped.push(Skip { path: base.join(&p), reason: format!("{} line {}: missing label", path.display(), i + 1) });
                continue;
            }
            by_name.entry(label).or_default().push(base.join(p));
        }
        if by_name.is_empty() {
            return Err(Error::input(path, "no labelled rows"));
        }
        let mut classes = vec![];
        let mut items = vec![];
        for (label, paths) in by_name {
            let l = classes.len();
            classes.push(label);
            items.extend(paths.into_iter().map(|p| Item { path: p, label: l }));
        }
        Ok(Dataset { source: path.to_path_buf(), classes, items, skipped, warnings: vec![] })
    }

    /// Re-labels items onto a fixed class list.
    fn remap(&mut self, fixed: &[String]) -> Result<()> {
        let mut map = vec![];
        for c in &self.classes {
            match fixed.iter().position(|f| f == c) {
                Some(i) => map.push(i),
                None => return Err(Error::input(&self.source, format!("class `{c}` is not one of the model's classes: {}", fixed.join(", ")))),
            }
        }
        for it in &mut self.items {
            it.label = map[it.label];
        }
        self.classes = fixed.to_vec();
        Ok(())
    }

    fn check_counts(&mut self) -> Result<()> {
        let counts = self.counts();
        for (c, name) in self.classes.iter().enumerate() {
            if counts[c] == 0 && self.source.is_dir() && self.source.join(name).is_dir() {
                return Err(Error::input(&self.source.join(name), "class folder holds no images"));
            }
            if counts[c] > 0 && counts[c] < FEW_IMAGES {
                self.warnings.push(format!("class `{name}` has only {} images", counts[c]));
            }
        }
        Ok(())
    }

    pub fn counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.classes.len()];
        for it in &self.items {
            c[it.label] += 1;
        }
        c
    }
}

fn unquote(s: &str) -> String {
    s.strip_prefix('"').and_then(|x| x.strip_suffix('"')).unwrap_or(s).replace("\"\"", "\"")
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> Result<()> {
    if depth > 16 {
        return Ok(());
    }
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        if p.is_dir() {
            collect_files(&p, out, depth + 1)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// A small deterministic generator (SplitMix64) for splits and shuffles.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// Seeded stratified split: per class, `round(n · frac)` items (at least one when the class
/// has two or more) go to validation. Returns (train, val) indices into `labels`.
pub fn stratified_split(labels: &[usize], num_classes: usize, frac: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut rng = Rng(seed);
    let mut by_class = vec![vec![]; num_classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l].push(i);
    }
    let (mut train, mut val) = (vec![], vec![]);
    for mut idx in by_class {
        rng.shuffle(&mut idx);
        let mut k = (idx.len() as f64 * frac).round() as usize;
        if k == 0 && idx.len() >= 2 && frac > 0.0 {
            k = 1;
        }
        val.extend_from_slice(&idx[..k]);
        train.extend_from_slice(&idx[k..]);
    }
    train.sort();
    val.sort();
    (train, val)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_stratified_seeded_and_disjoint() {
        let labels: Vec<usize> = (0..100).map(|i| if i < 80 { 0 } else { 1 }).collect();
        let (t, v) = stratified_split(&labels, 2, 0.25, 7);
        assert_eq!(v.iter().filter(|&&i| labels[i] == 0).count(), 20);
        assert_eq!(v.iter().filter(|&&i| labels[i] == 1).count(), 5);
        assert_eq!(t.len() + v.len(), 100);
        assert!(t.iter().all(|i| !v.contains(i)));
        assert_eq!(stratified_split(&labels, 2, 0.25, 7), (t.clone(), v.clone()));
        assert_ne!(stratified_split(&labels, 2, 0.25, 8).1, v);
    }
}
