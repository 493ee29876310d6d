//! Progress reporting as an interface: the library reports, the binary renders (bar, JSON
//! lines or nothing).

/// Receives progress of long work. Implementations must be cheap and thread-safe.
pub trait Progress: Sync {
    /// A stage begins with `total` units of work.
    fn start(&self, stage: &str, total: u64);
    fn inc(&self, n: u64);
    fn finish(&self);
    /// A line of information (an epoch's metrics, a warning).
    fn message(&self, _text: &str) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: &str, _: u64) {}
    fn inc(&self, _: u64) {}
    fn finish(&self) {}
}
