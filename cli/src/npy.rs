//! `.npy` input and output (through npyz), with typed errors and atomic writes.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use npyz::WriterBuilder;

/// What can go wrong with an `.npy` file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NpyError {
    /// The file cannot be opened or is not a valid `.npy`.
    #[error("cannot read {what} from {path}")]
    Read {
        /// Which input.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The array's dtype is not one we take.
    #[error("{what} in {path} has dtype {got}; expected {expected}")]
    Dtype {
        /// Which input.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The dtype found.
        got: String,
        /// The dtypes accepted.
        expected: &'static str,
    },
    /// Fortran-ordered arrays are not taken.
    #[error("{what} in {path} is in Fortran order; expected a C-ordered (row-major) array")]
    FortranOrder {
        /// Which input.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// The output cannot be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// A float array as read: its shape and its data in its own dtype.
#[derive(Debug)]
pub(crate) struct FloatArray {
    /// The shape (C order).
    pub(crate) shape: Vec<usize>,
    /// The data.
    pub(crate) data: FloatData,
}

/// Float data in the file's own precision.
#[derive(Debug)]
pub(crate) enum FloatData {
    /// `<f4`.
    F32(Vec<f32>),
    /// `<f8`.
    F64(Vec<f64>),
}

impl FloatData {
    /// The data widened to `f64`.
    pub(crate) fn to_f64(&self) -> Vec<f64> {
        match self {
            FloatData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            FloatData::F64(v) => v.clone(),
        }
    }
}

/// An opened `.npy`: the reader, its dtype descriptor (e.g. `<f4`) and its shape.
type Opened = (npyz::NpyFile<BufReader<File>>, String, Vec<usize>);

fn open(path: &Path, what: &'static str) -> Result<Opened, NpyError> {
    let read_err = |source| NpyError::Read { what, path: path.to_owned(), source };
    let file = File::open(path).map_err(read_err)?;
    let npy = npyz::NpyFile::new(BufReader::new(file)).map_err(read_err)?;
    if npy.order() == npyz::Order::Fortran && npy.shape().len() > 1 {
        return Err(NpyError::FortranOrder { what, path: path.to_owned() });
    }
    let descr = match npy.dtype() {
        npyz::DType::Plain(ts) => ts.to_string(),
        other => other.descr().to_string(),
    };
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    Ok((npy, descr, shape))
}

/// Reads an `f32` or `f64` array.
///
/// # Errors
/// [`NpyError`] for unreadable files, other dtypes and Fortran order.
pub(crate) fn read_float(path: &Path, what: &'static str) -> Result<FloatArray, NpyError> {
    let (npy, descr, shape) = open(path, what)?;
    let read_err = |source| NpyError::Read { what, path: path.to_owned(), source };
    let data = match &descr[1..] {
        "f4" => FloatData::F32(npy.into_vec::<f32>().map_err(read_err)?),
        "f8" => FloatData::F64(npy.into_vec::<f64>().map_err(read_err)?),
        _ => {
            return Err(NpyError::Dtype { what, path: path.to_owned(), got: descr, expected: "float32 or float64" });
        }
    };
    Ok(FloatArray { shape, data })
}

/// Reads a mask: bool, integer or float, as `f64` values (checked to be 0 or 1 by the core).
///
/// # Errors
/// [`NpyError`] for unreadable files, other dtypes and Fortran order.
pub(crate) fn read_mask(path: &Path) -> Result<(Vec<usize>, Vec<f64>), NpyError> {
    let what = "mask";
    let (npy, descr, shape) = open(path, what)?;
    let read_err = |source| NpyError::Read { what, path: path.to_owned(), source };
    macro_rules! widen {
        ($t:ty) => {
            npy.into_vec::<$t>().map_err(read_err)?.into_iter().map(|v| v as f64).collect()
        };
    }
    let data: Vec<f64> = match &descr[1..] {
        "b1" => npy.into_vec::<bool>().map_err(read_err)?.into_iter().map(|v| if v { 1.0 } else { 0.0 }).collect(),
        "u1" => widen!(u8),
        "i1" => widen!(i8),
        "u2" => widen!(u16),
        "i2" => widen!(i16),
        "u4" => widen!(u32),
        "i4" => widen!(i32),
        "u8" => widen!(u64),
        "i8" => widen!(i64),
        "f4" => widen!(f32),
        "f8" => widen!(f64),
        _ => {
            return Err(NpyError::Dtype {
                what,
                path: path.to_owned(),
                got: descr,
                expected: "bool, an integer type, float32 or float64",
            });
        }
    };
    Ok((shape, data))
}

/// Writes `data` with `shape` to `path` atomically: a temporary file in the same folder, renamed
/// into place only when complete, so a failure leaves nothing behind.
///
/// # Errors
/// [`NpyError::Write`].
pub(crate) fn write_atomic<T: npyz::AutoSerialize + Copy>(
    path: &Path,
    shape: &[usize],
    data: &[T],
) -> Result<(), NpyError> {
    let write_err = |source| NpyError::Write { path: path.to_owned(), source };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(write_err)?;
    {
        let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        let mut buf = BufWriter::new(tmp.as_file());
        let mut w =
            npyz::WriteOptions::new().default_dtype().shape(&shape).writer(&mut buf).begin_nd().map_err(write_err)?;
        w.extend(data.iter().copied()).map_err(write_err)?;
        w.finish().map_err(write_err)?;
        buf.flush().map_err(write_err)?;
    }
    tmp.persist(path).map_err(|e| write_err(e.error))?;
    Ok(())
}
