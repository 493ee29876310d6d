//! One contract, every registry entry, random weights, small input: shapes, stage coverage,
//! train and eval modes, 1- and 3-channel input.

use headstart::models::{registry, Mode, Model};
use tch::Tensor;

#[test]
fn every_registry_entry_honours_the_backbone_contract() {
    tch::manual_seed(0);
    assert!(!registry::ENTRIES.is_empty());
    for entry in registry::ENTRIES {
        for in_ch in [3, 1] {
            let m = Model::build(&entry.arch, in_ch, Some(5)).unwrap();
            let vars = m.vs.variables();
            assert!(!vars.is_empty());
            // Every variable is in exactly one stage (or the head).
            let stages = m.backbone.stages();
            let mut names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
            names.dedup();
            assert_eq!(names.len(), stages.len(), "{}: duplicate stage names", entry.name);
            for name in vars.keys() {
                let n = stages.iter().filter(|s| s.contains(name)).count();
                let in_head = m.stage_of(name) == Some("head");
                assert_eq!(n + in_head as usize, 1, "{}: `{name}` is in {n} stages (head: {in_head})", entry.name);
            }
            // Each stage owns at least one variable.
            for s in stages {
                assert!(vars.keys().any(|v| s.contains(v)), "{}: stage {} is empty", entry.name, s.name);
            }
            let x = Tensor::randn([2, in_ch, 64, 64], tch::kind::FLOAT_CPU);
            for mode in [Mode::Train, Mode::Eval] {
                let f = m.backbone.forward_features(&x, mode);
                // [B, C, H, W] or [B, T, D]
                let channels = match f.dim() {
                    4 => f.size()[1],
                    3 => f.size()[2],
                    d => panic!("{}: features have {d} dimensions", entry.name),
                };
                assert_eq!(f.size()[0], 2);
                assert_eq!(channels, m.backbone.num_features(), "{}", entry.name);
                let p = m.backbone.pool(&f);
                assert_eq!(p.size(), vec![2, m.backbone.num_features()]);
                let y = m.forward(&x, mode).unwrap();
                assert_eq!(y.size(), vec![2, 5]);
                assert!(bool::try_from(y.isfinite().all()).unwrap(), "{}: non-finite output in {mode:?}", entry.name);
            }
        }
    }
}

#[test]
fn train_mode_updates_batchnorm_statistics_and_eval_does_not() {
    let entry = registry::find("resnet18").unwrap();
    let m = Model::build(&entry.arch, 3, Some(3)).unwrap();
    let rm = || m.vs.variables()["bn1.running_mean"].copy();
    let before = rm();
    let x = Tensor::randn([2, 3, 32, 32], tch::kind::FLOAT_CPU) + 1.0;
    let _ = tch::no_grad(|| m.forward(&x, Mode::Eval).unwrap());
    assert!(rm().equal(&before));
    let _ = tch::no_grad(|| m.forward(&x, Mode::Train).unwrap());
    assert!(!rm().equal(&before));
}

#[test]
fn unknown_model_names_suggest_the_nearest() {
    let e = headstart::models::unknown_model("mobilenet_v3");
    assert!(e.to_string().contains("mobilenet_v2"), "{e}");
}
