//! Text transfer learning: a pre-trained encoder and its tokenizer from a Hugging Face model
//! directory (or the hub cache), embeddings through the feature cache, and the fine-tuning
//! learner. Runs go through the text block ([`crate::blocks::text`]) and the shared task layer
//! ([`crate::learn::task`]): a head on cached sentence embeddings, or fine-tuning.

pub mod chunks;
pub mod data;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Kind, Tensor};

use crate::blocks::text::TextBlock;
use crate::bundle;
use crate::cache::{sha256_hex, FeatureCache};
use crate::engine::{autocast_cpu, Precision};
use crate::error::{Error, Result};
use crate::learn::split::Skip;
use crate::learn::task::{self, TrainOutcome};
use crate::metrics::Report;
use crate::models::registry::TEXT_ENTRIES;
use crate::models::text::{pool, sentence_config, Pooling, TextBatch, TextCfg, TextEncoder};
use crate::models::{Encoder, Mode, Stage};
use crate::progress::Progress;
use crate::train::finetune::{first_trainable, FinetuneConfig, Learner, LrFind};
use crate::train::{Head, TrainConfig};
use crate::weights::{LoadReport, Weights};
use chunks::{ChunkBatch, ChunkPooling, LongText};
use data::Columns;
use tokenizer::{Encoded, TextTokenizer};

pub use crate::bundle::{TextBundleMeta, TextEncoderRef as EncoderRef};
pub use crate::models::registry::DEFAULT_TEXT_MODEL;

