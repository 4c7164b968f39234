//! `.npy` arrays (numpy's format): whole-file reads, writes (through the `npyz` crate), and a
//! chunked row reader for files larger than memory.
//!
//! Headers are parsed here rather than by npyz, so that a hostile header cannot abort or
//! exhaust memory: the header length, the shape's element count (checked arithmetic) and the
//! payload length are all checked against the file's length before anything proportional to
//! them is allocated, and every error names the file.

use crate::error::{Error, Result};
use crate::matrix::Matrix;
use npyz::WriterBuilder;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom};
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

/// The magic string that starts every `.npy` file.
const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Element kinds this crate reads; anything else is a [`Error::Dtype`].
#[derive(Clone, Copy, Debug, PartialEq)]
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

impl Kind {
    fn size(self) -> usize {
        match self {
            Kind::F8 | Kind::I8 => 8,
            Kind::F4 | Kind::I4 | Kind::U4 => 4,
            Kind::I2 | Kind::U2 => 2,
            Kind::I1 | Kind::U1 => 1,
        }
    }

    fn is_float(self) -> bool {
        matches!(self, Kind::F8 | Kind::F4)
    }
}

/// A `.npy` header, checked against the file: the element count and the payload length are
/// known to fit, and the payload is exactly as long as the shape says.
struct Header {
    kind: Kind,
    /// Byte order of the payload.
    big_endian: bool,
    fortran: bool,
    shape: Vec<usize>,
    /// Number of elements (the product of `shape`).
    len: usize,
    /// Where the payload starts.
    data_start: u64,
}

/// Opens `path` and reads its header. Nothing proportional to the header's claims is allocated
/// before they are checked against the file's length (a header announcing 10¹² rows over a
/// 1 KiB payload is an error, not a 512 TB allocation); the header itself is read only once its
/// length is known to fit in the file.
fn open(path: &Path) -> Result<(File, Header)> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let bad = |reason: String| Error::malformed(path, "npy", reason);
    let mut pre = [0u8; 12];
    if file_len < 10 {
        return Err(bad(format!("{file_len} bytes, too short for a .npy header")));
    }
    file.read_exact(&mut pre[..10]).map_err(|e| read_err(path, e))?;
    if &pre[..6] != MAGIC {
        return Err(bad("not a .npy file (it does not start with \\x93NUMPY)".into()));
    }
    let (header_len, prefix) = match (pre[6], pre[7]) {
        (1, 0) => (u64::from(u16::from_le_bytes([pre[8], pre[9]])), 10),
        (2, 0) | (3, 0) => {
            if file_len < 12 {
                return Err(bad(format!("{file_len} bytes, too short for a version {}.0 header", pre[6])));
            }
            file.read_exact(&mut pre[10..12]).map_err(|e| read_err(path, e))?;
            (u64::from(u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]])), 12)
        }
        (major, minor) => return Err(bad(format!("unsupported .npy format version {major}.{minor}"))),
    };
    let data_start = prefix + header_len;
    if data_start > file_len {
        return Err(bad(format!(
            "the header length {header_len} runs past the end of the file ({} bytes after the length field)",
            file_len - prefix
        )));
    }
    let mut text = vec![0u8; header_len as usize];
    file.read_exact(&mut text).map_err(|e| read_err(path, e))?;
    let text = std::str::from_utf8(&text).map_err(|_| bad("the header is not text".into()))?;
    let dict = HeaderDict::parse(text).map_err(|reason| bad(format!("bad header: {reason}")))?;
    let (kind, big_endian) = kind_of(path, &dict.descr)?;
    let too_big = |shape: &[u64]| bad(format!("header shape {shape:?} has more elements than can be addressed"));
    let shape = dict.shape.iter().map(|&d| usize::try_from(d)).collect::<std::result::Result<Vec<usize>, _>>();
    let shape = shape.map_err(|_| too_big(&dict.shape))?;
    // Checked arithmetic: a shape whose product wraps (2⁵⁸ × 64) must not pass as empty, and
    // the partial products of an empty array's other dimensions must fit too.
    let too_big = || too_big(&dict.shape);
    let nonzero = shape.iter().filter(|&&d| d > 0).try_fold(kind.size(), |acc, &d| acc.checked_mul(d));
    if nonzero.is_none_or(|bytes| bytes > isize::MAX as usize) {
        return Err(too_big());
    }
    let len = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(too_big)?;
    let needed = (len as u64) * kind.size() as u64;
    let payload = file_len - data_start;
    if needed != payload {
        return Err(bad(format!(
            "header shape {shape:?} of {} needs {needed} bytes, the file has {payload} after its header",
            dict.descr_text()
        )));
    }
    Ok((file, Header { kind, big_endian, fortran: dict.fortran_order, shape, len, data_start }))
}

