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

    /// A shard file that cannot be combined with the others: unreadable, truncated, computed
    /// with another configuration, model or data, or clashing with another shard file.
    #[error("shard file {}: {problem}", path.display())]
    Shard {
        /// The shard file.
        path: PathBuf,
        /// What is wrong with it.
        problem: ShardProblem,
    },

    /// The shard files given do not cover every shard of the run.
    #[error("incomplete shards: the run has {count} shards, indices {missing:?} are missing")]
    ShardsMissing {
        /// Number of shards of the run (from the files' headers).
        count: usize,
        /// The shard indices no file was given for.
        missing: Vec<usize>,
    },

    /// Another process of a distributed computation failed, so this one stopped too.
    #[error("rank {rank} of the distributed computation failed: {message}")]
    Remote {
        /// The rank that failed first (the lowest one if several did).
        rank: usize,
        /// Its error, as text.
        message: String,
    },

    /// Sending, receiving or decoding a message between processes failed.
    #[error("{op}: communication failed: {reason}")]
    Communication {
        /// The operation (`send`, `receive`, `broadcast`, `decode`...).
        op: &'static str,
        /// What went wrong.
        reason: String,
    },

    /// A decomposition did not converge or met a matrix it cannot handle.
    #[error("{op}: linear algebra failed: {reason}")]
    LinearAlgebra {
        /// The decomposition.
        op: &'static str,
        /// What the backend reported.
        reason: String,
    },

    /// Tensors of a weights file that nothing reads: a typo (`layers.2.bais`), an orphan bias,
    /// the biases of a model declared bias-free, a tensor a loader does not know. Refused, since
    /// ignoring them would silently load another model than the file holds.
    #[error("{}: unexpected tensors `{}` (nothing reads them)", path.display(), names.join("`, `"))]
    UnexpectedTensor {
        /// The file.
        path: PathBuf,
        /// Every unexpected tensor, sorted by name.
        names: Vec<String>,
    },

    /// A tensor of a weights file whose shape is not the one its model needs.
    #[error("{}: tensor `{name}` has shape {found:?}, expected {expected}", path.display())]
    TensorShape {
        /// The file.
        path: PathBuf,
        /// The tensor, as named in the file.
        name: String,
        /// The shape needed, e.g. `[40, 64]`, or a rule such as `2-D [out, in]` when only part of
        /// it is known.
        expected: String,
        /// The shape in the file.
        found: Vec<usize>,
    },

    /// A 2-D tensor stored transposed, e.g. a weight `[in, out]` where the model needs
    /// `[out, in]` (checkpoints of frameworks with the other convention): named as such, rather
    /// than blamed on its bias or on the next layer.
    #[error("{}: tensor `{name}` is transposed: shape {found:?}, expected {expected:?}", path.display())]
    TransposedTensor {
        /// The file.
        path: PathBuf,
        /// The tensor, as named in the file.
        name: String,
        /// The shape needed, `[out, in]`.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },

    /// A class label below zero in a labels file.
    #[error("{}: label {label} of sample {index} is negative", path.display())]
    NegativeLabel {
        /// The file.
        path: PathBuf,
        /// Sample index.
        index: usize,
        /// The label value.
        label: i64,
    },

    /// An error raised by a user's implementation of one of the crate's traits (a layer, a
    /// network, a sampler, a loss model), passed through unchanged; [`Error::downcast_user`]
    /// gets it back.
    #[error("{0}")]
    User(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),

    /// Every chain of an LLC estimate diverged, so there is no estimate. The report (each
    /// chain's trace up to its divergence, where and why, the warnings) is attached for callers
    /// that still want to write it.
    #[error("{what}: no healthy chain, all {chains} chains diverged (lower lr or raise localization)")]
    NoHealthyChain {
        /// What was estimated (the LLC, restricted to a subset, at a checkpoint...).
        what: String,
        /// Number of chains run.
        chains: usize,
        /// The report of the diverged chains.
        report: Box<crate::llc::LlcReport>,
    },
}

