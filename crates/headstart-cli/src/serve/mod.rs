//! `headstart serve`: bundles over HTTP (axum on tokio), with dynamic batching on dedicated
//! model threads, request limits, optional bearer-token auth, Prometheus metrics and graceful
//! shutdown on SIGTERM / SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

mod batch;
mod http;
mod metrics;
mod model;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Bundles to serve, each `PATH` or `NAME=PATH`. The name defaults to the bundle folder's
    /// name, or its run folder's when the folder is called `bundle`.
    #[arg(required = true, value_name = "BUNDLE")]
    bundles: Vec<String>,
    /// Address to listen on (port 0 picks a free one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Most inputs in one forward pass.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// How long the first request of a batch waits for others, in milliseconds.
    #[arg(long, default_value_t = 5)]
    max_wait_ms: u64,
    /// Model worker threads per bundle, each with its own copy of the model.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Requests (counted in parts of --max-batch inputs) waiting per bundle at most; beyond it
    /// requests get 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    queue_size: usize,
    /// Largest request body, in bytes (413 beyond).
    #[arg(long, default_value_t = 32 << 20)]
    max_body_bytes: usize,
    /// Most inputs in one request.
    #[arg(long, default_value_t = 256)]
    max_inputs: usize,
    /// Longest text input, in characters.
    #[arg(long, default_value_t = 100_000)]
    max_text_chars: usize,
    /// Per-request time limit in milliseconds (504 beyond).
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// A file holding the API key: requests to /v1/* and /metrics then need
    /// `Authorization: Bearer <key>`.
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// Encoder precision of every bundle: auto, fp32 or bf16 (default: each bundle's own, the
    /// one its head was trained on; another is warned about).
    #[arg(long, value_enum)]
    precision: Option<crate::PrecisionArg>,
}

/// A bundle argument: `NAME=PATH` or `PATH`.
fn named(arg: &str) -> Result<(String, PathBuf)> {
    let (name, path) = match arg.split_once('=') {
        Some((n, p)) if !n.contains('/') => (n.to_string(), PathBuf::from(p)),
        _ => {
            let p = PathBuf::from(arg);
            let dir = std::fs::canonicalize(&p).unwrap_or_else(|_| p.clone());
            let mut name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name == "bundle" {
                name = dir.parent().and_then(|d| d.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or(name);
            }
            (name, p)
        }
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        bail!("bundle name {name:?} (from {arg:?}) must be letters, digits, '.', '_' or '-'; give NAME=PATH");
    }
    Ok((name, path))
}

fn read_key(path: &std::path::Path) -> Result<String> {
    let key = std::fs::read_to_string(path).with_context(|| format!("reading the API key file {}", path.display()))?;
    let key = key.trim();
    if key.is_empty() {
        bail!("the API key file {} is empty", path.display());
    }
    Ok(headstart::features::sha256_hex(key.as_bytes()))
}

pub fn run(a: ServeArgs) -> Result<()> {
    if a.max_batch == 0 || a.threads == 0 || a.queue_size == 0 {
        bail!("--max-batch, --threads and --queue-size must be at least 1");
    }
    let key_sha = a.api_key_file.as_deref().map(read_key).transpose()?;
    if key_sha.is_none() && !a.addr.ip().is_loopback() {
        eprintln!("warning: listening on {} without --api-key-file: anyone who can reach it can use the models", a.addr);
    }
    let metrics = Arc::new(metrics::Metrics::default());
    let policy = batch::Policy { max_batch: a.max_batch, max_wait: Duration::from_millis(a.max_wait_ms), queue_size: a.queue_size };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let torch_threads = (cores / (a.threads * a.bundles.len())).max(1);
    let (mut models, mut workers) = (vec![], vec![]);
    for arg in &a.bundles {
        let (name, dir) = named(arg)?;
        if models.iter().any(|m: &http::Served| m.info.name == name) {
            bail!("two bundles are named {name:?}; give NAME=PATH");
        }
        // Loaded once here so a bad bundle stops the server before it listens.
        let requested = a.precision.map(crate::PrecisionArg::value);
        let (info, _) = model::load(&name, &dir, requested).with_context(|| format!("loading the bundle {}", dir.display()))?;
        if let Some(w) = &info.precision_warning {
            eprintln!("warning: {name}: {}", w.replace("setting `precision`", "--precision"));
        }
        let queue = batch::Queue::new(&name, policy, a.threads, metrics.clone());
        workers.extend(batch::spawn_workers(&queue, dir, info.clone(), torch_threads));
        models.push(http::Served { info, queue });
    }
    let limits =
        http::Limits { max_body: a.max_body_bytes, max_inputs: a.max_inputs, max_text_chars: a.max_text_chars, timeout: Duration::from_millis(a.timeout_ms) };
    let app = Arc::new(http::App { models, metrics, key_sha, limits, budget: headstart::features::Budget::new(headstart::features::DECODE_BUDGET) });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(listen(a.addr, app.clone()))?;
    for m in &app.models {
        m.queue.close();
    }
    for w in workers {
        let _ = w.join();
    }
    eprintln!("stopped");
    Ok(())
}

async fn listen(addr: SocketAddr, app: Arc<http::App>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    let names: Vec<&str> = app.models.iter().map(|m| m.info.name.as_str()).collect();
    eprintln!("serving {} on http://{local}", names.join(", "));
    axum::serve(listener, http::router(app.clone())).with_graceful_shutdown(shutdown_signal()).await.context("serving HTTP")
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("shutting down: finishing requests in flight");
}