fn read_err(path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::malformed(path, "npy", "truncated: fewer elements than the header's shape")
    } else {
        Error::io(path, e)
    }
}

/// The element kind and byte order of a `descr` (`<f8`, `|u1`, `>i4`...).
fn kind_of(path: &Path, descr: &Descr<'_>) -> Result<(Kind, bool)> {
    let unsupported =
        |found: String| Error::Dtype { path: path.into(), name: "array".into(), found, expected: ACCEPTED };
    let Descr::Plain(s) = descr else {
        return Err(unsupported("a structured dtype".into()));
    };
    let (order, code) = match s.chars().next() {
        Some(c @ ('<' | '>' | '|' | '=')) => (c, &s[1..]),
        _ => ('=', *s),
    };
    let big_endian = order == '>' || (order != '<' && cfg!(target_endian = "big"));
    let kind = match code {
        "f8" => Kind::F8,
        "f4" => Kind::F4,
        "i8" => Kind::I8,
        "i4" => Kind::I4,
        "i2" => Kind::I2,
        "i1" => Kind::I1,
        "u4" => Kind::U4,
        "u2" => Kind::U2,
        "u1" => Kind::U1,
        _ => return Err(unsupported(s.to_string())),
    };
    Ok((kind, big_endian))
}

/// Reads `out.len()` values of `kind` (a float kind), widened to `f64`.
fn read_floats(path: &Path, src: &mut impl Read, kind: Kind, big_endian: bool, out: &mut [f64]) -> Result<()> {
    if kind == Kind::F8 && big_endian == cfg!(target_endian = "big") {
        // The payload is the buffer's own layout: read it in place (npyz's element-wise path
        // costs ~12 ns per value, most of a typical `lib_build` run's reading time).
        return src.read_exact(bytemuck::cast_slice_mut(out)).map_err(|e| read_err(path, e));
    }
    read_blocks(path, src, kind.size(), out, |b| match (kind, big_endian) {
        (Kind::F8, false) => f64::from_le_bytes(b.try_into().expect("8 bytes")),
        (Kind::F8, true) => f64::from_be_bytes(b.try_into().expect("8 bytes")),
        (_, false) => f64::from(f32::from_le_bytes(b.try_into().expect("4 bytes"))),
        (_, true) => f64::from(f32::from_be_bytes(b.try_into().expect("4 bytes"))),
    })
}

/// Reads `out.len()` values of `kind` (an integer kind), widened to `i64`.
fn read_ints(path: &Path, src: &mut impl Read, kind: Kind, big_endian: bool, out: &mut [i64]) -> Result<()> {
    macro_rules! widen {
        ($t:ty, $b:expr) => {{
            let bytes = $b.try_into().expect("the kind's size");
            i64::from(if big_endian { <$t>::from_be_bytes(bytes) } else { <$t>::from_le_bytes(bytes) })
        }};
    }
    read_blocks(path, src, kind.size(), out, |b| match kind {
        Kind::I4 => widen!(i32, b),
        Kind::I2 => widen!(i16, b),
        Kind::I1 => widen!(i8, b),
        Kind::U4 => widen!(u32, b),
        Kind::U2 => widen!(u16, b),
        Kind::U1 => widen!(u8, b),
        _ => widen!(i64, b),
    })
}

/// Fills `out` from `src`, `size` bytes per value, through a fixed stack buffer (no
/// allocation beyond `out`).
fn read_blocks<T>(
    path: &Path,
    src: &mut impl Read,
    size: usize,
    out: &mut [T],
    decode: impl Fn(&[u8]) -> T,
) -> Result<()> {
    let mut buf = [0u8; 16 * 1024];
    for block in out.chunks_mut(buf.len() / size) {
        let bytes = &mut buf[..block.len() * size];
        src.read_exact(bytes).map_err(|e| read_err(path, e))?;
        for (slot, b) in block.iter_mut().zip(bytes.chunks_exact(size)) {
            *slot = decode(b);
        }
    }
    Ok(())
}

