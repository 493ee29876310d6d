//! Labelled text: CSV, TSV or JSONL files with named text and label columns (and an optional
//! second text column for sentence pairs), or a folder with one sub-folder of `.txt` files per
//! class.
//!
//! - A UTF-8 byte-order mark is stripped. Invalid UTF-8 is an error naming the file and line,
//!   unless `lossy` is set: then each bad sequence becomes U+FFFD and they are counted.
//! - Rows with an empty text or a missing label are reported (with file and line), never
//!   dropped silently.
//! - Labels that differ only by case or surrounding whitespace (`Positive`, `positive `) get a
//!   warning: they are different classes unless the data is fixed.
//! - TSV is read without quote handling (text columns often hold bare quotes); CSV follows
//!   RFC 4180 quoting, so quoted fields may span lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::learn::split::Skip;

/// Which columns hold what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Columns {
    pub text: String,
    pub label: String,
    pub pair: Option<String>,
}

impl Default for Columns {
    fn default() -> Self {
        Columns { text: "text".into(), label: "label".into(), pair: None }
    }
}

/// One usable row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub text: String,
    pub pair: Option<String>,
    /// Raw label; `None` when the file has no label column (prediction input).
    pub label: Option<String>,
    /// `file:line` (or the file, for `.txt` folders).
    pub origin: String,
}

/// Rows read from a file or folder, plus what was left out.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    pub rows: Vec<Row>,
    pub skipped: Vec<Skip>,
    /// Invalid UTF-8 sequences replaced (only with `lossy`).
    pub replaced: usize,
}

#[derive(Debug, Clone)]
pub struct TextDataset {
    pub source: PathBuf,
    pub classes: Vec<String>,
    pub texts: Vec<String>,
    pub pairs: Option<Vec<String>>,
    pub labels: Vec<usize>,
    pub origins: Vec<String>,
    pub skipped: Vec<Skip>,
    pub warnings: Vec<String>,
}

/// Text data: a text table format, or a folder whose class folders hold mostly `.txt` files
/// (see [`crate::learn::detect`]).
pub fn is_text_data(path: &Path) -> bool {
    crate::learn::detect::detect(path, &Default::default()).modality == crate::models::registry::Modality::Text
}

/// Decodes `bytes` as UTF-8 (BOM stripped). Strict: the first bad byte is an error with its
/// line. Lossy: bad sequences become U+FFFD; returns how many.
pub fn decode_utf8(path: &Path, bytes: &[u8], lossy: bool) -> Result<(String, usize)> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok((s.to_string(), 0)),
        Err(e) if !lossy => {
            let at = e.valid_up_to();
            let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
            Err(Error::input(path, format!("line {line}: invalid UTF-8 at byte {at}; fix the encoding or replace bad bytes (setting `lossy`)")))
        }
        Err(_) => {
            let replaced = bytes.utf8_chunks().filter(|c| !c.invalid().is_empty()).count();
            Ok((String::from_utf8_lossy(bytes).into_owned(), replaced))
        }
    }
}

fn skip(origin: &str, reason: &str) -> Skip {
    Skip { path: PathBuf::from(origin), reason: reason.to_string() }
}

/// Adds a row, or a skip when the text is empty or a required label is missing.
fn push(out: &mut Rows, origin: String, text: String, pair: Option<String>, label: Option<String>, want_label: bool) {
    if text.trim().is_empty() {
        out.skipped.push(skip(&origin, "empty text"));
    } else if pair.as_deref().is_some_and(|p| p.trim().is_empty()) {
        out.skipped.push(skip(&origin, "empty second text"));
    } else if want_label && label.as_deref().is_none_or(|l| l.trim().is_empty()) {
        out.skipped.push(skip(&origin, "missing label"));
    } else {
        out.rows.push(Row { text, pair, label, origin });
    }
}

fn column(path: &Path, headers: &[String], name: &str, flag: &str) -> Result<usize> {
    headers
        .iter()
        .position(|h| h == name)
        .ok_or_else(|| Error::input(path, format!("no column `{name}` (setting `{flag}` names it); the columns are: {}", headers.join(", "))))
}

