//! Throughput of the frozen backbone alone (used by bench/precision/run.sh).
//!
//! `cargo run --release --example extract_throughput -- MODEL STEPS [BATCH]`
//! Random weights and inputs (throughput does not depend on them); eval mode, no autograd.
//! For each layout and precision, prints one JSON line: images/s, the mean of STEPS timed
//! batches after two warm-up batches.

use std::time::Instant;

use headstart::engine::{autocast_cpu, Precision};
use headstart::models::{registry, Mode, Model};
use headstart::precision::channels_last;
use tch::Tensor;

fn main() {
    headstart::engine::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let (name, steps) = (&args[1], args[2].parse::<usize>().expect("STEPS"));
    let batch: i64 = args.get(3).map(|b| b.parse().expect("BATCH")).unwrap_or(32);
    let entry = registry::find(name).expect("a registry model");
    tch::manual_seed(0);
    let model = Model::build(&entry.arch, 3, None).unwrap();
    let x = Tensor::randn([batch, 3, entry.input.size, entry.input.size], tch::kind::FLOAT_CPU);
    for (precision, cl) in [(Precision::Fp32, false), (Precision::Fp32, true), (Precision::Bf16, false), (Precision::Bf16, true)] {
        let mut times = vec![];
        for _ in 0..steps + 2 {
            let t = Instant::now();
            let input = if cl { channels_last(&x) } else { x.shallow_clone() };
            let f = tch::no_grad(|| autocast_cpu(precision, || model.backbone.pool(&model.backbone.forward_features(&input, Mode::Eval))));
            let _ = f.to_kind(tch::Kind::Float).sum(tch::Kind::Float).double_value(&[]);
            times.push(t.elapsed().as_secs_f64());
        }
        let mean = times[2..].iter().sum::<f64>() / steps as f64;
        let layout = if cl { "channels_last" } else { "contiguous" };
        let v = serde_json::json!({"tool": "headstart", "model": name, "precision": precision.name(), "layout": layout, "batch": batch, "images_per_s": batch as f64 / mean});
        println!("{v}");
    }
}
