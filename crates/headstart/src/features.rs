//! Frozen-backbone feature extraction with a persistent, content-addressed cache.
//!
//! Cache key = sha256(weights sha256, preprocessing config, layer, precision) → a directory; inside it,
//! one small file per image named by the sha256 of the image's bytes. A second run on the same
//! data (another head, other hyper-parameters, an added class folder) runs the backbone only
//! on images whose bytes it has not seen. Decoding runs on worker threads and overlaps with
//! the backbone. The bytes those threads hold at once (file contents and decoder buffers) are
//! bounded by a budget, so a folder of huge or oddly shaped images is decoded one at a time
//! rather than all at once; prepared tensors have a fixed size and the queue holds a fixed
//! number of them.
//!
//! The backbone runs at a concrete [`Precision`]: bf16 under CPU autocast, and convolutional
//! networks on channels-last batches at every precision. Features are stored as fp32 whatever
//! computed them; the precision is part of the cache key.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

pub use crate::cache::{default_cache_root, sha256_hex, FeatureCache};
use crate::data::Skip;
use crate::engine::{autocast_cpu, Precision};
use crate::error::{Error, Result};
use crate::learn::timings::ExtractTiming;
use crate::models::registry::ImageInput;
use crate::models::{Mode, Model};
use crate::preprocess::{decode_prepared, header_of, DecodeOptions, Source};
use crate::progress::Progress;

/// The image cache key: weights, preprocessing, layer, precision.
impl FeatureCache {
    /// The cache of features computed at `precision` (a concrete one: `auto` is an error).
    pub fn new(root: &Path, weights_sha256: &str, input: &ImageInput, layer: &str, dim: usize, precision: Precision) -> Result<FeatureCache> {
        Self::keyed(root, &Self::key(weights_sha256, input, layer, dim, precision)?, dim)
    }

    /// The key [`new`](Self::new) stores features under.
    pub fn key(weights_sha256: &str, input: &ImageInput, layer: &str, dim: usize, precision: Precision) -> Result<serde_json::Value> {
        if precision == Precision::Auto {
            return Err(Error::Model("feature cache: resolve the `auto` precision before keying features".into()));
        }
        Ok(serde_json::json!({"weights": weights_sha256, "input": input, "layer": layer, "dim": dim, "precision": precision}))
    }
}

/// Features for the images that could be used, in input order.
pub struct Extracted {
    /// `[n_ok, dim]` float features.
    pub features: Tensor,
    /// Indices (into the input list) of the rows of `features`.
    pub ok: Vec<usize>,
    pub skipped: Vec<Skip>,
    /// Backbone passes run / cache hits.
    pub computed: usize,
    pub reused: usize,
    /// Truncated files kept because the decode options allow them.
    pub truncated_kept: usize,
    pub timing: ExtractTiming,
}

/// The most bytes the decoding threads of one extraction hold at once.
pub const DECODE_BUDGET: u64 = 768 << 20;

/// A byte budget shared by worker threads. A request larger than the whole budget is granted
/// when nothing else is held, so one huge image is decoded alone instead of refused.
pub struct Budget {
    cap: u64,
    held: Mutex<u64>,
    freed: Condvar,
}

/// Bytes held from a [`Budget`], given back on drop.
pub struct Ticket<'a> {
    budget: &'a Budget,
    bytes: u64,
}

impl Budget {
    pub fn new(cap: u64) -> Budget {
        Budget { cap, held: Mutex::new(0), freed: Condvar::new() }
    }

    /// Waits until `bytes` fit (or nothing else is held), then holds them.
    pub fn take(&self, bytes: u64) -> Ticket<'_> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while *held > 0 && *held + bytes > self.cap {
            held = self.freed.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        *held += bytes;
        Ticket { budget: self, bytes }
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        *self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut held = self.budget.held.lock().unwrap_or_else(|p| p.into_inner());
        *held -= self.bytes;
        self.budget.freed.notify_all();
    }
}

enum Job {
    Cached(usize, Vec<f32>),
    /// A prepared image, its content hash, and whether it was truncated.
    Decoded(usize, Tensor, String, bool),
    Failed(usize, String),
}

/// After decoding an image that needed more than this, free memory is handed back to the
/// system before the next large image starts (see [`crate::engine::release_free_memory`]).
const RELEASE_ABOVE: u64 = 32 << 20;

/// Files larger than this are hashed and decoded as they are read rather than loaded whole.
const STREAM_ABOVE: u64 = 64 << 20;

