//! Images and volumes: the [`Volume`] type and loading from image files and `.npy` arrays.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//!
//! ## Intensity scaling
//! - 8-bit images and `uint8` arrays are divided by 255, 16-bit images and `uint16` arrays by
//!   65535, so intensities lie in `[0, 1]`;
//! - float images (TIFF) and `float32`/`float64` arrays are taken as they are;
//! - other integer arrays (`int8` … `int64`, `uint32`, `uint64`) are converted to float as they are.
//!
//! The segmentation does not depend on the scale: the default λ is set relative to the image's
//! own within-phase variance (see [`crate::SegmentConfig::lambda`]). An alpha channel is dropped;
//! grey images have one channel, colour images three.

use std::path::Path;

use crate::SegmentError;

/// An image or volume of `C` channels over `D×H×W` pixels, stored `[C, D, H, W]` row-major in
/// `f32` (a 2D image has `D = 1`).
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    channels: usize,
    dims: [usize; 3],
    data: Vec<f32>,
}

impl Volume {
    /// A volume from its data, `[C, D, H, W]` row-major.
    ///
    /// # Errors
    /// [`SegmentError::BadImage`] when an extent is zero, the data length does not match, or a
    /// value is not finite.
    pub fn new(
        channels: usize,
        depth: usize,
        height: usize,
        width: usize,
        data: Vec<f32>,
    ) -> Result<Self, SegmentError> {
        let dims = [depth, height, width];
        if channels == 0 || dims.contains(&0) {
            return Err(SegmentError::BadImage(format!(
                "the image is empty: {channels} channels over {depth}×{height}×{width} pixels (every extent must be >= 1)"
            )));
        }
        let expected = channels
            .checked_mul(depth)
            .and_then(|v| v.checked_mul(height))
            .and_then(|v| v.checked_mul(width))
            .ok_or_else(|| SegmentError::BadImage("the image is too large to address".into()))?;
        if expected != data.len() {
            return Err(SegmentError::BadImage(format!(
                "{channels}×{depth}×{height}×{width} needs {expected} values but {} came",
                data.len()
            )));
        }
        if let Some((i, v)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(SegmentError::BadImage(format!("value {v} at flat index {i} is not finite")));
        }
        Ok(Self { channels, dims, data })
    }

    /// Loads an image (PNG, JPEG, TIFF; grey or colour; 8 or 16 bit, or float TIFF) or an `.npy`
    /// array `[H, W]`, `[C, H, W]` or `[C, D, H, W]`, chosen by the file's extension (`.npy`) or
    /// its content. Intensities are scaled as the [module docs](self) say.
    ///
    /// # Errors
    /// [`SegmentError::Read`], [`SegmentError::Decode`], [`SegmentError::Unsupported`] or
    /// [`SegmentError::BadImage`].
    pub fn load(path: &Path) -> Result<Self, SegmentError> {
        let is_npy = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy"));
        if is_npy { load_npy(path) } else { load_image(path) }
    }

    /// `C`.
    pub fn channels(&self) -> usize {
        self.channels
    }
    /// `[D, H, W]`.
    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }
    /// `D·H·W`.
    pub fn pixels(&self) -> usize {
        self.dims.iter().product()
    }
    /// Whether `D > 1`.
    pub fn is_3d(&self) -> bool {
        self.dims[0] > 1
    }
    /// The data, `[C, D, H, W]`.
    pub fn data(&self) -> &[f32] {
        &self.data
    }
    /// Channel `c`'s plane (or volume), `D·H·W` values.
    ///
    /// # Panics
    /// When `c` is not below [`Volume::channels`].
    #[expect(clippy::indexing_slicing, reason = "the caller's channel index, documented above")]
    pub fn channel(&self, c: usize) -> &[f32] {
        let n = self.pixels();
        &self.data[c * n..(c + 1) * n]
    }
}

fn load_image(path: &Path) -> Result<Volume, SegmentError> {
    let reader = image::ImageReader::open(path)
        .map_err(|source| SegmentError::Read { path: path.to_owned(), source })?
        .with_guessed_format()
        .map_err(|source| SegmentError::Read { path: path.to_owned(), source })?;
    if reader.format().is_none() {
        return Err(SegmentError::unsupported(
            path,
            "not a recognised image format; expected PNG, JPEG or TIFF, or an .npy array",
        ));
    }
    if reader.format() == Some(image::ImageFormat::Tiff)
        && let Some(v) = load_float_tiff(path)?
    {
        return Ok(v);
    }
    let img = decode_image(path)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if img.color().has_color() {
        // `to_rgb32f` divides integer samples by the type's maximum.
        let rgb = img.to_rgb32f();
        let n = w * h;
        let mut data = Vec::with_capacity(3 * n);
        for c in 0..3 {
            data.extend(rgb.pixels().map(|px| px.0.get(c).copied().unwrap_or(0.0)));
        }
        Volume::new(3, 1, h, w, data)
    } else {
        let grey = img.to_luma32f();
        Volume::new(1, 1, h, w, grey.into_raw())
    }
}

