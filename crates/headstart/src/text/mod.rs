//! Text transfer learning end to end: a pre-trained encoder and its tokenizer from a Hugging
//! Face model directory (or the hub cache), labelled text, and either a head on cached sentence
//! embeddings (feature extraction) or fine-tuning through the shared learner.

pub mod chunks;
pub mod data;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Kind, Tensor};

use crate::bundle;
use crate::data::{stratified_split, Skip};
use crate::engine::{autocast_cpu, Precision};
use crate::error::{Error, Result};
use crate::features::{sha256_hex, FeatureCache};
use crate::metrics::{self, Report};
use crate::models::text::{pool, sentence_config, Pooling, TextBatch, TextCfg, TextEncoder};
use crate::models::{Mode, Stage};
use crate::progress::Progress;
use crate::run::{epoch_line, final_scores, fit_head, head_phase_config, ranked, write_config, write_errors, MetricsLog, TrainOutcome};
use crate::train::finetune::{first_trainable, latest_checkpoint, lr_find_learner, train_learner, FinetuneConfig, Learner, LrFind};
use crate::train::{fit, EpochRecord, Head, HeadKind, HeadSpec, Split, TrainConfig};
use crate::weights::{LoadReport, Weights};
use chunks::{ChunkBatch, ChunkPooling, LongText};
use data::{Columns, TextDataset};
use tokenizer::{Encoded, TextTokenizer};

/// Short names for text models the asset cache can hold.
pub const TEXT_ALIASES: &[(&str, &str, &str)] = &[
    // (name, asset directory, hub repo)
    ("all-minilm-l6-v2", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
];

/// The default text model: sentence-transformers' all-MiniLM-L6-v2.
pub const DEFAULT_TEXT_MODEL: &str = "all-minilm-l6-v2";

/// Resolves a text model: a directory, a short name from [`TEXT_ALIASES`] (asset cache, then
/// hub cache), or a hub repo id `org/name[@revision]` (hub cache, then download).
pub fn resolve_model_dir(spec: &str) -> Result<PathBuf> {
    let p = Path::new(spec);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    let lower = spec.to_ascii_lowercase();
    let (repo, revision) = match TEXT_ALIASES.iter().find(|(n, _, r)| *n == lower || r.eq_ignore_ascii_case(spec)) {
        Some((_, asset, repo)) => {
            let d = crate::assets::asset_dir().join(asset);
            if d.join("config.json").is_file() {
                return Ok(d);
            }
            (repo.to_string(), "main".to_string())
        }
        None => match spec.split_once('@') {
            Some((r, rev)) => (r.to_string(), rev.to_string()),
            None => (spec.to_string(), "main".to_string()),
        },
    };
    if !repo.contains('/') && !p.exists() {
        return Err(Error::Model(format!(
            "text model `{spec}` is neither a directory nor a hub repo id (org/name); known names: {}",
            TEXT_ALIASES.iter().map(|a| a.0).collect::<Vec<_>>().join(", ")
        )));
    }
    let cache = crate::weights::hub::cache_dir();
    match crate::weights::hub::resolve_snapshot(&cache, &repo, &revision) {
        Ok(s) => Ok(s),
        Err(_) => crate::weights::hub::download(&cache, &repo, &revision, None)
            .map_err(|e| Error::Model(format!("text model `{spec}`: {e}; pass a model directory, or put {repo} in the hub cache ({})", cache.display()))),
    }
}

/// An encoder with its weights, tokenizer and pooling.
pub struct TextModel {
    pub encoder: TextEncoder,
    pub tokenizer: TextTokenizer,
    pub pooling: Pooling,
    pub normalize: bool,
    pub dir: PathBuf,
    pub weights_sha256: String,
    pub report: LoadReport,
    /// How texts longer than the window are read.
    pub long_text: LongText,
}

/// How to set up a text model beyond its own files.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TextModelOptions {
    /// Truncation length; default: sentence-transformers' `max_seq_length`, else the model's
    /// maximum.
    pub max_length: Option<usize>,
    /// Pooling; default: the sentence-transformers config, else CLS (GPT-2: last token).
    pub pooling: Option<Pooling>,
    /// Texts longer than the window; default: chunks for feature extraction, truncation for
    /// fine-tuning ([`LongText::default_for`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_text: Option<LongText>,
    /// Fine-tuning: at most this many chunks (windows) in one forward pass; a batch holding
    /// more runs in parts, gradients accumulated. Default: the batch size, at least
    /// `max_chunks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_batch: Option<usize>,
}