/// The values of a float array in C order (Fortran-order 2-D arrays transposed).
fn float_data(path: &Path, mut file: File, header: &Header) -> Result<Vec<f64>> {
    let mut values = vec![0.0_f64; header.len];
    read_floats(path, &mut file, header.kind, header.big_endian, &mut values)?;
    Ok(to_c_order(values, header))
}

/// The values of an integer array in C order (Fortran-order 2-D arrays transposed).
fn int_data(path: &Path, mut file: File, header: &Header) -> Result<Vec<i64>> {
    let mut values = vec![0_i64; header.len];
    read_ints(path, &mut file, header.kind, header.big_endian, &mut values)?;
    Ok(to_c_order(values, header))
}

fn to_c_order<T: Copy>(values: Vec<T>, header: &Header) -> Vec<T> {
    match header.shape[..] {
        [r, c] if header.fortran => fortran_to_c(&values, r, c),
        _ => values,
    }
}

/// Fortran order is read for 1-D and 2-D arrays only.
fn check_order(path: &Path, header: &Header) -> Result<()> {
    if header.fortran && header.shape.len() > 2 {
        return Err(Error::malformed(path, "npy", "Fortran order is supported for 1-D and 2-D arrays only"));
    }
    Ok(())
}

/// Reads a whole array; Fortran-order 2-D arrays are transposed into C order.
///
/// The header is checked against the file before anything is allocated: a shape whose element
/// count overflows, or whose payload is longer or shorter than the file's, is
/// [`Error::Malformed`] naming the file.
pub fn read_npy(path: impl AsRef<Path>) -> Result<NpyArray> {
    let path = path.as_ref();
    let (file, header) = open(path)?;
    check_order(path, &header)?;
    let data = if header.kind.is_float() {
        NpyData::Float(float_data(path, file, &header)?)
    } else {
        NpyData::Int(int_data(path, file, &header)?)
    };
    Ok(NpyArray { shape: header.shape, data })
}

/// Element `(i, j)` of an `r × c` column-major buffer sits at `j·r + i`.
fn fortran_to_c<T: Copy>(v: &[T], r: usize, c: usize) -> Vec<T> {
    (0..r * c).map(|k| v[(k % c) * r + k / c]).collect()
}

/// Reads a float array as a matrix: `[n, d]` as is, `[n]` as a column `[n, 1]`. The element
/// type and shape are checked before the data is read; non-finite values are
/// [`Error::NonFinite`] naming the file.
pub fn read_matrix(path: impl AsRef<Path>) -> Result<Matrix> {
    let path = path.as_ref();
    let (file, header) = open(path)?;
    if !header.kind.is_float() {
        return Err(Error::Dtype {
            path: path.into(),
            name: "array".into(),
            found: "integer".into(),
            expected: "f8 or f4",
        });
    }
    let (r, c) = match header.shape[..] {
        [n] => (n, 1),
        [n, d] => (n, d),
        _ => {
            return Err(Error::malformed(
                path,
                "npy",
                format!("expected a 1-D or 2-D array, found shape {:?}", header.shape),
            ));
        }
    };
    let m = Matrix::from_vec(r, c, float_data(path, file, &header)?)?;
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

/// Reads class labels: a 1-D integer array with non-negative entries (a negative one is
/// [`Error::NegativeLabel`], naming the file and the sample).
pub fn read_labels(path: impl AsRef<Path>) -> Result<Vec<usize>> {
    let path = path.as_ref();
    let (file, header) = open(path)?;
    if header.kind.is_float() {
        return Err(Error::Dtype {
            path: path.into(),
            name: "labels".into(),
            found: "float".into(),
            expected: "an integer type",
        });
    }
    if header.shape.len() != 1 {
        return Err(Error::malformed(path, "npy", format!("labels must be 1-D, found shape {:?}", header.shape)));
    }
    int_data(path, file, &header)?
        .into_iter()
        .enumerate()
        .map(|(index, label)| {
            usize::try_from(label).map_err(|_| Error::NegativeLabel { path: path.into(), index, label })
        })
        .collect()
}

/// The `descr` of a header: a type string, or a structured dtype (a list), which this crate
/// does not read.
enum Descr<'a> {
    Plain(&'a str),
    Structured,
}

/// The dictionary of a `.npy` header, e.g. `{'descr': '<f8', 'fortran_order': False,
/// 'shape': (3, 4), }`.
struct HeaderDict<'a> {
    descr: Descr<'a>,
    fortran_order: bool,
    shape: Vec<u64>,
}

