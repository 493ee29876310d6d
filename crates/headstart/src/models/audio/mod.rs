//! Audio encoders: Whisper's encoder ([`whisper`]) and Wav2Vec2 / HuBERT ([`wav2vec2`]).

pub mod wav2vec2;
pub mod whisper;

use serde::{Deserialize, Serialize};

pub use wav2vec2::{Wav2Vec2Cfg, Wav2Vec2Encoder};
pub use whisper::{WhisperCfg, WhisperEncoder};

/// An audio encoder's layout, as a bundle records it (tagged by `family`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum AudioConfig {
    Whisper(WhisperCfg),
    /// Wav2Vec2 and HuBERT (the config's `model_type` says which).
    Wav2vec2(Wav2Vec2Cfg),
}

/// Which hidden states feature extraction pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readout {
    /// The encoder's output.
    Output,
    /// Hidden state `n` (`--layer N`).
    Layer(usize),
    /// Every hidden state `0..=layers`, each pooled alike and concatenated layer after layer
    /// (`--layer weighted`).
    All,
}

impl From<Option<usize>> for Readout {
    /// A layer setting: `None` is the output.
    fn from(layer: Option<usize>) -> Readout {
        layer.map_or(Readout::Output, Readout::Layer)
    }
}
