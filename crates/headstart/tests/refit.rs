//! Choosing a head's setting and refitting it on every labelled example, on small synthetic
//! feature sets (no backbone).

use std::sync::Mutex;

use headstart::data::Rng;
use headstart::train::{fit, Cv, EpochRecord, Fitted, HeadKind, Method, Split, TrainConfig};
use tch::{Kind, Tensor};

/// libtorch's generator (initial weights, dropout) is global: tests that compare seeded runs
/// take turns.
static SEEDED: Mutex<()> = Mutex::new(());

/// `per_class` noisy points around each of `k` random centres in `d` dimensions (seeded), with
/// enough overlap that regularisation matters.
fn blobs(k: usize, per_class: usize, d: usize, seed: u64) -> (Tensor, Tensor) {
    let mut rng = Rng(seed);
    let mut gauss = || {
        let (u, v) = ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64, (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64);
        (-2.0 * (u + 1e-12).ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    };
    let centres: Vec<Vec<f64>> = (0..k).map(|_| (0..d).map(|_| gauss() * 1.2).collect()).collect();
    let (mut x, mut y) = (vec![], vec![]);
    for _ in 0..per_class {
        for (c, centre) in centres.iter().enumerate() {
            x.extend(centre.iter().map(|m| (m + gauss() * 1.5) as f32));
            y.push(c as i64);
        }
    }
    (Tensor::from_slice(&x).view([(k * per_class) as i64, d as i64]), Tensor::from_slice(&y))
}

/// The first `n_train` rows train, the rest validate (rows are interleaved by class).
fn split(x: &Tensor, y: &Tensor, n_train: i64) -> (Tensor, Tensor, Tensor, Tensor) {
    let n = x.size()[0];
    (x.narrow(0, 0, n_train), y.narrow(0, 0, n_train), x.narrow(0, n_train, n - n_train), y.narrow(0, n_train, n - n_train))
}

fn run(cfg: &TrainConfig, x: &Tensor, y: &Tensor, xv: &Tensor, yv: &Tensor, k: i64) -> (Fitted, Vec<EpochRecord>) {
    let mut seen = vec![];
    let f = fit(cfg, Split { x, y }, Split { x: xv, y: yv }, k, &mut |r| seen.push(r.clone())).unwrap_or_else(|e| panic!("{e}"));
    (f, seen)
}

fn tensor(f: &Fitted, name: &str) -> Tensor {
    f.head.tensors.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name}")).1.shallow_clone()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn empty(d: i64) -> (Tensor, Tensor) {
    (Tensor::zeros([0, d], tch::kind::FLOAT_CPU), Tensor::zeros([0], tch::kind::INT64_CPU))
}

#[test]
fn logistic_refit_is_the_lbfgs_fit_on_all_examples_with_the_chosen_l2() {
    let _turn = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    let (x, y) = blobs(3, 60, 6, 1);
    let (xt, yt, xv, yv) = split(&x, &y, 120);
    let holdout = TrainConfig { cv: Cv::Off, ..Default::default() };
    let (refit, seen) = run(&holdout, &xt, &yt, &xv, &yv, 3);
    let (kept, _) = run(&TrainConfig { refit: false, ..holdout.clone() }, &xt, &yt, &xv, &yv, 3);
    // The same choice, measured the same way, whether or not a refit follows.
    assert_eq!(refit.l2, kept.l2);
    assert_eq!(refit.best_epoch, kept.best_epoch);
    assert_eq!(refit.selection.estimate, kept.selection.estimate);
    assert_eq!(refit.selection.method, Method::Holdout);
    assert_eq!((refit.selection.n_fit, kept.selection.n_fit), (180, 120));
    let l2 = refit.l2.unwrap();
    assert!(l2 > 1e-6, "chose the weakest strength {l2}: the data should need regularisation");
    // The refit saw every example and changed the head.
    let last = seen.last().unwrap();
    assert_eq!((last.phase.as_deref(), last.n, last.l2), (Some("refit"), Some(180), Some(l2)));
    assert_eq!(last.selection_estimate, refit.selection.estimate);
    assert!(max_diff(&tensor(&refit, "weight"), &tensor(&kept, "weight")) > 1e-3);
    // It is the minimiser an independent cold-started fit on all 180 examples finds.
    let (ex, ey) = empty(6);
    let fixed = TrainConfig { l2: Some(l2), refit: false, ..holdout.clone() };
    let (all, _) = run(&fixed, &x, &y, &ex, &ey, 3);
    assert_eq!(all.selection.n_fit, 180);
    let scale = tensor(&all, "weight").abs().max().double_value(&[]);
    for name in ["weight", "bias"] {
        let d = max_diff(&tensor(&refit, name), &tensor(&all, name));
        assert!(d < 1e-3 * scale.max(1.0), "{name} differs by {d}");
    }
    // The head kept without a refit is the fit on the 120 training rows alone.
    let (train_only, _) = run(&fixed, &xt, &yt, &ex, &ey, 3);
    let d = max_diff(&tensor(&kept, "weight"), &tensor(&train_only, "weight"));
    assert!(d < 1e-3 * scale.max(1.0), "kept head differs from the training-split fit by {d}");
    // Without a refit the judged logits are the kept head's own on the validation rows.
    let (logits, truth) = kept.judged.as_ref().unwrap();
    assert!(logits.equal(&kept.head.forward(&xv).unwrap()) && truth.equal(&yv));
}