impl HeaderDict<'_> {
    fn descr_text(&self) -> &str {
        match self.descr {
            Descr::Plain(s) => s,
            Descr::Structured => "a structured dtype",
        }
    }
}

/// Nesting a header may have (a structured dtype nests a few levels; numpy writes 1).
const MAX_DEPTH: usize = 8;
/// Values a header may hold; keeps the parse of a hostile header small.
const MAX_VALUES: usize = 1024;
/// Dimensions an array may have (numpy's own limit is 64).
const MAX_DIMS: usize = 64;

/// A value of the Python literal subset `.npy` headers use.
enum Lit<'a> {
    Str(&'a str),
    Int(i128),
    Bool(bool),
    Seq(Vec<Lit<'a>>),
    Other,
}

/// A small parser for that subset, with bounded depth and size, so that no header (however
/// hostile) recurses deeply or allocates much; numbers are parsed with checked arithmetic.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
    values: usize,
}

impl<'a> HeaderDict<'a> {
    fn parse(text: &'a str) -> std::result::Result<Self, String> {
        let mut p = Parser { text, pos: 0, values: 0 };
        p.skip_ws();
        if !p.eat('{') {
            return Err("expected a dictionary `{...}`".into());
        }
        let (mut descr, mut fortran_order, mut shape) = (None, None, None);
        loop {
            p.skip_ws();
            if p.eat('}') {
                break;
            }
            let Lit::Str(key) = p.value(1)? else {
                return Err(format!("a key that is not a string at byte {}", p.pos));
            };
            p.skip_ws();
            if !p.eat(':') {
                return Err(format!("expected `:` after '{key}'"));
            }
            let value = p.value(1)?;
            let duplicate = || format!("the key '{key}' appears twice");
            match key {
                "descr" if descr.is_some() => return Err(duplicate()),
                "descr" => {
                    descr = Some(match value {
                        Lit::Str(s) => Descr::Plain(s),
                        _ => Descr::Structured,
                    })
                }
                "fortran_order" if fortran_order.is_some() => return Err(duplicate()),
                "fortran_order" => match value {
                    Lit::Bool(b) => fortran_order = Some(b),
                    _ => return Err("'fortran_order' is not True or False".into()),
                },
                "shape" if shape.is_some() => return Err(duplicate()),
                "shape" => shape = Some(Self::shape(value)?),
                other => return Err(format!("unexpected key '{other}'")),
            }
            p.skip_ws();
            if !p.eat(',') {
                p.skip_ws();
                if p.eat('}') {
                    break;
                }
                return Err(format!("expected `,` or `}}` at byte {}", p.pos));
            }
        }
        p.skip_ws();
        if p.pos != text.len() {
            return Err(format!("unexpected text after the dictionary at byte {}", p.pos));
        }
        let missing = |key: &str| format!("no '{key}' key");
        Ok(HeaderDict {
            descr: descr.ok_or_else(|| missing("descr"))?,
            fortran_order: fortran_order.ok_or_else(|| missing("fortran_order"))?,
            shape: shape.ok_or_else(|| missing("shape"))?,
        })
    }

