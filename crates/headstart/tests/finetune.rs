//! Fine-tuning: freezing really freezes, optimisers match torch.optim, non-finite steps are
//! skipped and then abort.

use std::path::PathBuf;

use headstart::blocks::image::{finetune, Examples};
use headstart::models::registry::{ImageInput, Interpolation, ResizeMode};
use headstart::models::vision::mobilenet::MobileNetV2Cfg;
use headstart::models::vision::Arch;
use headstart::models::Model;
use headstart::progress::Silent;
use headstart::train::finetune::{BnPolicy, FinetuneConfig, Unfreeze};
use headstart::train::optim::{Group, OptimKind, Optimizer};
use headstart::train::schedule::Schedule;
use headstart::weights::Weights;
use tch::{Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

fn tiny_input() -> ImageInput {
    ImageInput { size: 32, crop_pct: 1.0, resize_mode: ResizeMode::Squash, interpolation: Interpolation::Bilinear, mean: [0.5; 3], std: [0.25; 3] }
}

fn examples(n: usize, classes: i64) -> Examples {
    tch::manual_seed(11);
    let images = (0..n).map(|_| Tensor::randint(256, [3, 40, 36], (Kind::Uint8, tch::Device::Cpu))).collect();
    let labels = (0..n as i64).map(|i| i % classes).collect();
    Examples { images, labels, train: (0..n - 4).collect(), val: (n - 4..n).collect() }
}

fn tiny_model() -> Model {
    tch::manual_seed(1);
    Model::build(&Arch::MobileNetV2(MobileNetV2Cfg { width_mult: 0.25 }), 3, Some(3)).unwrap()
}

fn values(m: &Model) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = m.vs.variables().into_iter().map(|(n, t)| (n, t.detach().copy())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn frozen_stages_get_no_gradient_and_do_not_change() {
    let m = tiny_model();
    let before = values(&m);
    let dir = tempfile::tempdir().unwrap();
    let cfg = FinetuneConfig { unfreeze: Unfreeze::Last(2), epochs: 2, batch_size: 4, head_epochs: 0, ..Default::default() };
    let ex = examples(16, 3);
    let o = finetune(&m, &tiny_input(), &ex, &cfg, dir.path(), false, &Silent, &mut |_| {}).unwrap();
    let stages = m.backbone.stages();
    let n = stages.len();
    assert_eq!(o.freeze.first_trainable, n - 2);
    // The trainable set is exactly the parameters of the last two stages and the head.
    let mut want: Vec<String> = before
        .iter()
        .map(|(name, _)| name.clone())
        .filter(|name| !name.contains("running_") && (stages[n - 2..].iter().any(|s| s.contains(name)) || name.starts_with("classifier.")))
        .collect();
    want.sort();
    let mut got: Vec<String> = o.freeze.trainable.iter().map(|(_, n, _)| n.clone()).collect();
    got.sort();
    assert_eq!(got, want);
    let after = values(&m);
    let vars = m.vs.variables();
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        let frozen = stages[..n - 2].iter().any(|s| s.contains(name));
        if frozen {
            assert!(a.equal(b), "frozen `{name}` changed");
            assert!(!vars[name].requires_grad());
        }
    }
    // Something trainable did change, and BatchNorm statistics of frozen stages did not.
    assert!(before.iter().zip(&after).any(|((n, b), (_, a))| n.starts_with("classifier.") && !a.equal(b)));
    assert!(before.iter().zip(&after).any(|((n, b), (_, a))| n.contains("running_mean") && stages[n_last(&m)].contains(n) && !a.equal(b)));
}

fn n_last(m: &Model) -> usize {
    m.backbone.stages().len() - 1
}

#[test]
fn bn_frozen_policy_keeps_statistics_of_unfrozen_stages() {
    let m = tiny_model();
    let before = values(&m);
    let dir = tempfile::tempdir().unwrap();
    let cfg = FinetuneConfig { unfreeze: Unfreeze::All, epochs: 1, batch_size: 4, head_epochs: 0, bn: BnPolicy::Frozen, ..Default::default() };
    finetune(&m, &tiny_input(), &examples(12, 3), &cfg, dir.path(), false, &Silent, &mut |_| {}).unwrap();
    for ((n, b), (_, a)) in before.iter().zip(&values(&m)) {
        if n.contains("running_") {
            assert!(a.equal(b), "`{n}` changed under BnPolicy::Frozen");
        }
    }
}

#[test]
fn three_non_finite_steps_in_a_row_abort_without_a_checkpoint() {
    let m = tiny_model();
    let head = m.head.as_ref().unwrap();
    tch::no_grad(|| {
        let _ = head.linear.ws.shallow_clone().fill_(f64::NAN);
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = FinetuneConfig { unfreeze: Unfreeze::Last(1), epochs: 1, batch_size: 2, head_epochs: 0, ..Default::default() };
    let before = values(&m);
    let e = finetune(&m, &tiny_input(), &examples(16, 3), &cfg, dir.path(), false, &Silent, &mut |_| {}).err().expect("must abort").to_string();
    assert!(e.contains("three optimiser steps in a row"), "{e}");
    // Skipped steps changed nothing, and no checkpoint holds non-finite values.
    for ((n, b), (_, a)) in before.iter().zip(&values(&m)) {
        if !n.starts_with("classifier.") {
            assert!(a.equal(b), "`{n}` changed by a skipped step");
        }
    }
    assert!(!dir.path().join("checkpoint").exists());
}

#[test]
fn optimisers_match_torch_optim() {
    let g = Weights::open(fixture("optim.golden.safetensors")).unwrap();
    let p0 = g.tensor("p0").unwrap();
    let grads = g.tensor("grads").unwrap();
    let lrs: Vec<f64> = Vec::try_from(g.tensor("lrs").unwrap()).unwrap();
    for (name, kind) in [("adamw", OptimKind::adamw()), ("sgd", OptimKind::Sgd { momentum: 0.9, nesterov: true })] {
        let p = p0.copy().set_requires_grad(true);
        let mut opt = Optimizer::new(kind, vec![Group { name: "g".into(), params: vec![("p".into(), p.shallow_clone())], lr_mult: 1.0, weight_decay: 0.01 }]);
        for (i, lr) in lrs.iter().enumerate() {
            opt.zero_grad();
            let loss = (&p * grads.get(i as i64)).sum(Kind::Float);
            opt.backward(&loss).unwrap();
            opt.step(*lr).unwrap();
        }
        let d = (p.detach() - g.tensor(name).unwrap()).abs().max().double_value(&[]);
        assert!(d < 1e-6, "{name}: max abs diff {d} from torch.optim");
    }
}

#[test]
fn schedules_and_settings_are_validated() {
    let bad = FinetuneConfig { lr: 0.0, ..Default::default() };
    assert!(bad.validate().is_err());
    let bad = FinetuneConfig { stage_lr_decay: 1.5, ..Default::default() };
    assert!(bad.validate().is_err());
    assert!("last:0".parse::<Unfreeze>().is_err());
    assert_eq!("last:3".parse::<Unfreeze>().unwrap(), Unfreeze::Last(3));
    assert_eq!("all".parse::<Unfreeze>().unwrap(), Unfreeze::All);
    let m = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    let cfg = FinetuneConfig { unfreeze: Unfreeze::Last(99), ..Default::default() };
    let e = finetune(&m, &tiny_input(), &examples(8, 3), &cfg, dir.path(), false, &Silent, &mut |_| {}).err().unwrap().to_string();
    assert!(e.contains("last:99"), "{e}");
    for bad in [
        FinetuneConfig { accumulate: 0, ..Default::default() },
        FinetuneConfig { warmup_ratio: Some(1.0), ..Default::default() },
        FinetuneConfig { patience: Some(0), ..Default::default() },
        FinetuneConfig { weight_decay: f64::NAN, ..Default::default() },
    ] {
        assert!(bad.validate().is_err(), "{bad:?} was accepted");
    }
    assert!(FinetuneConfig { schedule: Schedule::Constant, accumulate: 4, ..Default::default() }.validate().is_ok());
}

#[test]
fn lr_find_records_a_curve_and_restores_every_weight() {
    let m = tiny_model();
    let before = values(&m);
    let cfg = FinetuneConfig { unfreeze: Unfreeze::All, batch_size: 4, ..Default::default() };
    let r = headstart::blocks::image::lr_find(&m, &tiny_input(), &examples(16, 3), &cfg, 1e-6, 1.0, 30, &Silent).unwrap();
    // The rates sweep geometrically from the minimum, one per step, until the loss runs away.
    assert!((10..=30).contains(&r.lrs.len()), "{} rates", r.lrs.len());
    assert_eq!(r.lrs.len(), r.losses.len());
    let ratio = (1.0f64 / 1e-6).powf(1.0 / 29.0);
    assert!((r.lrs[0] - 1e-6).abs() < 1e-18);
    assert!(r.lrs.windows(2).all(|w| (w[1] / w[0] - ratio).abs() < 1e-9), "{:?}", r.lrs);
    assert!(r.losses.iter().all(|l| l.is_finite()));
    // The suggestion is a tenth of the rate at the lowest smoothed loss.
    let imin = (0..r.losses.len()).min_by(|&a, &b| r.losses[a].total_cmp(&r.losses[b])).unwrap();
    assert_eq!(r.suggestion, r.lrs[imin] / 10.0);
    assert!(r.lrs.contains(&r.steepest));
    for ((n, b), (_, a)) in before.iter().zip(&values(&m)) {
        assert!(a.equal(b), "`{n}` not restored after lr-find");
    }
}

#[test]
fn bf16_autocast_fine_tuning_keeps_fp32_weights_and_finite_losses() {
    let m = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    let cfg = FinetuneConfig {
        unfreeze: Unfreeze::Last(3),
        epochs: 2,
        batch_size: 4,
        head_epochs: 0,
        precision: headstart::engine::Precision::Bf16,
        ..Default::default()
    };
    let before = values(&m);
    let mut losses = vec![];
    finetune(&m, &tiny_input(), &examples(16, 3), &cfg, dir.path(), false, &Silent, &mut |r| losses.push(r.train_loss)).unwrap();
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let after = values(&m);
    assert!(after.iter().all(|(_, t)| t.kind() == Kind::Float));
    assert!(before.iter().zip(&after).any(|((_, b), (_, a))| !a.equal(b)), "nothing trained");
}
