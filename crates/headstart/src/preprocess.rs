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

/// Where an encoded image is read from: bytes in memory, or a file read as it is decoded (so
/// a large uncompressed file is not held twice).
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

trait ReadSeek: std::io::BufRead + std::io::Seek {}
impl<T: std::io::BufRead + std::io::Seek> ReadSeek for T {}

impl Source<'_> {
    fn raw(&self) -> std::result::Result<Box<dyn ReadSeek + '_>, String> {
        Ok(match self {
            Source::Bytes(b) => Box::new(std::io::Cursor::new(*b)),
            Source::File(p) => Box::new(std::io::BufReader::new(std::fs::File::open(p).map_err(|e| format!("cannot read: {e}"))?)),
        })
    }

    fn reader(&self) -> std::result::Result<image::ImageReader<Box<dyn ReadSeek + '_>>, String> {
        let r = image::ImageReader::new(self.raw()?).with_guessed_format().map_err(|e| e.to_string())?;
        if r.format().is_none() {
            return Err("unsupported or unrecognised image format".into());
        }
        Ok(r)
    }

    /// Whether this is a JPEG that ends before its end-of-image marker.
    fn jpeg_truncated(&self) -> std::result::Result<bool, String> {
        if self.reader()?.format() != Some(image::ImageFormat::Jpeg) {
            return Ok(false);
        }
        Ok(match self {
            Source::Bytes(b) => jpeg_truncated(b),
            Source::File(p) => jpeg_truncated(&std::fs::read(p).map_err(|e| format!("cannot read: {e}"))?),
        })
    }
}

/// Reads the header only: dimensions and decoded size, checked against the limits.
pub fn header(bytes: &[u8], opts: &DecodeOptions) -> std::result::Result<Header, String> {
    header_of(Source::Bytes(bytes), opts)
}

/// As [`header`], from any source.
pub fn header_of(src: Source, opts: &DecodeOptions) -> std::result::Result<Header, String> {
    let decoder = src.reader()?.into_decoder().map_err(|e| describe(&e, "cannot read image header"))?;
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
    if lower.contains("unexpected end")
        || lower.contains("unexpected eof")
        || lower.contains("truncated")
        || lower.contains("no more data")
        || lower.contains("not enough bytes")
    {
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
struct Raw<'a> {
    pixels: Pixels<'a>,
    orientation: Orientation,
    truncated: bool,
}

/// Decoded pixels, or a TIFF read a strip at a time when asked for a rectangle.
enum Pixels<'a> {
    Decoded(DynamicImage),
    Tiff(TiffStrips<'a>),
}

/// A striped, interleaved TIFF of 8- or 16-bit grey or RGB samples (alpha allowed). The `image`
/// crate decodes a TIFF into a buffer of its own and then copies it, holding the whole image
/// twice; reading only the strips a crop needs holds one strip and the crop.
struct TiffStrips<'a> {
    src: Source<'a>,
    width: u32,
    height: u32,
    rows_per_strip: u32,
    channels: i64,
}

/// Strips larger than this are left to the `image` crate.
const MAX_STRIP_BYTES: u64 = 64 << 20;

impl<'a> TiffStrips<'a> {
    /// The TIFF as strips, with its orientation, when its layout is one this reader handles.
    fn open(src: Source<'a>) -> Option<(TiffStrips<'a>, Orientation)> {
        use tiff::tags::Tag;
        let mut dec = tiff::decoder::Decoder::new(src.raw().ok()?).ok()?;
        let (width, height) = dec.dimensions().ok()?;
        let channels = match dec.colortype().ok()? {
            tiff::ColorType::Gray(8 | 16) => 1,
            tiff::ColorType::GrayA(8 | 16) => 2,
            tiff::ColorType::RGB(8 | 16) => 3,
            tiff::ColorType::RGBA(8 | 16) => 4,
            _ => return None,
        };
        let photometric = dec.find_tag_unsigned::<u16>(Tag::PhotometricInterpretation).ok()??;
        let planar = dec.find_tag_unsigned::<u16>(Tag::PlanarConfiguration).ok()?.unwrap_or(1);
        if dec.get_chunk_type() != tiff::decoder::ChunkType::Strip || planar != 1 || !(photometric == 1 || photometric == 2) {
            return None;
        }
        let (_, rows_per_strip) = dec.chunk_dimensions();
        if rows_per_strip == 0 || rows_per_strip as u64 * width as u64 * channels as u64 * 2 > MAX_STRIP_BYTES {
            return None;
        }
        let orientation = dec
            .find_tag_unsigned::<u16>(Tag::Orientation)
            .ok()
            .flatten()
            .and_then(|v| Orientation::from_exif(v.min(255) as u8))
            .unwrap_or(Orientation::NoTransforms);
        Some((TiffStrips { src, width, height, rows_per_strip, channels: channels as i64 }, orientation))
    }

