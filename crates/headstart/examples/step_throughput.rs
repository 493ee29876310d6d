//! Training-step throughput of headstart's fine-tuning path (used by bench/finetune/run.sh).
//!
//! `cargo run --release --example step_throughput -- MODEL full|last STEPS [BATCH] [fp32|bf16]`
//! Random weights and inputs (throughput does not depend on them); AdamW; frozen stages run
//! in eval mode without autograd. Prints one JSON line.

use std::time::Instant;

use headstart::engine::{autocast_cpu, Precision};
use headstart::models::{registry, Mode, Model};
use headstart::train::finetune::apply_freeze;
use headstart::train::optim::{no_decay, Group, OptimKind, Optimizer};
use tch::{Kind, Reduction, Tensor};

fn main() {
    headstart::engine::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let (name, mode, steps) = (&args[1], &args[2], args[3].parse::<usize>().unwrap());
    let batch: i64 = args.get(4).map(|b| b.parse().unwrap()).unwrap_or(32);
    let precision = if args.get(5).map(String::as_str) == Some("bf16") { Precision::Bf16 } else { Precision::Fp32 };
    let entry = registry::find(name).expect("registry model");
    tch::manual_seed(0);
    let model = Model::build(&entry.arch, 3, Some(1000)).unwrap();
    let n = model.backbone.stages().len();
    let first = if mode == "last" { n - 1 } else { 0 };
    let freeze = apply_freeze(&model, first);
    let (decay, plain): (Vec<_>, Vec<_>) = freeze.trainable.iter().map(|(_, n, t)| (n.clone(), t.shallow_clone())).partition(|(_, t)| !no_decay(t));
    let mut opt = Optimizer::new(
        OptimKind::adamw(),
        vec![
            Group { name: "decay".into(), params: decay, lr_mult: 1.0, weight_decay: 0.01 },
            Group { name: "no_decay".into(), params: plain, lr_mult: 1.0, weight_decay: 0.0 },
        ],
    );
    let head = model.head.as_ref().unwrap();
    let x = Tensor::randn([batch, 3, 224, 224], tch::kind::FLOAT_CPU);
    let y = Tensor::randint(1000, [batch], (Kind::Int64, tch::Device::Cpu));
    let mut times = vec![];
    for _ in 0..steps + 2 {
        let t = Instant::now();
        let logits = autocast_cpu(precision, || {
            let h = tch::no_grad(|| model.backbone.forward_range(0..first, &x, Mode::Eval));
            let f = model.backbone.pool(&model.backbone.forward_range(first..n, &h, Mode::Train));
            f.dropout(head.dropout, true).apply(&head.linear)
        })
        .to_kind(Kind::Float);
        let loss = logits.cross_entropy_loss::<&Tensor>(&y, None, Reduction::Mean, -100, 0.0);
        opt.zero_grad();
        opt.backward(&loss).unwrap();
        opt.step(1e-4).unwrap();
        times.push(t.elapsed().as_secs_f64());
    }
    let timed = &times[2..];
    let mean = timed.iter().sum::<f64>() / timed.len() as f64;
    println!(
        "{}",
        serde_json::json!({"tool": "headstart", "model": name, "mode": mode, "precision": format!("{precision:?}").to_lowercase(), "batch": batch, "steps": steps, "s_per_step": mean, "images_per_s": batch as f64 / mean})
    );
}
