//! Class-weight resolution: `balanced` is scikit-learn's `n / (k · n_c)`, `auto` turns it on
//! only for imbalanced data, manual weights are checked against the class count.

use headstart::train::ClassWeights;

#[test]
fn balanced_weights_are_scikit_learns() {
    // sklearn.utils.class_weight.compute_class_weight("balanced") on counts 10, 30, 60.
    let w = ClassWeights::Balanced.resolve(&[10, 30, 60]).unwrap().unwrap();
    let want = [100.0 / 30.0, 100.0 / 90.0, 100.0 / 180.0];
    for (a, b) in w.iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "{w:?}");
    }
    // Weighted counts are equal across classes.
    let weighted: Vec<f64> = w.iter().zip([10.0, 30.0, 60.0]).map(|(w, n)| w * n).collect();
    assert!(weighted.iter().all(|x| (x - weighted[0]).abs() < 1e-9), "{weighted:?}");
    // A class with no examples gets weight 0, not infinity.
    assert_eq!(ClassWeights::Balanced.resolve(&[5, 0, 15]).unwrap().unwrap(), vec![20.0 / 15.0, 0.0, 20.0 / 45.0]);
}

#[test]
fn auto_weights_only_imbalanced_data() {
    assert_eq!(ClassWeights::Auto.resolve(&[10, 14, 12]).unwrap(), None, "largest/smallest 1.4 < 1.5");
    assert_eq!(ClassWeights::Auto.resolve(&[10, 15, 12]).unwrap(), ClassWeights::Balanced.resolve(&[10, 15, 12]).unwrap(), "1.5: balanced");
    // Empty classes do not count as the smallest.
    assert_eq!(ClassWeights::Auto.resolve(&[0, 10, 11]).unwrap(), None);
    assert_eq!(ClassWeights::None.resolve(&[1, 100]).unwrap(), None);
}

#[test]
fn manual_weights_must_fit_the_classes() {
    assert_eq!(ClassWeights::Manual(vec![1.0, 2.5]).resolve(&[3, 4]).unwrap(), Some(vec![1.0, 2.5]));
    for bad in [vec![1.0], vec![1.0, 2.0, 3.0], vec![1.0, -1.0], vec![f64::NAN, 1.0]] {
        let e = ClassWeights::Manual(bad.clone()).resolve(&[3, 4]).err().unwrap_or_else(|| panic!("{bad:?} accepted")).to_string();
        assert!(e.contains("for 2 classes"), "{e}");
    }
}
