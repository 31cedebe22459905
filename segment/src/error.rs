//! The error type of msloss-segment.

use std::path::PathBuf;

/// Everything that can go wrong while loading, segmenting, scoring or writing.
///
/// Every message says what was expected and what came.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentError {
    /// A file cannot be opened or read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An image file cannot be decoded (unsupported or corrupt).
    #[error("cannot decode {path} as an image (PNG, JPEG or TIFF expected)")]
    Decode {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: image::ImageError,
    },
    /// A file has a layout, type or extension this crate does not take.
    #[error("{path}: {what}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what is expected.
        what: String,
    },
    /// The image or volume has no pixels, or its buffer does not match its dimensions.
    #[error("bad image: {0}")]
    BadImage(String),
    /// The phase count is out of range.
    #[error("the number of phases must be >= 2 and <= min(255, pixel count {pixels}), got {phases}")]
    BadPhases {
        /// The phases asked for.
        phases: usize,
        /// The pixel (voxel) count of the image.
        pixels: usize,
    },
    /// The image has fewer distinct pixel values than the phases asked for, so some phase would
    /// be empty whatever the segmentation.
    #[error(
        "the image has fewer than {phases} distinct pixel values, so it cannot be split into {phases} phases; ask for fewer phases"
    )]
    TooFewValues {
        /// The phases asked for.
        phases: usize,
    },
    /// A setting is out of range.
    #[error("setting {name} must be {expected}, got {value}")]
    BadSetting {
        /// The setting.
        name: &'static str,
        /// What is accepted.
        expected: &'static str,
        /// The value that came.
        value: f64,
    },
    /// The loss backend reported an error.
    #[error("the {backend} backend failed: {message}")]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// Its message.
        message: String,
    },
    /// The energy became non-finite during optimisation.
    #[error("the energy became non-finite ({value}) at iteration {iteration}")]
    Diverged {
        /// The iteration.
        iteration: usize,
        /// The value.
        value: f64,
    },
    /// Two label maps to compare have different sizes.
    #[error("the label maps differ in size: the prediction has shape {pred:?} but the ground truth has {truth:?}")]
    ShapeMismatch {
        /// The prediction's dimensions.
        pred: Vec<usize>,
        /// The ground truth's dimensions.
        truth: Vec<usize>,
    },
    /// An output cannot be encoded or written.
    #[error("cannot write {path}: {message}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        message: String,
    },
}

impl SegmentError {
    pub(crate) fn unsupported(path: &std::path::Path, what: impl Into<String>) -> Self {
        Self::Unsupported { path: path.to_owned(), what: what.into() }
    }
    pub(crate) fn write(path: &std::path::Path, message: impl std::fmt::Display) -> Self {
        Self::Write { path: path.to_owned(), message: message.to_string() }
    }
}