#[test]
fn linear_and_mlp_refit_the_chosen_epoch_count_on_all_examples_from_the_same_start() {
    let _turn = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    let (x, y) = blobs(3, 60, 6, 2);
    let (xt, yt, xv, yv) = split(&x, &y, 120);
    let (ex, ey) = empty(6);
    for head in [HeadKind::Linear, HeadKind::Mlp] {
        let cfg = TrainConfig { head, epochs: 40, patience: 3, lr: 3e-3, hidden: 16, cv: Cv::Off, seed: 4, ..Default::default() };
        let (refit, seen) = run(&cfg, &xt, &yt, &xv, &yv, 3);
        let (kept, _) = run(&TrainConfig { refit: false, ..cfg.clone() }, &xt, &yt, &xv, &yv, 3);
        assert_eq!(refit.best_epoch, kept.best_epoch, "{head:?}");
        assert_eq!(refit.selection.epochs, Some(refit.best_epoch));
        assert_eq!(refit.selection.estimate, kept.selection.estimate);
        let last = seen.last().unwrap();
        assert_eq!((last.phase.as_deref(), last.n, last.epoch), (Some("refit"), Some(180), refit.best_epoch), "{head:?}");
        // The same seeded start trained for the chosen epochs on all 180 examples: the same
        // training figures after that epoch and, when that epoch is the one it keeps, the same head.
        let (all, _) = run(&TrainConfig { epochs: refit.best_epoch, ..cfg.clone() }, &x, &y, &ex, &ey, 3);
        let at = &all.history[refit.best_epoch - 1];
        assert_eq!((last.train_loss, last.train_acc), (at.train_loss, at.train_acc), "{head:?}");
        if all.best_epoch == refit.best_epoch {
            for (n, t) in &refit.head.tensors {
                assert!(t.equal(&tensor(&all, n)), "{head:?}: {n} differs from a fit on all examples");
            }
        } else {
            assert_eq!(head, HeadKind::Mlp, "the linear head's training loss should fall every epoch at this rate");
        }
        // Without a refit: the head of the chosen epoch on the training rows.
        let (train_only, _) = run(&TrainConfig { epochs: kept.best_epoch, ..cfg.clone() }, &xt, &yt, &ex, &ey, 3);
        let at = &train_only.history[kept.best_epoch - 1];
        assert_eq!(kept.train_accuracy, at.train_acc, "{head:?}");
        if train_only.best_epoch == kept.best_epoch {
            for (n, t) in &kept.head.tensors {
                assert!(t.equal(&tensor(&train_only, n)), "{head:?}: {n} differs from the training-split fit");
            }
        }
        assert!(max_diff(&tensor(&refit, head_weight(head)), &tensor(&kept, head_weight(head))) > 1e-4);
    }
}

fn head_weight(h: HeadKind) -> &'static str {
    if h == HeadKind::Mlp {
        "fc1.weight"
    } else {
        "weight"
    }
}

