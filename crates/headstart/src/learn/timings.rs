//! Where a training run's wall time went: loading, feature extraction (backbone busy, starved,
//! decoding), the head, the whole.

use std::time::Instant;

use serde::Serialize;

use crate::features::ExtractTiming;

/// A `train` run's time, in seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunTimings {
    /// Opening and hashing the weights, reading the data list, building the network.
    pub load_s: f64,
    /// The feature-extraction stage (absent for encoders that do not report it, and when
    /// fine-tuning skips it).
    pub extract: Option<ExtractTiming>,
    /// Everything after loading but extraction: splitting, fitting the head (or fine-tuning),
    /// the bundle.
    pub head_s: f64,
    /// The whole of `train` inside the process (process start-up is outside it).
    pub total_s: f64,
    #[serde(skip)]
    started: Option<Instant>,
    #[serde(skip)]
    loaded: Option<Instant>,
}

impl RunTimings {
    pub fn start() -> RunTimings {
        RunTimings { started: Some(Instant::now()), ..Default::default() }
    }

    fn since(t: Option<Instant>) -> f64 {
        t.map_or(0.0, |t| t.elapsed().as_secs_f64())
    }

    /// Marks the end of loading.
    pub fn loaded(&mut self) {
        self.load_s = Self::since(self.started);
        self.loaded = Some(Instant::now());
    }

    /// Records the extraction's timing and ends the run's clock: the time since loading, less
    /// extraction, is the head's.
    pub fn finish(mut self, extract: Option<ExtractTiming>) -> RunTimings {
        let after_load = Self::since(self.loaded.or(self.started));
        self.head_s = (after_load - extract.map_or(0.0, |e| e.wall_s)).max(0.0);
        self.extract = extract;
        self.total_s = Self::since(self.started);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parts_add_up_to_no_more_than_the_whole() {
        let mut t = RunTimings::start();
        std::thread::sleep(std::time::Duration::from_millis(20));
        t.loaded();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let x = ExtractTiming { wall_s: 0.01, backbone_s: 0.008, ..Default::default() };
        let t = t.finish(Some(x));
        assert!(t.load_s >= 0.02 && t.head_s >= 0.015, "{t:?}");
        assert!(t.load_s + x.wall_s + t.head_s <= t.total_s + 1e-6, "{t:?}");
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["extract"]["backbone_s"], 0.008);
        assert!(v.get("started").is_none());
    }
}