impl TextModel {
    pub fn load(dir: &Path, opts: &TextModelOptions) -> Result<TextModel> {
        let cp = dir.join("config.json");
        let text = std::fs::read_to_string(&cp).map_err(|e| Error::io(&cp, e))?;
        let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::input(&cp, format!("invalid JSON: {e}")))?;
        let cfg = TextCfg::from_hf(&config, &cp)?;
        let st = sentence_config(dir)?;
        let limit = cfg.max_tokens();
        let max_length = match opts.max_length {
            Some(n) if n > limit => return Err(Error::Model(format!("max_length {n} exceeds what {} allows ({limit} tokens)", dir.display()))),
            Some(n) => n,
            None => st.max_seq_length.unwrap_or(limit).min(limit),
        };
        let encoder = TextEncoder::build(&cfg);
        let weights = Weights::open(dir)?;
        let report = crate::weights::report::load_into(&encoder.vs, &weights, &encoder.load_plan())?;
        report.require_exact()?;
        let tokenizer = TextTokenizer::load(dir, cfg.family, max_length, cfg.pad_token_id)?;
        let pooling = opts.pooling.or(st.pooling).unwrap_or(cfg.default_pooling());
        let long_text = opts.long_text.unwrap_or_default();
        long_text.validate(tokenizer.window())?;
        let normalize = st.normalize && opts.pooling.is_none();
        Ok(TextModel { weights_sha256: weights.sha256()?, encoder, tokenizer, pooling, normalize, dir: dir.to_path_buf(), report, long_text })
    }

    pub fn dim(&self) -> i64 {
        self.encoder.hidden_size()
    }

    /// Pooled embeddings of a padded batch (eval mode, no autograd).
    pub fn embed_batch(&self, b: &TextBatch, precision: Precision) -> Tensor {
        tch::no_grad(|| autocast_cpu(precision, || pool(&self.encoder.forward(b, Mode::Eval), &b.mask, self.pooling, self.normalize)).to_kind(Kind::Float))
    }

    /// Key of the feature cache: everything the embeddings depend on (the long-text policy
    /// `lt` as applied).
    fn cache_key(&self, lt: &LongText, precision: Precision) -> serde_json::Value {
        let mut key = serde_json::json!({
            "text_encoder": self.weights_sha256, "tokenizer": self.tokenizer.sha256, "max_length": self.tokenizer.max_length,
            "pooling": self.pooling, "normalize": self.normalize, "precision": precision, "dim": self.dim(),
        });
        if let Some(c) = lt.cache_fields() {
            key["chunks"] = c;
        }
        key
    }
}

/// Embeddings of every example in order, from the cache where possible. Long texts are read
/// as the model's [`LongText`] policy says; the chunks of many texts run through the encoder
/// together in length order, so batches carry little padding.
pub struct Embedded {
    pub features: Tensor,
    pub computed: usize,
    pub reused: usize,
    /// Windows run through the encoder (one per computed text when nothing is chunked).
    pub chunks: usize,
}

/// Texts tokenised and embedded at a time (bounds the memory of their chunks).
const EMBED_GROUP: usize = 2048;

fn example_key(text: &str, pair: Option<&str>) -> String {
    let mut h = text.as_bytes().to_vec();
    if let Some(p) = pair {
        h.push(0);
        h.extend_from_slice(p.as_bytes());
    }
    sha256_hex(&h)
}

