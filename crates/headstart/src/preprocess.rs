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
    Ok(t.permute([2, 0, 1]).to_kind(Kind::Float) / 255.0)
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
