//! Heads on features: fitting with selection and refit, the head-only phase before
//! fine-tuning, and the scores of a finished model.

use tch::{Kind, Tensor};

use crate::error::Result;
use crate::metrics::{self, Report};
use crate::train::{fit, Cv, EpochRecord, Fitted, Head, Selection, Split, TrainConfig};

/// A head fitted on features: the head, its chosen epoch or candidate, L2, training accuracy,
/// held-out report of the choice (before any refit) and how it was chosen.
pub struct HeadFit {
    pub head: Head,
    pub best_epoch: usize,
    pub l2: Option<f64>,
    pub train_accuracy: f64,
    pub val: Option<Report>,
    /// Logits behind `val`: on the validation rows, or on every row out of fold.
    pub judged: Option<Tensor>,
    pub selection: Selection,
}

/// Fits a head on features per `cfg` (selection, then refit) and scores it.
pub fn fit_head(cfg: &TrainConfig, classes: &[String], train: Split, val: Split, on_epoch: &mut dyn FnMut(&EpochRecord)) -> Result<HeadFit> {
    let f: Fitted = fit(cfg, train, val, classes.len() as i64, on_epoch)?;
    let (val, judged) = match f.judged {
        Some((logits, y)) if logits.size()[0] > 0 => {
            let truth: Vec<usize> = Vec::<i64>::try_from(&y)?.into_iter().map(|l| l as usize).collect();
            (Some(metrics::report(classes, &truth, &ranked(&logits)?, 5.min(classes.len()))), Some(logits))
        }
        _ => (None, None),
    };
    Ok(HeadFit { head: f.head, best_epoch: f.best_epoch, l2: f.l2, train_accuracy: f.train_accuracy, val, judged, selection: f.selection })
}

/// A head-only phase before fine-tuning: chosen on the validation split and never refitted, so
/// the validation rows stay unseen by the fine-tuning that follows.
pub fn head_phase_config(base: &TrainConfig) -> TrainConfig {
    TrainConfig { refit: false, cv: Cv::Off, ..base.clone() }
}

/// Training accuracy of the final model, and its report on the validation rows.
pub fn final_scores(classes: &[String], train_logits: &Tensor, ytr: &Tensor, val_logits: &Tensor, val_truth: &[usize]) -> Result<(f64, Option<Report>)> {
    let train_accuracy = train_logits.argmax(-1, false).eq_tensor(ytr).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
    let val = if val_truth.is_empty() { None } else { Some(metrics::report(classes, val_truth, &ranked(val_logits)?, 5.min(classes.len()))) };
    Ok((train_accuracy, val))
}

/// Class indices of each row, most probable first.
pub fn ranked(logits: &Tensor) -> Result<Vec<Vec<usize>>> {
    let k = logits.size()[1];
    let (_, idx) = logits.topk(k, -1, true, true);
    let flat: Vec<i64> = Vec::try_from(idx.flatten(0, -1))?;
    Ok(flat.chunks(k as usize).map(|r| r.iter().map(|&i| i as usize).collect()).collect())
}
