//! Text benchmark, headstart side (bench/text/run.sh runs the Python references beside it).
//!
//!   text_bench embed MODEL_DIR CSV [fp32|bf16] sentence embeddings/s, batch 32, real lengths
//!   text_bench step MODEL_DIR CSV fp32|bf16 N  full fine-tuning steps/s at length 128, batch 16
//!
//! Prints one JSON line.

use std::time::Instant;

use headstart::engine::Precision;
use headstart::progress::Silent;
use headstart::text::data::{Columns, TextDataset};
use headstart::text::{embed, TextLearner, TextModel, TextModelOptions};
use headstart::train::finetune::{optimizer, FinetuneConfig, Learner, Unfreeze};
use tch::Reduction;

fn main() {
    headstart::engine::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let (cmd, dir, csv) = (args[1].as_str(), std::path::Path::new(&args[2]), std::path::Path::new(&args[3]));
    let ds = TextDataset::open(csv, &Columns::default(), None, false).unwrap();
    match cmd {
        "embed" => {
            let precision: Precision = args.get(4).map_or(Precision::Fp32, |p| p.parse().unwrap());
            let m = TextModel::load(dir, &TextModelOptions::default()).unwrap();
            embed(&m, &ds.texts[..64], None, None, 32, precision, &Silent).unwrap();
            let t = Instant::now();
            embed(&m, &ds.texts, None, None, 32, precision, &Silent).unwrap();
            let dt = t.elapsed().as_secs_f64();
            let v = serde_json::json!({"tool": "headstart", "what": "embed", "precision": precision.name(), "n": ds.len(), "seconds": dt, "sentences_per_s": ds.len() as f64 / dt});
            println!("{v}");
        }
        "step" => {
            let precision = if args[4] == "bf16" { Precision::Bf16 } else { Precision::Fp32 };
            let steps: usize = args[5].parse().unwrap();
            let m = TextModel::load(dir, &TextModelOptions { max_length: Some(128), ..Default::default() }).unwrap();
            // (steps + 1) batches of 16, cycling over the texts.
            let n = (steps + 1) * 16;
            let texts: Vec<String> = (0..n).map(|i| ds.texts[i % ds.len()].clone()).collect();
            let enc: Vec<Vec<_>> = m.tokenizer.encode_all(&texts, None).unwrap().into_iter().map(|e| vec![e]).collect();
            assert!(enc.iter().all(|e| e[0].ids.len() == 128), "texts shorter than 128 tokens");
            let labels: Vec<i64> = (0..n).map(|i| ds.labels[i % ds.len()] as i64).collect();
            let learner = TextLearner::new(&m, 2, &enc, &labels, Unfreeze::All, precision).unwrap();
            let cfg = FinetuneConfig { lr: 5e-5, weight_decay: 0.01, stage_lr_decay: 1.0, ..Default::default() };
            let (mut opt, _) = optimizer(&learner, &cfg);
            let mut step = |i: usize| {
                let rows: Vec<usize> = (i * 16..(i + 1) * 16).collect();
                let b = learner.batch(&rows, Some(0)).unwrap();
                let y = learner.labels().index_select(0, &tch::Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>()));
                let loss = learner.logits(&b, true).cross_entropy_loss::<&tch::Tensor>(&y, None, Reduction::Mean, -100, 0.0);
                opt.zero_grad();
                opt.backward(&loss).unwrap();
                // As the fine-tuning loop: a step with a non-finite gradient would be skipped.
                assert!(opt.grads_finite());
                opt.step(5e-5).unwrap();
            };
            step(0); // warm-up
            let t = Instant::now();
            for i in 1..=steps {
                step(i);
            }
            let dt = t.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({"tool": "headstart", "what": "step", "precision": args[4], "steps": steps, "seconds": dt, "samples_per_s": (steps * 16) as f64 / dt})
            );
        }
        _ => panic!("embed or step"),
    }
}