/// Decodes the image at `path` (its format guessed from its bytes), after
/// [`check_declared_pixels`].
pub(crate) fn decode_image(path: &Path) -> Result<image::DynamicImage, SegmentError> {
    let read_err = |source| SegmentError::Read { path: path.to_owned(), source };
    let decode = |source| SegmentError::Decode { path: path.to_owned(), source };
    let open = || image::ImageReader::open(path).map_err(read_err)?.with_guessed_format().map_err(read_err);
    let reader = open()?;
    if let Some(format) = reader.format() {
        let (w, h) = open()?.into_dimensions().map_err(decode)?;
        check_declared_pixels(path, format, w, h)?;
    }
    reader.decode().map_err(decode)
}

/// Refuses a PNG or JPEG whose header declares more pixels than its bytes can hold, before a
/// decoder allocates them (decoders fill missing data in, so a short file would decode to a
/// large, mostly invented image). PNG's deflate expands at most 1032:1 and a pixel takes at least
/// one bit; a JPEG's 8×8 block takes at least a few bits, allowed here at 1024 pixels a byte.
pub(crate) fn check_declared_pixels(
    path: &Path,
    format: image::ImageFormat,
    w: u32,
    h: u32,
) -> Result<(), SegmentError> {
    let per_byte: u64 = match format {
        image::ImageFormat::Png => 8 * 1032,
        image::ImageFormat::Jpeg => 1024,
        _ => return Ok(()),
    };
    let len = std::fs::metadata(path).map_err(|source| SegmentError::Read { path: path.to_owned(), source })?.len();
    let pixels = u64::from(w) * u64::from(h);
    if pixels > per_byte.saturating_mul(len) {
        return Err(SegmentError::unsupported(
            path,
            format!(
                "the header declares {w}x{h} pixels, more than the file's {len} bytes can hold \
                 (at most {per_byte} pixels a byte in {format:?}): the file is truncated or corrupt"
            ),
        ));
    }
    Ok(())
}

/// A grey float (32 or 64 bit) TIFF, read as it is; `None` for every other TIFF (left to `image`).
fn load_float_tiff(path: &Path) -> Result<Option<Volume>, SegmentError> {
    let read_err = |source| SegmentError::Read { path: path.to_owned(), source };
    let tiff_err = |e: tiff::TiffError| SegmentError::unsupported(path, format!("cannot decode the TIFF: {e}"));
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut decoder = tiff::decoder::Decoder::new(std::io::BufReader::new(file)).map_err(tiff_err)?;
    let (w, h) = decoder.dimensions().map_err(tiff_err)?;
    let (w, h) = (w as usize, h as usize);
    match decoder.colortype().map_err(tiff_err)? {
        tiff::ColorType::Gray(32 | 64) => {}
        _ => return Ok(None),
    }
    let data = match decoder.read_image().map_err(tiff_err)? {
        tiff::decoder::DecodingResult::F32(v) => v,
        tiff::decoder::DecodingResult::F64(v) => v.into_iter().map(|x| x as f32).collect(),
        _ => return Ok(None),
    };
    Volume::new(1, 1, h, w, data).map(Some)
}

fn load_npy(path: &Path) -> Result<Volume, SegmentError> {
    let read_err = |source| SegmentError::Read { path: path.to_owned(), source };
    let header = crate::output::open_npy(path)?;
    let (descr, shape) = (header.descr.clone(), header.dims.clone());
    let (c, d, h, w) = match shape[..] {
        [h, w] => (1, 1, h, w),
        [c, h, w] => (c, 1, h, w),
        [c, d, h, w] => (c, d, h, w),
        _ => {
            return Err(SegmentError::unsupported(
                path,
                format!("the array has shape {shape:?}; expected [H, W], [C, H, W] or [C, D, H, W]"),
            ));
        }
    };
    // The values read (in one piece for plain types, see `NpyHeader::into_vec`), scaled to f32.
    macro_rules! conv {
        ($read:expr, $scale:expr) => {
            $read.map_err(read_err)?.into_iter().map(|v| (v as f64 * $scale) as f32).collect()
        };
    }
    let data: Vec<f32> = match descr.get(1..).unwrap_or("") {
        "f4" => header.into_vec::<f32>().map_err(read_err)?,
        "f8" => conv!(header.into_vec::<f64>(), 1.0),
        "u1" => conv!(header.into_vec::<u8>(), 1.0 / 255.0),
        "u2" => conv!(header.npy.into_vec::<u16>(), 1.0 / 65535.0),
        "i1" => conv!(header.npy.into_vec::<i8>(), 1.0),
        "i2" => conv!(header.npy.into_vec::<i16>(), 1.0),
        "i4" => conv!(header.npy.into_vec::<i32>(), 1.0),
        "i8" => conv!(header.npy.into_vec::<i64>(), 1.0),
        "u4" => conv!(header.npy.into_vec::<u32>(), 1.0),
        "u8" => conv!(header.npy.into_vec::<u64>(), 1.0),
        "b1" => {
            header.npy.into_vec::<bool>().map_err(read_err)?.into_iter().map(|v| if v { 1.0 } else { 0.0 }).collect()
        }
        _ => {
            return Err(SegmentError::unsupported(
                path,
                format!("the array has dtype {descr}; expected a float, integer or bool type"),
            ));
        }
    };
    Volume::new(c, d, h, w, data)
}