/// Resolves a text model: a directory, a short name of the registry's text entries (asset
/// cache, then hub cache), or a hub repo id `org/name[@revision]` (hub cache, then download).
pub fn resolve_model_dir(spec: &str) -> Result<PathBuf> {
    let p = Path::new(spec);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    let lower = spec.to_ascii_lowercase();
    let (repo, revision) = match TEXT_ENTRIES.iter().find(|e| e.name == lower || e.source.repo.eq_ignore_ascii_case(spec)) {
        Some(e) => {
            let d = crate::assets::asset_dir().join(e.source.asset);
            if d.join("config.json").is_file() {
                return Ok(d);
            }
            (e.source.repo.to_string(), e.source.revision.to_string())
        }
        None => match spec.split_once('@') {
            Some((r, rev)) => (r.to_string(), rev.to_string()),
            None => (spec.to_string(), "main".to_string()),
        },
    };
    if !repo.contains('/') && !p.exists() {
        return Err(Error::Model(format!(
            "text model `{spec}` is neither a directory nor a hub repo id (org/name); known names: {}",
            TEXT_ENTRIES.iter().map(|e| e.name).collect::<Vec<_>>().join(", ")
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
            Some(n) if n > limit => return Err(Error::Usage(format!("setting `max_length` {n} exceeds what {} allows ({limit} tokens)", dir.display()))),
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

impl Encoder for TextModel {
    type Input = TextBatch;
    fn stages(&self) -> &[Stage] {
        self.encoder.stages()
    }
    fn forward_from(&self, _: &Tensor, b: &TextBatch, first: usize, mode: Mode) -> Tensor {
        self.encoder.forward_from(b, first, mode)
    }
    fn pool(&self, h: &Tensor, b: &TextBatch) -> Tensor {
        pool(h, &b.mask, self.pooling, self.normalize)
    }
    fn num_features(&self) -> i64 {
        self.dim()
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
    /// Where the time went: `decode_s` is tokenising (on the calling thread, so
    /// `decode_threads` is 0 and the encoder is never starved), `backbone_s` the encoder's
    /// batches; the rest of `wall_s` is cache lookups and writes.
    pub timing: crate::learn::timings::ExtractTiming,
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
    let started = std::time::Instant::now();
    let precision = precision.resolve(crate::precision::Family::Text);
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
    let mut timing = crate::learn::timings::ExtractTiming::default();
    progress.start("embed", todo.len() as u64);
    for group in todo.chunks(EMBED_GROUP) {
        let group_texts: Vec<String> = group.iter().map(|&i| texts[i].clone()).collect();
        let group_pairs: Option<Vec<String>> = pairs.map(|p| group.iter().map(|&i| p[i].clone()).collect());
        let t = std::time::Instant::now();
        let docs = chunks::encode_docs(&model.tokenizer, &group_texts, group_pairs.as_deref(), &lt)?;
        timing.decode_s += t.elapsed().as_secs_f64();
        chunks += docs.iter().map(Vec::len).sum::<usize>();
        let backbone = std::cell::Cell::new(0f64);
        let embed_batch = |rows: &[&Encoded]| -> Result<Vec<f32>> {
            let t = std::time::Instant::now();
            let v = Vec::try_from(model.embed_batch(&model.tokenizer.pad(rows), precision).flatten(0, -1))?;
            backbone.set(backbone.get() + t.elapsed().as_secs_f64());
            Ok(v)
        };
        chunks::embed_docs(&docs, dim, batch_size, lt.pooling, embed_batch, |j, v| {
            let i = group[j];
            out[i * dim..(i + 1) * dim].copy_from_slice(v);
            progress.inc(1);
            cache.as_ref().map_or(Ok(()), |c| c.put(&keys[i], v))
        })?;
        timing.backbone_s += backbone.get();
    }
    progress.finish();
    timing.wall_s = started.elapsed().as_secs_f64();
    Ok(Embedded { features: Tensor::from_slice(&out).view([texts.len() as i64, dim as i64]), computed: todo.len(), reused, chunks, timing })
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

impl TextTrainRequest {
    /// A request on `data` with the library's defaults: the default text model, the `text`
    /// and `label` columns, a stratified validation split, no cache, no run directory, a head
    /// on frozen embeddings.
    pub fn for_data(data: PathBuf) -> TextTrainRequest {
        TextTrainRequest {
            data,
            val: None,
            val_split: crate::learn::task::DEFAULT_VAL_SPLIT,
            columns: Columns::default(),
            lossy: false,
            model: DEFAULT_TEXT_MODEL.into(),
            model_options: TextModelOptions::default(),
            out: PathBuf::new(),
            cache: None,
            eval_batch_size: crate::learn::task::DEFAULT_EVAL_BATCH,
            precision: crate::precision::DEFAULT_EXTRACT_PRECISION,
            train: TrainConfig::default(),
            finetune: None,
        }
    }
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
    pub fn new(
        model: &'a TextModel,
        num_classes: i64,
        docs: &'a [Vec<Encoded>],
        labels: &[i64],
        unfreeze: crate::train::finetune::Unfreeze,
        precision: Precision,
    ) -> Result<TextLearner<'a>> {
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
    fn head(&self) -> &nn::Linear {
        &self.head
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

/// Trains a text classifier per `req`; with `resume`, continues a fine-tuning run.
pub fn train_text(req: &TextTrainRequest, resume: bool, progress: &dyn Progress) -> Result<TrainOutcome> {
    task::train(&TextBlock::for_request(req), resume, progress)
}

/// The learning-rate range test for fine-tuning a text model on `req.data` (settings: the
/// request's fine-tuning, else [`text_finetune_defaults`]).
pub fn lr_find_text(req: &TextTrainRequest, min_lr: f64, max_lr: f64, steps: usize, progress: &dyn Progress) -> Result<LrFind> {
    let ft = req.finetune.clone().unwrap_or_else(text_finetune_defaults);
    let req = TextTrainRequest { finetune: Some(ft.clone()), ..req.clone() };
    task::lr_find(&TextBlock::for_request(&req), &ft, min_lr, max_lr, steps, progress)
}

/// A text bundle ready to run.
pub struct TextPredictor {
    pub meta: TextBundleMeta,
    model: TextModel,
    head: Head,
    /// Precision of the encoder pass: the bundle's unless [`TextPredictor::use_precision`].
    precision: Precision,
}

impl TextPredictor {
    /// Loads a bundle (format 1 or 2); `model` overrides where the encoder is found (else the
    /// bundle's own reference). The encoder's weights and tokenizer must be the ones it was
    /// trained with.
    pub fn load(dir: &Path, model: Option<&str>) -> Result<TextPredictor> {
        let (b, head) = bundle::read_bundle(dir)?;
        let meta = b.text(dir)?;
        let spec = model.unwrap_or(&meta.encoder.model);
        let mdir = resolve_model_dir(spec).map_err(|e| Error::Model(format!("{e} (needed by the bundle {})", dir.display())))?;
        let opts = TextModelOptions {
            max_length: Some(meta.encoder.max_length),
            pooling: Some(meta.encoder.pooling),
            long_text: Some(meta.encoder.long_text),
            chunk_batch: None,
        };
        let mut m = TextModel::load(&mdir, &opts)?;
        m.normalize = meta.encoder.normalize;
        let mismatch = |what: &str| Error::bundle(dir, format!("{}: {what} the bundle was trained with", mdir.display()));
        if m.weights_sha256 != meta.encoder.weights_sha256 {
            return Err(mismatch("the encoder weights differ from the ones"));
        }
        if m.tokenizer.sha256 != meta.encoder.tokenizer_sha256 {
            return Err(mismatch("the tokenizer differs from the one"));
        }
        if m.encoder.cfg != meta.encoder.config {
            return Err(mismatch("the encoder config differs from the one"));
        }
        m.weights_sha256 = bundle::load_tuned(dir, meta.tuned.as_ref(), &m.encoder.vs, &m.weights_sha256)?;
        let precision = meta.precision;
        Ok(TextPredictor { meta, model: m, head, precision })
    }

    /// Runs the encoder at `requested` (`auto` resolved for this machine) instead of the
    /// precision the head was trained on; returns a warning when the two differ.
    pub fn use_precision(&mut self, requested: Precision) -> Option<String> {
        let (p, warning) = crate::precision::inference_precision(self.meta.precision, Some(requested), crate::precision::Family::Text);
        self.precision = p;
        warning
    }

    /// The precision the encoder runs at.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The bundle's columns with the ones given in their place (a test file whose columns are
    /// named differently from the training file's).
    pub fn columns(&self, text: Option<&str>, label: Option<&str>, pair: Option<&str>) -> Columns {
        let c = &self.meta.columns;
        Columns {
            text: text.unwrap_or(&c.text).to_string(),
            label: label.unwrap_or(&c.label).to_string(),
            pair: pair.map(str::to_string).or_else(|| c.pair.clone()),
        }
    }

    /// The text block reading data as the bundle says (or with other `columns`).
    pub fn block(&self, columns: Option<&Columns>, lossy: bool, cache_root: Option<&Path>) -> TextBlock<'static> {
        TextBlock::for_predict(columns.unwrap_or(&self.meta.columns).clone(), lossy, cache_root, self.precision)
    }

    /// Class probabilities `[N, classes]`.
    pub fn probabilities(&self, texts: &[String], pairs: Option<&[String]>, cache_root: Option<&Path>, progress: &dyn Progress) -> Result<Tensor> {
        let data = crate::blocks::text::TextData { texts: texts.to_vec(), pairs: pairs.map(<[String]>::to_vec), origins: vec![] };
        Ok(task::probabilities(&self.block(None, false, cache_root), &self.model, &self.head, &data, progress)?.0)
    }

    /// Evaluates on labelled data read with the bundle's columns.
    pub fn evaluate(&self, data: &Path, lossy: bool, cache_root: Option<&Path>, progress: &dyn Progress) -> Result<(Report, Vec<Skip>)> {
        self.evaluate_with(data, None, lossy, cache_root, progress)
    }

    /// Scores labelled data read with `columns` (default: the bundle's), example by example.
    pub fn score(&self, data: &Path, columns: Option<&Columns>, lossy: bool, cache_root: Option<&Path>, progress: &dyn Progress) -> Result<task::Scored> {
        task::score(&self.block(columns, lossy, cache_root), &self.model, &self.head, &self.meta.labels, data, progress)
    }

    /// Evaluates on labelled data read with `columns` (default: the bundle's).
    pub fn evaluate_with(
        &self,
        data: &Path,
        columns: Option<&Columns>,
        lossy: bool,
        cache_root: Option<&Path>,
        progress: &dyn Progress,
    ) -> Result<(Report, Vec<Skip>)> {
        task::evaluate(&self.block(columns, lossy, cache_root), &self.model, &self.head, &self.meta.labels, data, progress)
    }

    /// Top-k labels for each text.
    pub fn predict(&self, texts: &[String], pairs: Option<&[String]>, top_k: usize, progress: &dyn Progress) -> Result<Vec<Vec<(String, f64)>>> {
        let probs = self.probabilities(texts, pairs, None, progress)?;
        task::top_k(&probs, &self.meta.labels, top_k)
    }
}