pub fn embed(
    model: &TextModel,
    texts: &[String],
    pairs: Option<&[String]>,
    cache_root: Option<&Path>,
    batch_size: usize,
    precision: Precision,
    progress: &dyn Progress,
) -> Result<Embedded> {
    let dim = model.dim() as usize;
    let lt = model.long_text.for_inputs(pairs.is_some());
    let cache = cache_root.map(|r| FeatureCache::keyed(r, &model.cache_key(&lt, precision), dim)).transpose()?;
    let keys: Vec<String> = (0..texts.len()).map(|i| example_key(&texts[i], pairs.map(|p| p[i].as_str()))).collect();
    let mut out = vec![0f32; texts.len() * dim];
    let mut todo = vec![];
    for (i, k) in keys.iter().enumerate() {
        match cache.as_ref().and_then(|c| c.get(k)) {
            Some(v) => out[i * dim..(i + 1) * dim].copy_from_slice(&v),
            None => todo.push(i),
        }
    }
    let reused = texts.len() - todo.len();
    let mut chunks = 0;
    progress.start("embed", todo.len() as u64);
    for group in todo.chunks(EMBED_GROUP) {
        let group_texts: Vec<String> = group.iter().map(|&i| texts[i].clone()).collect();
        let group_pairs: Option<Vec<String>> = pairs.map(|p| group.iter().map(|&i| p[i].clone()).collect());
        let docs = chunks::encode_docs(&model.tokenizer, &group_texts, group_pairs.as_deref(), &lt)?;
        chunks += docs.iter().map(Vec::len).sum::<usize>();
        let embed_batch = |rows: &[&Encoded]| -> Result<Vec<f32>> { Ok(Vec::try_from(model.embed_batch(&model.tokenizer.pad(rows), precision).flatten(0, -1))?) };
        chunks::embed_docs(&docs, dim, batch_size, lt.pooling, embed_batch, |j, v| {
            let i = group[j];
            out[i * dim..(i + 1) * dim].copy_from_slice(v);
            progress.inc(1);
            cache.as_ref().map_or(Ok(()), |c| c.put(&keys[i], v))
        })?;
    }
    progress.finish();
    Ok(Embedded { features: Tensor::from_slice(&out).view([texts.len() as i64, dim as i64]), computed: todo.len(), reused, chunks })
}

/// Everything a text `train` needs; saved as the run's resolved config.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TextTrainRequest {
    pub data: PathBuf,
    pub val: Option<PathBuf>,
    pub val_split: f64,
    pub columns: Columns,
    /// Replace invalid UTF-8 instead of failing.
    pub lossy: bool,
    /// Directory, short name or hub repo id.
    pub model: String,
    pub model_options: TextModelOptions,
    pub out: PathBuf,
    pub cache: Option<PathBuf>,
    /// Batch size for embedding and evaluation.
    pub eval_batch_size: usize,
    /// Precision of the frozen-encoder pass (feature extraction).
    pub precision: Precision,
    pub train: TrainConfig,
    pub finetune: Option<FinetuneConfig>,
}

/// The defaults for fine-tuning text (Hugging Face `Trainer`'s): AdamW at 5e-5, weight decay
/// 0.01 (not on biases and LayerNorm), linear decay after an optional warm-up, every layer
/// unfrozen at the same rate, no head-only phase.
pub fn text_finetune_defaults() -> FinetuneConfig {
    FinetuneConfig {
        unfreeze: crate::train::finetune::Unfreeze::All,
        epochs: 3,
        head_epochs: 0,
        batch_size: 16,
        lr: 5e-5,
        stage_lr_decay: 1.0,
        weight_decay: 0.01,
        schedule: crate::train::schedule::Schedule::Linear { warmup: 0 },
        ..FinetuneConfig::default()
    }
}

/// Sections of `bundle.toml` for a text bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderRef {
    /// As given to `train` (directory, short name or hub id).
    pub model: String,
    pub weights_sha256: String,
    pub tokenizer_sha256: String,
    pub config: TextCfg,
    pub max_length: usize,
    pub pooling: Pooling,
    pub normalize: bool,
    /// How long texts are read; bundles made before chunks existed truncated.
    #[serde(default)]
    pub long_text: LongText,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextBundleMeta {
    pub format_version: u32,
    pub modality: String,
    pub created_by: String,
    pub encoder: EncoderRef,
    pub columns: Columns,
    pub labels: Vec<String>,
    pub head: HeadSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuned: Option<bundle::Tuned>,
}

