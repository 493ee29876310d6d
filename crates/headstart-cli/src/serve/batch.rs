//! Dynamic batching: requests wait in a bounded queue per model; worker threads, each with its
//! own copy of the model, take up to `max_batch` inputs at a time, or what arrived within
//! `max_wait` of the first, run them as one forward pass and answer each request.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::metrics::Metrics;
use super::model::{self, Input, Top};

/// One request's inputs and where its answer goes.
pub struct Job {
    pub inputs: Vec<Input>,
    pub top_k: usize,
    pub reply: tokio::sync::oneshot::Sender<Result<Vec<Top>, String>>,
}

/// How batches are formed.
#[derive(Clone, Copy)]
pub struct Policy {
    pub max_batch: usize,
    pub max_wait: Duration,
    /// Batch-sized parts of requests waiting at most; beyond it new requests are refused.
    pub queue_size: usize,
}

/// The queue of one model, shared by the HTTP side and its workers.
pub struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    ready: Condvar,
    closed: AtomicBool,
    policy: Policy,
    /// Workers loaded and warmed up.
    pub warm: AtomicUsize,
    pub workers: usize,
    pub name: String,
    metrics: Arc<Metrics>,
}

/// The queue is full: the request is handed back.
pub struct Full;

impl Queue {
    pub fn new(name: &str, policy: Policy, workers: usize, metrics: Arc<Metrics>) -> Arc<Queue> {
        Arc::new(Queue {
            jobs: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            closed: AtomicBool::new(false),
            policy,
            warm: AtomicUsize::new(0),
            workers,
            name: name.into(),
            metrics,
        })
    }

    /// Queues a request's parts (each at most `max_batch` inputs) together, or none of them.
    pub fn push(&self, jobs: Vec<Job>) -> Result<(), Full> {
        let mut q = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        // A request of more parts than the queue holds is taken when the queue is empty.
        if !q.is_empty() && q.len() + jobs.len() > self.policy.queue_size {
            return Err(Full);
        }
        q.extend(jobs);
        self.metrics.queue_depth(&self.name, q.len());
        drop(q);
        self.ready.notify_all();
        Ok(())
    }

    pub fn max_batch(&self) -> usize {
        self.policy.max_batch
    }

    /// Stops the workers once the queue is empty.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.ready.notify_all();
    }

    pub fn is_warm(&self) -> bool {
        self.warm.load(Ordering::SeqCst) == self.workers
    }

    /// The next batch of whole requests, or `None` when closed and drained. Requests whose
    /// client has gone (timed out) are dropped unrun.
    fn next_batch(&self) -> Option<Vec<Job>> {
        let mut q = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let first = loop {
            match q.pop_front() {
                Some(j) if j.reply.is_closed() => continue,
                Some(j) => break j,
                None if self.closed.load(Ordering::SeqCst) => return None,
                None => q = self.ready.wait(q).unwrap_or_else(|p| p.into_inner()),
            }
        };
        let deadline = Instant::now() + self.policy.max_wait;
        let mut n = first.inputs.len();
        let mut batch = vec![first];
        loop {
            while let Some(j) = q.front() {
                if n + j.inputs.len() > self.policy.max_batch {
                    break;
                }
                let j = q.pop_front().expect("front exists");
                if !j.reply.is_closed() {
                    n += j.inputs.len();
                    batch.push(j);
                }
            }
            let now = Instant::now();
            let full = q.front().is_some_and(|j| n + j.inputs.len() > self.policy.max_batch) || n >= self.policy.max_batch;
            if full || now >= deadline || self.closed.load(Ordering::SeqCst) {
                break;
            }
            q = self.ready.wait_timeout(q, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        self.metrics.queue_depth(&self.name, q.len());
        Some(batch)
    }
}

/// Test hook, nothing else: with `HEADSTART_FAULT=serve-delay-ms:N` every batch takes N ms
/// longer, so the queue, timeout and shutdown tests can hold requests in flight.
fn test_delay() -> Option<Duration> {
    let v = std::env::var("HEADSTART_FAULT").ok()?;
    Some(Duration::from_millis(v.strip_prefix("serve-delay-ms:")?.parse().ok()?))
}

/// Starts `queue.workers` threads for the bundle at `dir`; each loads its own copy, warms it up
/// and serves batches until the queue closes.
pub fn spawn_workers(queue: &Arc<Queue>, dir: PathBuf, info: model::Info, torch_threads: usize) -> Vec<std::thread::JoinHandle<()>> {
    (0..queue.workers)
        .map(|w| {
            let (queue, dir, info) = (queue.clone(), dir.clone(), info.clone());
            std::thread::Builder::new()
                .name(format!("model-{}-{w}", queue.name))
                .spawn(move || {
                    tch::set_num_threads(torch_threads as i32);
                    let m = match model::load(&queue.name, &dir, info.requested) {
                        Ok((_, m)) => m,
                        Err(e) => {
                            eprintln!("error: worker {w} of {} could not load {}: {e:#}", queue.name, dir.display());
                            return;
                        }
                    };
                    if let Err(e) = m.predict(vec![info.warm_up_input()], 1) {
                        eprintln!("error: warm-up of {} failed: {e:#}", queue.name);
                        return;
                    }
                    queue.warm.fetch_add(1, Ordering::SeqCst);
                    serve_batches(&queue, m.as_ref());
                })
                .expect("spawning a model worker thread")
        })
        .collect()
}

fn serve_batches(queue: &Queue, m: &dyn model::Model) {
    let delay = test_delay();
    while let Some(batch) = queue.next_batch() {
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        let sizes: Vec<usize> = batch.iter().map(|j| j.inputs.len()).collect();
        let total: usize = sizes.iter().sum();
        queue.metrics.batch(&queue.name, total);
        // One forward pass per top-k asked for (usually one).
        let mut by_k: Vec<(usize, Vec<Job>)> = vec![];
        for j in batch {
            match by_k.iter_mut().find(|(k, _)| *k == j.top_k) {
                Some((_, v)) => v.push(j),
                None => by_k.push((j.top_k, vec![j])),
            }
        }
        for (k, jobs) in by_k {
            let mut inputs = vec![];
            let mut replies = vec![];
            for j in jobs {
                replies.push((j.reply, j.inputs.len()));
                inputs.extend(j.inputs);
            }
            match m.predict(inputs, k) {
                Ok(mut tops) => {
                    for (reply, n) in replies {
                        let rest = tops.split_off(n);
                        let _ = reply.send(Ok(std::mem::replace(&mut tops, rest)));
                    }
                }
                Err(e) => {
                    for (reply, _) in replies {
                        let _ = reply.send(Err(format!("{e:#}")));
                    }
                }
            }
        }
    }
}
