//! Audio encoders: Whisper's encoder ([`whisper`]).

pub mod whisper;

pub use whisper::{WhisperCfg, WhisperEncoder};
