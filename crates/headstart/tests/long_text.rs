//! Long texts read whole (`--long-text chunks`): chunk token ids against the Python
//! `tokenizers` package and chunk embeddings against sentence-transformers
//! (tests/fixtures/make_chunk_fixtures.py), pooling, caching, and fine-tuning over chunks.

use std::path::{Path, PathBuf};

use headstart::engine::Precision;
use headstart::models::text::Family;
use headstart::progress::Silent;
use headstart::text::chunks::{encode_docs, ChunkPooling, LongText, LongTextPolicy};
use headstart::text::tokenizer::TextTokenizer;
use headstart::text::{embed, TextModel, TextModelOptions};
use tch::Tensor;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/text").join(name)
}

fn minilm() -> PathBuf {
    let assets =
        std::env::var_os("HEADSTART_ASSETS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/assets"));
    let d = assets.join("all-minilm-l6-v2");
    assert!(d.join("model.safetensors").is_file(), "all-MiniLM-L6-v2 missing: run scripts/fetch-assets all_minilm_l6_v2");
    d
}

#[derive(serde::Deserialize)]
struct Case {
    tokenizer: String,
    max_length: usize,
    overlap: usize,
    max_chunks: usize,
    chunks: Vec<Vec<Vec<u32>>>,
}

#[derive(serde::Deserialize)]
struct StRef {
    text: usize,
    chunks: usize,
    embedding: Vec<f32>,
}

#[derive(serde::Deserialize)]
struct Fixture {
    texts: Vec<String>,
    cases: Vec<Case>,
    minilm_embeddings: Vec<StRef>,
}

