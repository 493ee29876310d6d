//! Text encoders and tokenizers against `transformers` / `tokenizers` / sentence-transformers
//! (tests/fixtures/make_text_fixtures.py), and text training end to end on tiny models.

use std::path::{Path, PathBuf};

use headstart::engine::Precision;
use headstart::models::text::{Family, Pooling};
use headstart::models::Mode;
use headstart::progress::Silent;
use headstart::text::tokenizer::TextTokenizer;
use headstart::text::{embed, TextModel, TextModelOptions};
use headstart::weights::Weights;
use tch::{Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/text").join(name)
}

fn assets() -> PathBuf {
    std::env::var_os("HEADSTART_ASSETS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/assets"))
}

fn minilm() -> PathBuf {
    let d = assets().join("all-minilm-l6-v2");
    assert!(d.join("model.safetensors").is_file(), "all-MiniLM-L6-v2 missing: run scripts/fetch-assets all_minilm_l6_v2");
    d
}

const TEXTS: [&str; 4] = ["the movie was great", "not very good service, would never recommend", "café naïve 中文 👍🏽 https://example.com", "boring"];
const PAIRS: [&str; 4] = ["loved it", "slow staff", "Zürich", "the plot was awful and the acting was worse"];

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn golden(name: &str, pairs: bool) {
    let model = TextModel::load(&fixture(name), &TextModelOptions::default()).unwrap();
    let g = Weights::open(fixture(&format!("{name}.golden.safetensors"))).unwrap();
    let pairs_v = strings(&PAIRS);
    let b = model.tokenizer.batch(&strings(&TEXTS), pairs.then_some(&pairs_v[..])).unwrap();
    let mask = g.tensor("attention_mask").unwrap();
    assert_eq!(b.mask, mask, "{name}: attention mask");
    // Token ids must agree wherever the mask keeps a token (padding ids may differ).
    let ids = g.tensor("input_ids").unwrap();
    assert_eq!(b.ids.multiply(&mask), ids.multiply(&mask), "{name}: token ids");
    if let Ok(tt) = g.tensor("token_type_ids") {
        assert_eq!(b.type_ids, tt, "{name}: token types");
    }
    let h = tch::no_grad(|| model.encoder.forward(&b, Mode::Eval));
    let want = g.tensor("last_hidden_state").unwrap();
    let m = mask.unsqueeze(-1).to_kind(Kind::Float);
    let d = ((h - want) * m).abs().max().double_value(&[]);
    assert!(d < 1e-4, "{name}: max abs diff {d}");
}

#[test]
fn bert_matches_transformers_with_pairs_and_wordpiece_from_vocab_txt() {
    golden("bert_tiny", true);
}

#[test]
fn distilbert_matches_transformers_from_pytorch_model_bin() {
    golden("distilbert_tiny", false);
}

#[test]
fn roberta_matches_transformers_from_a_task_checkpoint() {
    golden("roberta_tiny", true);
    let m = TextModel::load(&fixture("roberta_tiny"), &TextModelOptions::default()).unwrap();
    assert!(m.report.dropped.iter().any(|n| n.name.starts_with("classifier.")), "{:?}", m.report.dropped);
    assert!(m.report.matched.iter().all(|n| !n.starts_with("roberta.")));
}

#[test]
fn xlm_roberta_matches_transformers_with_a_unigram_tokenizer() {
    golden("xlm_roberta_tiny", true);
}

#[test]
fn gpt2_matches_transformers_and_overrides_baked_padding_and_truncation() {
    // The fixture's tokenizer.json pads to 48 and truncates at 8; batches must be padded to
    // their longest member and truncated only at the run's maximum.
    golden("gpt2_tiny", false);
    let m = TextModel::load(&fixture("gpt2_tiny"), &TextModelOptions::default()).unwrap();
    assert_eq!(m.pooling, Pooling::LastToken);
    let b = m.tokenizer.batch(&strings(&["boring"]), None).unwrap();
    assert!(b.ids.size()[1] < 8, "padded to {:?}", b.ids.size());
}

