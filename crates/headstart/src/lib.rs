//! headstart: transfer learning with pre-trained models on libtorch.
//!
//! The library does the work and prints nothing; the `headstart` binary is glue.

pub mod assets;
pub mod error;
pub mod fsx;
pub mod models;
pub mod preprocess;
pub mod weights;

pub use error::{Error, Result};
