//! Image preprocessing derived from a model's `ImageInput`: resize the shorter side with
//! antialiased bilinear (or bicubic) interpolation, centre-crop, scale to [0, 1], normalise. The
//! same numbers as torchvision's `Resize(antialias=True)` + `CenterCrop` + `Normalize` on float
//! tensors, computed with bounded memory:
//!
//! - the crop box is worked out in source coordinates first, and only the source pixels that
//!   the crop's filter taps reach are converted and resampled (a 1 × 5,000 px strip is never
//!   blown up to 256 × 1,280,000 px before cropping);
//! - the resampling weights are torch's antialiasing weights (`_upsample_*_aa`), evaluated only
//!   for the output rows and columns the crop keeps, so the result equals resize-then-crop up to
//!   float rounding;
//! - decoding runs under the `image` crate's allocation limits, after a header check of the
//!   pixel count;
//! - a JPEG whose data ends before its end-of-image marker is refused as truncated unless the
//!   caller allows truncated files (Pillow's `LOAD_TRUNCATED_IMAGES`).

use std::path::Path;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::models::registry::{ImageInput, Interpolation, ResizeMode};

/// Images larger than this many pixels are refused before decoding.
pub const MAX_PIXELS: u64 = 100_000_000;
/// The most memory one image may take to decode (the decoder's own buffer).
pub const MAX_DECODE_BYTES: u64 = 1 << 30;
/// The reason recorded for a file whose data ends early.
pub const TRUNCATED: &str = "truncated";

/// How image files are decoded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeOptions {
    /// Refuse images with more pixels than this (checked from the header, before decoding).
    pub max_pixels: u64,
    /// Refuse images whose decoded buffer would need more bytes than this.
    pub max_alloc: u64,
    /// Keep JPEGs that end before their end-of-image marker (the missing part decodes grey).
    pub allow_truncated: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions { max_pixels: MAX_PIXELS, max_alloc: MAX_DECODE_BYTES, allow_truncated: false }
    }
}

/// What a file's header says, enough to budget its decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub width: u32,
    pub height: u32,
    /// Bytes of the decoder's output buffer (all channels, native bit depth).
    pub decoded_bytes: u64,
}

impl Header {
    /// Peak bytes that decoding and preparing this image may hold at once: the decoder's
    /// buffer, plus the 8-bit RGB copy of (at most) the whole image.
    pub fn working_bytes(&self) -> u64 {
        self.decoded_bytes + 3 * self.width as u64 * self.height as u64
    }
}

fn reader(bytes: &[u8]) -> std::result::Result<image::ImageReader<std::io::Cursor<&[u8]>>, String> {
    let r = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    if r.format().is_none() {
        return Err("unsupported or unrecognised image format".into());
    }
    Ok(r)
}

/// Reads the header only: dimensions and decoded size, checked against the limits.
pub fn header(bytes: &[u8], opts: &DecodeOptions) -> std::result::Result<Header, String> {
    let decoder = reader(bytes)?.into_decoder().map_err(|e| describe(&e, "cannot read image header"))?;
    let (width, height) = decoder.dimensions();
    let h = Header { width, height, decoded_bytes: decoder.total_bytes() };
    if width == 0 || height == 0 {
        return Err("image has no pixels".into());
    }
    if width as u64 * height as u64 > opts.max_pixels {
        return Err(format!("{width}×{height} image exceeds the {}-pixel cap", opts.max_pixels));
    }
    if h.decoded_bytes > opts.max_alloc {
        return Err(format!("{width}×{height} image needs {} MiB to decode, over the {} MiB limit", h.decoded_bytes >> 20, opts.max_alloc >> 20));
    }
    Ok(h)
}

/// An error message, with "truncated" for data that ends early.
fn describe(e: &image::ImageError, what: &str) -> String {
    if let image::ImageError::IoError(io) = e {
        if io.kind() == std::io::ErrorKind::UnexpectedEof {
            return TRUNCATED.into();
        }
    }
    let m = e.to_string();
    let lower = m.to_ascii_lowercase();
    if lower.contains("unexpected end") || lower.contains("unexpected eof") || lower.contains("truncated") || lower.contains("no more data") || lower.contains("not enough bytes") {
        return TRUNCATED.into();
    }
    format!("{what}: {m}")
}