/// Fine-tuning text through the shared learner: the encoder and a new linear head in one
/// variable store; inputs are tokenised once, batches padded per batch. It pools as the model
/// does but never normalises: unit-length embeddings suit similarity search, not a fresh
/// classifier trained at fine-tuning rates. A document read as several chunks goes into the
/// head as the mean (or max) of its chunks' pooled representations, with gradients through
/// every chunk; a training batch runs in parts of at most `chunk_budget` chunks.
pub struct TextLearner<'a> {
    model: &'a TextModel,
    head: nn::Linear,
    dropout: f64,
    docs: &'a [Vec<Encoded>],
    labels: Tensor,
    first: usize,
    precision: Precision,
    num_classes: i64,
    chunk_pooling: ChunkPooling,
    chunk_budget: usize,
}

impl<'a> TextLearner<'a> {
    /// A learner over tokenised documents `docs` (the windows of each, from
    /// [`chunks::encode_docs`]) with `labels`, a fresh `num_classes`-way head, and the stages
    /// `unfreeze` names trainable. No chunk budget until [`with_chunk_budget`](Self::with_chunk_budget).
    pub fn new(model: &'a TextModel, num_classes: i64, docs: &'a [Vec<Encoded>], labels: &[i64], unfreeze: crate::train::finetune::Unfreeze, precision: Precision) -> Result<TextLearner<'a>> {
        if docs.len() != labels.len() {
            return Err(Error::Model(format!("{} examples but {} labels", docs.len(), labels.len())));
        }
        Ok(TextLearner {
            model,
            dropout: model.encoder.cfg.hidden_dropout,
            head: new_head(model, num_classes),
            docs,
            labels: Tensor::from_slice(labels),
            first: first_trainable(unfreeze, model.encoder.stages().len())?,
            precision,
            num_classes,
            chunk_pooling: model.long_text.pooling,
            chunk_budget: usize::MAX,
        })
    }

    /// At most `n` chunks in one forward pass of training (a document's chunks stay together).
    pub fn with_chunk_budget(self, n: usize) -> TextLearner<'a> {
        TextLearner { chunk_budget: n.max(1), ..self }
    }

    /// The classifier head.
    pub fn head(&self) -> &nn::Linear {
        &self.head
    }
}

impl Learner for TextLearner<'_> {
    type Batch = ChunkBatch;
    fn vs(&self) -> &nn::VarStore {
        &self.model.encoder.vs
    }
    fn stages(&self) -> &[Stage] {
        self.model.encoder.stages()
    }
    fn first_trainable(&self) -> usize {
        self.first
    }
    fn labels(&self) -> &Tensor {
        &self.labels
    }
    fn num_classes(&self) -> i64 {
        self.num_classes
    }
    fn batch(&self, rows: &[usize], _epoch: Option<usize>) -> Result<ChunkBatch> {
        Ok(ChunkBatch::new(&self.model.tokenizer, &rows.iter().map(|&i| &self.docs[i]).collect::<Vec<_>>()))
    }
    fn parts(&self, rows: &[usize]) -> Vec<std::ops::Range<usize>> {
        chunks::split_by_budget(&rows.iter().map(|&i| self.docs[i].len()).collect::<Vec<_>>(), self.chunk_budget)
    }
    /// Evaluation in length order (little padding), at most `batch_size` (≥ 32) chunks a pass
    /// unless one document has more; results put back in row order.
    fn eval_logits(&self, rows: &[usize], batch_size: usize) -> Result<Tensor> {
        let key = |i: usize| {
            let d = &self.docs[rows[i]];
            std::cmp::Reverse((d.len(), d.iter().map(|e| e.ids.len()).max().unwrap_or(0)))
        };
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&i| key(i));
        let sizes: Vec<usize> = order.iter().map(|&i| self.docs[rows[i]].len()).collect();
        let mut out = vec![];
        for part in chunks::split_by_budget(&sizes, batch_size.max(32)) {
            let b = self.batch(&order[part].iter().map(|&i| rows[i]).collect::<Vec<_>>(), None)?;
            out.push(tch::no_grad(|| self.logits(&b, false)));
        }
        if out.is_empty() {
            return Ok(Tensor::zeros([0, self.num_classes], tch::kind::FLOAT_CPU));
        }
        let sorted = Tensor::cat(&out, 0);
        let mut inverse = vec![0i64; rows.len()];
        for (pos, &i) in order.iter().enumerate() {
            inverse[i] = pos as i64;
        }
        Ok(sorted.index_select(0, &Tensor::from_slice(&inverse)))
    }

    fn logits(&self, b: &ChunkBatch, train: bool) -> Tensor {
        let mode = if train { Mode::Train } else { Mode::Eval };
        autocast_cpu(self.precision, || {
            let h = self.model.encoder.forward_from(&b.tokens, self.first, mode);
            let reps = pool(&h, &b.tokens.mask, self.model.pooling, false);
            chunks::combine(&reps, &b.counts, self.chunk_pooling).dropout(self.dropout, train).apply(&self.head)
        })
        .to_kind(Kind::Float)
    }
}

