//! `.npy` input and output (through npyz), with typed errors: headers are read and checked
//! before any data, and outputs are staged (written in full, then renamed into place).

use std::path::{Path, PathBuf};

use msloss_segment::SegmentError;
use msloss_segment::output::{NpyHeader, Staged, open_npy};
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
    /// The header cannot be used: unreadable, Fortran order, or more data than the file holds.
    #[error("cannot read {what}")]
    Header {
        /// Which input.
        what: &'static str,
        /// The cause.
        source: SegmentError,
    },
    /// The output cannot be written.
    #[error("cannot write the gradient")]
    Write(#[source] SegmentError),
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

/// An `.npy` input whose header has been read and checked (not its data).
pub(crate) struct Header {
    what: &'static str,
    path: PathBuf,
    inner: NpyHeader,
}

impl Header {
    /// The shape (C order).
    pub(crate) fn dims(&self) -> &[usize] {
        &self.inner.dims
    }
}

/// Opens the `.npy` input `what` at `path` and checks its header (see [`open_npy`]).
///
/// # Errors
/// [`NpyError::Header`].
pub(crate) fn open(path: &Path, what: &'static str) -> Result<Header, NpyError> {
    let inner = open_npy(path).map_err(|source| NpyError::Header { what, source })?;
    Ok(Header { what, path: path.to_owned(), inner })
}

/// Reads an `f32` or `f64` array.
///
/// # Errors
/// [`NpyError`] for unreadable data and other dtypes.
pub(crate) fn read_float(h: Header) -> Result<FloatData, NpyError> {
    let Header { what, path, inner } = h;
    let read_err = |source| NpyError::Read { what, path: path.clone(), source };
    let data = match inner.descr.get(1..).unwrap_or("") {
        "f4" => FloatData::F32(inner.into_vec::<f32>().map_err(read_err)?),
        "f8" => FloatData::F64(inner.into_vec::<f64>().map_err(read_err)?),
        _ => return Err(NpyError::Dtype { what, path, got: inner.descr, expected: "float32 or float64" }),
    };
    Ok(data)
}

/// Reads a mask: bool, integer or float, as `f64` values (checked to be 0 or 1 by the core).
///
/// # Errors
/// [`NpyError`] for unreadable data and other dtypes.
pub(crate) fn read_mask(h: Header) -> Result<Vec<f64>, NpyError> {
    let Header { what, path, inner: NpyHeader { npy, descr, .. } } = h;
    let read_err = |source| NpyError::Read { what, path: path.clone(), source };
    macro_rules! widen {
        ($t:ty) => {
            npy.into_vec::<$t>().map_err(read_err)?.into_iter().map(|v| v as f64).collect()
        };
    }
    let data: Vec<f64> = match descr.get(1..).unwrap_or("") {
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
                path,
                got: descr,
                expected: "bool, an integer type, float32 or float64",
            });
        }
    };
    Ok(data)
}

/// Stages `data` with `shape` as an `.npy` for `path` in `staged` (see [`Staged`]).
///
/// # Errors
/// [`NpyError::Write`].
pub(crate) fn stage<T: npyz::AutoSerialize + Copy>(
    staged: &mut Staged,
    path: &Path,
    shape: &[usize],
    data: &[T],
) -> Result<(), NpyError> {
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    staged
        .add_with(path, |buf| {
            let mut w = npyz::WriteOptions::new().default_dtype().shape(&shape).writer(buf).begin_nd()?;
            w.extend(data.iter().copied())?;
            w.finish()
        })
        .map_err(NpyError::Write)
}