/// Whether JPEG data stops before its end-of-image marker. Segments before the first scan are
/// skipped by their lengths (an EXIF thumbnail's own marker does not count); inside scan data a
/// `0xFF 0xD9` pair can only be the end marker, because data bytes `0xFF` are stuffed.
pub fn jpeg_truncated(bytes: &[u8]) -> bool {
    if bytes.len() < 4 || bytes[0] != 0xff || bytes[1] != 0xd8 {
        return false;
    }
    let mut i = 2;
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xff {
            // Not a marker where one belongs: leave the verdict to the decoder.
            return false;
        }
        let marker = bytes[i + 1];
        if marker == 0xff {
            i += 1;
            continue;
        }
        if marker == 0xd9 {
            return false;
        }
        if (0xd0..=0xd7).contains(&marker) || marker == 0x01 {
            i += 2;
            continue;
        }
        let len = u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
        if marker == 0xda {
            let scan = (i + 2 + len).min(bytes.len());
            return !bytes[scan..].windows(2).any(|w| w == [0xff, 0xd9]);
        }
        i += 2 + len;
    }
    true
}

/// A decoded image, before orientation and colour conversion.
struct Raw {
    img: DynamicImage,
    orientation: Orientation,
    truncated: bool,
}

fn decode_raw(bytes: &[u8], opts: &DecodeOptions) -> std::result::Result<Raw, String> {
    header(bytes, opts)?;
    let truncated = reader(bytes)?.format() == Some(image::ImageFormat::Jpeg) && jpeg_truncated(bytes);
    if truncated && !opts.allow_truncated {
        return Err(TRUNCATED.into());
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(opts.max_alloc);
    let mut decoder = reader(bytes)?.into_decoder().map_err(|e| describe(&e, "cannot decode image"))?;
    decoder.set_limits(limits).map_err(|e| describe(&e, "cannot decode image"))?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let img = DynamicImage::from_decoder(decoder).map_err(|e| describe(&e, "cannot decode image"))?;
    Ok(Raw { img, orientation, truncated })
}

/// An EXIF orientation as: transpose first, then flip rows, then flip columns.
fn orientation_ops(o: Orientation) -> (bool, bool, bool) {
    match o {
        Orientation::NoTransforms => (false, false, false),
        Orientation::FlipHorizontal => (false, false, true),
        Orientation::FlipVertical => (false, true, false),
        Orientation::Rotate180 => (false, true, true),
        Orientation::Rotate90 => (true, false, true),
        Orientation::Rotate270 => (true, true, false),
        Orientation::Rotate90FlipH => (true, false, false),
        Orientation::Rotate270FlipH => (true, true, true),
    }
}

/// A rectangle of rows `[y, y + h)` and columns `[x, x + w)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rect {
    y: i64,
    x: i64,
    h: i64,
    w: i64,
}

impl Raw {
    /// Height and width after orientation.
    fn oriented_dims(&self) -> (i64, i64) {
        let (w, h) = (self.img.width() as i64, self.img.height() as i64);
        if orientation_ops(self.orientation).0 {
            (w, h)
        } else {
            (h, w)
        }
    }

    /// The 8-bit RGB pixels of `r` (in oriented coordinates) as `[3, r.h, r.w]`, converting
    /// only that part of the source, a band of rows at a time.
    fn region_u8(&self, r: Rect) -> std::result::Result<Tensor, String> {
        let (transpose, flip_rows, flip_cols) = orientation_ops(self.orientation);
        let (oh, ow) = self.oriented_dims();
        // Undo the flips, then the transpose: the same pixels in source coordinates.
        let ys = if flip_rows { oh - r.y - r.h } else { r.y };
        let xs = if flip_cols { ow - r.x - r.w } else { r.x };
        let src = if transpose { Rect { y: xs, x: ys, h: r.w, w: r.h } } else { Rect { y: ys, x: xs, h: r.h, w: r.w } };
        let mut rgb = Vec::with_capacity((src.h * src.w * 3) as usize);
        let band = (4_000_000 / src.w.max(1)).clamp(1, src.h.max(1));
        let mut y = 0;
        while y < src.h {
            let bh = band.min(src.h - y);
            let part = self.img.crop_imm(src.x as u32, (src.y + y) as u32, src.w as u32, bh as u32).to_rgb8();
            rgb.extend_from_slice(part.as_raw());
            y += bh;
        }
        let t = Tensor::f_from_data_size(&rgb, &[src.h, src.w, 3], Kind::Uint8).map_err(|e| e.to_string())?.permute([2, 0, 1]);
        let mut t = if transpose { t.transpose(1, 2) } else { t };
        if flip_rows {
            t = t.flip([1]);
        }
        if flip_cols {
            t = t.flip([2]);
        }
        Ok(t.contiguous())
    }
}