/// The sha256 of a file, read in pieces.
fn file_sha256(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads, hashes and (unless cached) decodes and prepares one file, within the budget.
fn load_one(path: &Path, input: &ImageInput, cache: Option<&FeatureCache>, opts: &DecodeOptions, budget: &Budget, i: usize) -> Job {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let streamed = len > STREAM_ABOVE;
    let in_memory = if streamed { 0 } else { len };
    let ticket = budget.take(in_memory);
    let read = if streamed {
        file_sha256(path).map(|h| (vec![], h))
    } else {
        std::fs::read(path).map(|b| {
            let h = sha256_hex(&b);
            (b, h)
        })
    };
    let (bytes, hash) = match read {
        Ok(x) => x,
        Err(e) => return Job::Failed(i, format!("cannot read: {e}")),
    };
    if let Some(v) = cache.and_then(|c| c.get(&hash)) {
        return Job::Cached(i, v);
    }
    let src = if streamed { Source::File(path) } else { Source::Bytes(&bytes) };
    let need = match header_of(src, opts) {
        Ok(h) => h.working_bytes(),
        Err(m) => return Job::Failed(i, m),
    };
    drop(ticket);
    let _ticket = budget.take(in_memory + need);
    let job = match decode_prepared(src, input, opts) {
        Ok((t, truncated)) => Job::Decoded(i, t, hash, truncated),
        Err(m) => Job::Failed(i, m),
    };
    drop(bytes);
    if in_memory + need > RELEASE_ABOVE {
        crate::engine::release_free_memory();
    }
    job
}

/// Total backbone images processed by this process, for tests and reports.
pub static BACKBONE_IMAGES: AtomicUsize = AtomicUsize::new(0);

/// Pooled features of one prepared batch, `[B, dim]` fp32, at `precision` (concrete): bf16
/// under CPU autocast; convolutional networks channels-last.
pub fn forward_pooled(model: &Model, x: &Tensor, precision: Precision) -> Tensor {
    let x = if model.arch.family() == crate::precision::Family::Conv { crate::precision::channels_last(x) } else { x.shallow_clone() };
    tch::no_grad(|| autocast_cpu(precision, || model.backbone.pool(&model.backbone.forward_features(&x, Mode::Eval)))).to_kind(Kind::Float)
}

/// Runs the frozen backbone (eval mode, no autograd) over `paths` at `precision` (concrete:
/// resolve `auto` first), reusing cached features.
#[allow(clippy::too_many_arguments)]
pub fn extract(
    model: &Model,
    input: &ImageInput,
    paths: &[PathBuf],
    cache: Option<&FeatureCache>,
    batch_size: usize,
    opts: &DecodeOptions,
    precision: Precision,
    progress: &dyn Progress,
) -> Result<Extracted> {
    let b = &model.backbone;
    let forward = |x: &Tensor| forward_pooled(model, x, precision);
    extract_with(&forward, b.num_features() as usize, input, paths, cache, batch_size, opts, progress)
}

/// The decoding side of an extraction: worker threads take the next path, read, hash and
/// decode it within the shared budget, and send the result on.
struct Decoders<'a> {
    paths: &'a [PathBuf],
    input: &'a ImageInput,
    cache: Option<&'a FeatureCache>,
    opts: &'a DecodeOptions,
    next: AtomicUsize,
    budget: Budget,
    decode_nanos: AtomicUsize,
}

impl Decoders<'_> {
    /// One worker's loop: until the paths run out or the receiver is gone.
    fn work(&self, tx: mpsc::SyncSender<Job>) {
        loop {
            let i = self.next.fetch_add(1, Ordering::SeqCst);
            if i >= self.paths.len() {
                break;
            }
            let t = Instant::now();
            let job = load_one(&self.paths[i], self.input, self.cache, self.opts, &self.budget, i);
            self.decode_nanos.fetch_add(t.elapsed().as_nanos() as usize, Ordering::Relaxed);
            if tx.send(job).is_err() {
                break;
            }
        }
    }
}

/// The encoder side of an extraction: collects decoded images into batches, runs `forward`
/// on each full batch, and keeps every path's features (from the cache or computed).
struct Collector<'a> {
    forward: &'a dyn Fn(&Tensor) -> Tensor,
    dim: usize,
    paths: &'a [PathBuf],
    cache: Option<&'a FeatureCache>,
    batch_size: usize,
    progress: &'a dyn Progress,
    rows: Vec<Option<Vec<f32>>>,
    /// Decoded images waiting for a batch: path index, prepared tensor, content hash.
    pending: Vec<(usize, Tensor, String)>,
    skipped: Vec<Skip>,
    computed: usize,
    reused: usize,
    truncated_kept: usize,
    backbone: Duration,
    starved: Duration,
}

