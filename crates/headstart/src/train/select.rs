//! How a head's setting (the logistic head's L2 strength, the linear and MLP heads' epoch count)
//! is chosen, and what the run reports about the choice: the validation split, or k-fold
//! stratified cross-validation over every labelled example when the split would be too small to
//! trust; then, by default, a refit of the chosen setting on all labelled examples.

use serde::{Deserialize, Serialize};

use crate::data::Rng;
use crate::error::{Error, Result};

/// Below this many validation examples in some class, [`Cv::Auto`] cross-validates instead.
pub const CV_MIN_PER_CLASS: usize = 20;
/// Folds of automatic cross-validation (fewer when the smallest class is smaller).
pub const CV_DEFAULT_FOLDS: usize = 5;

/// Which examples judge the candidate settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cv {
    /// Cross-validation (5 folds, fewer when the smallest class is smaller) when the validation
    /// split would hold fewer than [`CV_MIN_PER_CLASS`] examples of some class and a refit
    /// follows; otherwise the validation split.
    #[default]
    Auto,
    /// Always the validation split.
    Off,
    /// K-fold stratified cross-validation over every labelled example (needs the refit).
    Folds(usize),
}

impl std::str::FromStr for Cv {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Cv, String> {
        match s.trim() {
            "auto" => Ok(Cv::Auto),
            "off" | "0" => Ok(Cv::Off),
            n => match n.parse::<usize>() {
                Ok(k) if k >= 2 => Ok(Cv::Folds(k)),
                Ok(k) => Err(format!("{k} fold is not cross-validation: give 2 or more folds, `auto` or `off`")),
                Err(_) => Err(format!("`{n}` is not a number of folds, `auto` or `off`")),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The validation rows judged the candidates.
    Holdout,
    /// K-fold stratified cross-validation over every labelled example (out-of-fold predictions).
    CrossValidation,
    /// Nothing held out: the head is chosen on its training loss.
    None,
}

/// How the kept head was chosen and how good the choice looked before any refit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    pub method: Method,
    /// Folds of the cross-validation.
    pub folds: Option<usize>,
    /// Why this method, in words.
    pub reason: String,
    /// Examples whose held-out predictions judged the candidates.
    pub n_judged: usize,
    /// The selection estimate: accuracy of the chosen setting on held-out examples (validation
    /// rows, or out of fold), measured before any refit.
    pub estimate: Option<f64>,
    /// Mean cross-entropy of the same predictions.
    pub estimate_loss: Option<f64>,
    /// Whether the chosen setting was refitted on every labelled example.
    pub refit: bool,
    /// Examples the kept head was fitted on.
    pub n_fit: usize,
    /// The chosen L2 strength (logistic head).
    pub l2: Option<f64>,
    /// The chosen epoch count (linear and MLP heads).
    pub epochs: Option<usize>,
}

impl Selection {
    /// What the estimate is, for a label: `val acc before refit`, `5-fold CV acc`, ….
    pub fn estimate_name(&self) -> String {
        let what = match (self.method, self.folds) {
            (Method::CrossValidation, Some(k)) => format!("{k}-fold CV acc"),
            _ => "val acc".to_string(),
        };
        if self.refit {
            format!("{what} before refit")
        } else {
            what
        }
    }
}

/// The selection to run: nothing held out, the validation split, or `k` folds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    None,
    Holdout,
    Folds(usize),
}

impl Plan {
    pub(crate) fn method(self) -> Method {
        match self {
            Plan::None => Method::None,
            Plan::Holdout => Method::Holdout,
            Plan::Folds(_) => Method::CrossValidation,
        }
    }
}

/// Decides the selection from the setting, whether a refit follows, and the examples per class
/// in the validation split and in all labelled data.
pub(crate) fn plan(cv: Cv, refit: bool, val_counts: &[usize], all_counts: &[usize]) -> Result<(Plan, String)> {
    let n_val: usize = val_counts.iter().sum();
    let smallest = all_counts.iter().copied().filter(|&c| c > 0).min().unwrap_or(0);
    let smallest_val = val_counts.iter().copied().min().unwrap_or(0);
    Ok(match cv {
        Cv::Folds(k) if smallest < 2 => {
            return Err(Error::Usage(format!("setting `cv` {k}: a class has a single example; cross-validation needs at least 2 per class")))
        }
        Cv::Folds(k) if k > smallest => {
            (Plan::Folds(smallest), format!("setting `cv` {k}, reduced to {smallest} folds: the smallest class has {smallest} examples"))
        }
        Cv::Folds(k) => (Plan::Folds(k), format!("setting `cv` {k}")),
        _ if n_val == 0 => (Plan::None, "no validation examples: chosen on training loss".into()),
        Cv::Off => (Plan::Holdout, "setting `cv` off".into()),
        Cv::Auto if !refit => (Plan::Holdout, "no refit: the head fitted on the training split is kept".into()),
        Cv::Auto if smallest_val >= CV_MIN_PER_CLASS => {
            (Plan::Holdout, format!("automatic: the validation split holds at least {CV_MIN_PER_CLASS} examples of every class"))
        }
        Cv::Auto if smallest < 2 => (Plan::Holdout, "automatic: a class has a single example, too few to cross-validate".into()),
        Cv::Auto => {
            let k = CV_DEFAULT_FOLDS.min(smallest);
            let why = format!("automatic: the validation split would hold {smallest_val} examples of its smallest class (fewer than {CV_MIN_PER_CLASS})");
            (Plan::Folds(k), why)
        }
    })
}

/// Seeded stratified fold of each example: every class is shuffled and dealt round the folds in
/// turn, continuing from where the previous class stopped, so each class is spread evenly and
/// the folds differ in size by at most one.
pub fn stratified_folds(labels: &[i64], num_classes: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng(seed ^ 0xc0ffee);
    let mut by_class = vec![vec![]; num_classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize].push(i);
    }
    let mut fold = vec![0; labels.len()];
    let mut next = 0;
    for mut idx in by_class {
        rng.shuffle(&mut idx);
        for i in idx {
            fold[i] = next % k.max(1);
            next += 1;
        }
    }
    fold
}