const HEAD_PREFIX: &str = "classifier";

fn new_head(model: &TextModel, k: i64) -> nn::Linear {
    nn::linear(model.encoder.vs.root() / HEAD_PREFIX, model.dim(), k, Default::default())
}

/// Reads the data, splits it, and writes the run's config and errors.
struct Prepared {
    train_ds: TextDataset,
    texts: Vec<String>,
    pairs: Option<Vec<String>>,
    labels: Vec<usize>,
    tr: Vec<usize>,
    va: Vec<usize>,
    skipped: Vec<Skip>,
    warnings: Vec<String>,
}

fn prepare(req: &TextTrainRequest) -> Result<Prepared> {
    if !(0.0..1.0).contains(&req.val_split) {
        return Err(Error::Model(format!("--val-split must be in [0, 1), not {}", req.val_split)));
    }
    let train_ds = TextDataset::open(&req.data, &req.columns, None, req.lossy)?;
    if train_ds.classes.len() < 2 {
        return Err(Error::input(&req.data, format!("need at least two classes, found {}", train_ds.classes.len())));
    }
    let val_ds = req.val.as_ref().map(|v| TextDataset::open(v, &req.columns, Some(&train_ds.classes), req.lossy)).transpose()?;
    let mut texts = train_ds.texts.clone();
    let mut pairs = train_ds.pairs.clone();
    let mut labels = train_ds.labels.clone();
    let mut skipped = train_ds.skipped.clone();
    let mut warnings = train_ds.warnings.clone();
    let n = texts.len();
    let (tr, va) = match &val_ds {
        Some(v) => {
            texts.extend(v.texts.iter().cloned());
            if let (Some(p), Some(vp)) = (pairs.as_mut(), v.pairs.as_ref()) {
                p.extend(vp.iter().cloned());
            }
            labels.extend(v.labels.iter().copied());
            skipped.extend(v.skipped.iter().cloned());
            warnings.extend(v.warnings.iter().cloned());
            ((0..n).collect(), (n..texts.len()).collect())
        }
        None => stratified_split(&labels, train_ds.classes.len(), req.val_split, req.train.seed),
    };
    let mut present = vec![0usize; train_ds.classes.len()];
    for &r in &tr {
        present[labels[r]] += 1;
    }
    if let Some(c) = present.iter().position(|&n| n == 0) {
        return Err(Error::input(&req.data, format!("class `{}` has no usable training examples", train_ds.classes[c])));
    }
    if va.is_empty() && !matches!(req.train.cv, crate::train::Cv::Folds(_)) {
        warnings.push("no validation examples: the head is chosen on training loss".into());
    }
    write_config(&req.out, req)?;
    write_errors(&req.out, &skipped)?;
    Ok(Prepared { train_ds, texts, pairs, labels, tr, va, skipped, warnings })
}

