//! One data block per modality: how its data sets open, how examples are featurised (through
//! the feature cache) and turned into fine-tuning inputs, and its learner. The run itself
//! ([`crate::learn::task`]) is shared.

pub mod audio;
pub mod clip;
pub mod image;
pub mod text;

crate::learn::task::run_request!(crate::run::TrainRequest, crate::text::TextTrainRequest, audio::AudioTrainRequest);

/// A file-backed example as reports name it: absolute, so a report rebuilt from elsewhere still
/// finds the file (for an image, its thumbnail).
pub fn describe_path(p: &std::path::Path) -> String {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string()
}