/// Loads an image file to an RGB float tensor `[3, H, W]` in [0, 1].
pub fn load_rgb(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_rgb(&bytes).map_err(|m| Error::input(path, m))
}

/// Decodes image bytes (JPEG, PNG, WebP, BMP, TIFF, GIF first frame) to RGB `[3, H, W]` in
/// [0, 1]: EXIF orientation applied; grey, palette, 16-bit and alpha converted as PIL's
/// `convert("RGB")` does. The pixel count is checked from the header before decoding.
pub fn decode_rgb(bytes: &[u8]) -> std::result::Result<Tensor, String> {
    Ok(decode_rgb_u8(bytes)?.to_kind(Kind::Float) / 255.0)
}

/// As [`decode_rgb`], keeping 8-bit values (`u8`, `[3, H, W]`): a quarter of the memory.
pub fn decode_rgb_u8(bytes: &[u8]) -> std::result::Result<Tensor, String> {
    decode_rgb_u8_with(bytes, &DecodeOptions::default()).map(|(t, _)| t)
}

/// As [`decode_rgb_u8`] under `opts`; also says whether the file was truncated (and kept).
pub fn decode_rgb_u8_with(bytes: &[u8], opts: &DecodeOptions) -> std::result::Result<(Tensor, bool), String> {
    let raw = decode_raw(bytes, opts)?;
    let (h, w) = raw.oriented_dims();
    Ok((raw.region_u8(Rect { y: 0, x: 0, h, w })?, raw.truncated))
}

/// Decodes and prepares an image for `input` in one go, converting only the source pixels the
/// crop needs. Returns the normalised `[3, size, size]` tensor and whether the file was
/// truncated (and kept).
pub fn decode_prepared(bytes: &[u8], input: &ImageInput, opts: &DecodeOptions) -> std::result::Result<(Tensor, bool), String> {
    let raw = decode_raw(bytes, opts)?;
    let (h, w) = raw.oriented_dims();
    let plan = CropPlan::new(h, w, input).map_err(|e| e.to_string())?;
    let region = raw.region_u8(plan.source())?;
    let x = plan.apply(&region).map_err(|e| e.to_string())?;
    Ok((normalise(&x, input), raw.truncated))
}

/// The resampling weights of one axis, for the output positions the crop keeps.
#[derive(Debug)]
struct AxisPlan {
    /// First source index any kept output reads.
    start: i64,
    /// Source span read, from `start`.
    len: i64,
    /// Kept outputs.
    n: i64,
    /// Taps per output (zero-weight taps pad shorter ones).
    taps: i64,
    /// `[n * taps]` source indices relative to `start`.
    idx: Vec<i64>,
    /// `[n * taps]` weights.
    w: Vec<f32>,
}

fn filter(interp: Interpolation, x: f32) -> f32 {
    let x = x.abs();
    match interp {
        Interpolation::Bilinear => (1.0 - x).max(0.0),
        Interpolation::Bicubic => {
            // Keys' cubic with a = -0.5, as torch's antialiased bicubic (and PIL).
            let a = -0.5;
            if x < 1.0 {
                ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
            } else if x < 2.0 {
                ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
            } else {
                0.0
            }
        }
    }
}

