//! Labelled image datasets: a folder with one sub-folder per class (torchvision's
//! ImageFolder), or a CSV manifest of `path,label` rows. Files that cannot be used are listed
//! with their reason, never dropped silently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
pub use crate::learn::split::{stratified_split, Rng, Skip};
pub(crate) use crate::tabular::{unterminated_quote, unterminated_quote_error, CsvLines};

pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"];
/// Classes with fewer images than this get a warning.
pub const FEW_IMAGES: usize = crate::learn::split::FEW_EXAMPLES;

#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub path: PathBuf,
    pub label: usize,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub source: PathBuf,
    pub classes: Vec<String>,
    pub items: Vec<Item>,
    pub skipped: Vec<Skip>,
    pub warnings: Vec<String>,
}

/// Which files a data set of one modality takes from class folders, and what they are called.
#[derive(Debug, Clone, Copy)]
pub struct FileKind {
    pub extensions: &'static [&'static str],
    /// `image`, `audio`.
    pub noun: &'static str,
    /// `images`, `clips`.
    pub plural: &'static str,
}

impl FileKind {
    pub const IMAGE: FileKind = FileKind { extensions: IMAGE_EXTENSIONS, noun: "image", plural: "images" };

    pub fn accepts(&self, p: &Path) -> bool {
        p.extension().and_then(|e| e.to_str()).is_some_and(|e| self.extensions.contains(&e.to_ascii_lowercase().as_str()))
    }
}

impl Dataset {
    /// A class folder or a `.csv` manifest. With `classes`, labels are mapped onto that list
    /// (a bundle's), and a class it lacks is an error.
    pub fn open(path: &Path, classes: Option<&[String]>) -> Result<Dataset> {
        Self::open_kind(path, classes, FileKind::IMAGE)
    }