/// Why a shard file was refused (see [`Error::Shard`]).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ShardProblem {
    /// The file does not start like a shard file, or its header cannot be read.
    #[error("not a shard file: {reason}")]
    NotAShard {
        /// What was found instead.
        reason: String,
    },
    /// Written by another version of the format.
    #[error("format version {found}; this build reads version {supported}")]
    Version {
        /// The file's version.
        found: u32,
        /// The version this build writes and reads.
        supported: u32,
    },
    /// The file ends inside its header lines.
    #[error("truncated: the file ends inside its header ({found} bytes)")]
    HeaderTruncated {
        /// Bytes in the file.
        found: u64,
    },
    /// The file is shorter (or longer) than its header says.
    #[error("truncated: {found} payload bytes where the header says {expected}")]
    Truncated {
        /// Payload bytes the header announces.
        expected: u64,
        /// Payload bytes present.
        found: u64,
    },
    /// The payload does not match its checksum.
    #[error("corrupt: the payload's SHA-256 does not match the header")]
    Checksum,
    /// The payload cannot be decoded as the expected state.
    #[error("undecodable payload: {reason}")]
    Payload {
        /// The decoder's message.
        reason: String,
    },
    /// The file holds another kind of state (e.g. another stage).
    #[error("holds `{found}`, expected `{expected}`")]
    Kind {
        /// The kind the merge step asked for.
        expected: String,
        /// The kind in the file.
        found: String,
    },
    /// The file was computed with another configuration, model or data.
    #[error("computed from another configuration, model or data (fingerprint {found}, this run's is {expected})")]
    Fingerprint {
        /// This run's fingerprint.
        expected: String,
        /// The file's fingerprint.
        found: String,
    },
    /// The header's shard index is not below its shard count.
    #[error("shard index {index} is not below the shard count {count}")]
    Index {
        /// The index.
        index: usize,
        /// The count.
        count: usize,
    },
    /// Another file holds the same shard.
    #[error("shard {index} of {count} is also in {}", other.display())]
    Duplicate {
        /// The shard index.
        index: usize,
        /// The shard count.
        count: usize,
        /// The other file with that index.
        other: PathBuf,
    },
    /// The file belongs to a split into another number of shards.
    #[error("is one of {found} shards, the other files are of {expected}")]
    Count {
        /// The shard count of the other files.
        expected: usize,
        /// This file's shard count.
        found: usize,
    },
    /// The file's range of rows (or chains) does not continue where the previous shard ended.
    #[error("covers {start}..{end} of {total}, expected a range starting at {expected_start}")]
    Range {
        /// Start of the file's range.
        start: usize,
        /// End of the file's range.
        end: usize,
        /// Total rows (or chains) of the run, from the header.
        total: usize,
        /// Where the range had to start (the previous shard's end, or 0).
        expected_start: usize,
    },
    /// The last shard ends before (or after) the run's last row (or chain).
    #[error("is the last shard but ends at {end}, not at the total {total}")]
    End {
        /// End of the file's range.
        end: usize,
        /// Total rows (or chains) of the run.
        total: usize,
    },
    /// The file's total number of rows (or chains) differs from the other files'.
    #[error("is a shard of {found} rows (or chains), the other files of {expected}")]
    Total {
        /// The other files' total.
        expected: usize,
        /// This file's total.
        found: usize,
    },
}

impl Error {
    /// An [`Error::ShapeMismatch`]: `op` met `found` where it needs `expected`.
    ///
    /// ```
    /// let e = degeneracy::Error::shape("MyLayer::forward", &[8, 3], &[8, 4]);
    /// assert_eq!(e.to_string(), "MyLayer::forward: expected shape [8, 3], found [8, 4]");
    /// ```
    pub fn shape(op: &'static str, expected: &[usize], found: &[usize]) -> Self {
        Error::ShapeMismatch { op, expected: expected.to_vec(), found: found.to_vec() }
    }

    /// An [`Error::InvalidParameter`]: `name = value` breaks `reason`.
    pub fn invalid(name: impl Into<String>, value: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        Error::InvalidParameter { name: name.into(), value: value.to_string(), reason: reason.into() }
    }

    /// Wraps an error of a user's trait implementation ([`Error::User`]).
    ///
    /// ```
    /// #[derive(Debug)]
    /// struct Diverged(f64);
    /// impl std::fmt::Display for Diverged {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "diverged at {}", self.0) }
    /// }
    /// impl std::error::Error for Diverged {}
    ///
    /// let e = degeneracy::Error::user(Diverged(3.5));
    /// assert_eq!(e.downcast_user::<Diverged>().map(|d| d.0), Some(3.5));
    /// ```
    pub fn user(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::User(Box::new(error))
    }

    /// The user's error inside an [`Error::User`], if it is an `E`.
    pub fn downcast_user<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Error::User(inner) => inner.downcast_ref::<E>(),
            _ => None,
        }
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