#[test]
fn dropout_is_active_in_train_mode_only() {
    let m = TextModel::load(&fixture("bert_tiny"), &TextModelOptions::default()).unwrap();
    let b = m.tokenizer.batch(&strings(&TEXTS), None).unwrap();
    let (e1, e2, t1, t2) = tch::no_grad(|| {
        (m.encoder.forward(&b, Mode::Eval), m.encoder.forward(&b, Mode::Eval), m.encoder.forward(&b, Mode::Train), m.encoder.forward(&b, Mode::Train))
    });
    assert_eq!(e1, e2);
    assert!((t1 - t2).abs().max().double_value(&[]) > 1e-3);
}

#[derive(serde::Deserialize)]
struct Parity {
    strings: Vec<String>,
    max_length: usize,
    byte_bpe: Vec<Vec<u32>>,
    roberta_bpe: Vec<Vec<u32>>,
    minilm_json: Option<Vec<Vec<u32>>>,
    minilm_vocab_txt: Option<Vec<Vec<u32>>>,
}

fn check_parity(tk: &TextTokenizer, strings: &[String], want: &[Vec<u32>], what: &str) {
    assert_eq!(strings.len(), want.len());
    let mut bad = vec![];
    for (s, w) in strings.iter().zip(want) {
        let got = tk.ids(s, None).unwrap();
        if &got != w {
            bad.push(format!("{s:?}: got {got:?}, want {w:?}"));
        }
    }
    assert!(bad.is_empty(), "{what}: {} of {} strings differ; first: {}", bad.len(), strings.len(), bad[0]);
}

#[test]
fn tokenizers_match_the_python_package_on_1200_strings() {
    let p: Parity = serde_json::from_str(&std::fs::read_to_string(fixture("tokenizer_parity.json")).unwrap()).unwrap();
    assert!(p.strings.len() >= 1000);
    assert!(p.strings.iter().any(|s| s.chars().count() > 2000), "long texts present");
    let n = p.max_length;
    // vocab.json + merges.txt, GPT-2 style (no special tokens) and RoBERTa style.
    check_parity(&TextTokenizer::load(&fixture(""), Family::Gpt2, n, 0).unwrap(), &p.strings, &p.byte_bpe, "byte-level BPE");
    check_parity(&TextTokenizer::load(&fixture("roberta_tiny"), Family::Roberta, n, 1).unwrap(), &p.strings, &p.roberta_bpe, "RoBERTa BPE");
    // The real all-MiniLM-L6-v2 tokenizer.json, and a WordPiece built from its vocab.txt alone.
    let dir = minilm();
    let (json, txt) = (p.minilm_json.expect("fixture made with the asset"), p.minilm_vocab_txt.expect("fixture made with the asset"));
    check_parity(&TextTokenizer::load(&dir, Family::Bert, n, 0).unwrap(), &p.strings, &json, "MiniLM tokenizer.json");
    let only_vocab = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("vocab.txt"), only_vocab.path().join("vocab.txt")).unwrap();
    check_parity(&TextTokenizer::load(only_vocab.path(), Family::Bert, n, 0).unwrap(), &p.strings, &txt, "WordPiece from vocab.txt");
}

#[derive(serde::Deserialize)]
struct MiniLmRef {
    sentences: Vec<String>,
    cosine: f64,
    embeddings: Vec<Vec<f32>>,
    max_seq_length: usize,
}

#[test]
fn minilm_sentence_embeddings_match_sentence_transformers() {
    let r: MiniLmRef = serde_json::from_str(&std::fs::read_to_string(fixture("minilm_reference.json")).unwrap()).unwrap();
    let m = TextModel::load(&minilm(), &TextModelOptions::default()).unwrap();
    // The sentence-transformers config: mean pooling, normalised, 256 tokens; the baked-in
    // padding to 128 of its tokenizer.json is not obeyed.
    assert_eq!((m.pooling, m.normalize, m.tokenizer.max_length), (Pooling::Mean, true, r.max_seq_length));
    let e = embed(&m, &r.sentences, None, None, 32, Precision::Fp32, &Silent).unwrap().features;
    let cos = Tensor::cosine_similarity(&e.get(0).unsqueeze(0), &e.get(1).unsqueeze(0), 1, 1e-8).double_value(&[0]);
    assert!((cos - r.cosine).abs() < 1e-3, "cosine {cos} vs sentence-transformers {}", r.cosine);
    let want = Tensor::from_slice2(&r.embeddings);
    let d = (e - want).abs().max().double_value(&[]);
    assert!(d < 1e-4, "embeddings: max abs diff {d}");
}

