//! Loading a weight set into a model's variables, with a full account of what happened.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use tch::nn::VarStore;

use super::Weights;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize)]
pub struct Missing {
    pub name: String,
    pub shape: Vec<i64>,
    /// The closest checkpoint key that went unused, to spot renamings.
    pub nearest: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    pub name: String,
    pub expected: Vec<i64>,
    pub found: Vec<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Note {
    pub name: String,
    pub why: String,
}

/// What a load did with every tensor on both sides.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub source: String,
    pub matched: Vec<String>,
    pub missing: Vec<Missing>,
    pub unexpected: Vec<String>,
    pub shape_mismatched: Vec<Mismatch>,
    /// Deliberately not loaded (a pre-trained classifier replaced by a new head).
    pub dropped: Vec<Note>,
    /// Loaded after a documented transformation (e.g. RGB conv summed for 1-channel input).
    pub adapted: Vec<Note>,
    /// Bookkeeping buffers with no model counterpart (`num_batches_tracked`).
    pub ignored: Vec<String>,
    /// Model variables of a new head, freshly initialised on purpose.
    pub initialised: Vec<String>,
}

impl LoadReport {
    /// Every model variable got a value of the right shape.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.shape_mismatched.is_empty()
    }

    /// Errors unless complete; the message lists the first problems with their nearest keys.
    pub fn require_complete(&self) -> Result<()> {
        if self.is_complete() {
            return Ok(());
        }
        let mut msg = format!("{}: {} missing and {} shape-mismatched tensors", self.source, self.missing.len(), self.shape_mismatched.len());
        for m in self.missing.iter().take(5) {
            msg += &format!("\n  missing `{}`{}", m.name, m.nearest.as_ref().map(|n| format!(" (nearest in file: `{n}`)")).unwrap_or_default());
        }
        for m in self.shape_mismatched.iter().take(5) {
            msg += &format!("\n  `{}`: model {:?}, file {:?}", m.name, m.expected, m.found);
        }
        Err(Error::Model(msg))
    }

    /// [`LoadReport::require_complete`], and no tensor of the file left unused either (the
    /// weights of another model load partially).
    pub fn require_exact(&self) -> Result<()> {
        self.require_complete()?;
        match self.unexpected.first() {
            None => Ok(()),
            Some(first) => {
                Err(Error::Model(format!("{}: {} unexpected tensors (first: {first}); is this the right model?", self.source, self.unexpected.len())))
            }
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "{} matched, {} missing, {} unexpected, {} shape-mismatched, {} dropped, {} adapted, {} ignored, {} initialised",
            self.matched.len(),
            self.missing.len(),
            self.unexpected.len(),
            self.shape_mismatched.len(),
            self.dropped.len(),
            self.adapted.len(),
            self.ignored.len(),
            self.initialised.len()
        )
    }
}

/// How checkpoint keys relate to model variables.
#[derive(Debug, Clone, Default)]
pub struct LoadPlan {
    /// Checkpoint key prefixes stripped before matching (e.g. `vit.` of a classification model).
    pub strip_prefixes: Vec<String>,
    /// Checkpoint keys of a pre-trained classifier that a new head replaces: never loaded.
    pub classifier: Vec<String>,
    /// The first convolution's weight: a 3-channel kernel is summed over its input channels
    /// when the model takes 1 channel.
    pub first_conv: Option<String>,
    /// Model variable prefixes of a new head: expected to be absent from the checkpoint.
    pub fresh_prefixes: Vec<String>,
    /// Checkpoint key prefixes (after stripping) deliberately not loaded, with the reason.
    pub unused: Vec<(String, String)>,
}

/// Copies every matching tensor of `weights` into `vs` and reports on all the rest.
pub fn load_into(vs: &VarStore, weights: &Weights, plan: &LoadPlan) -> Result<LoadReport> {
    let vars: BTreeMap<String, tch::Tensor> = vs.variables().into_iter().collect();
    let mut report = LoadReport { source: weights.source.display().to_string(), ..Default::default() };
    let mut filled = HashSet::new();
    let mut unused = vec![];
    for ck in weights.names() {
        let mut name = ck.as_str();
        for p in &plan.strip_prefixes {
            if let Some(rest) = name.strip_prefix(p.as_str()) {
                name = rest;
                break;
            }
        }
        let info = weights.info(ck).expect("listed name");
        if let Some((_, why)) = plan.unused.iter().find(|(p, _)| name.starts_with(p.as_str())) {
            report.dropped.push(Note { name: ck.clone(), why: why.clone() });
            continue;
        }
        if plan.classifier.iter().any(|c| c == ck || c == name) {
            report.dropped.push(Note { name: ck.clone(), why: format!("pre-trained classifier {:?}; the model has a new head", info.shape) });
            continue;
        }
        let Some(var) = vars.get(name) else {
            if name.ends_with("num_batches_tracked") {
                report.ignored.push(ck.clone());
            } else {
                report.unexpected.push(ck.clone());
                unused.push(ck.clone());
            }
            continue;
        };
        let want = var.size();
        let have: Vec<i64> = info.shape.iter().map(|&s| s as i64).collect();
        let src = weights.tensor(ck)?;
        let value = if want == have {
            report.matched.push(name.to_string());
            src
        } else if plan.first_conv.as_deref() == Some(name)
            && want.len() == 4
            && have.len() == 4
            && want[1] == 1
            && have[1] == 3
            && want[0] == have[0]
            && want[2..] == have[2..]
        {
            report.adapted.push(Note { name: name.to_string(), why: "3-channel kernel summed over input channels for 1-channel input".into() });
            src.to_kind(tch::Kind::Float).sum_dim_intlist(&[1i64][..], true, tch::Kind::Float)
        } else {
            report.shape_mismatched.push(Mismatch { name: name.to_string(), expected: want, found: info.shape.clone() });
            continue;
        };
        tch::no_grad(|| var.shallow_clone().f_copy_(&value.to_kind(var.kind()))).map_err(Error::from)?;
        filled.insert(name.to_string());
    }
    for (name, var) in &vars {
        if plan.fresh_prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            report.initialised.push(name.clone());
        } else if !filled.contains(name) {
            report.missing.push(Missing { name: name.clone(), shape: var.size(), nearest: nearest(name, &unused) });
        }
    }
    Ok(report)
}

/// The candidate with the smallest edit distance, if reasonably close.
pub fn nearest(name: &str, candidates: &[String]) -> Option<String> {
    candidates.iter().map(|c| (edit_distance(name, c), c)).min().filter(|(d, _)| *d <= name.len().max(4) / 2).map(|(_, c)| c.clone())
}

pub fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let sub = prev[j - 1] + (a[i - 1] != b[j - 1]) as usize;
            cur[j] = sub.min(prev[j] + 1).min(cur[j - 1] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(nearest("features.0.weight", &["feature.0.weight".into(), "fc.bias".into()]).as_deref(), Some("feature.0.weight"));
        assert_eq!(nearest("features.0.weight", &["zzz".into()]), None);
    }
}
