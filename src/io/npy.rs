//! `.npy` arrays (numpy's format) through the `npyz` crate: whole-file reads, writes, and a
//! chunked row reader for files larger than memory.

use crate::error::{Error, Result};
use crate::matrix::Matrix;
use npyz::{NpyFile, Order, WriterBuilder};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};

/// The element data of an array: floats are widened to `f64`, integers to `i64`.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    /// From `f8` or `f4`.
    Float(Vec<f64>),
    /// From `i8`, `i4`, `i2`, `i1`, `u4`, `u2`, `u1`.
    Int(Vec<i64>),
}

/// A whole array in C (row-major) order.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Elements in C order.
    pub data: NpyData,
}

const ACCEPTED: &str = "f8, f4 or an integer type";

fn open(path: &Path) -> Result<NpyFile<BufReader<File>>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    NpyFile::new(BufReader::new(file)).map_err(|e| Error::malformed(path, "npy", format!("bad header: {e}")))
}

fn read_err(path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::malformed(path, "npy", "truncated: fewer elements than the header's shape")
    } else {
        Error::malformed(path, "npy", e.to_string())
    }
}

/// Element kinds this crate reads; anything else is a [`Error::Dtype`].
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    F8,
    F4,
    I8,
    I4,
    I2,
    I1,
    U4,
    U2,
    U1,
}

fn kind_of(path: &Path, npy: &NpyFile<impl Read>) -> Result<Kind> {
    let dtype = npy.dtype();
    let npyz::DType::Plain(ts) = &dtype else {
        return Err(Error::Dtype { path: path.into(), name: "array".into(), found: dtype.descr(), expected: ACCEPTED });
    };
    let s = ts.to_string();
    let code = s.trim_start_matches(['<', '>', '|', '=']);
    Ok(match code {
        "f8" => Kind::F8,
        "f4" => Kind::F4,
        "i8" => Kind::I8,
        "i4" => Kind::I4,
        "i2" => Kind::I2,
        "i1" => Kind::I1,
        "u4" => Kind::U4,
        "u2" => Kind::U2,
        "u1" => Kind::U1,
        _ => return Err(Error::Dtype { path: path.into(), name: "array".into(), found: s, expected: ACCEPTED }),
    })
}

fn collect<T: npyz::Deserialize>(path: &Path, npy: NpyFile<BufReader<File>>) -> Result<Vec<T>> {
    npy.data::<T>()
        .map_err(|e| Error::malformed(path, "npy", e.to_string()))?
        .collect::<std::io::Result<Vec<T>>>()
        .map_err(|e| read_err(path, e))
}

/// Little-endian `f8` payloads (what numpy writes on every common machine) are read straight
/// into the `f64` buffer after npyz has parsed and validated the header: npyz's element-wise
/// deserialisation costs ~12 ns per value, most of a typical `lib_build` run's reading time.
fn collect_f8(path: &Path, npy: NpyFile<BufReader<File>>) -> Result<Vec<f64>> {
    let little_endian = matches!(npy.dtype(), npyz::DType::Plain(ts) if ts.to_string().starts_with('<'));
    if !little_endian {
        return collect::<f64>(path, npy);
    }
    let mut values = vec![0.0_f64; npy.len() as usize];
    npy.into_inner().read_exact(bytemuck::cast_slice_mut(&mut values)).map_err(|e| read_err(path, e))?;
    if cfg!(target_endian = "big") {
        values.iter_mut().for_each(|v| *v = f64::from_bits(v.to_bits().swap_bytes()));
    }
    Ok(values)
}

/// Reads a whole array; Fortran-order 2-D arrays are transposed into C order.
pub fn read_npy(path: impl AsRef<Path>) -> Result<NpyArray> {
    let path = path.as_ref();
    let npy = open(path)?;
    let shape: Vec<usize> = npy.shape().iter().map(|&s| s as usize).collect();
    let fortran = npy.order() == Order::Fortran && shape.len() > 1;
    if fortran && shape.len() != 2 {
        return Err(Error::malformed(path, "npy", "Fortran order is supported for 1-D and 2-D arrays only"));
    }
    let mut data = match kind_of(path, &npy)? {
        Kind::F8 => NpyData::Float(collect_f8(path, npy)?),
        Kind::F4 => NpyData::Float(collect::<f32>(path, npy)?.into_iter().map(f64::from).collect()),
        int => NpyData::Int(read_ints(path, npy, int)?),
    };
    if fortran {
        let (r, c) = (shape[0], shape[1]);
        data = match data {
            NpyData::Float(v) => NpyData::Float(fortran_to_c(&v, r, c)),
            NpyData::Int(v) => NpyData::Int(fortran_to_c(&v, r, c)),
        };
    }
    Ok(NpyArray { shape, data })
}

