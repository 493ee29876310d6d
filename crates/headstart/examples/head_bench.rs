//! Head benchmark, headstart side (bench/heads/run.sh runs the scikit-learn reference beside it).
//!
//!   head_bench TRAIN_DIR TEST_DIR CACHE_DIR OUT_DIR [SEEDS] [REPEATS]
//!
//! Extracts MobileNetV2 features of both image folders (through the feature cache), writes them
//! to OUT_DIR/features.safetensors (`x_train`, `y_train`, `x_test`, `y_test`) and, for seed 0,
//! the split headstart uses and the selection it made to OUT_DIR/selection.json, so that the
//! reference fits the same rows. Then fits each head with and without the refit, for seeds
//! 0..SEEDS (other validation splits and folds), and prints one JSON object: the choice, test
//! accuracy, and for the logistic head at seed 0 the median fit time of REPEATS fits.
//! `HEADS=logistic,linear` limits the heads fitted.

use std::path::{Path, PathBuf};
use std::time::Instant;

use headstart::data::{stratified_split, Dataset};
use headstart::features::{extract, FeatureCache};
use headstart::models::{pretrained, registry, HeadInit};
use headstart::progress::Silent;
use headstart::train::{fit, stratified_folds, Fitted, HeadKind, Split, TrainConfig};
use headstart::weights::{save_safetensors, Weights};
use serde_json::json;
use tch::{Kind, Tensor};

/// Features and labels of every readable image of a class folder.
fn features(dir: &Path, classes: Option<&[String]>, cache: &Path) -> (Tensor, Tensor, Vec<String>) {
    let entry = registry::find("mobilenet_v2").expect("registered");
    let weights = Weights::open(headstart::assets::resolve_weights(entry).expect("scripts/fetch-assets mobilenet_v2")).unwrap();
    let (model, _) = pretrained(entry, &weights, 3, HeadInit::None).unwrap();
    let ds = Dataset::open(dir, classes).unwrap();
    let dim = model.backbone.num_features() as usize;
    let fc = FeatureCache::new(cache, &weights.sha256().unwrap(), &entry.input, "pooled", dim, headstart::engine::Precision::Fp32).unwrap();
    let paths: Vec<PathBuf> = ds.items.iter().map(|i| i.path.clone()).collect();
    let ex = extract(&model, &entry.input, &paths, Some(&fc), 32, &Default::default(), headstart::engine::Precision::Fp32, &Silent).unwrap();
    let y: Vec<i64> = ex.ok.iter().map(|&i| ds.items[i].label as i64).collect();
    (ex.features, Tensor::from_slice(&y), ds.classes)
}

fn rows(t: &Tensor, idx: &[usize]) -> Tensor {
    t.index_select(0, &Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>()))
}

fn test_acc(f: &Fitted, x: &Tensor, y: &Tensor) -> f64 {
    f.head.forward(x).unwrap().argmax(-1, false).eq_tensor(y).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
}

fn main() {
    headstart::engine::tune_allocator();
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 5 {
        eprintln!("usage: head_bench TRAIN_DIR TEST_DIR CACHE_DIR OUT_DIR [SEEDS] [REPEATS]");
        std::process::exit(2);
    }
    let (cache, out) = (Path::new(&a[3]), PathBuf::from(&a[4]));
    let seeds: u64 = a.get(5).map_or(1, |s| s.parse().unwrap());
    let repeats: usize = a.get(6).map_or(3, |s| s.parse().unwrap());
    std::fs::create_dir_all(&out).unwrap();
    let (x, y, classes) = features(Path::new(&a[1]), None, cache);
    let (xt, yt, _) = features(Path::new(&a[2]), Some(&classes), cache);
    let named = |n: &str, t: &Tensor| (n.to_string(), t.shallow_clone());
    save_safetensors(&out.join("features.safetensors"), &[named("x_train", &x), named("y_train", &y), named("x_test", &xt), named("y_test", &yt)]).unwrap();
    let labels: Vec<usize> = Vec::<i64>::try_from(&y).unwrap().into_iter().map(|l| l as usize).collect();
    let k = classes.len() as i64;
    let mut results = vec![];
    for seed in 0..seeds {
        let (tr, va) = stratified_split(&labels, classes.len(), 0.2, seed);
        let (xtr, ytr, xva, yva) = (rows(&x, &tr), rows(&y, &tr), rows(&x, &va), rows(&y, &va));
        for head in [HeadKind::Logistic, HeadKind::Linear, HeadKind::Mlp] {
            if std::env::var("HEADS").is_ok_and(|h| !h.contains(&format!("{head:?}").to_lowercase())) {
                continue;
            }
            for refit in [true, false] {
                let cfg = TrainConfig { head, seed, refit, epochs: 30, ..Default::default() };
                let timed = seed == 0 && head == HeadKind::Logistic;
                let mut times = vec![];
                let mut fitted = None;
                for _ in 0..if timed { repeats.max(1) } else { 1 } {
                    let t = Instant::now();
                    let f = fit(&cfg, Split { x: &xtr, y: &ytr }, Split { x: &xva, y: &yva }, k, &mut |_| {}).unwrap();
                    times.push(t.elapsed().as_secs_f64());
                    fitted = Some(f);
                }
                let f = fitted.expect("one fit");
                times.sort_by(f64::total_cmp);
                let s = &f.selection;
                if seed == 0 && head == HeadKind::Logistic && refit {
                    // The rows the reference must use: training rows then validation rows (the
                    // order `fit` sees), and each one's fold when cross-validating.
                    let order: Vec<usize> = tr.iter().chain(&va).copied().collect();
                    let yo: Vec<i64> = order.iter().map(|&r| labels[r] as i64).collect();
                    let folds = s.folds.map(|f| stratified_folds(&yo, classes.len(), f, seed));
                    let sel = json!({"order": order, "n_train": tr.len(), "method": s.method, "folds": s.folds, "fold_of": folds,
                                     "l2": f.l2, "estimate": s.estimate, "history": f.history});
                    std::fs::write(out.join("selection.json"), serde_json::to_string(&sel).unwrap()).unwrap();
                }
                results.push(json!({
                    "seed": seed, "head": head, "refit": refit, "method": s.method, "folds": s.folds,
                    "l2": f.l2, "epochs": s.epochs, "selection_estimate": s.estimate, "n_fit": s.n_fit,
                    "test_accuracy": test_acc(&f, &xt, &yt),
                    "fit_s": if timed { json!(times[times.len() / 2]) } else { json!(null) },
                    "fit_s_all": if timed { json!(times) } else { json!(null) },
                }));
            }
        }
    }
    let n = json!({"train": x.size()[0], "test": xt.size()[0], "dim": x.size()[1], "classes": k});
    println!("{}", json!({"tool": "headstart", "n": n, "threads": tch::get_num_threads(), "runs": results}));
}