fn read_delimited(path: &Path, text: &str, tsv: bool, cols: &Columns, want_label: bool, out: &mut Rows) -> Result<()> {
    if let Some(line) = (!tsv).then(|| crate::tabular::unterminated_quote(text, b',')).flatten() {
        return Err(crate::tabular::unterminated_quote_error(path, line));
    }
    let mut rd = csv::ReaderBuilder::new().delimiter(if tsv { b'\t' } else { b',' }).quoting(!tsv).flexible(true).from_reader(text.as_bytes());
    let headers: Vec<String> = rd.headers().map_err(|e| Error::input(path, format!("header: {e}")))?.iter().map(|h| h.trim().to_string()).collect();
    let ti = column(path, &headers, &cols.text, "text_column")?;
    let li = if want_label { Some(column(path, &headers, &cols.label, "label_column")?) } else { headers.iter().position(|h| *h == cols.label) };
    let pi = cols.pair.as_deref().map(|p| column(path, &headers, p, "pair_column")).transpose()?;
    let mut lines = crate::tabular::CsvLines::new(text);
    for rec in rd.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map_or(0, |p| lines.line(p.byte()));
            Error::input(path, format!("line {line}: {e}"))
        })?;
        let line = rec.position().map_or(0, |p| lines.line(p.byte()));
        let origin = format!("{}:{line}", path.display());
        if rec.iter().all(|f| f.trim().is_empty()) {
            continue; // blank line
        }
        let get = |i: usize| rec.get(i).map(str::to_string);
        let Some(text) = get(ti) else {
            out.skipped.push(skip(&origin, &format!("row has {} fields; no `{}`", rec.len(), cols.text)));
            continue;
        };
        push(out, origin, text, pi.map(|i| get(i).unwrap_or_default()), li.and_then(get), want_label);
    }
    Ok(())
}

fn read_jsonl(path: &Path, text: &str, cols: &Columns, want_label: bool, out: &mut Rows) -> Result<()> {
    let (mut objects, mut without_text) = (0usize, 0usize);
    for (n, line) in text.lines().enumerate() {
        let origin = format!("{}:{}", path.display(), n + 1);
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::input(path, format!("line {}: invalid JSON: {e}", n + 1)))?;
        let obj = v.as_object().ok_or_else(|| Error::input(path, format!("line {}: expected a JSON object", n + 1)))?;
        let string = |key: &str| -> Result<Option<String>> {
            match obj.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(serde_json::Value::Number(x)) => Ok(Some(x.to_string())),
                Some(serde_json::Value::Bool(b)) => Ok(Some(b.to_string())),
                Some(_) => Err(Error::input(path, format!("line {}: field `{key}` must be a string or number", n + 1))),
            }
        };
        objects += 1;
        let Some(t) = string(&cols.text)? else {
            without_text += 1;
            out.skipped.push(skip(&origin, &format!("no `{}` field", cols.text)));
            continue;
        };
        let pair = match &cols.pair {
            Some(p) => Some(string(p)?.unwrap_or_default()),
            None => None,
        };
        push(out, origin, t, pair, string(&cols.label)?, want_label);
    }
    if objects > 0 && without_text == objects {
        return Err(Error::input(path, format!("no line has a `{}` field (setting `text_column` names it)", cols.text)));
    }
    Ok(())
}

fn read_txt_folder(dir: &Path, lossy: bool, out: &mut Rows) -> Result<()> {
    let mut classes: Vec<PathBuf> = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    classes.sort();
    for c in classes {
        let label = c.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&c).map_err(|e| Error::io(&c, e))?.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            if !f.is_file() {
                continue;
            }
            if !f.extension().is_some_and(|x| x.eq_ignore_ascii_case("txt")) {
                out.skipped.push(Skip { path: f.clone(), reason: "not a .txt file".into() });
                continue;
            }
            let bytes = std::fs::read(&f).map_err(|e| Error::io(&f, e))?;
            let (text, replaced) = decode_utf8(&f, &bytes, lossy)?;
            out.replaced += replaced;
            push(out, f.display().to_string(), text, None, Some(label.clone()), true);
        }
    }
    Ok(())
}

/// Reads rows from a CSV/TSV/JSONL file or a `.txt` class folder.
pub fn read_rows(path: &Path, cols: &Columns, want_label: bool, lossy: bool) -> Result<Rows> {
    let mut out = Rows::default();
    if path.is_dir() {
        read_txt_folder(path, lossy, &mut out)?;
        return Ok(out);
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (text, replaced) = decode_utf8(path, &bytes, lossy)?;
    out.replaced = replaced;
    let ext = path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "csv" => read_delimited(path, &text, false, cols, want_label, &mut out)?,
        "tsv" | "tab" => read_delimited(path, &text, true, cols, want_label, &mut out)?,
        "jsonl" | "ndjson" => read_jsonl(path, &text, cols, want_label, &mut out)?,
        _ => return Err(Error::input(path, "unknown text format: expected .csv, .tsv, .jsonl or a folder of class folders with .txt files")),
    }
    Ok(out)
}

