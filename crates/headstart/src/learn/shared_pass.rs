//! Featurising a data set once across the ranks of a data-parallel run.
//!
//! Rank r of W takes the r-th contiguous slice of the examples ([`slice_of`]), featurises it
//! through its block (and the feature cache), and the ranks all-gather the results in rank
//! order. Every rank ends with the features, usable-example indices, skipped files and counts
//! that one process featurising everything gets, in the same order, having run the encoder on
//! its own slice only.
//!
//! The small per-slice record (usable indices, skipped files, counts, warnings and the feature
//! width) travels first as bytes, then the feature rows; a slice may be empty or hold no
//! usable example.

use std::ops::Range;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::split::Skip;
use super::task::{Block, Featurised};
use crate::dist::Group;
use crate::error::{Error, Result};
use crate::progress::Progress;

/// A block's examples, which can be counted and cut into slices.
pub trait Examples: Sized {
    fn count(&self) -> usize;
    /// The examples `r`, in order.
    fn slice(&self, r: Range<usize>) -> Self;
}

impl<T: Clone> Examples for Vec<T> {
    fn count(&self) -> usize {
        self.len()
    }
    fn slice(&self, r: Range<usize>) -> Self {
        self[r].to_vec()
    }
}

impl Examples for crate::blocks::text::TextData {
    fn count(&self) -> usize {
        self.texts.len()
    }
    fn slice(&self, r: Range<usize>) -> Self {
        crate::blocks::text::TextData {
            texts: self.texts[r.clone()].to_vec(),
            pairs: self.pairs.as_ref().map(|p| p[r.clone()].to_vec()),
            origins: self.origins.get(r).map(<[String]>::to_vec).unwrap_or_default(),
        }
    }
}

impl Examples for crate::export::stored::StoredRows {
    fn count(&self) -> usize {
        self.ids.len()
    }
    fn slice(&self, r: Range<usize>) -> Self {
        let features = self.features.narrow(0, r.start as i64, r.len() as i64);
        crate::export::stored::StoredRows { id_column: self.id_column.clone(), ids: self.ids[r].to_vec(), features }
    }
}

/// The examples rank `rank` of `world` featurises out of `n`: contiguous, sizes differing by
/// at most one, in rank order, together covering `0..n`.
pub fn slice_of(n: usize, world: usize, rank: usize) -> Range<usize> {
    let at = |r: usize| n * r / world.max(1);
    at(rank)..at(rank + 1)
}

/// What one rank featurised: its slice of the data, and how many of its examples the encoder
/// ran on or the cache held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RankShare {
    pub rank: usize,
    pub world: usize,
    /// The slice, `start..end` of `total` examples.
    pub start: usize,
    pub end: usize,
    pub total: usize,
    pub computed: usize,
    pub reused: usize,
}

/// One slice's record, as it travels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Part {
    /// Usable examples, indices into the whole data set.
    ok: Vec<usize>,
    /// (path bytes, reason).
    skipped: Vec<(Vec<u8>, String)>,
    computed: usize,
    reused: usize,
    warnings: Vec<String>,
    /// Width of the feature rows (`None` for an empty slice, which did not run the block).
    dim: Option<i64>,
}

impl Part {
    fn of(f: &Featurised, start: usize, ran: bool) -> Part {
        Part {
            ok: f.ok.iter().map(|i| i + start).collect(),
            skipped: f.skipped.iter().map(|s| (s.path.as_os_str().as_bytes().to_vec(), s.reason.clone())).collect(),
            computed: f.computed,
            reused: f.reused,
            warnings: f.warnings.clone(),
            dim: ran.then(|| f.features.size().get(1).copied().unwrap_or(0)),
        }
    }
}