impl Collector<'_> {
    /// Takes jobs until every sender is gone, then runs the last partial batch.
    fn drain(&mut self, rx: mpsc::Receiver<Job>) -> Result<()> {
        loop {
            let t = Instant::now();
            let Ok(job) = rx.recv() else { break };
            self.starved += t.elapsed();
            self.take(job)?;
        }
        self.flush()
    }

    fn take(&mut self, job: Job) -> Result<()> {
        match job {
            Job::Cached(i, v) => {
                self.rows[i] = Some(v);
                self.reused += 1;
                self.progress.inc(1);
            }
            Job::Failed(i, reason) => {
                self.skipped.push(Skip { path: self.paths[i].clone(), reason });
                self.progress.inc(1);
            }
            Job::Decoded(i, t, h, truncated) => {
                self.truncated_kept += truncated as usize;
                self.pending.push((i, t, h));
                if self.pending.len() >= self.batch_size {
                    self.flush()?;
                }
            }
        }
        Ok(())
    }

    /// Runs the encoder on the pending images and stores (and caches) their features.
    fn flush(&mut self) -> Result<()> {
        self.computed += self.pending.len();
        self.progress.inc(self.pending.len() as u64);
        if self.pending.is_empty() {
            return Ok(());
        }
        let t = Instant::now();
        let xs: Vec<Tensor> = self.pending.iter().map(|(_, t, _)| t.shallow_clone()).collect();
        let x = Tensor::f_stack(&xs, 0)?;
        let f = tch::no_grad(|| (self.forward)(&x)).to_kind(Kind::Float);
        BACKBONE_IMAGES.fetch_add(self.pending.len(), Ordering::SeqCst);
        let flat: Vec<f32> = Vec::try_from(f.flatten(0, -1))?;
        self.backbone += t.elapsed();
        let dim = self.dim;
        for (k, (i, _, hash)) in self.pending.drain(..).enumerate() {
            let v = flat[k * dim..(k + 1) * dim].to_vec();
            if let Some(c) = self.cache {
                c.put(&hash, &v)?;
            }
            self.rows[i] = Some(v);
        }
        Ok(())
    }

    /// The features of the usable paths, in input order, and what the extraction counted.
    fn finish(self, started: Instant, decode_s: f64, decode_threads: usize) -> Extracted {
        let mut ok = vec![];
        let mut flat = Vec::with_capacity(self.paths.len() * self.dim);
        for (i, r) in self.rows.into_iter().enumerate() {
            if let Some(v) = r {
                ok.push(i);
                flat.extend(v);
            }
        }
        let mut skipped = self.skipped;
        skipped.sort_by(|a, b| a.path.cmp(&b.path));
        let features = Tensor::from_slice(&flat).view([ok.len() as i64, self.dim as i64]);
        let timing = ExtractTiming {
            wall_s: started.elapsed().as_secs_f64(),
            backbone_s: self.backbone.as_secs_f64(),
            starved_s: self.starved.as_secs_f64(),
            decode_s,
            decode_threads,
        };
        Extracted { features, ok, skipped, computed: self.computed, reused: self.reused, truncated_kept: self.truncated_kept, timing }
    }
}

/// [`extract`] with any featuriser: `forward` maps prepared images `[B, 3, S, S]` to `[B, dim]`
/// (it runs without autograd, on the calling thread).
#[allow(clippy::too_many_arguments)]
pub fn extract_with(
    forward: &dyn Fn(&Tensor) -> Tensor,
    dim: usize,
    input: &ImageInput,
    paths: &[PathBuf],
    cache: Option<&FeatureCache>,
    batch_size: usize,
    opts: &DecodeOptions,
    progress: &dyn Progress,
) -> Result<Extracted> {
    let started = Instant::now();
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(1, 8);
    let decoders = Decoders { paths, input, cache, opts, next: AtomicUsize::new(0), budget: Budget::new(DECODE_BUDGET), decode_nanos: AtomicUsize::new(0) };
    let mut collector = Collector {
        forward,
        dim,
        paths,
        cache,
        batch_size,
        progress,
        rows: vec![None; paths.len()],
        pending: vec![],
        skipped: vec![],
        computed: 0,
        reused: 0,
        truncated_kept: 0,
        backbone: Duration::ZERO,
        starved: Duration::ZERO,
    };
    let (tx, rx) = mpsc::sync_channel::<Job>(batch_size * 2);
    progress.start("features", paths.len() as u64);
    let result = std::thread::scope(|s| -> Result<()> {
        for _ in 0..workers {
            let (tx, decoders) = (tx.clone(), &decoders);
            s.spawn(move || decoders.work(tx));
        }
        drop(tx);
        collector.drain(rx)
    });
    progress.finish();
    result?;
    let decode_s = decoders.decode_nanos.load(Ordering::Relaxed) as f64 * 1e-9;
    Ok(collector.finish(started, decode_s, workers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_key_names_the_precision() {
        let input = crate::models::registry::find("mobilenet_v2").expect("registered").input.clone();
        let key = |p| FeatureCache::key("abc", &input, "pooled", 1280, p);
        let (a, b) = (key(Precision::Fp32).unwrap(), key(Precision::Bf16).unwrap());
        assert_ne!(a, b);
        assert_eq!((a["precision"].as_str(), b["precision"].as_str()), (Some("fp32"), Some("bf16")));
        assert!(key(Precision::Auto).unwrap_err().to_string().contains("auto"));
        let root = tempfile::tempdir().unwrap();
        let dir = |p| FeatureCache::new(root.path(), "abc", &input, "pooled", 1280, p).unwrap().dir().to_path_buf();
        assert_ne!(dir(Precision::Fp32), dir(Precision::Bf16));
        assert_eq!(dir(Precision::Bf16), dir(Precision::Bf16));
    }
}
