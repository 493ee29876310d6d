//! Where a training run's wall time went: loading, feature extraction (backbone busy, starved,
//! decoding), the head, the whole; when fine-tuning, the optimiser steps themselves.

use std::time::Instant;

use serde::Serialize;

/// Where a feature extraction's wall time went, in seconds (every modality reports it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ExtractTiming {
    /// The whole extraction.
    pub wall_s: f64,
    /// The backbone's forward passes (with stacking the batch and copying features out).
    pub backbone_s: f64,
    /// The backbone thread waiting for decoded inputs.
    pub starved_s: f64,
    /// Reading, hashing, decoding and preparing, summed over the decoding threads.
    pub decode_s: f64,
    /// Decoding threads (they share the cores with the backbone's intra-op threads).
    pub decode_threads: usize,
}

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
    /// Fine-tuning: the optimiser steps' own time (part of `head_s`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finetune: Option<StepTimings>,
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

    /// Adds the fine-tuning loop's step figures.
    pub fn with_steps(mut self, steps: Option<StepTimings>) -> RunTimings {
        self.finetune = steps;
        self
    }
}

/// Steps the first steps' figures leave out in [`StepTimings::steady_samples_per_s`]: they warm
/// allocators and kernels up.
pub const WARMUP_STEPS: usize = 2;

/// The fine-tuning loop's optimiser steps as this process ran them. A step's time covers
/// assembling its batch (or micro-batches), forward, backward and the optimiser update; it
/// leaves out the learner's set-up, the head phase, evaluation passes and checkpoint writes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StepTimings {
    /// Making the learner before the first step (for Wav2Vec2 audio: the frozen feature
    /// encoder's one pass over every clip).
    pub setup_s: f64,
    /// Optimiser steps taken (skipped non-finite ones included), and the examples in them.
    pub steps: usize,
    pub samples: usize,
    pub step_s_total: f64,
    pub step_s_median: f64,
    /// `samples / step_s_total`.
    pub samples_per_s: f64,
    /// The same without the first [`WARMUP_STEPS`] steps (`None` with no step after them).
    pub steady_samples_per_s: Option<f64>,
}

impl StepTimings {
    /// Figures from each step's seconds and examples, in order.
    pub fn from_steps(setup_s: f64, steps: &[(f64, usize)]) -> StepTimings {
        // (seconds, examples, examples per second) over some steps.
        let rate = |s: &[(f64, usize)]| {
            let t: f64 = s.iter().map(|x| x.0).sum();
            let n: usize = s.iter().map(|x| x.1).sum();
            (t, n, if t > 0.0 { n as f64 / t } else { 0.0 })
        };
        let (step_s_total, samples, samples_per_s) = rate(steps);
        let mut secs: Vec<f64> = steps.iter().map(|x| x.0).collect();
        secs.sort_by(f64::total_cmp);
        let n = secs.len();
        let step_s_median = match n {
            0 => 0.0,
            _ if n % 2 == 1 => secs[n / 2],
            _ => (secs[n / 2 - 1] + secs[n / 2]) / 2.0,
        };
        let steady_samples_per_s = (n > WARMUP_STEPS).then(|| rate(&steps[WARMUP_STEPS..]).2);
        StepTimings { setup_s, steps: n, samples, step_s_total, step_s_median, samples_per_s, steady_samples_per_s }
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
        assert!(v.get("finetune").is_none(), "no fine-tuning, no step figures");
    }

    #[test]
    fn step_figures_come_from_the_steps() {
        let s = StepTimings::from_steps(0.5, &[(1.0, 8), (0.4, 8), (0.2, 8), (0.3, 8), (0.1, 3)]);
        assert_eq!((s.steps, s.samples), (5, 35));
        assert!((s.step_s_total - 2.0).abs() < 1e-12 && (s.step_s_median - 0.3).abs() < 1e-12, "{s:?}");
        assert!((s.samples_per_s - 17.5).abs() < 1e-9, "{s:?}");
        // Without the first two steps: 19 examples in 0.6 s.
        assert!((s.steady_samples_per_s.unwrap() - 19.0 / 0.6).abs() < 1e-9, "{s:?}");
        let even = StepTimings::from_steps(0.0, &[(1.0, 1), (3.0, 1)]);
        assert_eq!((even.step_s_median, even.steady_samples_per_s), (2.0, None));
        let none = StepTimings::from_steps(0.0, &[]);
        assert_eq!((none.steps, none.samples_per_s), (0, 0.0));
    }
}