impl AxisPlan {
    /// Outputs `[from, from + n)` of resizing `in_size` source pixels to `out_size` with
    /// torch's antialiasing filter (support widened by the scale when shrinking). Computed in
    /// f32 as torch does for float images, so far-out positions round the same way.
    fn new(in_size: i64, out_size: i64, from: i64, n: i64, interp: Interpolation) -> AxisPlan {
        let scale = in_size as f32 / out_size as f32;
        let half: f32 = match interp {
            Interpolation::Bilinear => 1.0,
            Interpolation::Bicubic => 2.0,
        };
        let (support, invscale) = if scale >= 1.0 { (half * scale, 1.0 / scale) } else { (half, 1.0) };
        let mut ranges = Vec::with_capacity(n as usize);
        for i in from..from + n {
            // The mixed f32/f64 steps follow torch's C++ expression types.
            let center = (scale as f64 * (i as f64 + 0.5)) as f32;
            let lo = (((center - support) as f64 + 0.5) as i64).max(0);
            let hi = (((center + support) as f64 + 0.5) as i64).min(in_size);
            let tap = |j: i64| ((((j as f32 - center) as f64 + 0.5) * invscale as f64) as f32);
            let mut ws: Vec<f32> = (lo..hi).map(|j| filter(interp, tap(j))).collect();
            let total: f32 = ws.iter().sum();
            if total != 0.0 {
                ws.iter_mut().for_each(|w| *w /= total);
            }
            ranges.push((lo, ws));
        }
        let start = ranges.iter().map(|r| r.0).min().unwrap_or(0);
        let end = ranges.iter().map(|r| r.0 + r.1.len() as i64).max().unwrap_or(start).max(start + 1);
        let taps = ranges.iter().map(|r| r.1.len()).max().unwrap_or(1).max(1) as i64;
        let (mut idx, mut w) = (Vec::with_capacity((n * taps) as usize), Vec::with_capacity((n * taps) as usize));
        for (lo, ws) in &ranges {
            for t in 0..taps as usize {
                idx.push(if t < ws.len() { lo + t as i64 - start } else { 0 });
                w.push(ws.get(t).copied().unwrap_or(0.0));
            }
        }
        AxisPlan { start, len: end - start, n, taps, idx, w }
    }

    /// Resamples dim 1 of `x` (`[C, len, M]`, any kind) to `[C, n, M]` floats, `chunk`
    /// columns at a time so the gathered taps stay small.
    fn resample(&self, x: &Tensor) -> Result<Tensor> {
        let (c, m) = (x.size()[0], x.size()[2]);
        let idx = Tensor::from_slice(&self.idx);
        let w = Tensor::from_slice(&self.w).view([1, self.n, self.taps, 1]);
        let chunk = (8_000_000 / (c * self.n * self.taps).max(1)).clamp(1, m.max(1));
        let mut parts = vec![];
        let mut at = 0;
        while at < m {
            let k = chunk.min(m - at);
            let xs = x.narrow(2, at, k).to_kind(Kind::Float);
            let g = xs.f_index_select(1, &idx)?.view([c, self.n, self.taps, k]);
            parts.push((g * &w).sum_dim_intlist([2i64].as_slice(), false, Kind::Float));
            at += k;
        }
        Ok(Tensor::f_cat(&parts, 2)?)
    }
}

/// Resize-then-centre-crop, as the rows and columns of the source it reads and the weights
/// that make the kept outputs.
#[derive(Debug)]
struct CropPlan {
    rows: AxisPlan,
    cols: AxisPlan,
}

impl CropPlan {
    fn new(h: i64, w: i64, input: &ImageInput) -> Result<CropPlan> {
        let c = input.size;
        let (nh, nw) = match input.resize_mode {
            ResizeMode::Squash => (c, c),
            ResizeMode::ShorterSideThenCrop => {
                let r = input.resize();
                if h <= w {
                    (r, (r as f64 * w as f64 / h as f64) as i64)
                } else {
                    ((r as f64 * h as f64 / w as f64) as i64, r)
                }
            }
        };
        if nh < c || nw < c || h < 1 || w < 1 {
            return Err(Error::Model(format!("cannot crop {c}×{c} from a {h}×{w} image resized to {nh}×{nw}")));
        }
        let top = ((nh - c) as f64 / 2.0).round() as i64;
        let left = ((nw - c) as f64 / 2.0).round() as i64;
        Ok(CropPlan { rows: AxisPlan::new(h, nh, top, c, input.interpolation), cols: AxisPlan::new(w, nw, left, c, input.interpolation) })
    }

    /// The source rectangle the crop reads.
    fn source(&self) -> Rect {
        Rect { y: self.rows.start, x: self.cols.start, h: self.rows.len, w: self.cols.len }
    }

    /// `region` is `[3, h, w]` of [`CropPlan::source`] (u8 in 0..=255 or float in [0, 1]):
    /// the crop, `[3, size, size]` floats in [0, 1].
    fn apply(&self, region: &Tensor) -> Result<Tensor> {
        let scale = if region.kind() == Kind::Uint8 { 1.0 / 255.0 } else { 1.0 };
        let tall = self.rows.resample(region)?;
        let out = self.cols.resample(&tall.transpose(1, 2))?.transpose(1, 2);
        Ok(out * scale)
    }
}

