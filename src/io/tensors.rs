//! A strict reader of safetensors files: every tensor is asked for by name and shape, and
//! every tensor nobody asked for is an error.

use crate::error::{Error, Result};
use crate::matrix::Matrix;
use ::safetensors::SafeTensors;
use ::safetensors::tensor::Dtype;
use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Bytes of the little-endian header length that starts a safetensors file.
const LEN_BYTES: usize = 8;

/// One tensor of the file: where its bytes are and how to read them.
#[derive(Clone, Debug)]
struct Entry {
    /// The name in the file (differs from the key when a name map renamed it).
    file_name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range in the whole file.
    bytes: Range<usize>,
    taken: bool,
}

/// A safetensors file opened for strict reading, so that a checkpoint with a missing, extra,
/// mis-shaped or non-finite tensor is an error naming the file and the tensor instead of a
/// silently different model.
///
/// The file is read and its header validated once; tensors are then handed out by name with the
/// shape the caller needs ([`take`](Self::take), [`take_matrix`](Self::take_matrix),
/// [`take_vector`](Self::take_vector)), widened from `F32` or `F64` to `f64` in C order.
/// [`finish`](Self::finish) refuses the file if any tensor was never taken. A name map
/// ([`renamed`](Self::renamed)) lets checkpoints with other names be read under the names a
/// loader expects.
///
/// ```
/// use degeneracy::io::TensorFile;
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("m.safetensors");
/// # let mlp = degeneracy::Mlp::init(&[3, 2], degeneracy::Activation::Relu, true, 0)?;
/// # degeneracy::io::save_mlp(&path, &mlp)?;
/// let mut file = TensorFile::open(&path)?;
/// let w = file.take_matrix("layers.0.weight", 2, 3)?;
/// let b = file.take_vector("layers.0.bias", 2)?;
/// file.finish()?; // an error if the file held anything else
/// # assert_eq!((w.shape(), b.len()), ((2, 3), 2));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct TensorFile {
    path: PathBuf,
    bytes: Vec<u8>,
    /// Keyed by the name callers ask for.
    entries: BTreeMap<String, Entry>,
}

