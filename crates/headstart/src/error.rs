//! The library's error type. Every variant names what it is about (a file, a tensor, a field)
//! and belongs to one [`Cause`], which the binary maps to its exit code.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A weight file is malformed or unsupported.
    #[error("{}: {message}", path.display())]
    Weights { path: PathBuf, message: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// An input file (image, data set, config) is malformed or unusable.
    #[error("{}: {message}", path.display())]
    Input { path: PathBuf, message: String },
    /// A model could not be built or loaded.
    #[error("{0}")]
    Model(String),
    /// Settings that cannot work together or are out of range.
    #[error("{0}")]
    Usage(String),
    /// A bundle is malformed, or does not match the encoder, weights or data it is used with.
    #[error("{}: {message}", path.display())]
    Bundle { path: PathBuf, message: String },
    /// Training produced non-finite values.
    #[error("{0}")]
    Diverged(String),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    /// Fetching an asset from a package registry failed (network, index, checksum).
    #[error("{0}")]
    Fetch(String),
    /// A distributed run failed: rendezvous, or a collective (a lost rank, a timeout).
    #[error("{0}")]
    Distributed(String),
}

/// What went wrong, in the classes the exit codes follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Settings or arguments (exit code 2).
    Usage,
    /// The data: unreadable, malformed, too few classes or examples (3).
    Data,
    /// A model or its weights: unknown, missing, malformed, incomplete (4).
    Model,
    /// A bundle: malformed, or not matching the encoder or weights given (5).
    Bundle,
    /// Training diverged: non-finite losses or weights (6).
    Diverged,
    /// Reading or writing files, or the network (7).
    Io,
}

impl Cause {
    /// The process exit code for this cause (0 is success, 1 an unclassified failure).
    pub fn exit_code(self) -> u8 {
        match self {
            Cause::Usage => 2,
            Cause::Data => 3,
            Cause::Model => 4,
            Cause::Bundle => 5,
            Cause::Diverged => 6,
            Cause::Io => 7,
        }
    }
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io { path: path.to_path_buf(), source }
    }
    pub fn input(path: &Path, message: impl Into<String>) -> Error {
        Error::Input { path: path.to_path_buf(), message: message.into() }
    }
    pub fn bundle(path: &Path, message: impl Into<String>) -> Error {
        Error::Bundle { path: path.to_path_buf(), message: message.into() }
    }

    /// The class of this error.
    pub fn cause(&self) -> Cause {
        match self {
            Error::Weights { .. } | Error::Model(_) | Error::Torch(_) => Cause::Model,
            Error::Io { .. } | Error::Fetch(_) | Error::Distributed(_) => Cause::Io,
            Error::Input { .. } => Cause::Data,
            Error::Usage(_) => Cause::Usage,
            Error::Bundle { .. } => Cause::Bundle,
            Error::Diverged(_) => Cause::Diverged,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