fn parity() -> Fixture {
    serde_json::from_str(&std::fs::read_to_string(fixture("chunk_parity.json")).unwrap()).unwrap()
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn model(dir: &Path, max_length: Option<usize>, lt: LongText) -> TextModel {
    TextModel::load(dir, &TextModelOptions { max_length, long_text: Some(lt), ..Default::default() }).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn chunk_ids_match_the_python_tokenizers_split() {
    let f = parity();
    assert_eq!(f.cases.len(), 9, "MiniLM cases missing: regenerate the fixture with the asset present");
    for case in &f.cases {
        let (dir, family, pad) = match case.tokenizer.as_str() {
            "roberta_tiny" => (fixture("roberta_tiny"), Family::Roberta, 1),
            "gpt2_tiny" => (fixture("gpt2_tiny"), Family::Gpt2, 0),
            "all-minilm-l6-v2" => (minilm(), Family::Bert, 0),
            other => panic!("unknown tokenizer {other}"),
        };
        let tk = TextTokenizer::load(&dir, family, case.max_length, pad).unwrap();
        let what = format!("{} max_length {} overlap {} max_chunks {}", case.tokenizer, case.max_length, case.overlap, case.max_chunks);
        let got = tk.encode_windows(&f.texts, case.overlap, case.max_chunks).unwrap();
        for (i, (g, want)) in got.iter().zip(&case.chunks).enumerate() {
            let ids: Vec<&Vec<u32>> = g.iter().map(|e| &e.ids).collect();
            assert_eq!(ids, want.iter().collect::<Vec<_>>(), "{what}: text {i}");
        }
        // The library path: chunks settings, and truncation as the first window alone.
        let lt = LongText { overlap: case.overlap, max_chunks: case.max_chunks, ..LongText::chunks() };
        let docs = encode_docs(&tk, &f.texts, None, &lt).unwrap();
        assert!(docs.iter().zip(&case.chunks).all(|(d, w)| d.len() == w.len()), "{what}");
        let truncated = encode_docs(&tk, &f.texts, None, &LongText::truncate()).unwrap();
        assert!(truncated.iter().zip(&case.chunks).all(|(t, w)| t.len() == 1 && t[0].ids == w[0]), "{what}: truncation is the first chunk");
    }
    // More than one chunk was really exercised, overlap and the max-chunks cut too.
    assert!(f.cases.iter().any(|c| c.overlap > 0 && c.chunks.iter().any(|d| d.len() > 2)));
    assert!(f.cases.iter().any(|c| c.chunks.iter().any(|d| d.len() == c.max_chunks && c.max_chunks < 16)));
}

#[test]
fn overlap_must_fit_in_the_window() {
    let tk = TextTokenizer::load(&fixture("bert_tiny"), Family::Bert, 16, 0).unwrap();
    assert_eq!((tk.special_tokens(), tk.window()), (2, 14));
    let e = tk.encode_windows(&strings(&["the movie"]), 14, 4).unwrap_err().to_string();
    assert!(e.contains("overlap") && e.contains("14"), "{e}");
    let e = TextModel::load(
        &fixture("bert_tiny"),
        &TextModelOptions { max_length: Some(16), long_text: Some(LongText { overlap: 20, ..LongText::chunks() }), ..Default::default() },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("setting `chunk_overlap` 20"), "{e}");
}

#[test]
fn short_texts_embed_exactly_as_truncated_and_long_ones_as_the_mean_of_their_chunks() {
    let dir = fixture("bert_tiny");
    let short = strings(&["the movie was great", "boring", "not very good service, would never recommend"]);
    let chunks = model(&dir, Some(16), LongText::chunks());
    let truncate = model(&dir, Some(16), LongText::truncate());
    let e = |m: &TextModel, t: &[String]| embed(m, t, None, None, 4, Precision::Fp32, &Silent).unwrap();
    assert_eq!(e(&chunks, &short).features, e(&truncate, &short).features, "texts within the window: identical embeddings");
    assert_eq!(e(&chunks, &short[1..2]).features, e(&truncate, &short[1..2]).features);

    let long = "the plot was awful and the acting was worse but the ending was great and the music was brilliant, the staff friendly, the price cheap";
    let mixed = strings(&[long, "boring", long]);
    let got = e(&chunks, &mixed);
    let docs = encode_docs(&chunks.tokenizer, &mixed[..1], None, &chunks.long_text).unwrap();
    assert!(docs[0].len() >= 3, "{} chunks", docs[0].len());
    assert_eq!((got.computed, got.chunks), (3, 2 * docs[0].len() + 1));
    // Each chunk embedded alone, then averaged.
    let alone: Vec<Tensor> = docs[0].iter().map(|c| chunks.embed_batch(&chunks.tokenizer.pad(&[c]), Precision::Fp32)).collect();
    let mean = Tensor::cat(&alone, 0).mean_dim(&[0i64][..], true, tch::Kind::Float);
    assert!(max_diff(&got.features.get(0).unsqueeze(0), &mean) < 1e-5);
    assert!(max_diff(&got.features.get(0), &got.features.get(2)) < 1e-6);
    assert!(max_diff(&got.features.get(1), &e(&truncate, &mixed[1..2]).features.get(0)) < 1e-5);
    // Truncation reads the first chunk alone.
    assert!(max_diff(&e(&truncate, &mixed[..1]).features, &alone[0]) < 1e-5);
    assert!(max_diff(&got.features.get(0).unsqueeze(0), &alone[0]) > 1e-3, "chunks changed nothing");
    // Max pooling: the element-wise maximum; one chunk only: truncation.
    let max = model(&dir, Some(16), LongText { pooling: ChunkPooling::Max, ..LongText::chunks() });
    let want = Tensor::cat(&alone, 0).amax(&[0i64][..], true);
    assert!(max_diff(&e(&max, &mixed[..1]).features, &want) < 1e-5);
    let one = model(&dir, Some(16), LongText { max_chunks: 1, ..LongText::chunks() });
    assert!(max_diff(&e(&one, &mixed[..1]).features, &alone[0]) < 1e-5);
}

#[test]
fn minilm_chunked_embeddings_match_sentence_transformers_on_each_chunk_averaged() {
    let f = parity();
    let m = model(&minilm(), None, LongText::chunks());
    assert_eq!(m.tokenizer.max_length, 256);
    assert!(f.minilm_embeddings.iter().any(|r| r.chunks > 4));
    let texts: Vec<String> = f.minilm_embeddings.iter().map(|r| f.texts[r.text].clone()).collect();
    let got = embed(&m, &texts, None, None, 8, Precision::Fp32, &Silent).unwrap();
    assert_eq!(got.chunks, f.minilm_embeddings.iter().map(|r| r.chunks).sum::<usize>());
    let want = Tensor::from_slice2(&f.minilm_embeddings.iter().map(|r| r.embedding.clone()).collect::<Vec<_>>());
    let d = max_diff(&got.features, &want);
    assert!(d < 1e-4, "max abs diff {d} against sentence-transformers");
}

#[test]
fn the_cache_key_holds_the_long_text_policy() {
    let dir = fixture("bert_tiny");
    let cache = tempfile::tempdir().unwrap();
    let texts = strings(&["the plot was awful and the acting was worse but the ending was great and the music was brilliant", "boring"]);
    let run = |lt: LongText| {
        let e = embed(&model(&dir, Some(16), lt), &texts, None, Some(cache.path()), 4, Precision::Fp32, &Silent).unwrap();
        (e.computed, e.reused)
    };
    assert_eq!(run(LongText::truncate()), (2, 0));
    assert_eq!(run(LongText::chunks()), (2, 0));
    assert_eq!(run(LongText::chunks()), (0, 2));
    assert_eq!(run(LongText { overlap: 4, ..LongText::chunks() }), (2, 0));
    assert_eq!(run(LongText { max_chunks: 2, ..LongText::chunks() }), (2, 0));
    assert_eq!(run(LongText { pooling: ChunkPooling::Max, ..LongText::chunks() }), (2, 0));
    assert_eq!(run(LongText::truncate()), (0, 2));
}

#[test]
fn sentence_pairs_stay_truncated() {
    let m = model(&fixture("bert_tiny"), Some(16), LongText::chunks());
    let long = strings(&["the plot was awful and the acting was worse but the ending was great and the music was brilliant"]);
    let docs = encode_docs(&m.tokenizer, &long, Some(&long), &m.long_text).unwrap();
    assert_eq!((docs[0].len(), docs[0][0].ids.len()), (1, 16));
    let mut warnings = vec![];
    let lt = headstart::text::chunks::resolve(Some(LongText::chunks()), false, true, m.tokenizer.window(), &mut warnings).unwrap();
    assert_eq!((lt.policy, warnings.len()), (LongTextPolicy::Truncate, 1));
    let lt = headstart::text::chunks::resolve(None, false, false, m.tokenizer.window(), &mut warnings).unwrap();
    assert_eq!(lt, LongText::chunks(), "feature extraction reads long texts whole by default");
    let lt = headstart::text::chunks::resolve(None, true, false, m.tokenizer.window(), &mut warnings).unwrap();
    assert_eq!(lt, LongText::truncate(), "fine-tuning truncates by default");
    assert_eq!(headstart::text::chunks::chunk_budget(None, 16, &LongText::chunks()).unwrap(), 16);
    assert_eq!(headstart::text::chunks::chunk_budget(None, 4, &LongText::chunks()).unwrap(), 16);
    assert_eq!(headstart::text::chunks::chunk_budget(Some(8), 16, &LongText::chunks()).unwrap(), 8);
    assert!(headstart::text::chunks::chunk_budget(Some(0), 16, &LongText::chunks()).is_err());
}

/// Reviews whose verdict comes after the same long preamble: only the last chunk differs.
fn verdict_rows() -> Vec<(String, String)> {
    let preamble = "the film opens with a long walk through the city and the story of the family who lived there for many years";
    (0..40)
        .map(|i| {
            let (w, l) = if i % 2 == 0 {
                (["great", "brilliant", "excellent", "loved"][i / 2 % 4], "pos")
            } else {
                (["awful", "boring", "terrible", "hated"][i / 2 % 4], "neg")
            };
            (format!("{preamble}. in the end it was {w}"), l.to_string())
        })
        .collect()
}

fn write_csv(path: &Path, rows: &[(String, String)]) {
    let mut w = csv::Writer::from_path(path).unwrap();
    w.write_record(["text", "label"]).unwrap();
    for (t, l) in rows {
        w.write_record([t, l]).unwrap();
    }
    w.flush().unwrap();
}

fn request(data: &Path, out: &Path, lt: Option<LongText>) -> headstart::text::TextTrainRequest {
    headstart::text::TextTrainRequest {
        data: data.to_path_buf(),
        val: None,
        val_split: 0.25,
        columns: Default::default(),
        lossy: false,
        model: fixture("bert_tiny").display().to_string(),
        model_options: TextModelOptions { max_length: Some(16), pooling: Some(headstart::models::text::Pooling::Mean), long_text: lt, chunk_batch: None },
        out: out.to_path_buf(),
        cache: None,
        eval_batch_size: 8,
        precision: Precision::Fp32,
        train: Default::default(),
        finetune: None,
    }
}

#[test]
fn words_past_the_window_decide_only_when_read_whole() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("reviews.csv");
    write_csv(&data, &verdict_rows());
    let m = model(&fixture("bert_tiny"), Some(16), LongText::chunks());
    let docs = encode_docs(&m.tokenizer, &verdict_rows().into_iter().map(|r| r.0).collect::<Vec<_>>(), None, &m.long_text).unwrap();
    assert!(docs.iter().all(|d| d.len() >= 2), "the verdict must lie past the first window");
    // Feature extraction defaults to chunks; the bundle records the policy.
    let o = headstart::text::train_text(&request(&data, &d.path().join("chunks"), None), false, &Silent).unwrap();
    let acc = o.val.as_ref().unwrap().accuracy;
    assert!(acc >= 0.9, "chunks: val accuracy {acc}");
    let p = headstart::text::TextPredictor::load(&o.bundle, None).unwrap();
    assert_eq!(p.meta.encoder.long_text, LongText::chunks());
    let (report, _) = p.evaluate(&data, false, None, &Silent).unwrap();
    assert!(report.accuracy >= 0.9, "bundle accuracy {}", report.accuracy);
    // Truncated, every text looks the same: no better than the majority class.
    let t = headstart::text::train_text(&request(&data, &d.path().join("truncate"), Some(LongText::truncate())), false, &Silent).unwrap();
    let tacc = t.val.as_ref().unwrap().accuracy;
    assert!(tacc <= 0.6, "truncate: val accuracy {tacc}");
    // A bundle written before chunks existed has no policy: it truncates.
    let toml_path = o.bundle.join("bundle.toml");
    let text = std::fs::read_to_string(&toml_path).unwrap();
    assert!(text.contains("[encoder.long_text]") && text.contains("policy = \"chunks\""), "{text}");
    let mut old = vec![];
    let mut skipping = false;
    for line in text.lines() {
        if line.starts_with('[') {
            skipping = line == "[encoder.long_text]";
        }
        if !skipping {
            old.push(line);
        }
    }
    std::fs::write(&toml_path, old.join("\n")).unwrap();
    let p = headstart::text::TextPredictor::load(&o.bundle, None).unwrap();
    assert_eq!(p.meta.encoder.long_text, LongText::truncate());
    let (report, _) = p.evaluate(&data, false, None, &Silent).unwrap();
    assert!(report.accuracy <= 0.6, "an old bundle reads truncated: accuracy {}", report.accuracy);
}

#[test]
fn fine_tuning_over_chunks_splits_batches_without_changing_the_gradients() {
    use headstart::train::finetune::{lr_find_learner, FinetuneConfig, Learner, Unfreeze};
    let rows = verdict_rows();
    let texts: Vec<String> = rows.iter().take(12).map(|r| r.0.clone()).collect();
    let labels: Vec<i64> = rows.iter().take(12).map(|r| (r.1 == "pos") as i64).collect();
    // SGD: its steps scale with the gradient (Adam's would hide a wrongly scaled one).
    let optim = headstart::train::optim::OptimKind::Sgd { momentum: 0.9, nesterov: false };
    let ft = FinetuneConfig { batch_size: 6, optim, ..headstart::text::text_finetune_defaults() };
    let mut m = model(&fixture("bert_tiny"), Some(16), LongText::chunks());
    // No dropout: one forward pass and several give the same numbers.
    m.encoder.cfg.hidden_dropout = 0.0;
    m.encoder.cfg.attention_dropout = 0.0;
    let docs = encode_docs(&m.tokenizer, &texts, None, &m.long_text).unwrap();
    // One learner (one head draw) for both curves: the range test restores every weight it
    // moved, so the second curve starts where the first did. Two learners would each draw a
    // head from the process-wide generator, which tests on other threads also draw from.
    let l = headstart::text::TextLearner::new(&m, 2, &docs, &labels, Unfreeze::All, Precision::Fp32).unwrap();
    let curve = |l: &headstart::text::TextLearner| {
        let parts = l.parts(&(0..6).collect::<Vec<_>>()).len();
        let lr = lr_find_learner(l, &(0..12).collect::<Vec<_>>(), &ft, 1e-3, 1.0, 12, &Silent).unwrap();
        (parts, lr.losses)
    };
    let (one, whole) = curve(&l);
    let l = l.with_chunk_budget(docs_per_part_budget());
    let (many, split) = curve(&l);
    assert_eq!(one, 1);
    assert!(many >= 3, "{many} parts");
    assert_eq!(whole.len(), split.len());
    for (a, b) in whole.iter().zip(&split) {
        assert!((a - b).abs() < 1e-4 * a.abs().max(1.0), "losses {whole:?} vs {split:?}");
    }
}

/// A budget of one document's chunks (the verdict rows are 3 chunks at max length 16).
fn docs_per_part_budget() -> usize {
    let m = model(&fixture("bert_tiny"), Some(16), LongText::chunks());
    let docs = encode_docs(&m.tokenizer, &[verdict_rows()[0].0.clone()], None, &m.long_text).unwrap();
    docs[0].len()
}

#[test]
fn fine_tuned_chunk_bundles_predict_as_they_trained() {
    let d = tempfile::tempdir().unwrap();
    let rows = verdict_rows();
    let (train, val) = (d.path().join("train.csv"), d.path().join("val.csv"));
    write_csv(&train, &rows[..28]);
    write_csv(&val, &rows[28..]);
    let mut req = request(&train, &d.path().join("run"), Some(LongText::chunks()));
    req.val = Some(val.clone());
    req.model_options.chunk_batch = Some(docs_per_part_budget() * 2);
    let mut ft = headstart::text::text_finetune_defaults();
    ft.epochs = 3;
    ft.batch_size = 8;
    ft.lr = 1e-3;
    req.finetune = Some(ft);
    let o = headstart::text::train_text(&req, false, &Silent).unwrap();
    let p = headstart::text::TextPredictor::load(&o.bundle, None).unwrap();
    assert_eq!(p.meta.encoder.long_text, LongText::chunks());
    let (report, _) = p.evaluate(&val, false, None, &Silent).unwrap();
    assert_eq!(report.accuracy, o.val.as_ref().unwrap().accuracy, "the bundle predicts as the learner evaluated");
    req.model_options.chunk_batch = Some(0);
    req.out = d.path().join("run2");
    let e = headstart::text::train_text(&req, false, &Silent).err().unwrap().to_string();
    assert!(e.contains("setting `chunk_batch` must be at least 1"), "{e}");
}
