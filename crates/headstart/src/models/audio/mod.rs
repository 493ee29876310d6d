//! Audio encoders: Whisper's encoder ([`whisper`]) and Wav2Vec2 / HuBERT ([`wav2vec2`]).

pub mod wav2vec2;
pub mod whisper;

pub use wav2vec2::{Wav2Vec2Cfg, Wav2Vec2Encoder};
pub use whisper::{WhisperCfg, WhisperEncoder};