/// Pooled features of every usable example, as [`Block::featurise`] gives them, each rank of
/// `group` running the block on its own slice only; with no group, the block on everything.
/// Returns this rank's share of the work too.
pub fn featurise<B: Block>(
    block: &B,
    model: &B::Model,
    data: &B::Data,
    group: Option<&Group>,
    progress: &dyn Progress,
) -> Result<(Featurised, Option<RankShare>)>
where
    B::Data: Examples,
{
    let Some(g) = group else {
        return Ok((block.featurise(model, data, progress)?, None));
    };
    let total = data.count();
    let r = slice_of(total, g.world, g.rank);
    let mine = if r.is_empty() { Featurised::all(0) } else { block.featurise(model, &data.slice(r.clone()), progress)? };
    let share = RankShare { rank: g.rank, world: g.world, start: r.start, end: r.end, total, computed: mine.computed, reused: mine.reused };
    let record = serde_json::to_vec(&Part::of(&mine, r.start, !r.is_empty())).map_err(|e| Error::Model(e.to_string()))?;
    let parts = g
        .all_gather_bytes(&record, "feature records all-gather")?
        .iter()
        .enumerate()
        .map(|(rank, b)| serde_json::from_slice::<Part>(b).map_err(|e| Error::Distributed(format!("rank {rank} sent an unreadable feature record: {e}"))))
        .collect::<Result<Vec<Part>>>()?;
    let dims: Vec<i64> = parts.iter().filter(|p| !p.ok.is_empty()).filter_map(|p| p.dim).collect();
    let dim = dims.first().copied().unwrap_or(0);
    if let Some(d) = dims.iter().find(|&&d| d != dim) {
        return Err(Error::Distributed(format!("ranks featurised to different widths ({dim} and {d}): every rank must load the same model")));
    }
    let rows = if mine.ok.is_empty() { Tensor::zeros([0, dim], tch::kind::FLOAT_CPU) } else { mine.features.shallow_clone() };
    let features = g.all_gather_rows(&rows, "features all-gather")?;
    Ok((merge(parts, &features, mine.timing), Some(share)))
}

/// The slices' records and rows, in rank order, as one process's [`Featurised`]: skipped files
/// sorted by path when every slice listed them so (as image extraction does), counts summed,
/// warnings that differ only in a leading count added up.
fn merge(parts: Vec<Part>, rows: &[Tensor], timing: Option<crate::learn::timings::ExtractTiming>) -> Featurised {
    let mut out = Featurised::all(0);
    out.features = Tensor::cat(rows, 0);
    out.timing = timing;
    let mut sorted = true;
    for p in parts {
        let skipped: Vec<Skip> = p.skipped.into_iter().map(|(b, reason)| Skip { path: PathBuf::from(std::ffi::OsString::from_vec(b)), reason }).collect();
        sorted &= skipped.windows(2).all(|w| w[0].path <= w[1].path);
        out.skipped.extend(skipped);
        out.ok.extend(p.ok);
        out.computed += p.computed;
        out.reused += p.reused;
        for w in p.warnings {
            add_warning(&mut out.warnings, w);
        }
    }
    if sorted {
        out.skipped.sort_by(|a, b| a.path.cmp(&b.path));
    }
    out
}