    /// [`Dataset::open`] for files of `kind` (class folders keep only files of its extensions).
    pub fn open_kind(path: &Path, classes: Option<&[String]>, kind: FileKind) -> Result<Dataset> {
        let mut ds = if path.is_dir() {
            Self::from_folder(path, kind)?
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
        ds.check_counts(kind)?;
        Ok(ds)
    }

    fn from_folder(dir: &Path, kind: FileKind) -> Result<Dataset> {
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
                if kind.accepts(&f) {
                    items.push(Item { path: f, label });
                } else {
                    skipped.push(Skip { path: f, reason: format!("not an {} file (unsupported extension)", kind.noun) });
                }
            }
        }
        if classes.is_empty() {
            return Err(Error::input(dir, "no class folders found (expected one sub-folder per class)"));
        }
        Ok(Dataset { source: dir.to_path_buf(), classes, items, skipped, warnings: vec![] })
    }

    /// A `path,label` manifest (RFC 4180 quoting: quote a path holding commas). An optional
    /// `path,label` header row is skipped; paths are relative to the manifest's folder.
    fn from_csv(path: &Path) -> Result<Dataset> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let (text, _) = crate::text::data::decode_utf8(path, &bytes, false)?;
        if let Some(line) = unterminated_quote(&text, b',') {
            return Err(unterminated_quote_error(path, line));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut by_name: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        let mut skipped = vec![];
        let mut rd = csv::ReaderBuilder::new().has_headers(false).flexible(true).trim(csv::Trim::All).from_reader(text.as_bytes());
        let mut lines = CsvLines::new(&text);
        for rec in rd.records() {
            let rec = rec.map_err(|e| Error::input(path, format!("line {}: {e}", e.position().map_or(0, |p| lines.line(p.byte())))))?;
            let line = rec.position().map_or(0, |p| lines.line(p.byte()));
            if rec.iter().all(str::is_empty) {
                continue;
            }
            let (p, label) = match (rec.len(), rec.get(0), rec.get(1)) {
                (2, Some(p), Some(l)) => (p, l),
                (1, ..) => return Err(Error::input(path, format!("line {line}: expected `path,label`"))),
                (n, ..) => {
                    let msg = format!("line {line}: expected 2 fields `path,label`, found {n}; quote a path that contains commas (\"a,b.jpg\",cat)");
                    return Err(Error::input(path, msg));
                }
            };
            if line == 1 && p.eq_ignore_ascii_case("path") && label.eq_ignore_ascii_case("label") {
                continue;
            }
            if p.is_empty() {
                return Err(Error::input(path, format!("line {line}: empty path")));
            }
            if label.is_empty() {
                skipped.push(Skip { path: base.join(p), reason: format!("{} line {line}: missing label", path.display()) });
                continue;
            }
            by_name.entry(label.to_string()).or_default().push(base.join(p));
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

    fn check_counts(&mut self, kind: FileKind) -> Result<()> {
        let counts = self.counts();
        for (c, name) in self.classes.iter().enumerate() {
            if counts[c] == 0 && self.source.is_dir() && self.source.join(name).is_dir() {
                return Err(Error::input(&self.source.join(name), format!("class folder holds no {}", kind.plural)));
            }
            if counts[c] > 0 && counts[c] < FEW_IMAGES {
                self.warnings.push(format!("class `{name}` has only {} {}", counts[c], kind.plural));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(body: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.csv");
        std::fs::write(&p, body).unwrap();
        (d, p)
    }

    #[test]
    fn manifest_quoted_paths_may_hold_commas_and_quotes() {
        let (d, p) = manifest(b"\xEF\xBB\xBFpath,label\r\n\"a,b.jpg\",cat\r\n\"say \"\"hi\"\".png\",\"big dog\"\r\n\r\nc.jpg,\nd.jpg , cat \n");
        let ds = Dataset::open(&p, None).unwrap();
        assert_eq!(ds.classes, vec!["big dog", "cat"]);
        let items: Vec<_> = ds.items.iter().map(|i| (i.path.strip_prefix(d.path()).unwrap().display().to_string(), i.label)).collect();
        assert_eq!(items, vec![("say \"hi\".png".to_string(), 0), ("a,b.jpg".into(), 1), ("d.jpg".into(), 1)]);
        assert_eq!(ds.skipped.len(), 1);
        assert!(ds.skipped[0].reason.ends_with("line 5: missing label"), "{:?}", ds.skipped);
    }

    #[test]
    fn manifest_unterminated_quote_and_extra_fields_name_the_line() {
        let (_d, p) = manifest(b"a.jpg,cat\nb.jpg,dog\n\"c,d.jpg,cat\ne.jpg,dog\n");
        let e = Dataset::open(&p, None).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:3: unterminated quoted field", p.display())), "{e}");
        let (_d, p) = manifest(b"a.jpg,cat\nb,c.jpg,dog\n");
        let e = Dataset::open(&p, None).unwrap_err().to_string();
        assert!(e.contains("line 2: expected 2 fields `path,label`, found 3") && e.contains("quote a path"), "{e}");
        let (_d, p) = manifest(b"a.jpg,cat\nb.jpg\n");
        let e = Dataset::open(&p, None).unwrap_err().to_string();
        assert!(e.contains("line 2: expected `path,label`"), "{e}");
        let (_d, p) = manifest(b"a.jpg,cat\n\xff.jpg,dog\n");
        let e = Dataset::open(&p, None).unwrap_err().to_string();
        assert!(e.contains("line 2: invalid UTF-8"), "{e}");
    }

    #[test]
    fn unterminated_quote_follows_csv_quoting_rules() {
        assert_eq!(unterminated_quote("a,b\n", b','), None);
        assert_eq!(unterminated_quote("a,\"b\nc\",d\n", b','), None);
        assert_eq!(unterminated_quote("a,\"b\"\"c\n", b','), Some(1));
        assert_eq!(unterminated_quote("x\r\ny\r\n\"open", b','), Some(3));
        assert_eq!(unterminated_quote("a,b\"c\n", b','), None, "a quote inside an unquoted field is literal");
        assert_eq!(unterminated_quote("\"a\"b\"\n", b','), None, "text after a closing quote is unquoted");
        assert_eq!(unterminated_quote("a\t\"b\n", b'\t'), Some(1));
    }

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