/// Examples per class of integer labels.
pub(crate) fn class_counts(y: &[i64], num_classes: usize) -> Vec<usize> {
    let mut c = vec![0; num_classes];
    for &l in y {
        c[l as usize] += 1;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_are_stratified_balanced_and_seeded() {
        let labels: Vec<i64> = (0..53).map(|i| if i < 40 { 0 } else { 1 }).collect();
        let f = stratified_folds(&labels, 2, 5, 3);
        for fold in 0..5 {
            let of = |c: i64| f.iter().zip(&labels).filter(|(&g, &l)| g == fold && l == c).count();
            assert_eq!(of(0), 8, "fold {fold}");
            assert!((2..=3).contains(&of(1)), "fold {fold}: {}", of(1));
        }
        assert_eq!(stratified_folds(&labels, 2, 5, 3), f);
        assert_ne!(stratified_folds(&labels, 2, 5, 4), f);
    }

    #[test]
    fn automatic_choice_follows_the_validation_class_sizes() {
        // 6 validation examples per class: cross-validation, 5 folds.
        assert_eq!(plan(Cv::Auto, true, &[6, 6], &[30, 30]).unwrap().0, Plan::Folds(5));
        // Smallest class of 3: 3 folds.
        assert_eq!(plan(Cv::Auto, true, &[1, 6], &[3, 30]).unwrap().0, Plan::Folds(3));
        // 20 of each: the split.
        assert_eq!(plan(Cv::Auto, true, &[20, 25], &[100, 120]).unwrap().0, Plan::Holdout);
        // No refit: the split, whatever its size; nothing held out: nothing to judge.
        assert_eq!(plan(Cv::Auto, false, &[6, 6], &[30, 30]).unwrap().0, Plan::Holdout);
        assert_eq!(plan(Cv::Auto, true, &[0, 0], &[30, 30]).unwrap().0, Plan::None);
        assert_eq!(plan(Cv::Off, true, &[6, 6], &[30, 30]).unwrap().0, Plan::Holdout);
        assert_eq!(plan(Cv::Folds(10), true, &[30, 30], &[150, 150]).unwrap().0, Plan::Folds(10));
        assert_eq!(plan(Cv::Folds(10), true, &[1, 1], &[4, 30]).unwrap().0, Plan::Folds(4));
        assert!(plan(Cv::Folds(3), true, &[0, 1], &[1, 30]).is_err());
        assert_eq!("5".parse::<Cv>(), Ok(Cv::Folds(5)));
        assert_eq!("off".parse::<Cv>(), Ok(Cv::Off));
        assert!("1".parse::<Cv>().is_err() && "five".parse::<Cv>().is_err());
    }
}