/// Element `(i, j)` of an `r × c` column-major buffer sits at `j·r + i`.
fn fortran_to_c<T: Copy>(v: &[T], r: usize, c: usize) -> Vec<T> {
    (0..r * c).map(|k| v[(k % c) * r + k / c]).collect()
}

fn read_ints(path: &Path, npy: NpyFile<BufReader<File>>, kind: Kind) -> Result<Vec<i64>> {
    macro_rules! widen {
        ($t:ty) => {
            collect::<$t>(path, npy)?.into_iter().map(i64::from).collect()
        };
    }
    Ok(match kind {
        Kind::I4 => widen!(i32),
        Kind::I2 => widen!(i16),
        Kind::I1 => widen!(i8),
        Kind::U4 => widen!(u32),
        Kind::U2 => widen!(u16),
        Kind::U1 => widen!(u8),
        _ => collect::<i64>(path, npy)?,
    })
}

/// Reads a float array as a matrix: `[n, d]` as is, `[n]` as a column `[n, 1]`.
pub fn read_matrix(path: impl AsRef<Path>) -> Result<Matrix> {
    let path = path.as_ref();
    let arr = read_npy(path)?;
    let NpyData::Float(data) = arr.data else {
        return Err(Error::Dtype {
            path: path.into(),
            name: "array".into(),
            found: "integer".into(),
            expected: "f8 or f4",
        });
    };
    let (r, c) = match arr.shape[..] {
        [n] => (n, 1),
        [n, d] => (n, d),
        _ => {
            return Err(Error::malformed(
                path,
                "npy",
                format!("expected a 1-D or 2-D array, found shape {:?}", arr.shape),
            ));
        }
    };
    let m = Matrix::from_vec(r, c, data)?;
    m.check_finite(&path.display().to_string())?;
    Ok(m)
}

/// Reads a 1-D float array.
pub fn read_vector(path: impl AsRef<Path>) -> Result<Vec<f64>> {
    let path = path.as_ref();
    let m = read_matrix(path)?;
    if m.ncols() != 1 {
        return Err(Error::malformed(path, "npy", format!("expected a 1-D array, found shape {:?}", m.shape())));
    }
    Ok(m.into_vec())
}

/// Reads class labels: a 1-D integer array with non-negative entries.
pub fn read_labels(path: impl AsRef<Path>) -> Result<Vec<usize>> {
    let path = path.as_ref();
    let arr = read_npy(path)?;
    let NpyData::Int(v) = arr.data else {
        return Err(Error::Dtype {
            path: path.into(),
            name: "labels".into(),
            found: "float".into(),
            expected: "an integer type",
        });
    };
    if arr.shape.len() != 1 {
        return Err(Error::malformed(path, "npy", format!("labels must be 1-D, found shape {:?}", arr.shape)));
    }
    v.iter()
        .enumerate()
        .map(|(i, &l)| {
            usize::try_from(l).map_err(|_| Error::LabelOutOfRange { index: i, label: l, n_classes: usize::MAX })
        })
        .collect()
}

fn write<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[u64], data: &[T]) -> Result<()> {
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let io = |e| Error::io(path, e);
    let mut w =
        npyz::WriteOptions::new().default_dtype().shape(shape).writer(BufWriter::new(file)).begin_nd().map_err(io)?;
    w.extend(data.iter().copied()).map_err(io)?;
    w.finish().map_err(io)
}

/// Writes a matrix as a 2-D `f8` array (C order).
pub fn write_matrix(path: impl AsRef<Path>, m: &Matrix) -> Result<()> {
    write(path.as_ref(), &[m.nrows() as u64, m.ncols() as u64], m.as_slice())
}

/// Writes a 1-D `f8` array.
pub fn write_vector(path: impl AsRef<Path>, v: &[f64]) -> Result<()> {
    write(path.as_ref(), &[v.len() as u64], v)
}

/// Writes an `i8` array of the given shape.
pub fn write_ints(path: impl AsRef<Path>, shape: &[usize], v: &[i64]) -> Result<()> {
    let shape: Vec<u64> = shape.iter().map(|&s| s as u64).collect();
    write(path.as_ref(), &shape, v)
}

