//! The training loop's arithmetic against PyTorch: learning-rate schedules against
//! `torch.optim.lr_scheduler`, and gradient accumulation with norm clipping against a PyTorch loop
//! with `clip_grad_norm_` (references from tests/fixtures/make_train_fixtures.py).

use std::path::PathBuf;

use headstart::train::optim::{Group, OptimKind, Optimizer};
use headstart::train::schedule::{Schedule, Scheduler};
use headstart::weights::Weights;
use tch::Tensor;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

fn schedule_of(case: &serde_json::Value) -> Schedule {
    let u = |k: &str| case[k].as_u64().unwrap() as usize;
    let f = |k: &str| case[k].as_f64().unwrap();
    match case["schedule"].as_str().unwrap() {
        "warmup_cosine" => Schedule::WarmupCosine { warmup: u("warmup") },
        "linear" => Schedule::Linear { warmup: u("warmup") },
        "one_cycle" => Schedule::OneCycle { pct_start: f("pct_start"), div_factor: f("div_factor"), final_div_factor: f("final_div_factor") },
        "step" => Schedule::Step { every: u("every"), gamma: f("gamma") },
        other => panic!("unknown schedule {other} in the fixture"),
    }
}

#[test]
fn schedules_match_torch_lr_schedulers_at_every_step() {
    let golden: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("schedules.golden.json")).unwrap()).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 13, "the fixture lost cases");
    for case in cases {
        let schedule = schedule_of(case);
        let spe = case["steps_per_epoch"].as_u64().unwrap() as usize;
        let s = Scheduler::new(schedule.clone(), spe, case["epochs"].as_u64().unwrap() as usize);
        let want: Vec<f64> = case["factors"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(want.len(), s.total_steps, "{schedule:?}");
        for (step, w) in want.iter().enumerate() {
            let got = s.factor(step);
            assert!((got - w).abs() <= 1e-9 + 1e-9 * w.abs(), "{schedule:?}, {spe} steps/epoch: step {step}: {got} vs torch {w}");
        }
    }
}

#[test]
fn plateau_cuts_the_rate_as_torch_reduce_lr_on_plateau() {
    let golden: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("schedules.golden.json")).unwrap()).unwrap();
    let case = &golden["plateau"];
    let (patience, factor) = (case["patience"].as_u64().unwrap() as usize, case["factor"].as_f64().unwrap());
    let mut p = Scheduler::new(Schedule::Plateau { patience, factor }, 10, 10);
    let losses = case["losses"].as_array().unwrap();
    let want = case["factors"].as_array().unwrap();
    assert!(want.iter().any(|f| f.as_f64().unwrap() < 0.3), "the fixture never cuts twice");
    for (epoch, (l, w)) in losses.iter().zip(want).enumerate() {
        p.end_epoch(l.as_f64());
        assert_eq!(p.factor(0), w.as_f64().unwrap(), "after epoch {epoch} (loss {l})");
    }
}

fn mlp(x: &Tensor, p: &[Tensor]) -> Tensor {
    x.linear(&p[0], Some(&p[1])).tanh().linear(&p[2], Some(&p[3]))
}

#[test]
fn accumulated_clipped_adamw_steps_match_a_pytorch_loop() {
    let g = Weights::open(fixture("accumulate_clip.golden.safetensors")).unwrap();
    let t = |n: &str| g.tensor(n).unwrap();
    let (x, y) = (t("x"), t("y"));
    let cfg: Vec<i64> = Vec::try_from(t("config")).unwrap();
    let (micro, accumulate) = (cfg[0], cfg[1] as usize);
    let max_norm = t("max_norm").double_value(&[0]);
    let lrs: Vec<f64> = Vec::try_from(t("lrs")).unwrap();
    let want_norms: Vec<f64> = Vec::try_from(t("norms")).unwrap();
    let names = ["w1", "b1", "w2", "b2"];
    let ps: Vec<Tensor> = names.iter().map(|n| t(n).copy().set_requires_grad(true)).collect();
    let group = |name: &str, idx: [usize; 2], wd: f64| Group {
        name: name.into(),
        params: idx.iter().map(|&i| (names[i].to_string(), ps[i].shallow_clone())).collect(),
        lr_mult: 1.0,
        weight_decay: wd,
    };
    let mut opt = Optimizer::new(OptimKind::adamw(), vec![group("weights", [0, 2], 0.01), group("biases", [1, 3], 0.0)]);
    let n = x.size()[0];
    let batches: Vec<(i64, i64)> = (0..n).step_by(micro as usize).map(|s| (s, (s + micro).min(n))).collect();
    let (mut pending, mut norms) = (0, vec![]);
    for (bi, (s, e)) in batches.iter().enumerate() {
        let loss = mlp(&x.narrow(0, *s, e - s), &ps).cross_entropy_for_logits(&y.narrow(0, *s, e - s)) / accumulate as f64;
        opt.backward(&loss).unwrap();
        pending += 1;
        if pending == accumulate || bi == batches.len() - 1 {
            norms.push(opt.clip_grad_norm(max_norm));
            opt.step(lrs[norms.len() - 1]).unwrap();
            opt.zero_grad();
            pending = 0;
        }
    }
    assert_eq!(norms.len(), want_norms.len());
    for (i, (a, b)) in norms.iter().zip(&want_norms).enumerate() {
        assert!((a - b).abs() < 1e-5 * b.max(1.0), "step {i}: gradient norm {a} vs torch {b}");
    }
    // Every step was clipped (the norms exceed max_norm), so clipping is exercised.
    assert!(want_norms.iter().all(|&v| v > max_norm), "{want_norms:?}");
    for (name, p) in names.iter().zip(&ps) {
        let d = (p.detach() - t(&format!("final_{name}"))).abs().max().double_value(&[]);
        assert!(d < 1e-6, "{name}: max abs diff {d} from the PyTorch loop");
    }
}
