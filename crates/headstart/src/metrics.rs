//! Classification metrics: accuracy, top-k, per-class precision/recall/F1, macro-F1 and the
//! confusion matrix.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub n: usize,
    pub accuracy: f64,
    pub top_k: usize,
    pub top_k_accuracy: f64,
    pub macro_f1: f64,
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

/// `ranked[i]` lists item i's classes best first (at least one).
pub fn report(labels: &[String], truth: &[usize], ranked: &[Vec<usize>], top_k: usize) -> Report {
    let k = labels.len();
    let n = truth.len();
    let mut confusion = vec![vec![0usize; k]; k];
    let mut topk_hits = 0;
    for (t, r) in truth.iter().zip(ranked) {
        confusion[*t][r[0]] += 1;
        if r.iter().take(top_k).any(|p| p == t) {
            topk_hits += 1;
        }
    }
    let correct: usize = (0..k).map(|c| confusion[c][c]).sum();
    let mut per_class = vec![];
    for c in 0..k {
        let tp = confusion[c][c] as f64;
        let predicted: usize = (0..k).map(|t| confusion[t][c]).sum();
        let support: usize = confusion[c].iter().sum();
        let precision = if predicted > 0 { tp / predicted as f64 } else { 0.0 };
        let recall = if support > 0 { tp / support as f64 } else { 0.0 };
        let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
        per_class.push(ClassMetrics { label: labels[c].clone(), precision, recall, f1, support });
    }
    // Macro-F1 over the classes present in the ground truth (as scikit-learn's `labels=`
    // default does when every class occurs).
    let present: Vec<&ClassMetrics> = per_class.iter().filter(|m| m.support > 0).collect();
    let macro_f1 = if present.is_empty() { 0.0 } else { present.iter().map(|m| m.f1).sum::<f64>() / present.len() as f64 };
    let ratio = |x: usize| if n > 0 { x as f64 / n as f64 } else { 0.0 };
    Report { n, accuracy: ratio(correct), top_k, top_k_accuracy: ratio(topk_hits), macro_f1, per_class, confusion }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_hand_computed_values() {
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        // truth a a b b c ; predicted a b b b a
        let truth = [0, 0, 1, 1, 2];
        let ranked = vec![vec![0, 1], vec![1, 0], vec![1, 2], vec![1, 0], vec![0, 1]];
        let r = report(&labels, &truth, &ranked, 2);
        assert_eq!(r.n, 5);
        assert!((r.accuracy - 0.6).abs() < 1e-12);
        assert!((r.top_k_accuracy - 0.8).abs() < 1e-12);
        assert_eq!(r.confusion, vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]);
        // a: p=1/2 r=1/2 f=1/2; b: p=2/3 r=1 f=0.8; c: 0
        assert!((r.per_class[0].f1 - 0.5).abs() < 1e-12);
        assert!((r.per_class[1].f1 - 0.8).abs() < 1e-12);
        assert!((r.macro_f1 - 1.3 / 3.0).abs() < 1e-12);
    }
}
