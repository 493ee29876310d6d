//! The library's error type. Every variant names what it is about (a file, a tensor, a field).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A weight file is malformed or unsupported.
    #[error("{}: {message}", path.display())]
    Weights { path: PathBuf, message: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// An input file (image, config) is malformed.
    #[error("{}: {message}", path.display())]
    Input { path: PathBuf, message: String },
    /// A model could not be built or loaded.
    #[error("{0}")]
    Model(String),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    /// Fetching an asset from a package registry failed (network, index, checksum).
    #[error("{0}")]
    Fetch(String),
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io { path: path.to_path_buf(), source }
    }
    pub fn input(path: &Path, message: impl Into<String>) -> Error {
        Error::Input { path: path.to_path_buf(), message: message.into() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
