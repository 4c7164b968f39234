//! One error type for the whole crate.
//!
//! Every variant says *what* went wrong and *where*: the operation, the expected and found
//! shapes, the file, the tensor or node name, the index of an offending value. Library code
//! returns these instead of panicking on user input.

use std::path::PathBuf;

/// Crate-wide result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `degeneracy`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two operands (or an operand and a model) disagree in shape.
    #[error("{op}: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        /// The operation or object that checked the shape.
        op: &'static str,
        /// The shape it needed.
        expected: Vec<usize>,
        /// The shape it got.
        found: Vec<usize>,
    },

    /// A NaN or infinity where finite numbers are required.
    #[error("{what}: non-finite value {value} at row {row}, column {col}")]
    NonFinite {
        /// Which data held the value (an input file, a node's activations, a loss...).
        what: String,
        /// Row (sample) index of the first offending value.
        row: usize,
        /// Column index of the first offending value.
        col: usize,
        /// The value itself.
        value: f64,
    },

    /// A dataset, batch or matrix with nothing in it.
    #[error("{what}: empty (no samples or zero-sized dimension)")]
    Empty {
        /// What was empty.
        what: String,
    },

    /// Reading or writing a file failed at the operating-system level.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A file exists but its contents are not a valid file of the expected format.
    #[error("{}: malformed {format} file: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The format that was expected (`npy`, `safetensors`, `json`...).
        format: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A tensor is stored with an element type this crate cannot use there.
    #[error("{}: `{name}` has dtype {found}, expected {expected}", path.display())]
    Dtype {
        /// The file.
        path: PathBuf,
        /// The tensor or array.
        name: String,
        /// The element type found.
        found: String,
        /// The element types accepted.
        expected: &'static str,
    },

    /// A tensor that a model needs is missing from a weights file.
    #[error("{}: tensor `{name}` not found", path.display())]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor name that was looked up.
        name: String,
    },

    /// A node-layer name that the model does not have.
    #[error("unknown node layer `{name}`; this model has {available:?}")]
    UnknownNode {
        /// The requested name.
        name: String,
        /// The names the model does have.
        available: Vec<String>,
    },

    /// A class label outside `0..n_classes`.
    #[error("label {label} of sample {index} is outside 0..{n_classes}")]
    LabelOutOfRange {
        /// Sample index.
        index: usize,
        /// The label value.
        label: i64,
        /// Number of classes (model outputs).
        n_classes: usize,
    },

    /// A configuration value or hyper-parameter that is out of its valid range.
    #[error("invalid {name} = {value}: {reason}")]
    InvalidParameter {
        /// The parameter (config key, builder field).
        name: String,
        /// Its value, as given.
        value: String,
        /// The rule it breaks.
        reason: String,
    },

    /// A node layer keeps no direction: every eigenvalue of the named matrix is at or below the
    /// truncation threshold (constant data, a dead layer, an output that ignores the node).
    #[error("node layer `{node}`: no direction of the {matrix} is above the threshold {threshold:e}")]
    RankZero {
        /// The node layer.
        node: String,
        /// Which matrix (`gram`, `interaction (Λ)`).
        matrix: &'static str,
        /// The truncation threshold.
        threshold: f64,
    },

    /// A decomposition did not converge or met a matrix it cannot handle.
    #[error("{op}: linear algebra failed: {reason}")]
    LinearAlgebra {
        /// The decomposition.
        op: &'static str,
        /// What the backend reported.
        reason: String,
    },
}

impl Error {
    /// Shorthand for [`Error::ShapeMismatch`].
    pub(crate) fn shape(op: &'static str, expected: &[usize], found: &[usize]) -> Self {
        Error::ShapeMismatch { op, expected: expected.to_vec(), found: found.to_vec() }
    }

    /// Shorthand for [`Error::InvalidParameter`].
    pub(crate) fn invalid(name: impl Into<String>, value: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        Error::InvalidParameter { name: name.into(), value: value.to_string(), reason: reason.into() }
    }

    /// Shorthand for [`Error::Io`].
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// Shorthand for [`Error::Malformed`].
    pub(crate) fn malformed(path: impl Into<PathBuf>, format: &'static str, reason: impl Into<String>) -> Self {
        Error::Malformed { path: path.into(), format, reason: reason.into() }
    }
}