fn write_csv(path: &Path, rows: &[(&str, &str)]) {
    let mut w = csv::Writer::from_path(path).unwrap();
    w.write_record(["review", "sentiment"]).unwrap();
    for (t, l) in rows {
        w.write_record([t, l]).unwrap();
    }
    w.flush().unwrap();
}

fn toy_rows() -> Vec<(String, String)> {
    let pos = ["great", "loved", "brilliant", "excellent", "good"];
    let neg = ["awful", "hated", "boring", "terrible", "bad"];
    let mut rows = vec![];
    for i in 0..40 {
        let (w, l) = if i % 2 == 0 { (pos[i / 2 % 5], "pos") } else { (neg[i / 2 % 5], "neg") };
        rows.push((format!("the movie was {w} and the story {}", ["worked", "was long", "ended"][i % 3]), l.to_string()));
    }
    rows
}

/// The toy reviews as `reviews.csv` in `dir`.
fn toy_csv(dir: &Path) -> PathBuf {
    let data = dir.join("reviews.csv");
    let rows = toy_rows();
    write_csv(&data, &rows.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect::<Vec<_>>());
    data
}

fn request(data: &Path, out: &Path, cache: &Path) -> headstart::text::TextTrainRequest {
    headstart::text::TextTrainRequest {
        data: data.to_path_buf(),
        val: None,
        val_split: 0.25,
        columns: headstart::text::data::Columns { text: "review".into(), label: "sentiment".into(), pair: None },
        lossy: false,
        model: fixture("bert_tiny").display().to_string(),
        model_options: TextModelOptions { pooling: Some(Pooling::Mean), ..Default::default() },
        out: out.to_path_buf(),
        cache: Some(cache.to_path_buf()),
        eval_batch_size: 8,
        precision: Precision::Fp32,
        train: Default::default(),
        finetune: None,
    }
}

#[test]
fn text_feature_extraction_caches_embeddings_and_bundles_predict() {
    let d = tempfile::tempdir().unwrap();
    let data = toy_csv(d.path());
    let req = request(&data, &d.path().join("run"), &d.path().join("cache"));
    let o = headstart::text::train_text(&req, false, &Silent).unwrap();
    assert_eq!((o.classes.clone(), o.n_train + o.n_val, o.backbone_computed, o.backbone_reused), (vec!["neg".to_string(), "pos".into()], 40, 40, 0));
    // The same data again: every embedding comes from the cache.
    let req2 = headstart::text::TextTrainRequest { out: d.path().join("run2"), ..req.clone() };
    let o2 = headstart::text::train_text(&req2, false, &Silent).unwrap();
    assert_eq!((o2.backbone_computed, o2.backbone_reused), (0, 40));
    // 40 examples: chosen by cross-validation, refitted on all of them; without the refit, on
    // the validation split and fitted on the training part.
    let sel = o.selection.as_ref().unwrap();
    assert_eq!((sel.method, sel.refit, sel.n_fit), (headstart::train::Method::CrossValidation, true, 40));
    let kept = headstart::train::TrainConfig { refit: false, ..Default::default() };
    let o3 =
        headstart::text::train_text(&headstart::text::TextTrainRequest { out: d.path().join("run3"), train: kept, ..req.clone() }, false, &Silent).unwrap();
    let sel = o3.selection.as_ref().unwrap();
    assert_eq!((sel.method, sel.refit, sel.n_fit, sel.n_judged), (headstart::train::Method::Holdout, false, o3.n_train, o3.n_val));
    let p = headstart::text::TextPredictor::load(&o.bundle, None).unwrap();
    let (report, skipped) = p.evaluate(&data, false, None, &Silent).unwrap();
    assert!(skipped.is_empty());
    // predict agrees with eval text by text: its top-1 gives eval's confusion matrix and accuracy,
    // and the two classes' probabilities sum to one.
    let rows = toy_rows();
    let texts: Vec<String> = rows.iter().map(|(t, _)| t.clone()).collect();
    let top = p.predict(&texts, None, 2, &Silent).unwrap();
    assert_eq!(top.len(), 40);
    let mut confusion = vec![vec![0usize; 2]; 2];
    for (t, (_, label)) in top.iter().zip(&rows) {
        assert_eq!(t.len(), 2);
        assert!(t[0].1 >= t[1].1 && (t[0].1 + t[1].1 - 1.0).abs() < 1e-5, "{t:?}");
        let idx = |l: &str| o.classes.iter().position(|c| c == l).unwrap();
        confusion[idx(label)][idx(&t[0].0)] += 1;
    }
    assert_eq!(confusion, report.confusion);
    assert!((report.accuracy - (confusion[0][0] + confusion[1][1]) as f64 / 40.0).abs() < 1e-12);
    // A bundle refuses another encoder.
    let e = headstart::text::TextPredictor::load(&o.bundle, Some(&fixture("distilbert_tiny").display().to_string())).err().unwrap().to_string();
    assert!(e.contains("differ"), "{e}");
}