/// Streams the rows of a 2-D float `.npy` file in chunks, never holding the whole file.
///
/// ```no_run
/// # use degeneracy::io::NpyRowReader;
/// let mut reader = NpyRowReader::open("big.npy", 4096)?;
/// let mut chunk = degeneracy::Matrix::default();
/// while reader.next_chunk(&mut chunk)? {
///     // chunk holds up to 4096 rows
/// }
/// # Ok::<(), degeneracy::Error>(())
/// ```
pub struct NpyRowReader {
    path: PathBuf,
    rows: usize,
    cols: usize,
    chunk_rows: usize,
    rows_read: usize,
    source: RowSource,
}

enum RowSource {
    F8(npyz::NpyReader<f64, BufReader<File>>),
    F4(npyz::NpyReader<f32, BufReader<File>>),
}

impl NpyRowReader {
    /// Opens `path` (C-order, `f8` or `f4`, 1-D or 2-D) for chunks of `chunk_rows` rows.
    pub fn open(path: impl AsRef<Path>, chunk_rows: usize) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if chunk_rows == 0 {
            return Err(Error::invalid("chunk_rows", 0, "must be at least 1"));
        }
        let npy = open(&path)?;
        let shape: Vec<usize> = npy.shape().iter().map(|&s| s as usize).collect();
        let (rows, cols) = match shape[..] {
            [n] => (n, 1),
            [n, d] => (n, d),
            _ => return Err(Error::malformed(&path, "npy", format!("expected 1-D or 2-D, found shape {shape:?}"))),
        };
        if npy.order() == Order::Fortran && cols > 1 {
            return Err(Error::malformed(&path, "npy", "Fortran-order arrays cannot be streamed by rows"));
        }
        let bad = |e: npyz::DTypeError| Error::malformed(&path, "npy", e.to_string());
        let source = match kind_of(&path, &npy)? {
            Kind::F8 => RowSource::F8(npy.data::<f64>().map_err(bad)?),
            Kind::F4 => RowSource::F4(npy.data::<f32>().map_err(bad)?),
            _ => {
                return Err(Error::Dtype { path, name: "array".into(), found: "integer".into(), expected: "f8 or f4" });
            }
        };
        Ok(NpyRowReader { path, rows, cols, chunk_rows, rows_read: 0, source })
    }

    /// Total number of rows in the file.
    pub fn n_rows(&self) -> usize {
        self.rows
    }

    /// Width of a row.
    pub fn n_cols(&self) -> usize {
        self.cols
    }

    /// Moves to row `row` (the next chunk starts there); `row == n_rows()` is the end.
    pub fn seek_row(&mut self, row: usize) -> Result<()> {
        if row > self.rows {
            return Err(Error::invalid("row", row, format!("{} has {} rows", self.path.display(), self.rows)));
        }
        let index = (row * self.cols) as u64;
        let sought = match &mut self.source {
            RowSource::F8(r) => r.seek_to(index),
            RowSource::F4(r) => r.seek_to(index),
        };
        sought.map_err(|e| read_err(&self.path, e))?;
        self.rows_read = row;
        Ok(())
    }

    /// Reads the next chunk into `chunk` (resized); `false` once every row was read.
    pub fn next_chunk(&mut self, chunk: &mut Matrix) -> Result<bool> {
        let take = self.chunk_rows.min(self.rows - self.rows_read);
        if take == 0 {
            return Ok(false);
        }
        self.read_rows(take, chunk)?;
        Ok(true)
    }

    /// Reads the next `take` rows (at most the rows left) into `chunk`.
    pub(crate) fn read_rows(&mut self, take: usize, chunk: &mut Matrix) -> Result<()> {
        let take = take.min(self.rows - self.rows_read);
        chunk.resize(take, self.cols);
        let path = &self.path;
        let out = chunk.as_mut_slice();
        let filled = match &mut self.source {
            RowSource::F8(r) => fill(out, r.by_ref()),
            RowSource::F4(r) => fill(out, r.by_ref().map(|v| v.map(f64::from))),
        };
        filled.map_err(|e| read_err(path, e))?;
        let first_row = self.rows_read;
        self.rows_read += take;
        chunk.check_finite(&path.display().to_string()).map_err(|e| match e {
            Error::NonFinite { what, row, col, value } => Error::NonFinite { what, row: row + first_row, col, value },
            other => other,
        })
    }
}

fn fill(out: &mut [f64], mut it: impl Iterator<Item = std::io::Result<f64>>) -> std::io::Result<()> {
    for slot in out.iter_mut() {
        *slot = it.next().ok_or(std::io::ErrorKind::UnexpectedEof)??;
    }
    Ok(())
}
