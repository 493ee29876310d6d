//! What every modality's data shares: files left out with their reason, a seeded generator,
//! and the stratified train / validation split.

use std::path::PathBuf;

use serde::Serialize;

/// Classes with fewer examples than this get a warning.
pub const FEW_EXAMPLES: usize = 5;

/// A file left out, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skip {
    pub path: PathBuf,
    pub reason: String,
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
