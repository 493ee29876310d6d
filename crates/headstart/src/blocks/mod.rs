//! One data block per modality: how its data sets open, how examples are featurised (through
//! the feature cache) and turned into fine-tuning inputs, and its learner. The run itself
//! ([`crate::learn::task`]) is shared.

pub mod audio;
pub mod clip;
pub mod image;
pub mod text;