/// Class order: numeric when every label is an integer, else lexicographic.
fn sort_labels(labels: BTreeSet<String>) -> Vec<String> {
    let mut v: Vec<String> = labels.into_iter().collect();
    if v.iter().all(|l| l.trim().parse::<i64>().is_ok()) {
        v.sort_by_key(|l| l.trim().parse::<i64>().unwrap_or(0));
    }
    v
}

impl TextDataset {
    /// Opens labelled text. With `classes` (a bundle's, or the training set's for a separate
    /// validation file), labels map onto that list and an unknown label is an error.
    pub fn open(path: &Path, cols: &Columns, classes: Option<&[String]>, lossy: bool) -> Result<TextDataset> {
        let rows = read_rows(path, cols, true, lossy)?;
        let mut warnings = vec![];
        if rows.replaced > 0 {
            warnings.push(format!("{}: {} invalid UTF-8 sequences replaced with U+FFFD", path.display(), rows.replaced));
        }
        let raw: BTreeSet<String> = rows.rows.iter().filter_map(|r| r.label.clone()).collect();
        let mut folded: BTreeMap<String, Vec<&String>> = BTreeMap::new();
        for l in &raw {
            folded.entry(l.trim().to_lowercase()).or_default().push(l);
        }
        for group in folded.values().filter(|g| g.len() > 1) {
            let names: Vec<String> = group.iter().map(|l| format!("`{l}`")).collect();
            warnings.push(format!("{}: labels {} differ only by case or whitespace and are separate classes", path.display(), names.join(", ")));
        }
        let classes: Vec<String> = match classes {
            Some(c) => c.to_vec(),
            None => sort_labels(raw),
        };
        let mut labels = vec![];
        for r in &rows.rows {
            let l = r.label.as_deref().expect("labelled rows");
            let i = classes
                .iter()
                .position(|c| c == l)
                .ok_or_else(|| Error::input(Path::new(&r.origin), format!("label `{l}` is not one of the known classes ({})", classes.join(", "))))?;
            labels.push(i);
        }
        let mut counts = vec![0usize; classes.len()];
        for &l in &labels {
            counts[l] += 1;
        }
        for (c, &n) in counts.iter().enumerate() {
            if n > 0 && n < crate::learn::split::FEW_EXAMPLES {
                warnings.push(format!("class `{}` has only {n} examples", classes[c]));
            }
        }
        let pairs = cols.pair.as_ref().map(|_| rows.rows.iter().map(|r| r.pair.clone().unwrap_or_default()).collect());
        Ok(TextDataset {
            source: path.to_path_buf(),
            classes,
            texts: rows.rows.iter().map(|r| r.text.clone()).collect(),
            pairs,
            labels,
            origins: rows.rows.iter().map(|r| r.origin.clone()).collect(),
            skipped: rows.skipped,
            warnings,
        })
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn csv_with_bom_quotes_pairs_and_reported_rows() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "a.csv",
            "\u{feff}text,other,label\n\"hello, \"\"world\"\"\nsecond line\",x,pos\n,y,neg\nfine,z,\nok,w,Pos\nbye,v,neg\n".as_bytes(),
        );
        let cols = Columns { pair: Some("other".into()), ..Default::default() };
        let ds = TextDataset::open(&p, &cols, None, false).unwrap();
        assert_eq!(ds.texts, vec!["hello, \"world\"\nsecond line", "ok", "bye"]);
        assert_eq!(ds.pairs.as_ref().unwrap(), &vec!["x".to_string(), "w".into(), "v".into()]);
        assert_eq!(ds.classes, vec!["Pos", "neg", "pos"]);
        let reasons: Vec<_> = ds.skipped.iter().map(|s| (s.path.display().to_string(), s.reason.clone())).collect();
        assert_eq!(reasons, vec![(format!("{}:4", p.display()), "empty text".into()), (format!("{}:5", p.display()), "missing label".into())]);
        assert!(ds.warnings.iter().any(|w| w.contains("`Pos`, `pos`") && w.contains("differ only by case")), "{:?}", ds.warnings);
    }

    #[test]
    fn unterminated_quote_names_the_file_and_the_line_it_opens_on() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "q.csv", b"text,label\ngood,pos\n\"fine, quoted\",neg\n\"never closed,pos\nbye,neg\nmore,pos\n");
        let e = TextDataset::open(&p, &Columns::default(), None, false).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:4: unterminated quoted field", p.display())), "{e}");
        // A quote inside an unquoted field is literal, and TSV has no quoting at all.
        let p = write(d.path(), "r.csv", b"text,label\nsay \"hi,pos\nok,neg\n");
        assert_eq!(TextDataset::open(&p, &Columns::default(), None, false).unwrap().texts, vec!["say \"hi", "ok"]);
        let p = write(d.path(), "s.tsv", b"text\tlabel\n\"open\tpos\nok\tneg\n");
        assert_eq!(TextDataset::open(&p, &Columns::default(), None, false).unwrap().texts, vec!["\"open", "ok"]);
    }

    #[test]
    fn row_origins_count_blank_lines_crlf_and_quoted_line_breaks() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "e.csv", b"text,label\r\n\r\na,pos\r\n\"b\r\nc\",neg\r\n\n\n,neg\r\nd,pos\n");
        let ds = TextDataset::open(&p, &Columns::default(), None, false).unwrap();
        let at = |l: usize| format!("{}:{l}", p.display());
        assert_eq!(ds.origins, vec![at(3), at(4), at(9)]);
        assert_eq!(ds.skipped.iter().map(|s| s.path.display().to_string()).collect::<Vec<_>>(), vec![at(8)]);
        let p = write(d.path(), "f.tsv", b"text\tlabel\n\na\tpos\n\n\nb\tneg\n");
        let at = |l: usize| format!("{}:{l}", p.display());
        assert_eq!(TextDataset::open(&p, &Columns::default(), None, false).unwrap().origins, vec![at(3), at(6)]);
    }

    #[test]
    fn invalid_utf8_names_the_line_or_is_replaced_and_counted() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "b.tsv", b"text\tlabel\ngood\t1\nbad \xff\xfe here\t0\n");
        let e = TextDataset::open(&p, &Columns::default(), None, false).unwrap_err().to_string();
        assert!(e.contains("b.tsv") && e.contains("line 3") && e.contains("setting `lossy`"), "{e}");
        let ds = TextDataset::open(&p, &Columns::default(), None, true).unwrap();
        assert_eq!(ds.texts[1], "bad \u{fffd}\u{fffd} here");
        assert!(ds.warnings.iter().any(|w| w.contains("2 invalid UTF-8")), "{:?}", ds.warnings);
        assert_eq!(ds.classes, vec!["0", "1"]);
    }

    #[test]
    fn jsonl_txt_folders_and_column_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "c.jsonl", b"{\"sentence\": \"a\", \"y\": 1}\n\n{\"sentence\": \"b\", \"y\": 0}\n{\"sentence\": \"c\"}\nnot json\n");
        let cols = Columns { text: "sentence".into(), label: "y".into(), pair: None };
        let e = TextDataset::open(&p, &cols, None, false).unwrap_err().to_string();
        assert!(e.contains("line 5") && e.contains("invalid JSON"), "{e}");
        std::fs::write(&p, b"{\"sentence\": \"a\", \"y\": 1}\n{\"sentence\": \"b\", \"y\": 0}\n{\"sentence\": \"c\"}\n").unwrap();
        let ds = TextDataset::open(&p, &cols, None, false).unwrap();
        assert_eq!((ds.texts.len(), ds.skipped.len(), ds.labels.clone()), (2, 1, vec![1, 0]));
        let e = TextDataset::open(&p, &Columns::default(), None, false).unwrap_err().to_string();
        assert!(e.contains("no line has a `text` field") && e.contains("setting `text_column`"), "{e}");

        let root = d.path().join("folder");
        for (c, name, body) in [("neg", "1.txt", "awful"), ("pos", "2.txt", "great"), ("pos", "3.txt", "   "), ("pos", "4.md", "x")] {
            std::fs::create_dir_all(root.join(c)).unwrap();
            std::fs::write(root.join(c).join(name), body).unwrap();
        }
        assert!(is_text_data(&root));
        let ds = TextDataset::open(&root, &Columns::default(), None, false).unwrap();
        assert_eq!(
            (ds.classes.clone(), ds.texts.clone(), ds.labels.clone()),
            (vec!["neg".to_string(), "pos".into()], vec!["awful".to_string(), "great".into()], vec![0, 1])
        );
        assert_eq!(ds.skipped.len(), 2);

        let csv = write(d.path(), "d.csv", b"body,label\nx,1\n");
        let e = TextDataset::open(&csv, &Columns::default(), None, false).unwrap_err().to_string();
        assert!(e.contains("no column `text`") && e.contains("setting `text_column`") && e.contains("body, label"), "{e}");
    }
}
