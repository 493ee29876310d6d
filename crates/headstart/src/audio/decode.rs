//! Decoding audio files to mono f32 samples with `symphonia`: WAV (8/16/24/32-bit integer and
//! 32/64-bit float PCM), FLAC, OGG/Vorbis and MP3. Every channel is averaged into one.
//!
//! Integer samples scale as libsndfile scales them (`x / 2^(bits-1)`, 8-bit unsigned centred
//! on 128), so a decoded WAV equals `soundfile.read(path)` averaged over channels.
//!
//! Files and bytes in memory (uploads) go through the same decoder ([`Encoded`]). Failures
//! never panic: an unreadable, empty, truncated or undecodable clip is an [`Error::Input`]
//! naming the file (or the name given to the bytes) and what was wrong with it.

use std::fs::File;
use std::path::Path;

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use crate::error::{Error, Result};

/// A decoded clip, averaged to mono.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
    /// Channels in the file (before averaging).
    pub channels: usize,
}

impl Decoded {
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / self.sample_rate as f64
    }
}

/// Most channels accepted (a corrupt header could claim thousands).
const MAX_CHANNELS: usize = 64;

fn describe(e: &SymError) -> String {
    match e {
        SymError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => "unexpected end of file (truncated?)".into(),
        SymError::IoError(io) => format!("read error: {io}"),
        SymError::DecodeError(m) => format!("malformed audio data: {m}"),
        SymError::Unsupported(m) => format!("unsupported audio: {m}"),
        SymError::LimitError(m) => format!("limit exceeded: {m}"),
        SymError::ResetRequired => "the stream changed its parameters mid-way".into(),
        SymError::SeekError(k) => format!("seek error: {k:?}"),
    }
}

/// Encoded audio to decode: a file, or the bytes of one held in memory (an upload), which
/// errors call `name`.
pub enum Encoded<'a> {
    File(&'a Path),
    Bytes { data: Vec<u8>, name: &'a str },
}

impl<'a> Encoded<'a> {
    /// What errors call it.
    pub fn name(&self) -> &'a Path {
        match self {
            Encoded::File(p) => p,
            Encoded::Bytes { name, .. } => Path::new(*name),
        }
    }
}

/// A decode under a length cap: the clip, or that it is longer than the cap.
#[derive(Debug, Clone)]
pub enum Capped {
    Clip(Decoded),
    /// Longer than the cap: `seconds` is its length when the header declares it exactly,
    /// `None` when decoding stopped at the cap.
    OverLong {
        seconds: Option<f64>,
    },
}

fn open_format(src: Encoded<'_>) -> Result<Box<dyn FormatReader>> {
    let name = src.name();
    let mut hint = Hint::new();
    let source: Box<dyn MediaSource> = match src {
        Encoded::File(path) => {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            if file.metadata().map_err(|e| Error::io(path, e))?.len() == 0 {
                return Err(Error::input(path, "audio file is empty (0 bytes)"));
            }
            if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
                hint.with_extension(&ext.to_ascii_lowercase());
            }
            Box::new(file)
        }
        Encoded::Bytes { data, name } => {
            if data.is_empty() {
                return Err(Error::input(Path::new(name), "audio is empty (0 bytes)"));
            }
            Box::new(std::io::Cursor::new(data))
        }
    };
    let mss = MediaSourceStream::new(source, Default::default());
    let opts = FormatOptions { enable_gapless: true, ..Default::default() };
    let probed = symphonia::default::get_probe()
        .format(&hint, mss, &opts, &MetadataOptions::default())
        .map_err(|e| Error::input(name, format!("not a readable audio file (WAV, FLAC, OGG/Vorbis, MP3): {}", describe(&e))))?;
    Ok(probed.format)
}

/// Decodes `path` to mono f32 at the file's own sample rate. A panic inside the decoding
/// library on malformed data becomes an error naming the file.
pub fn decode(path: &Path) -> Result<Decoded> {
    match decode_capped(Encoded::File(path), f64::INFINITY)? {
        Capped::Clip(d) => Ok(d),
        Capped::OverLong { .. } => Err(Error::input(path, "longer than any cap")),
    }
}

