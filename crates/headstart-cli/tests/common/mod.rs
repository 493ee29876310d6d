//! Helpers shared by the binary's test files (each uses some of them).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use headstart::weights::Weights;

/// Every tensor of a run's bundle (head and tuned backbone), named `file:tensor`, sorted.
pub fn bundle_tensors(run: &Path) -> Vec<(String, tch::Tensor)> {
    let mut all = vec![];
    for f in ["head.safetensors", "backbone.safetensors"] {
        let w = Weights::open(run.join("bundle").join(f)).unwrap();
        for n in w.names() {
            all.push((format!("{f}:{n}"), w.tensor(n).unwrap()));
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// The same names and bitwise-equal tensors.
pub fn assert_same(a: &[(String, tch::Tensor)], b: &[(String, tch::Tensor)]) {
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs from the uninterrupted run");
    }
}

/// Eight Fashion-MNIST images of each of three classes from `data/sample`, as a class folder.
pub fn sample_set(dir: &Path) {
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/sample");
    for c in ["Bag", "Trouser", "Sandal"] {
        std::fs::create_dir_all(dir.join(c)).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(sample.join(c)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files.iter().take(8) {
            std::fs::copy(f, dir.join(c).join(f.file_name().unwrap())).unwrap();
        }
    }
}
