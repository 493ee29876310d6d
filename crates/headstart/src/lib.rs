//! headstart: transfer learning with pre-trained models on libtorch.
//!
//! The library does the work and prints nothing; the `headstart` binary is glue.

pub mod assets;
pub mod audio;
pub mod blocks;
pub mod bundle;
pub mod cache;
pub mod data;
pub mod dist;
pub mod engine;
pub mod error;
pub mod export;
pub mod features;
pub mod fetch;
pub mod fsx;
pub mod learn;
pub mod metrics;
pub mod models;
pub mod precision;
pub mod preprocess;
pub mod progress;
pub mod report;
pub mod run;
pub mod tabular;
pub mod text;
pub mod train;
pub mod weights;
pub mod zero_shot;

pub use error::{Error, Result};