/// Trains a text classifier per `req`; with `resume`, continues a fine-tuning run.
pub fn train_text(req: &TextTrainRequest, resume: bool, progress: &dyn Progress) -> Result<TrainOutcome> {
    req.train.validate()?;
    if let Some(ft) = &req.finetune {
        ft.validate()?;
    }
    let mut p = prepare(req)?;
    let dir = resolve_model_dir(&req.model)?;
    let mut model = TextModel::load(&dir, &req.model_options)?;
    model.long_text = chunks::resolve(req.model_options.long_text, req.finetune.is_some(), p.pairs.is_some(), model.tokenizer.window(), &mut p.warnings)?;
    if req.finetune.is_some() {
        // The head phase's embeddings and the bundle pool as the learner does.
        model.normalize = false;
    }
    let classes = p.train_ds.classes.clone();
    let k = classes.len() as i64;
    let take_y = |rows: &[usize]| Tensor::from_slice(&rows.iter().map(|&r| p.labels[r] as i64).collect::<Vec<_>>());
    let (ytr, yva) = (take_y(&p.tr), take_y(&p.va));

    let resuming = resume && latest_checkpoint(&req.out).is_some();
    let mut log = MetricsLog::open(&req.out, resuming)?;
    let mut on_epoch = |r: &EpochRecord| {
        progress.message(&epoch_line(r));
        log.record(r);
    };

    let head_phase = req.finetune.as_ref().is_none_or(|f| f.head_epochs > 0 && !resuming);
    let emb = if head_phase {
        Some(embed(&model, &p.texts, p.pairs.as_deref(), req.cache.as_deref(), req.eval_batch_size, req.precision, progress)?)
    } else {
        None
    };
    let take_x = |e: &Embedded, rows: &[usize]| e.features.index_select(0, &Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>()));

    let (mut tuned_stages, mut skipped_steps, mut resumed_from, mut tuned_tensors) = (vec![], 0, None, None);
    let val_truth: Vec<usize> = p.va.iter().map(|&r| p.labels[r]).collect();
    let (head, best_epoch, l2, (train_accuracy, val, selection)) = match &req.finetune {
        None => {
            let e = emb.as_ref().expect("embedded");
            let (xtr, xva) = (take_x(e, &p.tr), take_x(e, &p.va));
            let f = fit_head(&req.train, &classes, Split { x: &xtr, y: &ytr }, Split { x: &xva, y: &yva }, &mut on_epoch)?;
            (f.head, f.best_epoch, f.l2, (f.train_accuracy, f.val, Some(f.selection)))
        }
        Some(ft) => {
            // The new head's initial weights come from the seed, like everything else.
            tch::manual_seed(ft.seed as i64);
            let lin = new_head(&model, k);
            if let Some(e) = &emb {
                // Phase one: the new head alone on the cached embeddings, fitted as a logistic
                // regression (L2 chosen on the validation split).
                let (xtr, xva) = (take_x(e, &p.tr), take_x(e, &p.va));
                let hc = TrainConfig { head: HeadKind::Logistic, seed: ft.seed, ..head_phase_config(&req.train) };
                let fitted = fit(&hc, Split { x: &xtr, y: &ytr }, Split { x: &xva, y: &yva }, k, &mut |r| progress.message(&format!("head {}", epoch_line(r))))?;
                fitted.head.copy_into(&lin)?;
            }
            progress.message("tokenising");
            let docs = chunks::encode_docs(&model.tokenizer, &p.texts, p.pairs.as_deref(), &model.long_text)?;
            let budget = chunks::chunk_budget(req.model_options.chunk_batch, ft.batch_size, &model.long_text)?;
            let first = first_trainable(ft.unfreeze, model.encoder.stages().len())?;
            let labels: Vec<i64> = p.labels.iter().map(|&l| l as i64).collect();
            let learner = TextLearner { head: lin, ..TextLearner::new(&model, k, &docs, &labels, ft.unfreeze, ft.precision)?.with_chunk_budget(budget) };
            let o = train_learner(&learner, &p.tr, &p.va, ft, &req.out, resume, progress, &mut on_epoch)?;
            skipped_steps = o.skipped_steps;
            resumed_from = o.resumed_from;
            tuned_stages = model.encoder.stages()[first..].iter().map(|s| s.name.clone()).collect();
            let vars = model.encoder.vs.variables();
            tuned_tensors = Some(o.freeze.tuned_vars.iter().map(|n| (n.clone(), vars[n].detach().copy())).collect::<Vec<_>>());
            let scores = final_scores(&classes, &o.train_logits, &ytr, &o.val_logits, &val_truth)?;
            (Head::from_linear(&learner.head)?, o.best_epoch, None, (scores.0, scores.1, None))
        }
    };
    log.finish()?;
    let mut meta = TextBundleMeta {
        format_version: bundle::FORMAT_VERSION,
        modality: "text".into(),
        created_by: format!("headstart {}", env!("CARGO_PKG_VERSION")),
        encoder: EncoderRef {
            model: req.model.clone(),
            weights_sha256: model.weights_sha256.clone(),
            tokenizer_sha256: model.tokenizer.sha256.clone(),
            config: model.encoder.cfg.clone(),
            max_length: model.tokenizer.max_length,
            pooling: model.pooling,
            normalize: model.normalize,
            long_text: model.long_text,
        },
        columns: req.columns.clone(),
        labels: classes.clone(),
        head: head.spec.clone(),
        tuned: None,
    };
    let bundle_dir = bundle::default_bundle_dir(&req.out);
    let tuned = tuned_tensors.as_deref().map(|t| (&tuned_stages[..], t));
    bundle::write(&bundle_dir, &head, tuned, |record| {
        meta.tuned = record;
        bundle::to_toml(&meta)
    })?;
    let (computed, reused) = emb.as_ref().map_or((0, 0), |e| (e.computed, e.reused));
    Ok(TrainOutcome {
        run_dir: req.out.clone(),
        bundle: bundle_dir,
        model: req.model.clone(),
        classes,
        n_train: p.tr.len(),
        n_val: p.va.len(),
        skipped: p.skipped.len(),
        warnings: p.warnings,
        head: head.spec.kind,
        best_epoch,
        l2,
        train_accuracy,
        val,
        selection,
        backbone_computed: computed,
        backbone_reused: reused,
        tuned_stages,
        skipped_steps,
        resumed_from,
    })
}

