//! Counters for `/metrics`, rendered in the Prometheus text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds of the request latency histogram, seconds.
const LATENCY_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Upper bounds of the batch size histogram, inputs.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

#[derive(Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    n: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len()];
        }
        for (c, b) in self.counts.iter_mut().zip(bounds) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.n += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in bounds.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}", self.counts.get(i).copied().unwrap_or(0));
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.n);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.n);
    }
}

#[derive(Default)]
struct State {
    /// (route, status) → requests.
    requests: BTreeMap<(String, u16), u64>,
    /// route → latency.
    latency: BTreeMap<String, Histogram>,
    /// model → batch sizes.
    batches: BTreeMap<String, Histogram>,
    /// model → requests waiting.
    queue: BTreeMap<String, usize>,
}

/// Every metric the server keeps.
#[derive(Default)]
pub struct Metrics(Mutex<State>);

impl Metrics {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        let mut s = self.state();
        *s.requests.entry((route.to_string(), status)).or_default() += 1;
        s.latency.entry(route.to_string()).or_default().observe(LATENCY_BUCKETS, seconds);
    }

    pub fn batch(&self, model: &str, size: usize) {
        self.state().batches.entry(model.to_string()).or_default().observe(BATCH_BUCKETS, size as f64);
    }

    pub fn queue_depth(&self, model: &str, depth: usize) {
        self.state().queue.insert(model.to_string(), depth);
    }

    /// The Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let s = self.state();
        let mut out = String::new();
        out += "# HELP headstart_requests_total HTTP requests by route and status code.\n# TYPE headstart_requests_total counter\n";
        for ((route, status), n) in &s.requests {
            let _ = writeln!(out, "headstart_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
        }
        out += "# HELP headstart_request_duration_seconds Time from request to response.\n# TYPE headstart_request_duration_seconds histogram\n";
        for (route, h) in &s.latency {
            h.render(&mut out, "headstart_request_duration_seconds", &format!("route=\"{route}\""), LATENCY_BUCKETS);
        }
        out += "# HELP headstart_batch_size Inputs per forward pass.\n# TYPE headstart_batch_size histogram\n";
        for (model, h) in &s.batches {
            h.render(&mut out, "headstart_batch_size", &format!("model=\"{model}\""), BATCH_BUCKETS);
        }
        out += "# HELP headstart_queue_depth Requests waiting for a model worker.\n# TYPE headstart_queue_depth gauge\n";
        for (model, d) in &s.queue {
            let _ = writeln!(out, "headstart_queue_depth{{model=\"{model}\"}} {d}");
        }
        out
    }
}