    /// 8-bit RGB `[r.h, r.w, 3]` of a source rectangle, 16-bit samples mapped as the `image`
    /// crate maps them (`(v + 128) / 257`), grey repeated, alpha dropped.
    fn rect_rgb8(&self, r: Rect) -> std::result::Result<Tensor, String> {
        let err = |e: tiff::TiffError| describe(&image::ImageError::IoError(std::io::Error::other(e.to_string())), "cannot decode image");
        let mut dec = tiff::decoder::Decoder::new(self.src.raw()?).map_err(err)?;
        let out = Tensor::f_empty([r.h, r.w, 3], (Kind::Uint8, tch::Device::Cpu)).map_err(|e| e.to_string())?;
        let rps = self.rows_per_strip as i64;
        let row_bytes = self.width as usize * self.channels as usize;
        // Strips are gathered into groups of about 2 MB, each converted with one set of tensor ops
        // (small buffers, reused by the allocator from group to group).
        let (mut group, mut group_first) = (Vec::<u8>::new(), -1i64);
        let last = (r.y + r.h - 1) / rps;
        for k in r.y / rps..=last {
            let mut chunk = dec.read_chunk(k as u32).map_err(err)?;
            let wide = match chunk {
                tiff::decoder::DecodingResult::U8(_) => false,
                tiff::decoder::DecodingResult::U16(_) => true,
                _ => return Err("cannot decode image: unexpected TIFF sample type".into()),
            };
            let (cw, ch) = dec.chunk_data_dimensions(k as u32);
            let bytes = chunk.as_buffer(0).as_bytes().to_vec();
            if cw != self.width || bytes.len() != ch as usize * row_bytes * if wide { 2 } else { 1 } {
                return Err(TRUNCATED.into());
            }
            if group_first < 0 {
                group_first = k * rps;
            }
            group.extend_from_slice(&bytes);
            if group.len() >= 2 << 20 || k == last {
                let rows = (group.len() / (row_bytes * if wide { 2 } else { 1 })) as i64;
                self.copy_rows(&group, wide, group_first, rows, r, &out).map_err(|e| e.to_string())?;
                group.clear();
                group_first = -1;
            }
        }
        Ok(out)
    }

    /// Converts `rows` full rows of samples starting at source row `first` and copies the
    /// part inside `r` into `out`.
    fn copy_rows(&self, raw: &[u8], wide: bool, first: i64, rows: i64, r: Rect, out: &Tensor) -> Result<()> {
        let samples = if wide {
            // Native-endian u16 read as i16, widened and masked back to 0..=65535, then mapped
            // to 8 bits.
            let t = Tensor::f_from_data_size(raw, &[raw.len() as i64 / 2], Kind::Int16)?;
            (t.to_kind(Kind::Int).bitwise_and(0xffff) + 128).floor_divide_scalar(257)
        } else {
            Tensor::f_from_data_size(raw, &[raw.len() as i64], Kind::Uint8)?
        };
        let (lo, hi) = (r.y.max(first), (r.y + r.h).min(first + rows));
        let part = samples.view([rows, self.width as i64, self.channels]).narrow(0, lo - first, hi - lo).narrow(1, r.x, r.w);
        let rgb = if self.channels >= 3 { part.narrow(2, 0, 3) } else { part.narrow(2, 0, 1).expand([hi - lo, r.w, 3], false) };
        out.narrow(0, lo - r.y, hi - lo).f_copy_(&rgb.to_kind(Kind::Uint8))?;
        Ok(())
    }
}

