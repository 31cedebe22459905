//! Outputs: label maps (indexed PNG or `.npy`), boundary overlays, energy plots, JSON summaries,
//! written all-or-nothing; and label-map input for scoring.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::{SegmentError, Segmentation, Volume};

/// The first ten colours: Tableau 10 (distinct, colour-blind aware); further labels get evenly
/// spread golden-angle hues.
const TAB10: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// The palette of `k` labels, one RGB colour each.
pub fn palette(k: usize) -> Vec<[u8; 3]> {
    (0..k)
        .map(|i| {
            TAB10.get(i).copied().unwrap_or_else(|| {
                let hue = (i as f64 * 137.508).rem_euclid(360.0);
                hsv(hue, 0.65, 0.9)
            })
        })
        .collect()
}

fn hsv(h: f64, s: f64, v: f64) -> [u8; 3] {
    let c = v * s;
    let x = c * (1.0 - ((h / 60.0).rem_euclid(2.0) - 1.0).abs());
    let (r, g, b) = match (h / 60.0) as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [((r + m) * 255.0) as u8, ((g + m) * 255.0) as u8, ((b + m) * 255.0) as u8]
}

/// What kind of file a path names, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.png`.
    Png,
    /// `.npy`.
    Npy,
    /// `.svg`.
    Svg,
    /// `.json`.
    Json,
}

impl Format {
    /// The format of `path`, if it is one of `allowed`.
    ///
    /// # Errors
    /// [`SegmentError::Unsupported`] naming the allowed extensions.
    pub fn of(path: &Path, allowed: &[Format]) -> Result<Format, SegmentError> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        let found = match ext.as_deref() {
            Some("png") => Some(Format::Png),
            Some("npy") => Some(Format::Npy),
            Some("svg") => Some(Format::Svg),
            Some("json") => Some(Format::Json),
            _ => None,
        };
        match found {
            Some(f) if allowed.contains(&f) => Ok(f),
            _ => {
                let names: Vec<&str> = allowed.iter().map(|f| f.extension()).collect();
                Err(SegmentError::unsupported(
                    path,
                    format!("unsupported output; expected a .{} file", names.join(" or .")),
                ))
            }
        }
    }
    /// The extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Npy => "npy",
            Format::Svg => "svg",
            Format::Json => "json",
        }
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// An `.npy` file whose header has been read and checked: its reader, its dtype descriptor (e.g.
/// `<f4`) and its shape (C order).
#[expect(missing_debug_implementations, reason = "npyz's reader has no Debug")]
pub struct NpyHeader {
    /// The reader, at the start of the data.
    pub npy: npyz::NpyFile<BufReader<File>>,
    /// The dtype descriptor.
    pub descr: String,
    /// The shape.
    pub dims: Vec<usize>,
}

/// Plain numbers whose `.npy` data is read and written in one piece rather than value by value
/// through npyz's per-element reader and writer (a 512² `f32` image: about 1.2 ms that way).
pub trait NpyPlain: npyz::Deserialize + npyz::AutoSerialize + Copy {
    /// The dtype's kind and size as in a descriptor, without the byte order (`f4`).
    const KIND: &'static str;
    /// The value of its little-endian bytes (`bytes` is exactly its size).
    fn from_le(bytes: &[u8]) -> Self;
    /// Appends its little-endian bytes.
    fn put_le(self, out: &mut Vec<u8>);
}