/// The learning-rate range test for fine-tuning a text model on `req.data`.
pub fn lr_find_text(req: &TextTrainRequest, min_lr: f64, max_lr: f64, steps: usize, progress: &dyn Progress) -> Result<LrFind> {
    let ft = req.finetune.clone().unwrap_or_else(text_finetune_defaults);
    let ds = TextDataset::open(&req.data, &req.columns, None, req.lossy)?;
    let mut model = TextModel::load(&resolve_model_dir(&req.model)?, &req.model_options)?;
    model.long_text = chunks::resolve(req.model_options.long_text, true, ds.pairs.is_some(), model.tokenizer.window(), &mut vec![])?;
    let k = ds.classes.len() as i64;
    let docs = chunks::encode_docs(&model.tokenizer, &ds.texts, ds.pairs.as_deref(), &model.long_text)?;
    let labels: Vec<i64> = ds.labels.iter().map(|&l| l as i64).collect();
    tch::manual_seed(ft.seed as i64);
    let budget = chunks::chunk_budget(req.model_options.chunk_batch, ft.batch_size, &model.long_text)?;
    let learner = TextLearner::new(&model, k, &docs, &labels, ft.unfreeze, ft.precision)?.with_chunk_budget(budget);
    lr_find_learner(&learner, &(0..ds.len()).collect::<Vec<_>>(), &ft, min_lr, max_lr, steps, progress)
}

/// A text bundle ready to run.
pub struct TextPredictor {
    pub meta: TextBundleMeta,
    model: TextModel,
    head: Head,
}