/// Decodes `src` to mono f32 at its own sample rate, giving up as soon as the clip is known to
/// be longer than `max_seconds`: from the header's frame count where it is exact (all but
/// MP3), else once the decoded samples pass the cap, so a long clip costs no more than the cap
/// to refuse. A panic inside the decoding library on malformed data becomes an error naming
/// the source.
pub fn decode_capped(src: Encoded<'_>, max_seconds: f64) -> Result<Capped> {
    let name = src.name();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode_inner(src, max_seconds))) {
        Ok(r) => r,
        Err(p) => {
            let why = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
            Err(Error::input(name, format!("malformed audio data (the decoder failed: {why})")))
        }
    }
}

fn decode_inner(src: Encoded<'_>, max_seconds: f64) -> Result<Capped> {
    let path = src.name();
    let mut format = open_format(src)?;
    let track = format.tracks().iter().find(|t| t.codec_params.codec != CODEC_TYPE_NULL).ok_or_else(|| Error::input(path, "no audio track"))?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    let declared_frames = params.n_frames;
    let exact_length = params.codec != symphonia::core::codecs::CODEC_TYPE_MP3;
    if let (Some(n), Some(r), true) = (declared_frames, params.sample_rate.filter(|&r| r > 0), exact_length) {
        if n as f64 / r as f64 > max_seconds {
            return Ok(Capped::OverLong { seconds: Some(n as f64 / r as f64) });
        }
    }
    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| Error::input(path, format!("no decoder for this audio: {}", describe(&e))))?;
    let mut samples = Vec::new();
    let mut rate = params.sample_rate;
    let mut channels = params.channels.map(|c| c.count());
    let mut buf: Option<SampleBuffer<f32>> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(Error::input(path, format!("after {} samples: {}", samples.len(), describe(&e)))),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(Error::input(path, format!("after {} samples: {}", samples.len(), describe(&e)))),
        };
        let spec = *decoded.spec();
        let n_ch = spec.channels.count();
        if n_ch == 0 || n_ch > MAX_CHANNELS {
            return Err(Error::input(path, format!("{n_ch} channels (1 to {MAX_CHANNELS} supported)")));
        }
        if *channels.get_or_insert(n_ch) != n_ch || *rate.get_or_insert(spec.rate) != spec.rate {
            return Err(Error::input(path, "channel count or sample rate changes mid-stream"));
        }
        if decoded.frames() == 0 {
            continue;
        }
        let sb = match &mut buf {
            Some(b) if b.capacity() >= decoded.capacity() * n_ch => b,
            _ => buf.insert(SampleBuffer::new(decoded.capacity() as u64, spec)),
        };
        sb.copy_interleaved_ref(decoded);
        mix_down(sb.samples(), n_ch, &mut samples);
        if spec.rate > 0 && samples.len() as f64 / spec.rate as f64 > max_seconds {
            return Ok(Capped::OverLong { seconds: None });
        }
    }
    let channels = channels.unwrap_or(1);
    let sample_rate = rate.filter(|&r| r > 0).ok_or_else(|| Error::input(path, "no sample rate in the audio header"))?;
    if samples.is_empty() {
        return Err(Error::input(path, "no audio samples (zero-length clip)"));
    }
    if let Some(n) = declared_frames {
        // The header's frame count is exact for PCM and FLAC; a shortfall means lost data.
        if (samples.len() as u64) < n && exact_length {
            return Err(Error::input(path, format!("truncated: the header declares {n} frames but only {} could be decoded", samples.len())));
        }
    }
    if let Some(i) = samples.iter().position(|s| !s.is_finite()) {
        return Err(Error::input(path, format!("sample {i} is not a finite number (corrupt float data)")));
    }
    Ok(Capped::Clip(Decoded { samples, sample_rate, channels }))
}

/// Appends the per-frame channel mean of interleaved `xs`.
fn mix_down(xs: &[f32], channels: usize, out: &mut Vec<f32>) {
    if channels == 1 {
        out.extend_from_slice(xs);
        return;
    }
    let inv = 1.0 / channels as f64;
    out.extend(xs.chunks_exact(channels).map(|f| (f.iter().map(|&x| x as f64).sum::<f64>() * inv) as f32));
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn mixes_channels_to_their_mean() {
        let mut out = vec![];
        mix_down(&[1.0, 0.0, -1.0, 0.5, 0.5, 0.5], 3, &mut out);
        assert_eq!(out, vec![0.0, 0.5]);
        mix_down(&[0.25], 1, &mut out);
        assert_eq!(out, vec![0.0, 0.5, 0.25]);
    }
}