macro_rules! npy_plain {
    ($($t:ty: $kind:literal),*) => {$(
        impl NpyPlain for $t {
            const KIND: &'static str = $kind;
            fn from_le(bytes: &[u8]) -> Self {
                let mut b = [0u8; size_of::<$t>()];
                b.copy_from_slice(bytes);
                <$t>::from_le_bytes(b)
            }
            fn put_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
npy_plain!(u8: "u1", f32: "f4", f64: "f8");

impl NpyHeader {
    /// Every value, as `T`, whose dtype the file must have (either byte order: npyz reports a
    /// mismatch). Little-endian (or byte-sized) data is read in blocks and converted in place
    /// of npyz's value-by-value reader; other data goes through npyz.
    ///
    /// # Errors
    /// An I/O error when the data cannot be read, is short, or does not fit in memory.
    pub fn into_vec<T: NpyPlain>(self) -> std::io::Result<Vec<T>> {
        use std::io::Read;
        let little = matches!(self.descr.as_bytes().first(), Some(b'<' | b'|'));
        if !(little && self.descr.get(1..) == Some(T::KIND)) {
            return self.npy.into_vec();
        }
        // The header's shape was checked against the file's length by `open_npy`.
        let len: usize = self.dims.iter().product();
        let mut out = Vec::new();
        out.try_reserve_exact(len).map_err(|_| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
        let mut reader = self.npy.into_inner();
        const BLOCK: usize = 1 << 16;
        let mut block = vec![0u8; len.min(BLOCK) * size_of::<T>()];
        while out.len() < len {
            // Only the last block is shorter.
            block.truncate((len - out.len()).min(BLOCK) * size_of::<T>());
            reader.read_exact(&mut block)?;
            out.extend(block.chunks_exact(size_of::<T>()).map(T::from_le));
        }
        Ok(out)
    }
}

/// Opens an `.npy` file and checks its header before any data is read: C order (or one
/// dimension), and a file long enough for the data the header declares, so that a corrupt or
/// hostile header cannot make a reader allocate more than the file holds.
///
/// # Errors
/// [`SegmentError::Read`] when it cannot be opened or parsed, [`SegmentError::Unsupported`] for
/// Fortran order or a file shorter than its header says.
pub fn open_npy(path: &Path) -> Result<NpyHeader, SegmentError> {
    let read_err = |source| SegmentError::Read { path: path.to_owned(), source };
    let mut file = File::open(path).map_err(read_err)?;
    let file_len = file.metadata().map_err(read_err)?.len();
    check_npy_header(path, &mut file, file_len)?;
    std::io::Seek::rewind(&mut file).map_err(read_err)?;
    let npy = npyz::NpyFile::new(BufReader::new(file)).map_err(read_err)?;
    let dims: Vec<usize> = npy.shape().iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect();
    if npy.order() == npyz::Order::Fortran && dims.len() > 1 {
        return Err(SegmentError::unsupported(path, "the array is in Fortran order; expected C order (row-major)"));
    }
    let descr = match npy.dtype() {
        npyz::DType::Plain(ts) => ts.to_string(),
        other => other.descr().to_string(),
    };
    let item = npy.dtype().num_bytes().map_or(1, |b| b as u64);
    let declared = npy.shape().iter().try_fold(item, |acc, &d| acc.checked_mul(d));
    match declared {
        Some(bytes) if bytes <= file_len => Ok(NpyHeader { npy, descr, dims }),
        _ => Err(SegmentError::unsupported(
            path,
            format!(
                "the header declares shape {:?} of {descr} ({} bytes), more than the file's {file_len} bytes",
                npy.shape(),
                declared.map_or("more than 2^64".to_owned(), |b| b.to_string())
            ),
        )),
    }
}

/// The longest `.npy` header read (NumPy's own default limit, `max_header_size`).
const MAX_NPY_HEADER: u64 = 10_000;
/// The deepest bracket nesting accepted in an `.npy` header (a plain array's header nests 2:
/// the dict and the shape tuple). The header parser backtracks exponentially in the depth.
const MAX_NPY_NESTING: usize = 4;

/// Checks an `.npy` header's length and nesting before a parser sees it: the parser allocates
/// the declared length first, and takes time exponential in the nesting.
fn check_npy_header(path: &Path, file: &mut File, file_len: u64) -> Result<(), SegmentError> {
    use std::io::Read;
    let read_err = |source| SegmentError::Read { path: path.to_owned(), source };
    let mut prefix = Vec::with_capacity(12);
    file.take(12).read_to_end(&mut prefix).map_err(read_err)?;
    // The magic (6 bytes), the version (2), then the header's length (2 bytes in version 1, 4 after).
    let (header_len, start) = match prefix.as_slice() {
        [_, _, _, _, _, _, 1, _, a, b, ..] => (u64::from(u16::from_le_bytes([*a, *b])), 10),
        [_, _, _, _, _, _, 2 | 3, _, a, b, c, d] => (u64::from(u32::from_le_bytes([*a, *b, *c, *d])), 12),
        // Not an npy file the parser would go on with: it says so itself.
        _ => return Ok(()),
    };
    if header_len > MAX_NPY_HEADER.min(file_len) {
        return Err(SegmentError::unsupported(
            path,
            format!(
                "the header declares a length of {header_len} bytes; expected at most {MAX_NPY_HEADER} \
                 and at most the file's {file_len} bytes"
            ),
        ));
    }
    let mut header = Vec::new();
    std::io::Seek::seek(file, std::io::SeekFrom::Start(start)).map_err(read_err)?;
    file.take(header_len).read_to_end(&mut header).map_err(read_err)?;
    let (mut depth, mut deepest) = (0usize, 0usize);
    for &c in &header {
        match c {
            b'[' | b'(' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b')' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    // The shape's product (times the widest item) must fit in 64 bits: the parser multiplies
    // it out unchecked.
    let text = String::from_utf8_lossy(&header);
    if let Some(dims) = text.split("'shape'").nth(1).and_then(|t| t.split('(').nth(1)).and_then(|t| t.split(')').next())
    {
        let product = dims
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .try_fold(16u64, |acc, d| d.parse::<u64>().ok().map_or(Some(acc), |d| acc.checked_mul(d)));
        if product.is_none() {
            return Err(SegmentError::unsupported(
                path,
                format!("the header's shape ({dims}) has more elements than 64-bit sizes can count"),
            ));
        }
    }
    if deepest > MAX_NPY_NESTING {
        return Err(SegmentError::unsupported(
            path,
            format!(
                "the header nests brackets {deepest} deep; expected at most {MAX_NPY_NESTING} (a plain array's nests 2)"
            ),
        ));
    }
    Ok(())
}

/// Checks, before any work, that `path` can be written as every output is: a temporary file
/// in its folder (which must exist and be writable), renamed over it when complete. Refuses a
/// folder, a special file (a device such as `/dev/null`, a FIFO, a socket: a rename would
/// replace it with a regular file) and any of `inputs` (the output would overwrite it).
///
/// # Errors
/// [`SegmentError::Write`].
pub fn check_writable(path: &Path, inputs: &[&Path]) -> Result<(), SegmentError> {
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.is_dir() {
            return Err(SegmentError::write(path, "it is a directory"));
        }
        if !meta.is_file() {
            return Err(SegmentError::write(
                path,
                "it is not a regular file (a device, FIFO or socket); outputs are written to regular files only",
            ));
        }
        if let Some(input) = inputs.iter().find(|input| same_file(path, input)) {
            return Err(SegmentError::write(
                path,
                format!("it is the input {}; choose another output path", input.display()),
            ));
        }
    }
    tempfile::NamedTempFile::new_in(parent_dir(path)).map(drop).map_err(|e| SegmentError::write(path, e))
}

/// Whether `a` and `b` name the same existing file (through links too).
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(a), Ok(b)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return (a.dev(), a.ino()) == (b.dev(), b.ino());
        }
    }
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// Outputs written to temporary files next to their targets, not yet in place: [`Staged::commit`]
/// renames them all, and dropping them instead (after an error) removes them, so a failure
/// leaves no output behind.
#[derive(Debug, Default)]
pub struct Staged {
    files: Vec<(tempfile::NamedTempFile, PathBuf)>,
}

impl Staged {
    /// Nothing staged yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stages `bytes` for `path`.
    ///
    /// # Errors
    /// [`SegmentError::Write`].
    pub fn add_bytes(&mut self, path: &Path, bytes: &[u8]) -> Result<(), SegmentError> {
        self.add_with(path, |w| w.write_all(bytes))
    }

    /// Stages what `write` writes (buffered) for `path`.
    ///
    /// # Errors
    /// [`SegmentError::Write`], with `write`'s error as the cause.
    pub fn add_with(
        &mut self,
        path: &Path,
        write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<(), SegmentError> {
        let err = |e: std::io::Error| SegmentError::write(path, e);
        let tmp = tempfile::NamedTempFile::new_in(parent_dir(path)).map_err(err)?;
        {
            let mut buf = std::io::BufWriter::new(tmp.as_file());
            write(&mut buf).and_then(|()| buf.flush()).map_err(err)?;
        }
        // Temporary files are created private (0600); outputs get the usual 0644.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(err)?;
        }
        self.files.push((tmp, path.to_owned()));
        Ok(())
    }

    /// Renames every staged file into place; if a rename fails, the files already renamed are
    /// removed and the rest dropped.
    ///
    /// # Errors
    /// [`SegmentError::Write`] for the first file that fails.
    pub fn commit(self) -> Result<(), SegmentError> {
        let mut done: Vec<PathBuf> = Vec::new();
        for (tmp, path) in self.files {
            if let Err(e) = tmp.persist(&path) {
                for p in &done {
                    // Best effort: the error below is what the caller needs to see.
                    let _ = std::fs::remove_file(p);
                }
                return Err(SegmentError::write(&path, e.error));
            }
            done.push(path);
        }
        Ok(())
    }
}

/// Writes every `(path, bytes)` pair, all or nothing (see [`Staged`]).
///
/// # Errors
/// [`SegmentError::Write`] for the first file that fails.
pub fn write_all(files: Vec<(PathBuf, Vec<u8>)>) -> Result<(), SegmentError> {
    let mut staged = Staged::new();
    for (path, bytes) in &files {
        staged.add_bytes(path, bytes)?;
    }
    staged.commit()
}

/// An image as a 16-bit PNG (grey or RGB; values clamped to `[0, 1]` and scaled by 65535), or a
/// volume as an `.npy` of `float32` `[C, D, H, W]`, by `format`.
///
/// # Errors
/// [`SegmentError::Unsupported`] for a volume as PNG; [`SegmentError::Write`] if encoding fails.
#[expect(clippy::indexing_slicing, reason = "pixel indices within the volume's own dimensions")]
pub fn volume_bytes(vol: &Volume, format: Format, path: &Path) -> Result<Vec<u8>, SegmentError> {
    let [d, h, w] = vol.dims();
    let c = vol.channels();
    match format {
        Format::Png if d == 1 && (c == 1 || c == 3) => {
            let n = h * w;
            let mut bytes = Vec::with_capacity(2 * c * n);
            for s in 0..n {
                for ch in 0..c {
                    let v = (f64::from(vol.channel(ch)[s]).clamp(0.0, 1.0) * 65535.0).round() as u16;
                    bytes.extend_from_slice(&v.to_be_bytes());
                }
            }
            let color = if c == 1 { png::ColorType::Grayscale } else { png::ColorType::Rgb };
            png_bytes_depth(path, w, h, color, png::BitDepth::Sixteen, None, &bytes)
        }
        Format::Npy => npy_bytes(&[c as u64, d as u64, h as u64, w as u64], vol.data(), path),
        _ => Err(SegmentError::unsupported(path, "only a 2D grey or RGB image can be a PNG; use .npy")),
    }
}

fn png_bytes(
    path: &Path,
    w: usize,
    h: usize,
    color: png::ColorType,
    palette: Option<Vec<u8>>,
    data: &[u8],
) -> Result<Vec<u8>, SegmentError> {
    png_bytes_depth(path, w, h, color, png::BitDepth::Eight, palette, data)
}

fn png_bytes_depth(
    path: &Path,
    w: usize,
    h: usize,
    color: png::ColorType,
    depth: png::BitDepth,
    palette: Option<Vec<u8>>,
    data: &[u8],
) -> Result<Vec<u8>, SegmentError> {
    let err = |e: png::EncodingError| SegmentError::write(path, e);
    let mut buf = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut buf, w as u32, h as u32);
        enc.set_color(color);
        enc.set_depth(depth);
        if let Some(p) = palette {
            enc.set_palette(p);
        }
        let mut writer = enc.write_header().map_err(err)?;
        writer.write_image_data(data).map_err(err)?;
        writer.finish().map_err(err)?;
    }
    Ok(buf)
}

/// The label map of a segmentation as an indexed 8-bit PNG with [`palette`] colours (2D only).
///
/// # Errors
/// [`SegmentError::Unsupported`] for a 3D result; [`SegmentError::Write`] if encoding fails.
pub fn label_png(seg: &Segmentation, path: &Path) -> Result<Vec<u8>, SegmentError> {
    labels_png(&seg.labels, seg.dims, seg.phases, path)
}

/// Labels `[D, H, W]` (`D = 1`) of `phases` phases as an indexed 8-bit PNG with [`palette`]
/// colours.
///
/// # Errors
/// [`SegmentError::Unsupported`] for a volume; [`SegmentError::Write`] if encoding fails.
pub fn labels_png(labels: &[u8], dims: [usize; 3], phases: usize, path: &Path) -> Result<Vec<u8>, SegmentError> {
    let [d, h, w] = dims;
    if d > 1 {
        return Err(SegmentError::unsupported(path, "a 3D label map needs an .npy output"));
    }
    let pal: Vec<u8> = palette(phases.max(1)).into_iter().flatten().collect();
    png_bytes(path, w, h, png::ColorType::Indexed, Some(pal), labels)
}

/// The label map of a segmentation as an `.npy` of `uint8`, `[H, W]` for 2D and `[D, H, W]`
/// for 3D.
///
/// # Errors
/// [`SegmentError::Write`] if encoding fails.
pub fn label_npy(seg: &Segmentation, path: &Path) -> Result<Vec<u8>, SegmentError> {
    labels_npy(&seg.labels, seg.dims, path)
}

/// Labels `[D, H, W]` as an `.npy` of `uint8`, `[H, W]` when `D = 1`.
///
/// # Errors
/// [`SegmentError::Write`] if encoding fails.
pub fn labels_npy(labels: &[u8], dims: [usize; 3], path: &Path) -> Result<Vec<u8>, SegmentError> {
    let [d, h, w] = dims;
    let shape: Vec<u64> = if d > 1 { vec![d as u64, h as u64, w as u64] } else { vec![h as u64, w as u64] };
    npy_bytes(&shape, labels, path)
}

/// An `.npy` file of `data` with `shape`, in memory (written to `path` by the caller): npyz's
/// header, then the values' little-endian bytes in one piece.
fn npy_bytes<T: NpyPlain>(shape: &[u64], data: &[T], path: &Path) -> Result<Vec<u8>, SegmentError> {
    use npyz::WriterBuilder;
    let mut buf = Vec::new();
    npyz::WriteOptions::<T>::new()
        .default_dtype()
        .shape(shape)
        .writer(&mut buf)
        .write_header_only()
        .map_err(|e| SegmentError::write(path, e))?;
    buf.reserve(size_of_val(data));
    for &v in data {
        v.put_le(&mut buf);
    }
    Ok(buf)
}

/// An RGB PNG of the input (for a volume, its middle slice) with each phase tinted by its
/// [`palette`] colour at 30% and the phase boundaries drawn in solid colour.
///
/// The input is shown with its intensities stretched from their minimum to their maximum.
///
/// # Errors
/// [`SegmentError::Write`] if encoding fails.
#[expect(clippy::indexing_slicing, reason = "pixel and label indices within the segmentation's own dimensions")]
pub fn overlay_png(vol: &Volume, seg: &Segmentation, path: &Path) -> Result<Vec<u8>, SegmentError> {
    let [d, h, w] = seg.dims;
    let z = d / 2;
    let plane = h * w;
    let c = vol.channels();
    let (lo, hi) = vol.data().iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let pal = palette(seg.phases);
    let labels = &seg.labels[z * plane..(z + 1) * plane];
    let mut rgb = vec![0u8; 3 * plane];
    for y in 0..h {
        for x in 0..w {
            let s = y * w + x;
            let l = labels[s];
            let boundary = (x + 1 < w && labels[s + 1] != l)
                || (x > 0 && labels[s - 1] != l)
                || (y + 1 < h && labels[s + w] != l)
                || (y > 0 && labels[s - w] != l);
            let col = pal[usize::from(l)];
            for ch in 0..3 {
                let src = vol.channel(if c == 3 { ch } else { 0 })[z * plane + s];
                let base = f64::from((src - lo) / span) * 255.0;
                let tint = f64::from(col[ch]);
                let v = if boundary { tint } else { 0.7 * base + 0.3 * tint };
                rgb[3 * s + ch] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    png_bytes(path, w, h, png::ColorType::Rgb, None, &rgb)
}

/// An SVG line plot of the total energy per step.
///
/// # Errors
/// [`SegmentError::Write`] if drawing fails.
pub fn energy_svg(history: &[f64], path: &Path) -> Result<Vec<u8>, SegmentError> {
    let err = |e: &dyn std::fmt::Display| SegmentError::write(path, e);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let (lo, hi) = history.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let (lo, hi) = if lo.is_finite() && hi > lo { (lo, hi) } else { (lo.min(0.0), lo.max(0.0) + 1.0) };
        let pad = 0.05 * (hi - lo);
        let steps = history.len().max(2);
        let mut chart = ChartBuilder::on(&root)
            .caption("Mumford–Shah energy per step", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(1usize..steps, (lo - pad)..(hi + pad))
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("energy (mean reduction)")
            .y_label_formatter(&|v| format!("{v:.3e}"))
            .draw()
            .map_err(|e| err(&e))?;
        chart
            .draw_series(LineSeries::new(history.iter().enumerate().map(|(i, &e)| (i + 1, e)), &BLUE))
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg.into_bytes())
}

/// A label map read for scoring: its dimensions and labels.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMap {
    /// The dimensions (`[H, W]` for images; the array's shape for `.npy`).
    pub dims: Vec<usize>,
    /// The labels, row-major.
    pub labels: Vec<u64>,
}

/// Reads a label map: a PNG (indexed or grey: the raw index or value; colour: each distinct
/// colour one label), another image format (as grey values, unscaled), or an `.npy` of integers
/// or bools.
///
/// # Errors
/// [`SegmentError::Read`], [`SegmentError::Decode`], [`SegmentError::Unsupported`].
pub fn load_labels(path: &Path) -> Result<LabelMap, SegmentError> {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let read_err = |source| SegmentError::Read { path: path.to_owned(), source };
    match ext.as_deref() {
        Some("npy") => {
            let NpyHeader { npy, descr, dims } = open_npy(path)?;
            macro_rules! ints {
                ($t:ty) => {
                    npy.into_vec::<$t>().map_err(read_err)?.into_iter().map(|v| v as u64).collect()
                };
            }
            let labels: Vec<u64> = match descr.get(1..).unwrap_or("") {
                "u1" => ints!(u8),
                "u2" => ints!(u16),
                "u4" => ints!(u32),
                "u8" => ints!(u64),
                "i1" => ints!(i8),
                "i2" => ints!(i16),
                "i4" => ints!(i32),
                "i8" => ints!(i64),
                "b1" => npy.into_vec::<bool>().map_err(read_err)?.into_iter().map(u64::from).collect(),
                _ => {
                    return Err(SegmentError::unsupported(
                        path,
                        format!("label arrays must have an integer or bool dtype, got {descr}"),
                    ));
                }
            };
            Ok(LabelMap { dims, labels })
        }
        Some("png") => load_png_labels(path),
        _ => {
            let img = crate::volume::decode_image(path)?;
            let dims = vec![img.height() as usize, img.width() as usize];
            let labels = img.to_luma16().into_raw().into_iter().map(u64::from).collect();
            Ok(LabelMap { dims, labels })
        }
    }
}

fn load_png_labels(path: &Path) -> Result<LabelMap, SegmentError> {
    let file = File::open(path).map_err(|source| SegmentError::Read { path: path.to_owned(), source })?;
    let decode = |e: png::DecodingError| SegmentError::unsupported(path, format!("cannot decode the PNG: {e}"));
    let mut decoder = png::Decoder::new(BufReader::new(file));
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder.read_info().map_err(decode)?;
    crate::volume::check_declared_pixels(path, image::ImageFormat::Png, reader.info().width, reader.info().height)?;
    let size = reader.output_buffer_size().ok_or_else(|| SegmentError::unsupported(path, "the PNG is too large"))?;
    let mut buf: Vec<u8> = crate::zeros(size, "the PNG's pixels")?;
    let info = reader.next_frame(&mut buf).map_err(decode)?;
    let (w, h) = (info.width as usize, info.height as usize);
    let samples = info.color_type.samples();
    let bits = info.bit_depth as usize;
    let mut labels = Vec::with_capacity(w * h);
    let short = || SegmentError::unsupported(path, "the PNG's data is shorter than its size");
    for y in 0..h {
        let row = buf.get(y * info.line_size..(y + 1) * info.line_size).ok_or_else(short)?;
        for x in 0..w {
            let sample = |i: usize| -> Option<u64> {
                let bit = (x * samples + i) * bits;
                let byte = |k: usize| row.get(k).copied();
                Some(match bits {
                    16 => u64::from(u16::from_be_bytes([byte(bit / 8)?, byte(bit / 8 + 1)?])),
                    8 => u64::from(byte(bit / 8)?),
                    _ => u64::from((byte(bit / 8)? >> (8 - bits - bit % 8)) & ((1u8 << bits) - 1)),
                })
            };
            let label = match info.color_type {
                png::ColorType::Rgb | png::ColorType::Rgba => {
                    (sample(0).ok_or_else(short)? << 32)
                        | (sample(1).ok_or_else(short)? << 16)
                        | sample(2).ok_or_else(short)?
                }
                _ => sample(0).ok_or_else(short)?,
            };
            labels.push(label);
        }
    }
    Ok(LabelMap { dims: vec![h, w], labels })
}