impl TextPredictor {
    /// Loads a bundle; `model` overrides where the encoder is found (else the bundle's own
    /// reference). The encoder's weights and tokenizer must be the ones it was trained with.
    pub fn load(dir: &Path, model: Option<&str>) -> Result<TextPredictor> {
        let mp = dir.join(bundle::META);
        let text = std::fs::read_to_string(&mp).map_err(|e| Error::io(&mp, e))?;
        let meta: TextBundleMeta = toml::from_str(&text).map_err(|e| Error::input(&mp, e.to_string()))?;
        if meta.format_version != bundle::FORMAT_VERSION || meta.modality != "text" {
            return Err(Error::input(&mp, "not a text bundle of a supported format"));
        }
        let head = bundle::read_head(dir, &meta.head)?;
        let spec = model.unwrap_or(&meta.encoder.model);
        let mdir = resolve_model_dir(spec).map_err(|e| Error::Model(format!("{e} (needed by the bundle {})", dir.display())))?;
        let opts = TextModelOptions { max_length: Some(meta.encoder.max_length), pooling: Some(meta.encoder.pooling), long_text: Some(meta.encoder.long_text), chunk_batch: None };
        let mut m = TextModel::load(&mdir, &opts)?;
        m.normalize = meta.encoder.normalize;
        if m.weights_sha256 != meta.encoder.weights_sha256 {
            return Err(Error::Model(format!("{}: the encoder weights differ from the ones the bundle {} was trained with", mdir.display(), dir.display())));
        }
        if m.tokenizer.sha256 != meta.encoder.tokenizer_sha256 {
            return Err(Error::Model(format!("{}: the tokenizer differs from the one the bundle {} was trained with", mdir.display(), dir.display())));
        }
        if m.encoder.cfg != meta.encoder.config {
            return Err(Error::Model(format!("{}: the encoder config differs from the bundle's", mdir.display())));
        }
        if let Some(t) = &meta.tuned {
            let p = dir.join(bundle::TUNED);
            if crate::weights::file_sha256(&p)? != t.sha256 {
                return Err(Error::input(&p, "does not match the sha256 recorded in bundle.toml"));
            }
            let tw = Weights::open(&p)?;
            let tensors: Vec<(String, Tensor)> = tw.names().iter().map(|n| Ok((n.clone(), tw.tensor(n)?))).collect::<Result<_>>()?;
            crate::models::assign(&m.encoder.vs, &tensors).map_err(|e| Error::input(&p, e.to_string()))?;
            m.weights_sha256 = sha256_hex(format!("{}+{}", m.weights_sha256, t.sha256).as_bytes());
        }
        Ok(TextPredictor { meta, model: m, head })
    }

    /// Class probabilities `[N, classes]`.
    pub fn probabilities(&self, texts: &[String], pairs: Option<&[String]>, cache_root: Option<&Path>, progress: &dyn Progress) -> Result<Tensor> {
        let e = embed(&self.model, texts, pairs, cache_root, 32, Precision::Fp32, progress)?;
        Ok(self.head.forward(&e.features)?.softmax(-1, Kind::Float))
    }

    /// Evaluates on labelled data read with the bundle's columns.
    pub fn evaluate(&self, data: &Path, lossy: bool, cache_root: Option<&Path>, progress: &dyn Progress) -> Result<(Report, Vec<Skip>)> {
        let ds = TextDataset::open(data, &self.meta.columns, Some(&self.meta.labels), lossy)?;
        let probs = self.probabilities(&ds.texts, ds.pairs.as_deref(), cache_root, progress)?;
        let report = metrics::report(&self.meta.labels, &ds.labels, &ranked(&probs)?, 5.min(self.meta.labels.len()));
        Ok((report, ds.skipped))
    }

    /// Top-k labels for each text.
    pub fn predict(&self, texts: &[String], pairs: Option<&[String]>, top_k: usize, progress: &dyn Progress) -> Result<Vec<Vec<(String, f64)>>> {
        let probs = self.probabilities(texts, pairs, None, progress)?;
        let k = top_k.clamp(1, self.meta.labels.len()) as i64;
        let (vals, idx) = probs.topk(k, -1, true, true);
        let vals: Vec<f64> = Vec::try_from(vals.to_kind(Kind::Double).flatten(0, -1))?;
        let idx: Vec<i64> = Vec::try_from(idx.flatten(0, -1))?;
        Ok((0..texts.len()).map(|r| (0..k as usize).map(|j| (self.meta.labels[idx[r * k as usize + j] as usize].clone(), vals[r * k as usize + j])).collect()).collect())
    }
}