impl TensorFile {
    /// Reads and validates `path` (header, offsets, sizes); no tensor is decoded yet.
    ///
    /// At most the file's length, as the file system reports it, is read (a device or pipe
    /// that never ends cannot exhaust memory: it reads as an empty, malformed file).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |e| Error::io(path, e);
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.take(len).read_to_end(&mut bytes).map_err(io)?;
        Self::from_bytes(path, bytes)
    }

    /// Validates the bytes of a safetensors file; `path` only names it in errors.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        let path = path.into();
        let malformed = |reason: String| Error::malformed(&path, "safetensors", reason);
        // safetensors' own messages for these two say little ("header too small", "invalid
        // header length"): say what the file holds.
        let Some(len) = bytes.get(..LEN_BYTES) else {
            return Err(malformed(format!(
                "{} bytes, too short for the 8-byte header length that starts a safetensors file",
                bytes.len()
            )));
        };
        let header_len = u64::from_le_bytes(len.try_into().expect("8 bytes"));
        let room = (bytes.len() - LEN_BYTES) as u64;
        if header_len > room {
            return Err(malformed(format!(
                "the header length {header_len} runs past the end of the file ({room} bytes after the length)"
            )));
        }
        let header_end = LEN_BYTES + header_len as usize;
        let (_, metadata) = SafeTensors::read_metadata(&bytes).map_err(|e| malformed(format!("{e}")))?;
        let mut entries = BTreeMap::new();
        for (name, info) in metadata.tensors() {
            let (start, end) = info.data_offsets;
            let entry = Entry {
                file_name: name.clone(),
                dtype: info.dtype,
                shape: info.shape.clone(),
                // read_metadata checked that the offsets tile the data exactly.
                bytes: header_end + start..header_end + end,
                taken: false,
            };
            entries.insert(name, entry);
        }
        Ok(TensorFile { path, bytes, entries })
    }

    /// Reads the tensors under other names: each `(name in the file, name to read it as)` pair
    /// renames one tensor, for checkpoints whose names differ from what a loader expects.
    ///
    /// A name the file does not hold is [`Error::MissingTensor`]; two tensors ending under the
    /// same name is [`Error::InvalidParameter`] (`tensor name map`).
    pub fn renamed<I, A, B>(mut self, map: I) -> Result<Self>
    where
        I: IntoIterator<Item = (A, B)>,
        A: AsRef<str>,
        B: AsRef<str>,
    {
        let mut moved = Vec::new();
        for (from, to) in map {
            let (from, to) = (from.as_ref(), to.as_ref());
            let key = self.entries.iter().find(|(_, e)| e.file_name == from).map(|(k, _)| k.clone());
            let Some(key) = key else {
                return Err(Error::MissingTensor { path: self.path.clone(), name: from.to_string() });
            };
            let entry = self.entries.remove(&key).expect("found above");
            moved.push((to.to_string(), entry));
        }
        for (to, entry) in moved {
            if let Some(other) = self.entries.get(&to) {
                return Err(Error::invalid(
                    "tensor name map",
                    format!("`{}` → `{to}`", entry.file_name),
                    format!("{} also holds `{}` under that name", self.path.display(), other.file_name),
                ));
            }
            self.entries.insert(to, entry);
        }
        Ok(self)
    }

    /// The file, as named in errors.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor's name (after renaming), sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Whether the file holds `name` (after renaming).
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The shape of `name` as stored, outermost dimension first.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// The name `name` has in the file (they differ when a name map renamed it); errors use it.
    pub fn name_in_file<'a>(&'a self, name: &'a str) -> &'a str {
        self.entries.get(name).map_or(name, |e| e.file_name.as_str())
    }

    /// The tensors not taken yet, by their names in the file, sorted.
    pub fn remaining(&self) -> Vec<String> {
        let mut names: Vec<String> = self.entries.values().filter(|e| !e.taken).map(|e| e.file_name.clone()).collect();
        names.sort();
        names
    }

    /// Checks `name` without decoding it into memory: present, of shape `shape`, of element
    /// type `F32` or `F64`, every value finite. Lets a loader validate a whole file before
    /// allocating anything for it.
    ///
    /// Errors: [`Error::MissingTensor`], [`Error::TransposedTensor`] (a 2-D tensor stored as
    /// the transpose of `shape`), [`Error::TensorShape`], [`Error::Dtype`],
    /// [`Error::NonFinite`]; each names the file and the tensor.
    pub fn check(&self, name: &str, shape: &[usize]) -> Result<()> {
        let entry = self.entry(name)?;
        if entry.shape != shape {
            let (path, name) = (self.path.clone(), entry.file_name.clone());
            let found = entry.shape.clone();
            let transposed = shape.len() == 2 && shape[0] != shape[1] && found == [shape[1], shape[0]];
            return Err(if transposed {
                Error::TransposedTensor { path, name, expected: shape.to_vec(), found }
            } else {
                Error::TensorShape { path, name, expected: format!("{shape:?}"), found }
            });
        }
        let width = self.width(entry)?;
        let data = &self.bytes[entry.bytes.clone()];
        let bad = data.chunks_exact(width).map(decode).position(|v| !v.is_finite());
        if let Some(index) = bad {
            let value = decode(&data[index * width..(index + 1) * width]);
            return Err(self.non_finite(entry, index, value));
        }
        Ok(())
    }

    /// The tensor `name` of shape `shape` as `f64` values in C (row-major) order, after the
    /// checks of [`check`](Self::check). Taking a tensor twice returns it again.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f64>> {
        self.check(name, shape)?;
        let entry = self.entries.get_mut(name).expect("checked");
        entry.taken = true;
        let width = if entry.dtype == Dtype::F64 { 8 } else { 4 };
        // Little-endian and possibly unaligned bytes: decode value by value.
        Ok(self.bytes[entry.bytes.clone()].chunks_exact(width).map(decode).collect())
    }

    /// A buffer that is not a parameter (TransformerLens' attention `mask` and `IGNORE`, rotary
    /// tables), if the file holds it: its stored shape and values widened to `f64` from `F64`,
    /// `F32`, `BOOL` or `U8`, in C order. Values are not required to be finite (`IGNORE` is
    /// −∞); the caller checks or recomputes what it needs. Taking it marks it read, so
    /// [`finish`](Self::finish) accepts the file: checkpoints that carry such buffers load
    /// without the caller listing them as weights.
    ///
    /// Errors: [`Error::Dtype`] for another element type, naming the file and the buffer.
    pub fn take_buffer(&mut self, name: &str) -> Result<Option<(Vec<usize>, Vec<f64>)>> {
        let Some(entry) = self.entries.get_mut(name) else { return Ok(None) };
        let bytes = &self.bytes[entry.bytes.clone()];
        let values: Vec<f64> = match entry.dtype {
            Dtype::F64 | Dtype::F32 => {
                let width = if entry.dtype == Dtype::F64 { 8 } else { 4 };
                bytes.chunks_exact(width).map(decode).collect()
            }
            Dtype::BOOL | Dtype::U8 => bytes.iter().map(|&b| f64::from(b)).collect(),
            other => {
                return Err(Error::Dtype {
                    path: self.path.clone(),
                    name: entry.file_name.clone(),
                    found: format!("{other:?}"),
                    expected: "F64, F32, BOOL or U8",
                });
            }
        };
        entry.taken = true;
        Ok(Some((entry.shape.clone(), values)))
    }

    /// A 2-D tensor `[rows, cols]` as a matrix (see [`take`](Self::take)).
    pub fn take_matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
        let data = self.take(name, &[rows, cols])?;
        Matrix::from_vec(rows, cols, data)
    }

    /// A 1-D tensor `[len]` (see [`take`](Self::take)).
    pub fn take_vector(&mut self, name: &str, len: usize) -> Result<Vec<f64>> {
        self.take(name, &[len])
    }

    /// Ends the reading: [`Error::UnexpectedTensor`] naming every tensor never taken, so that
    /// nothing in the file is silently ignored.
    pub fn finish(self) -> Result<()> {
        let names = self.remaining();
        if names.is_empty() { Ok(()) } else { Err(Error::UnexpectedTensor { path: self.path, names }) }
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries.get(name).ok_or_else(|| Error::MissingTensor { path: self.path.clone(), name: name.to_string() })
    }

    /// Bytes per value of an `F64` or `F32` tensor; other types are a [`Error::Dtype`].
    fn width(&self, entry: &Entry) -> Result<usize> {
        match entry.dtype {
            Dtype::F64 => Ok(8),
            Dtype::F32 => Ok(4),
            other => Err(Error::Dtype {
                path: self.path.clone(),
                name: entry.file_name.clone(),
                found: format!("{other:?}"),
                expected: "F64 or F32",
            }),
        }
    }

    /// The error for the value at flat index `index`: `row` counts over all dimensions but the
    /// last, `col` is the index in the last; the message gives the full index.
    fn non_finite(&self, entry: &Entry, index: usize, value: f64) -> Error {
        let mut at = vec![0; entry.shape.len()];
        let mut rest = index;
        for (k, &d) in entry.shape.iter().enumerate().rev() {
            at[k] = rest % d.max(1);
            rest /= d.max(1);
        }
        let last = entry.shape.last().copied().unwrap_or(1).max(1);
        Error::NonFinite {
            what: format!("{}: tensor `{}` at {at:?}", self.path.display(), entry.file_name),
            row: index / last,
            col: index % last,
            value,
        }
    }
}

/// One little-endian `f64` (8 bytes) or `f32` (4 bytes) value, widened.
fn decode(bytes: &[u8]) -> f64 {
    match bytes.len() {
        8 => f64::from_le_bytes(bytes.try_into().expect("8 bytes")),
        _ => f64::from(f32::from_le_bytes(bytes.try_into().expect("4 bytes"))),
    }
}