/// Adds `w` to `ws`: the same text, or the same text after a different leading count (`3
/// truncated images kept`), is merged into the one already there.
fn add_warning(ws: &mut Vec<String>, w: String) {
    let split = |s: &str| -> Option<(u64, String)> {
        let digits = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        Some((s[..digits].parse().ok()?, s[digits..].to_string()))
    };
    for old in ws.iter_mut() {
        if *old == w {
            return;
        }
        if let (Some((a, rest)), Some((b, rest2))) = (split(old), split(&w)) {
            if rest == rest2 {
                *old = format!("{}{rest}", a + b);
                return;
            }
        }
    }
    ws.push(w);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_the_data_in_rank_order() {
        for (n, world) in [(24, 2), (7, 3), (2, 4), (0, 2), (10, 1)] {
            let slices: Vec<Range<usize>> = (0..world).map(|r| slice_of(n, world, r)).collect();
            assert_eq!(slices.first().unwrap().start, 0);
            assert_eq!(slices.last().unwrap().end, n);
            assert!(slices.windows(2).all(|w| w[0].end == w[1].start), "{slices:?}");
            let (lo, hi) = (slices.iter().map(|s| s.len()).min().unwrap(), slices.iter().map(|s| s.len()).max().unwrap());
            assert!(hi - lo <= 1, "{n} over {world}: {slices:?}");
        }
        assert_eq!(slice_of(24, 2, 1), 12..24);
        assert_eq!(slice_of(7, 3, 0), 0..2);
    }

    fn featurised(ok: &[usize], rows: &[f32], skipped: &[&str], warnings: &[&str], computed: usize) -> Featurised {
        let mut f = Featurised::all(0);
        f.ok = ok.to_vec();
        f.features = Tensor::from_slice(rows).view([ok.len() as i64, 2]);
        f.skipped = skipped.iter().map(|p| Skip { path: PathBuf::from(p), reason: "bad".into() }).collect();
        f.warnings = warnings.iter().map(|w| w.to_string()).collect();
        f.computed = computed;
        f.reused = ok.len() - computed;
        f
    }

    #[test]
    fn slices_merge_into_what_one_process_gets() {
        // Examples 0..3 and 3..6; example 1 and example 4 unusable.
        let a = featurised(&[0, 2], &[0., 0., 2., 2.], &["a/1.png"], &["1 truncated images kept (grey)"], 2);
        let b = featurised(&[1, 2], &[3., 3., 5., 5.], &["a/4.png"], &["2 truncated images kept (grey)", "other"], 0);
        let parts = vec![Part::of(&a, 0, true), Part::of(&b, 3, true)];
        let back: Vec<Part> = parts.iter().map(|p| serde_json::from_slice(&serde_json::to_vec(p).unwrap()).unwrap()).collect();
        assert_eq!(back, parts);
        let m = merge(back, &[a.features.shallow_clone(), b.features.shallow_clone()], None);
        assert_eq!(m.ok, vec![0, 2, 4, 5]);
        assert_eq!(Vec::<f32>::try_from(m.features.flatten(0, -1)).unwrap(), vec![0., 0., 2., 2., 3., 3., 5., 5.]);
        assert_eq!(m.skipped.iter().map(|s| s.path.to_str().unwrap()).collect::<Vec<_>>(), ["a/1.png", "a/4.png"]);
        assert_eq!((m.computed, m.reused), (2, 2));
        assert_eq!(m.warnings, ["3 truncated images kept (grey)", "other"]);
    }

    #[test]
    fn an_empty_slice_adds_nothing_and_data_order_is_kept() {
        let a = featurised(&[0], &[1., 1.], &["z.wav", "b.wav"], &[], 1);
        let empty = Featurised::all(0);
        let parts = vec![Part::of(&a, 0, true), Part::of(&empty, 1, false)];
        assert_eq!(parts[1].dim, None);
        let m = merge(parts, &[a.features.shallow_clone(), Tensor::zeros([0, 2], tch::kind::FLOAT_CPU)], None);
        assert_eq!(m.features.size(), [1, 2]);
        // Not listed by path in the slice: the order is the block's, kept.
        assert_eq!(m.skipped.iter().map(|s| s.path.to_str().unwrap()).collect::<Vec<_>>(), ["z.wav", "b.wav"]);
    }

    #[test]
    fn text_and_stored_rows_slice_alike() {
        let t = crate::blocks::text::TextData {
            texts: vec!["a".into(), "b".into(), "c".into()],
            pairs: Some(vec!["x".into(), "y".into(), "z".into()]),
            origins: vec![],
        };
        let s = t.slice(1..3);
        assert_eq!((s.count(), s.texts, s.pairs, s.origins.len()), (2, vec!["b".to_string(), "c".into()], Some(vec!["y".to_string(), "z".into()]), 0));
        let r = crate::export::stored::StoredRows {
            id_column: "path".into(),
            ids: vec!["p".into(), "q".into()],
            features: Tensor::from_slice(&[1f32, 2., 3., 4.]).view([2, 2]),
        };
        let s = r.slice(1..2);
        assert_eq!(s.ids, ["q"]);
        assert_eq!(Vec::<f32>::try_from(s.features.flatten(0, -1)).unwrap(), [3., 4.]);
    }
}