fn decode_raw<'a>(src: Source<'a>, opts: &DecodeOptions) -> std::result::Result<Raw<'a>, String> {
    header_of(src, opts)?;
    let truncated = src.jpeg_truncated()?;
    if truncated && !opts.allow_truncated {
        return Err(TRUNCATED.into());
    }
    if src.reader()?.format() == Some(image::ImageFormat::Tiff) {
        if let Some((t, orientation)) = TiffStrips::open(src) {
            return Ok(Raw { pixels: Pixels::Tiff(t), orientation, truncated });
        }
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(opts.max_alloc);
    let mut decoder = src.reader()?.into_decoder().map_err(|e| describe(&e, "cannot decode image"))?;
    decoder.set_limits(limits).map_err(|e| describe(&e, "cannot decode image"))?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let img = DynamicImage::from_decoder(decoder).map_err(|e| describe(&e, "cannot decode image"))?;
    Ok(Raw { pixels: Pixels::Decoded(img), orientation, truncated })
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

impl Pixels<'_> {
    /// Width and height as stored.
    fn dims(&self) -> (i64, i64) {
        match self {
            Pixels::Decoded(img) => (img.width() as i64, img.height() as i64),
            Pixels::Tiff(t) => (t.width as i64, t.height as i64),
        }
    }

    /// 8-bit RGB `[src.h, src.w, 3]` of a rectangle in stored coordinates, converted a band of
    /// rows at a time.
    fn rect_rgb8(&self, src: Rect) -> std::result::Result<Tensor, String> {
        let img = match self {
            Pixels::Tiff(t) => return t.rect_rgb8(src),
            Pixels::Decoded(img) => img,
        };
        if src.y == 0 && src.x == 0 && src.h == img.height() as i64 && src.w == img.width() as i64 {
            if let DynamicImage::ImageRgb8(rgb) = img {
                return Tensor::f_from_data_size(rgb.as_raw(), &[src.h, src.w, 3], Kind::Uint8).map_err(|e| e.to_string());
            }
        }
        let out = Tensor::f_empty([src.h, src.w, 3], (Kind::Uint8, tch::Device::Cpu)).map_err(|e| e.to_string())?;
        let band = (500_000 / src.w.max(1)).clamp(1, src.h.max(1));
        let mut y = 0;
        while y < src.h {
            let bh = band.min(src.h - y);
            let part = img.crop_imm(src.x as u32, (src.y + y) as u32, src.w as u32, bh as u32).to_rgb8();
            let t = Tensor::f_from_data_size(part.as_raw(), &[bh, src.w, 3], Kind::Uint8).map_err(|e| e.to_string())?;
            out.narrow(0, y, bh).f_copy_(&t).map_err(|e| e.to_string())?;
            y += bh;
        }
        Ok(out)
    }
}

impl Raw<'_> {
    /// Height and width after orientation.
    fn oriented_dims(&self) -> (i64, i64) {
        let (w, h) = self.pixels.dims();
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
        let t = self.pixels.rect_rgb8(src)?.permute([2, 0, 1]);
        let mut t = if transpose { t.transpose(1, 2) } else { t };
        if flip_rows {
            t = t.flip([1]);
        }
        if flip_cols {
            t = t.flip([2]);
        }
        Ok(t)
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
    let raw = decode_raw(Source::Bytes(bytes), opts)?;
    let (h, w) = raw.oriented_dims();
    Ok((raw.region_u8(Rect { y: 0, x: 0, h, w })?.contiguous(), raw.truncated))
}

/// Decodes and prepares an image for `input` in one go, converting only the source pixels the
/// crop needs. Returns the normalised `[3, size, size]` tensor and whether the file was
/// truncated (and kept).
pub fn decode_prepared(src: Source, input: &ImageInput, opts: &DecodeOptions) -> std::result::Result<(Tensor, bool), String> {
    let raw = decode_raw(src, opts)?;
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
            let tap = |j: i64| (((j as f32 - center) as f64 + 0.5) * invscale as f64) as f32;
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
        let chunk = (2_000_000 / (c * self.n * self.taps).max(1)).clamp(1, m.max(1));
        // Working buffers allocated once and reused for every chunk: fresh temporaries per chunk
        // fragment a heap that keeps freed memory (see `engine::tune_allocator`).
        let float = (Kind::Float, tch::Device::Cpu);
        let xs_store = Tensor::f_empty([c * self.len * chunk], float)?;
        let g_store = Tensor::f_empty([c * self.n * self.taps * chunk], float)?;
        let out = Tensor::f_empty([c, self.n, m], float)?;
        let mut at = 0;
        while at < m {
            let k = chunk.min(m - at);
            let mut xs = xs_store.narrow(0, 0, c * self.len * k).view([c, self.len, k]);
            xs.f_copy_(&x.narrow(2, at, k))?;
            let g = g_store.narrow(0, 0, c * self.n * self.taps * k).view([c, self.n * self.taps, k]);
            let _ = xs.f_index_select_out(&g, 1, &idx)?;
            let mut g = g.view([c, self.n, self.taps, k]);
            let _ = g.f_mul_(&w)?;
            let _ = g.f_sum_intlist_out(&out.narrow(2, at, k), [2i64].as_slice(), false, Kind::Float)?;
            at += k;
        }
        Ok(out)
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
        let (b, ct, s) =
            (uniform(rng, 1.0 - a.jitter, 1.0 + a.jitter), uniform(rng, 1.0 - a.jitter, 1.0 + a.jitter), uniform(rng, 1.0 - a.jitter, 1.0 + a.jitter));
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