#[test]
fn small_data_is_cross_validated_automatically_and_deterministically() {
    let _turn = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    // 15 per class: a 20% split holds 3 per class, so 5-fold cross-validation is used.
    let (x, y) = blobs(3, 15, 5, 3);
    let (xt, yt, xv, yv) = split(&x, &y, 36);
    for head in [HeadKind::Logistic, HeadKind::Linear] {
        let cfg = TrainConfig { head, epochs: 20, seed: 9, ..Default::default() };
        let (a, seen) = run(&cfg, &xt, &yt, &xv, &yv, 3);
        assert_eq!((a.selection.method, a.selection.folds), (Method::CrossValidation, Some(5)), "{head:?}: {}", a.selection.reason);
        assert!(a.selection.reason.contains("automatic"), "{}", a.selection.reason);
        assert_eq!((a.selection.n_judged, a.selection.n_fit), (45, 45));
        assert!(seen.iter().filter(|r| r.phase.is_none()).all(|r| r.folds == Some(5) && r.val_acc.is_some()));
        // The estimate is the out-of-fold accuracy of the chosen setting.
        let (oof, truth) = a.judged.as_ref().unwrap();
        let acc = oof.argmax(-1, false).eq_tensor(truth).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
        assert_eq!(Some(acc), a.selection.estimate);
        // Deterministic for a seed.
        let (b, seen_b) = run(&cfg, &xt, &yt, &xv, &yv, 3);
        for ((n, t), (_, u)) in a.head.tensors.iter().zip(&b.head.tensors) {
            assert!(t.equal(u), "{head:?}: {n} differs between two runs with one seed");
        }
        assert_eq!(serde_json::to_string(&seen).unwrap(), serde_json::to_string(&seen_b).unwrap());
        // Another seed deals other folds.
        let (_, seen_c) = run(&TrainConfig { seed: 10, ..cfg.clone() }, &xt, &yt, &xv, &yv, 3);
        assert_ne!(serde_json::to_string(&seen).unwrap(), serde_json::to_string(&seen_c).unwrap());
        // Without a refit there is nothing to cross-validate for: the split is used.
        let (kept, _) = run(&TrainConfig { refit: false, ..cfg.clone() }, &xt, &yt, &xv, &yv, 3);
        assert_eq!((kept.selection.method, kept.selection.n_fit, kept.selection.n_judged), (Method::Holdout, 36, 9));
    }
    // The smallest class limits the folds: 3 examples, 3 folds.
    let keep: Vec<i64> = (0..45).filter(|&i| i % 3 != 0 || i < 9).collect();
    let idx = Tensor::from_slice(&keep);
    let (xs, ys) = (x.index_select(0, &idx), y.index_select(0, &idx));
    let (a, _) = run(&TrainConfig::default(), &xs.narrow(0, 0, 24), &ys.narrow(0, 0, 24), &xs.narrow(0, 24, 9), &ys.narrow(0, 24, 9), 3);
    assert_eq!(a.selection.folds, Some(3), "{}", a.selection.reason);
}

#[test]
fn enough_validation_examples_keep_the_split_and_explicit_folds_override() {
    let _turn = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    let (x, y) = blobs(2, 100, 4, 5);
    let (xt, yt, xv, yv) = split(&x, &y, 150);
    let (a, _) = run(&TrainConfig::default(), &xt, &yt, &xv, &yv, 2);
    assert_eq!((a.selection.method, a.selection.n_judged, a.selection.n_fit), (Method::Holdout, 50, 200));
    let (b, _) = run(&TrainConfig { cv: Cv::Folds(4), ..Default::default() }, &xt, &yt, &xv, &yv, 2);
    assert_eq!((b.selection.method, b.selection.folds, b.selection.n_judged), (Method::CrossValidation, Some(4), 200));
    // Cross-validation chooses a setting to refit; without the refit it is refused.
    let e = fit(&TrainConfig { cv: Cv::Folds(4), refit: false, ..Default::default() }, Split { x: &xt, y: &yt }, Split { x: &xv, y: &yv }, 2, &mut |_| {});
    assert!(e.err().unwrap().to_string().contains("setting `cv` 4"));
    // Nothing held out: nothing to choose on, nothing to refit.
    let (ex, ey) = empty(4);
    let (c, seen) = run(&TrainConfig::default(), &x, &y, &ex, &ey, 2);
    assert_eq!((c.selection.method, c.selection.refit, c.selection.n_fit), (Method::None, false, 200));
    assert!(seen.iter().all(|r| r.phase.is_none()) && c.judged.is_none());
}
