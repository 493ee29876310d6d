//! Image preprocessing derived from a model's `ImageInput`: resize the shorter side with
//! antialiased bilinear interpolation, centre-crop, scale to [0, 1], normalise. The same ops
//! as torchvision's `Resize(antialias=True)` + `CenterCrop` + `Normalize` on float tensors.

use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::models::registry::{ImageInput, Interpolation, ResizeMode};

/// Images larger than this many pixels are refused before decoding.
pub const MAX_PIXELS: u64 = 100_000_000;

/// Decodes an image file to an RGB float tensor `[3, H, W]` in [0, 1].
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
    use image::ImageDecoder;
    let reader = || image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string());
    let r = reader()?;
    if r.format().is_none() {
        return Err("unsupported or unrecognised image format".into());
    }
    let (w, h) = r.into_dimensions().map_err(|e| format!("cannot read image header: {e}"))?;
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(format!("{w}×{h} image exceeds the {MAX_PIXELS}-pixel cap"));
    }
    if w == 0 || h == 0 {
        return Err("image has no pixels".into());
    }
    let mut decoder = reader()?.into_decoder().map_err(|e| format!("cannot decode image: {e}"))?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(|e| format!("cannot decode image: {e}"))?;
    img.apply_orientation(orientation);
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    let t = Tensor::f_from_data_size(rgb.as_raw(), &[h as i64, w as i64, 3], Kind::Uint8).map_err(|e| e.to_string())?;
    Ok(t.permute([2, 0, 1]).contiguous())
}

/// Resize (shorter side to `input.resize()`, or straight to the input size), centre crop to
/// `input.size`, normalise.
pub fn prepare(img: &Tensor, input: &ImageInput) -> Result<Tensor> {
    let size = img.size();
    let (h, w) = (size[1], size[2]);
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
    let batch = img.unsqueeze(0);
    let resized = match input.interpolation {
        Interpolation::Bilinear => batch.f_internal_upsample_bilinear2d_aa([nh, nw], false, None, None)?,
        Interpolation::Bicubic => batch.f_internal_upsample_bicubic2d_aa([nh, nw], false, None, None)?,
    };
    let top = ((nh - c) as f64 / 2.0).round() as i64;
    let left = ((nw - c) as f64 / 2.0).round() as i64;
    let cropped = resized.narrow(2, top, c).narrow(3, left, c).squeeze_dim(0);
    let mean = Tensor::from_slice(&input.mean).to_kind(Kind::Float).view([3, 1, 1]);
    let std = Tensor::from_slice(&input.std).to_kind(Kind::Float).view([3, 1, 1]);
    Ok((cropped - mean) / std)
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