    fn shape(value: Lit<'_>) -> std::result::Result<Vec<u64>, String> {
        let Lit::Seq(items) = value else {
            return Err("'shape' is not a tuple".into());
        };
        if items.len() > MAX_DIMS {
            return Err(format!("'shape' has {} dimensions, more than {MAX_DIMS}", items.len()));
        }
        items
            .into_iter()
            .map(|item| match item {
                Lit::Int(d) if d < 0 => Err(format!("negative dimension {d} in 'shape'")),
                Lit::Int(d) => u64::try_from(d).map_err(|_| format!("dimension {d} in 'shape' is too large")),
                _ => Err("'shape' holds something other than integers".into()),
            })
            .collect()
    }
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek().filter(|c| c.is_ascii_whitespace()) {
            self.pos += c.len_utf8();
        }
    }

    fn value(&mut self, depth: usize) -> std::result::Result<Lit<'a>, String> {
        self.values += 1;
        if depth > MAX_DEPTH || self.values > MAX_VALUES {
            return Err(format!("more than {MAX_DEPTH} levels or {MAX_VALUES} values"));
        }
        self.skip_ws();
        let at = self.pos;
        match self.peek() {
            Some(q @ ('\'' | '"')) => {
                self.pos += 1;
                let start = self.pos;
                let mut escaped = false;
                for (k, c) in self.text[start..].char_indices() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == q {
                        self.pos = start + k + 1;
                        return Ok(Lit::Str(&self.text[start..start + k]));
                    }
                }
                Err(format!("unterminated string at byte {at}"))
            }
            Some(open @ ('(' | '[' | '{')) => {
                self.pos += 1;
                let close = match open {
                    '(' => ')',
                    '[' => ']',
                    _ => '}',
                };
                let mut items = Vec::new();
                loop {
                    self.skip_ws();
                    if self.eat(close) {
                        break;
                    }
                    items.push(self.value(depth + 1)?);
                    self.skip_ws();
                    if open == '{' {
                        if !self.eat(':') {
                            return Err(format!("expected `:` at byte {}", self.pos));
                        }
                        self.value(depth + 1)?;
                        self.skip_ws();
                    }
                    if !self.eat(',') {
                        self.skip_ws();
                        if self.eat(close) {
                            break;
                        }
                        return Err(format!("expected `,` or `{close}` at byte {}", self.pos));
                    }
                }
                Ok(if open == '{' { Lit::Other } else { Lit::Seq(items) })
            }
            Some(c) if c.is_ascii_digit() || c == '-' || c == '+' => {
                let negative = c == '-';
                if c == '-' || c == '+' {
                    self.pos += 1;
                }
                let digits = self.text[self.pos..].bytes().take_while(u8::is_ascii_digit).count();
                if digits == 0 {
                    return Err(format!("a sign without digits at byte {at}"));
                }
                let text = &self.text[self.pos..self.pos + digits];
                self.pos += digits;
                // Python 2 wrote long integers as `3L`.
                let _ = self.eat('L') || self.eat('l');
                let magnitude: i128 = text.parse().map_err(|_| format!("integer {text} is too large"))?;
                Ok(Lit::Int(if negative { -magnitude } else { magnitude }))
            }
            _ => {
                let word = self.text[self.pos..].bytes().take_while(u8::is_ascii_alphabetic).count();
                let lit = match &self.text[self.pos..self.pos + word] {
                    "True" => Lit::Bool(true),
                    "False" => Lit::Bool(false),
                    "None" => Lit::Other,
                    _ => return Err(format!("unexpected text at byte {at}")),
                };
                self.pos += word;
                Ok(lit)
            }
        }
    }
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
    file: File,
    kind: Kind,
    big_endian: bool,
    data_start: u64,
}

impl NpyRowReader {
    /// Opens `path` (C-order, `f8` or `f4`, 1-D or 2-D) for chunks of `chunk_rows` rows. Only
    /// the header is read, and checked against the file's length (see [`read_npy`]).
    pub fn open(path: impl AsRef<Path>, chunk_rows: usize) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if chunk_rows == 0 {
            return Err(Error::invalid("chunk_rows", 0, "must be at least 1"));
        }
        let (file, header) = open(&path)?;
        let (rows, cols) = match header.shape[..] {
            [n] => (n, 1),
            [n, d] => (n, d),
            _ => {
                let shape = &header.shape;
                return Err(Error::malformed(&path, "npy", format!("expected 1-D or 2-D, found shape {shape:?}")));
            }
        };
        if header.fortran && cols > 1 {
            return Err(Error::malformed(&path, "npy", "Fortran-order arrays cannot be streamed by rows"));
        }
        if !header.kind.is_float() {
            return Err(Error::Dtype { path, name: "array".into(), found: "integer".into(), expected: "f8 or f4" });
        }
        let (kind, big_endian, data_start) = (header.kind, header.big_endian, header.data_start);
        Ok(NpyRowReader { path, rows, cols, chunk_rows, rows_read: 0, file, kind, big_endian, data_start })
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
        // row ≤ rows, and the header's rows × cols × size bytes were checked against the file.
        let offset = self.data_start + (row * self.cols * self.kind.size()) as u64;
        self.file.seek(SeekFrom::Start(offset)).map_err(|e| Error::io(&self.path, e))?;
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
        read_floats(path, &mut self.file, self.kind, self.big_endian, chunk.as_mut_slice())?;
        let first_row = self.rows_read;
        self.rows_read += take;
        chunk.check_finite(&path.display().to_string()).map_err(|e| match e {
            Error::NonFinite { what, row, col, value } => Error::NonFinite { what, row: row + first_row, col, value },
            other => other,
        })
    }
}