#[test]
fn text_fine_tuning_trains_only_the_unfrozen_layers_and_learns() {
    let d = tempfile::tempdir().unwrap();
    let data = toy_csv(d.path());
    let mut req = request(&data, &d.path().join("run"), &d.path().join("cache"));
    let mut ft = headstart::text::text_finetune_defaults();
    ft.unfreeze = headstart::train::finetune::Unfreeze::Last(1);
    // A toy task on a random encoder: full-batch steps at a constant rate.
    ft.epochs = 100;
    ft.lr = 2e-3;
    ft.batch_size = 32;
    ft.schedule = headstart::train::schedule::Schedule::Constant;
    req.finetune = Some(ft);
    let o = headstart::text::train_text(&req, false, &Silent).unwrap();
    assert_eq!(o.tuned_stages, vec!["layer1".to_string()]);
    let tuned = Weights::open(o.bundle.join("backbone.safetensors")).unwrap();
    assert!(tuned.names().iter().all(|n| n.starts_with("encoder.layer.1.")), "{:?}", tuned.names());
    // The frozen layer is bit-identical to the pre-trained one; the tuned layer moved.
    let orig = Weights::open(fixture("bert_tiny")).unwrap();
    let name = "encoder.layer.1.intermediate.dense.weight";
    assert!((tuned.tensor(name).unwrap() - orig.tensor(name).unwrap()).abs().max().double_value(&[]) > 1e-4);
    let metrics = std::fs::read_to_string(d.path().join("run/metrics.jsonl")).unwrap();
    assert!(o.train_accuracy > 0.9, "train accuracy {}\n{metrics}", o.train_accuracy);
    assert_eq!(metrics.lines().count(), 100);
    let p = headstart::text::TextPredictor::load(&o.bundle, None).unwrap();
    let (report, _) = p.evaluate(&data, false, None, &Silent).unwrap();
    assert!(report.accuracy > 0.85, "bundle accuracy {}", report.accuracy);
}

#[test]
fn fine_tuning_stops_early_and_keeps_the_best_epoch() {
    let d = tempfile::tempdir().unwrap();
    let data = toy_csv(d.path());
    let mut req = request(&data, &d.path().join("run"), &d.path().join("cache"));
    let mut ft = headstart::text::text_finetune_defaults();
    // A rate far too high: validation loss stops improving within a few epochs.
    ft.epochs = 20;
    ft.lr = 0.3;
    ft.batch_size = 8;
    ft.patience = Some(2);
    req.finetune = Some(ft);
    let o = headstart::text::train_text(&req, false, &Silent).unwrap();
    let metrics = std::fs::read_to_string(d.path().join("run/metrics.jsonl")).unwrap();
    let ran = metrics.lines().count();
    assert!(ran < 20, "no early stop:\n{metrics}");
    assert_eq!(ran, o.best_epoch + 2, "stopped {ran} epochs in, best epoch {}", o.best_epoch);
    let best: Vec<f64> = metrics.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["val_loss"].as_f64().unwrap()).collect();
    let min = best.iter().cloned().fold(f64::INFINITY, f64::min);
    assert_eq!(best[o.best_epoch - 1], min);
}