fn normalise(x: &Tensor, input: &ImageInput) -> Tensor {
    let mean = Tensor::from_slice(&input.mean).to_kind(Kind::Float).view([3, 1, 1]);
    let std = Tensor::from_slice(&input.std).to_kind(Kind::Float).view([3, 1, 1]);
    (x - mean) / std
}

/// Resize (shorter side to `input.resize()`, or straight to the input size), centre crop to
/// `input.size`, normalise. `img` is `[3, H, W]`, floats in [0, 1] or `u8`; only the part the
/// crop reads is resampled.
pub fn prepare(img: &Tensor, input: &ImageInput) -> Result<Tensor> {
    let size = img.size();
    let plan = CropPlan::new(size[1], size[2], input)?;
    let s = plan.source();
    let region = img.narrow(1, s.y, s.h).narrow(2, s.x, s.w);
    Ok(normalise(&plan.apply(&region)?, input))
}

/// Training-time augmentation, seeded: random resized crop (torchvision's parameters), horizontal
/// flip, colour jitter.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Area fraction range of the random crop.
    pub scale: (f64, f64),
    /// Aspect-ratio range of the random crop.
    pub ratio: (f64, f64),
    pub hflip: bool,
    /// Brightness, contrast and saturation factors drawn from [1 − j, 1 + j].
    pub jitter: f64,
}

impl Default for Augment {
    fn default() -> Self {
        Augment { scale: (0.08, 1.0), ratio: (3.0 / 4.0, 4.0 / 3.0), hflip: true, jitter: 0.2 }
    }
}

fn uniform(rng: &mut crate::data::Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// torchvision `RandomResizedCrop.get_params`: (top, left, height, width).
fn crop_params(h: i64, w: i64, a: &Augment, rng: &mut crate::data::Rng) -> (i64, i64, i64, i64) {
    let area = (h * w) as f64;
    for _ in 0..10 {
        let target = area * uniform(rng, a.scale.0, a.scale.1);
        let aspect = uniform(rng, a.ratio.0.ln(), a.ratio.1.ln()).exp();
        let cw = (target * aspect).sqrt().round() as i64;
        let ch = (target / aspect).sqrt().round() as i64;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            let top = rng.below((h - ch + 1) as usize) as i64;
            let left = rng.below((w - cw + 1) as usize) as i64;
            return (top, left, ch, cw);
        }
    }
    let r = w as f64 / h as f64;
    let (ch, cw) = if r < a.ratio.0 {
        ((w as f64 / a.ratio.0).round() as i64, w)
    } else if r > a.ratio.1 {
        (h, (h as f64 * a.ratio.1).round() as i64)
    } else {
        (h, w)
    };
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

/// Augments a decoded image `[3, H, W]` in [0, 1] and normalises it to the model's input.
pub fn augment(img: &Tensor, input: &ImageInput, a: &Augment, rng: &mut crate::data::Rng) -> Result<Tensor> {
    let size = img.size();
    let (top, left, ch, cw) = crop_params(size[1], size[2], a, rng);
    let c = input.size;
    let crop = img.narrow(1, top, ch).narrow(2, left, cw).unsqueeze(0);
    let mut x = match input.interpolation {
        Interpolation::Bilinear => crop.f_internal_upsample_bilinear2d_aa([c, c], false, None, None)?,
        Interpolation::Bicubic => crop.f_internal_upsample_bicubic2d_aa([c, c], false, None, None)?,
    }
    .squeeze_dim(0);
    if a.hflip && rng.below(2) == 1 {
        x = x.flip([2]);
    }
    if a.jitter > 0.0 {
        let (b, ct, s) = (uniform(rng, 1.0 - a.jitter, 1.0 + a.jitter), uniform(rng, 1.0 - a.jitter, 1.0 + a.jitter), uniform(rng, 1.0 - a.jitter, 1.0 + a.jitter));
        x = (x * b).clamp(0.0, 1.0);
        let grey = |t: &Tensor| (t.get(0) * 0.299 + t.get(1) * 0.587 + t.get(2) * 0.114).unsqueeze(0);
        let mean = grey(&x).mean(Kind::Float);
        x = ((&x - &mean) * ct + &mean).clamp(0.0, 1.0);
        let g = grey(&x);
        x = ((&x - &g) * s + &g).clamp(0.0, 1.0);
    }
    let mean = Tensor::from_slice(&input.mean).to_kind(Kind::Float).view([3, 1, 1]);
    let std = Tensor::from_slice(&input.std).to_kind(Kind::Float).view([3, 1, 1]);
    Ok((x - mean) / std)
}
