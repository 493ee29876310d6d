//! Resuming a run from its directory: which modality it was, with what settings, and whether
//! it can continue at all (only fine-tuning runs have checkpoints).

use std::path::Path;

use crate::blocks::audio::AudioTrainRequest;
use crate::error::{Error, Result};
use crate::learn::task::TrainOutcome;
use crate::models::registry::Modality;
use crate::progress::Progress;
use crate::run::TrainRequest;
use crate::text::TextTrainRequest;

/// A run's saved request, by modality.
#[derive(Debug, Clone)]
pub enum SavedRun {
    Image(TrainRequest),
    Text(TextTrainRequest),
    Audio(AudioTrainRequest),
}

impl SavedRun {
    pub fn modality(&self) -> Modality {
        match self {
            SavedRun::Image(_) => Modality::Image,
            SavedRun::Text(_) => Modality::Text,
            SavedRun::Audio(_) => Modality::Audio,
        }
    }
}

/// Reads the request saved in `run/config.json`, with `out` set to `run` (the directory may
/// have moved). A feature-extraction run is refused: it has no checkpoints, and training it
/// again costs little since its features are cached.
pub fn saved_run(run: &Path) -> Result<SavedRun> {
    let path = run.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::input(&path, format!("not a run configuration: {e}")))?;
    if v.get("finetune").is_none_or(|f| f.is_null()) {
        return Err(Error::Usage(format!(
            "{} is a feature-extraction run: it has no checkpoints to resume; train it again (its cached features are reused)",
            run.display()
        )));
    }
    let bad = |e: serde_json::Error| Error::input(&path, format!("not a run configuration: {e}"));
    // Text runs record the columns they read; audio runs their clip settings.
    Ok(if v.get("audio").is_some() {
        let mut req: AudioTrainRequest = serde_json::from_value(v).map_err(bad)?;
        req.out = run.to_path_buf();
        SavedRun::Audio(req)
    } else if v.get("columns").is_some() {
        let mut req: TextTrainRequest = serde_json::from_value(v).map_err(bad)?;
        req.out = run.to_path_buf();
        SavedRun::Text(req)
    } else {
        let mut req: TrainRequest = serde_json::from_value(v).map_err(bad)?;
        req.out = run.to_path_buf();
        SavedRun::Image(req)
    })
}

/// Continues the fine-tuning run in `run` from its last checkpoint, with its saved settings.
pub fn resume(run: &Path, progress: &dyn Progress) -> Result<(Modality, TrainOutcome)> {
    let saved = saved_run(run)?;
    let o = match &saved {
        SavedRun::Image(req) => crate::run::train_image_resumable(req, true, progress)?,
        SavedRun::Text(req) => crate::text::train_text(req, true, progress)?,
        SavedRun::Audio(req) => crate::blocks::audio::train_audio(req, true, progress)?,
    };
    Ok((saved.modality(), o))
}
