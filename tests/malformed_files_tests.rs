//! Malformed and hostile files (issue 15, "nothing silent, nothing lost"): a corpus of broken
//! `.npy` and safetensors files generated here, random mutations of valid files, and a counting
//! allocator that bounds what reading them may allocate. Every case is an `Error` naming the
//! file (and the tensor where there is one), never a panic, an abort or a huge allocation; every
//! way a model file can disagree with the model it claims to be is an error naming the tensor.

use degeneracy::io::{self, LoadOptions, NpyRowReader, TensorFile, TensorNaming};
use degeneracy::{Activation, Error, Matrix, Mlp};
use proptest::prelude::*;
use safetensors::Dtype;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

// ---------------------------------------------------------------------------------------------
// A counting allocator: bytes currently allocated and their peak, per thread (so that tests
// running in parallel do not see each other's allocations).

struct Counting;

thread_local! {
    static CURRENT: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    let _ = CURRENT.try_with(|c| {
        let now = c.get() + delta;
        c.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`; returns its result and the peak bytes this thread allocated meanwhile, above what
/// it held when `f` started.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = CURRENT.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get) - base;
    (out, peak.max(0) as usize)
}

/// What reading a hostile file may allocate beyond the file's own size.
const SLACK: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Readers under test.

type Outcome = Result<(), Error>;

/// A reader under test, by name.
type Reader = (&'static str, fn(&Path) -> Outcome);

/// Streams every row of a `.npy` file, then seeks back to the middle and reads on.
fn stream(path: &Path) -> Outcome {
    let mut reader = NpyRowReader::open(path, 7)?;
    let mut chunk = Matrix::default();
    while reader.next_chunk(&mut chunk)? {}
    reader.seek_row(reader.n_rows() / 2)?;
    reader.next_chunk(&mut chunk)?;
    Ok(())
}

/// Every `.npy` reader of the crate.
const NPY_READERS: [Reader; 5] = [
    ("read_npy", |p| io::read_npy(p).map(drop)),
    ("read_matrix", |p| io::read_matrix(p).map(drop)),
    ("read_vector", |p| io::read_vector(p).map(drop)),
    ("read_labels", |p| io::read_labels(p).map(drop)),
    ("NpyRowReader", stream),
];

/// Every safetensors reader of the crate.
const ST_READERS: [Reader; 3] = [
    ("load_mlp", |p| io::load_mlp(p, Activation::Relu).map(drop)),
    ("load_mlp bias-free", |p| io::load_mlp_with(p, Activation::Relu, &LoadOptions::bias_free()).map(drop)),
    ("TensorFile", |p| {
        let mut f = TensorFile::open(p)?;
        let names: Vec<String> = f.names().map(str::to_string).collect();
        for name in names {
            let shape = f.shape(&name).unwrap().to_vec();
            f.take(&name, &shape)?;
        }
        f.finish()
    }),
];

/// A file of the corpus, which readers must fail on it, and what their message must name
/// besides the file.
struct Case {
    name: String,
    bytes: Vec<u8>,
    /// Readers that must return an error; the others may succeed (e.g. `read_npy` on NaNs).
    must_fail: Vec<&'static str>,
    /// Text every such error must contain (a tensor name, "negative"...), if any.
    mention: Option<String>,
}

fn case(name: impl Into<String>, bytes: Vec<u8>, must_fail: &[&'static str], mention: Option<&str>) -> Case {
    Case { name: name.into(), bytes, must_fail: must_fail.to_vec(), mention: mention.map(str::to_string) }
}

/// Writes each case to `dir` and runs `readers` on it: no panic; every error names the file
/// (and `mention`); the readers of `must_fail` fail; and no reader allocates more than the
/// file's size plus [`SLACK`] (`widen`: the bytes a valid element may widen to per file byte,
/// for readers that get as far as decoding). Returns (cases, peak over all, peak over the
/// hostile-header cases named in `report`).
fn run_corpus(dir: &Path, ext: &str, cases: &[Case], readers: &[Reader], widen: usize, report: &[&str]) -> Vec<String> {
    let mut failures = Vec::new();
    let mut lines = Vec::new();
    for (k, c) in cases.iter().enumerate() {
        let path = dir.join(format!("case{k}_{}.{ext}", c.name.replace(|ch: char| !ch.is_ascii_alphanumeric(), "_")));
        std::fs::write(&path, &c.bytes).unwrap();
        let shown = path.display().to_string();
        for (reader, read) in readers {
            let run = catch_unwind(AssertUnwindSafe(|| peak_of(|| read(&path))));
            let Ok((outcome, peak)) = run else {
                failures.push(format!("{}: {reader} panicked", c.name));
                continue;
            };
            let bound = c.bytes.len() * widen + SLACK;
            if peak > bound {
                failures.push(format!("{}: {reader} allocated {peak} bytes (bound {bound})", c.name));
            }
            if report.iter().any(|r| c.name.starts_with(r)) {
                lines.push(format!("{} ({} bytes): {reader} peak {peak} bytes", c.name, c.bytes.len()));
            }
            match outcome {
                Err(e) => {
                    let text = e.to_string();
                    if !text.contains(&shown) {
                        failures.push(format!("{}: {reader}: the error does not name the file: {text}", c.name));
                    }
                    if c.must_fail.contains(reader) {
                        if let Some(m) = c.mention.as_ref().filter(|m| !text.contains(m.as_str())) {
                            failures.push(format!("{}: {reader}: the error does not mention `{m}`: {text}", c.name));
                        }
                    }
                }
                Ok(()) if c.must_fail.contains(reader) => failures.push(format!("{}: {reader} accepted it", c.name)),
                Ok(()) => {}
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    lines
}

/// A small deterministic generator (the corpus must be the same on every run).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// `.npy` files.

/// A `.npy` file of format `version` with header text `dict` (padded as numpy pads it) and
/// `payload`.
fn npy(version: u8, dict: &str, payload: &[u8]) -> Vec<u8> {
    let prefix = if version == 1 { 10 } else { 12 };
    let mut text = dict.to_string();
    while (prefix + text.len() + 1) % 64 != 0 {
        text.push(' ');
    }
    text.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.extend([version, 0]);
    if version == 1 {
        out.extend((text.len() as u16).to_le_bytes());
    } else {
        out.extend((text.len() as u32).to_le_bytes());
    }
    out.extend(text.as_bytes());
    out.extend(payload);
    out
}

fn f8_payload(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn valid_npy_matrix(dir: &Path, rows: usize, cols: usize) -> Vec<u8> {
    let path = dir.join("valid.npy");
    io::write_matrix(&path, &Matrix::from_fn(rows, cols, |i, j| (i * cols + j) as f64 * 0.5)).unwrap();
    std::fs::read(path).unwrap()
}

const ALL_NPY: [&str; 5] = ["read_npy", "read_matrix", "read_vector", "read_labels", "NpyRowReader"];

fn npy_corpus(dir: &Path) -> Vec<Case> {
    let mut cases = Vec::new();
    let all = &ALL_NPY[..];
    let f8 = |shape: &str| format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}");
    let kib = vec![0u8; 1024];

    // Hostile shapes: the issue's cases first.
    cases.push(case("huge 1e12 rows", npy(1, &f8("(1000000000000, 64)"), &kib), all, Some("needs")));
    cases.push(case("huge wrapped 2^58x64", npy(1, &f8("(288230376151711744, 64)"), &kib), all, Some("shape")));
    cases.push(case("huge wrapped 2^58x64 empty payload", npy(1, &f8("(288230376151711744, 64)"), &[]), all, None));
    cases.push(case("huge wrapped 2^32x2^32", npy(1, &f8("(4294967296, 4294967296)"), &kib), all, None));
    cases.push(case("huge wrapped 2^61 f8 bytes", npy(1, &f8("(2305843009213693952,)"), &kib), all, None));
    cases.push(case("huge empty but 2^63 wide", npy(1, &f8("(0, 9223372036854775807)"), &[]), all, None));
    cases.push(case("huge 1-D u64 max", npy(1, &f8("(18446744073709551615,)"), &kib), all, None));
    cases.push(case("huge dim beyond u64", npy(1, &f8("(18446744073709551616000, 2)"), &kib), all, None));
    cases.push(case("huge version 2 header", npy(2, &f8("(1000000000000, 64)"), &kib), all, Some("needs")));
    cases.push(case("negative dimension", npy(1, &f8("(-3, 4)"), &kib), all, Some("negative")));
    cases.push(case("65 dimensions", npy(1, &f8(&format!("({})", "1, ".repeat(65))), &[0; 8]), all, None));
    let deep =
        format!("{{'descr': {}'<f8'{}, 'fortran_order': False, 'shape': (1,), }}", "[".repeat(500), "]".repeat(500));
    cases.push(case("deeply nested header", npy(1, &deep, &[0; 8]), all, None));
    let wide = format!("{{'descr': [{}], 'fortran_order': False, 'shape': (1,), }}", "('a', '<f8'), ".repeat(2000));
    cases.push(case("header with 4000 values", npy(2, &wide, &[0; 8]), all, None));

    // Headers whose length field lies.
    let good = valid_npy_matrix(dir, 20, 4);
    let mut long = good.clone();
    long[8..10].copy_from_slice(&u16::MAX.to_le_bytes());
    cases.push(case("header length past the end (v1)", long, all, Some("header length")));
    let mut v2 = npy(2, &f8("(20, 4)"), &f8_payload(&[0.0; 80]));
    v2[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    cases.push(case("header length 4 GiB (v2)", v2, all, Some("header length")));
    for cut in [0u16, 1, 20, 50] {
        let mut short = good.clone();
        short[8..10].copy_from_slice(&cut.to_le_bytes());
        cases.push(case(format!("header length {cut}"), short, all, None));
    }
    let mut beyond = good.clone();
    let len = u16::from_le_bytes([good[8], good[9]]);
    beyond[8..10].copy_from_slice(&(len + 8).to_le_bytes());
    cases.push(case("header length runs into the data", beyond, all, None));
    for version in [[0u8, 0], [4, 0], [1, 1], [255, 255]] {
        let mut v = good.clone();
        v[6..8].copy_from_slice(&version);
        cases.push(case(format!("version {}.{}", version[0], version[1]), v, all, Some("version")));
    }
    let mut magic = good.clone();
    magic[1..6].copy_from_slice(b"NUMPX");
    cases.push(case("bad magic", magic, all, Some("not a .npy file")));

    // Headers that are not the dictionary numpy writes.
    for (name, dict) in [
        ("missing shape", "{'descr': '<f8', 'fortran_order': False, }"),
        ("missing descr", "{'fortran_order': False, 'shape': (20, 4), }"),
        ("duplicate shape", "{'descr': '<f8', 'fortran_order': False, 'shape': (20, 4), 'shape': (80,), }"),
        ("unknown key", "{'descr': '<f8', 'fortran_order': False, 'shape': (20, 4), 'extra': 1, }"),
        ("fortran_order not a bool", "{'descr': '<f8', 'fortran_order': 0, 'shape': (20, 4), }"),
        ("shape of floats", "{'descr': '<f8', 'fortran_order': False, 'shape': (20.0, 4), }"),
        ("shape a string", "{'descr': '<f8', 'fortran_order': False, 'shape': '20, 4', }"),
        ("unterminated string", "{'descr': '<f8, 'fortran_order': False, 'shape': (20, 4), }"),
        ("unclosed dict", "{'descr': '<f8', 'fortran_order': False, 'shape': (20, 4), "),
        ("trailing text", "{'descr': '<f8', 'fortran_order': False, 'shape': (20, 4), } x"),
        ("not a dict", "['<f8', False, (20, 4)]"),
        ("sign without digits", "{'descr': '<f8', 'fortran_order': False, 'shape': (-, 4), }"),
        ("bare word", "{'descr': '<f8', 'fortran_order': Flase, 'shape': (20, 4), }"),
    ] {
        cases.push(case(name, npy(1, dict, &f8_payload(&[0.0; 80])), all, None));
    }
    let mut binary = npy(1, &f8("(20, 4)"), &f8_payload(&[0.0; 80]));
    binary[20] = 0xff;
    cases.push(case("header not text", binary, all, Some("not text")));

    // Element types no reader takes.
    for descr in ["<c16", "|b1", "<U8", "<u8", "<f2", "|V8", "<m8[ns]", "O"] {
        let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (2,), }}");
        cases.push(case(format!("dtype {descr}"), npy(1, &dict, &[0; 16]), all, Some(descr)));
    }
    let structured = "{'descr': [('a', '<f8'), ('b', '<i4')], 'fortran_order': False, 'shape': (2,), }";
    cases.push(case("structured dtype", npy(1, structured, &[0; 24]), all, Some("structured")));

    // Payloads shorter or longer than the shape, truncation at every offset.
    let mut trailing = good.clone();
    trailing.extend([0u8; 8]);
    cases.push(case("trailing bytes", trailing, all, Some("needs 640 bytes, the file has 648")));
    for cut in 0..good.len() {
        cases.push(case(format!("truncated at {cut}"), good[..cut].to_vec(), all, None));
    }
    // A larger file cut inside its payload: still nothing allocated for the missing rows.
    let big = valid_npy_matrix(dir, 2000, 64);
    for cut in [big.len() / 3, big.len() - 1] {
        cases.push(case(format!("large truncated at {cut}"), big[..cut].to_vec(), all, Some("needs")));
    }

    // Values: non-finite floats, negative labels, the wrong kind for a reader.
    let mut values = vec![1.0; 80];
    values[4 * 7 + 2] = f64::NAN;
    let nan = npy(1, &f8("(20, 4)"), &f8_payload(&values));
    cases.push(case("NaN at row 7", nan, &["read_matrix", "read_vector", "NpyRowReader"], Some("non-finite")));
    let mut big_values = vec![0.5; 2000 * 64];
    big_values[1999 * 64 + 63] = f64::INFINITY;
    let inf = npy(1, &f8("(2000, 64)"), &f8_payload(&big_values));
    cases.push(case("large inf in the last row", inf, &["read_matrix", "NpyRowReader"], Some("row 1999")));
    let f4: Vec<u8> = [1.0f32, f32::NEG_INFINITY].iter().flat_map(|v| v.to_le_bytes()).collect();
    let f4_inf = npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", &f4);
    cases.push(case("f4 -inf", f4_inf, &["read_matrix", "read_vector", "NpyRowReader"], Some("-inf")));
    let labels: Vec<u8> = [0i64, 1, 2, 1, 0, -3].iter().flat_map(|v| v.to_le_bytes()).collect();
    let negative = npy(1, "{'descr': '<i8', 'fortran_order': False, 'shape': (6,), }", &labels);
    cases.push(case("label -3 at sample 5", negative, &["read_labels"], Some("label -3 of sample 5 is negative")));
    let labels: Vec<u8> = [0i8, -1].iter().map(|&v| v as u8).collect();
    let negative = npy(1, "{'descr': '|i1', 'fortran_order': False, 'shape': (2,), }", &labels);
    cases.push(case("i1 label -1", negative, &["read_labels"], Some("is negative")));
    let floats = npy(1, &f8("(3,)"), &f8_payload(&[0.0, 1.0, 2.0]));
    cases.push(case("float labels", floats, &["read_labels"], Some("dtype")));
    let ints = npy(1, "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 2), }", &[0; 16]);
    cases.push(case("int matrix", ints, &["read_matrix", "read_vector", "NpyRowReader", "read_labels"], None));
    let three = npy(1, &f8("(2, 2, 2)"), &f8_payload(&[0.0; 8]));
    cases.push(case("3-D", three, &["read_matrix", "read_vector", "read_labels", "NpyRowReader"], None));
    let fortran3 = npy(1, "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 2, 2), }", &f8_payload(&[0.0; 8]));
    cases.push(case("Fortran 3-D", fortran3, all, None));
    let fortran2 = npy(1, "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }", &f8_payload(&[0.0; 6]));
    cases.push(case("Fortran rows", fortran2, &["NpyRowReader", "read_labels", "read_vector"], None));

    // Random bytes, and random bytes after a valid magic and version.
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for k in 0..150 {
        let n = rng.below(400);
        cases.push(case(format!("random {k}"), rng.bytes(n), all, None));
    }
    for k in 0..150 {
        let mut bytes = b"\x93NUMPY".to_vec();
        bytes.extend([1 + (k % 3) as u8, 0]);
        let n = rng.below(400);
        bytes.extend(rng.bytes(n));
        cases.push(case(format!("random after magic {k}"), bytes, all, None));
    }
    cases
}

#[test]
fn malformed_npy_files_are_errors_naming_the_file_within_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let cases = npy_corpus(dir.path());
    // `widen` 2: an f4 file read as f64 needs twice its payload (the f8 files need once).
    let lines = run_corpus(dir.path(), "npy", &cases, &NPY_READERS, 2, &["huge"]);
    println!("{} malformed .npy files × {} readers", cases.len(), NPY_READERS.len());
    for line in lines {
        println!("{line}");
    }
}

#[test]
fn hostile_npy_headers_allocate_nothing_like_their_claims() {
    // The issue's two cases, measured on their own: a header of 10¹² rows × 64 over a 1 KiB
    // payload (8 × 10¹⁴ bytes claimed), and 2⁵⁸ × 64 elements, whose product wraps to 0.
    let dir = tempfile::tempdir().unwrap();
    let f8 = |shape: &str| format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}");
    for (name, dict, message) in [
        ("rows.npy", f8("(1000000000000, 64)"), "needs 512000000000000 bytes, the file has 1024 after its header"),
        ("wrapped.npy", f8("(288230376151711744, 64)"), "more elements than can be addressed"),
    ] {
        let path = dir.path().join(name);
        let bytes = npy(1, &dict, &[0u8; 1024]);
        std::fs::write(&path, &bytes).unwrap();
        for (reader, read) in NPY_READERS {
            let (outcome, peak) = peak_of(|| read(&path));
            let text = outcome.expect_err(reader).to_string();
            assert!(text.contains(&path.display().to_string()) && text.contains(message), "{reader}: {text}");
            assert!(peak <= bytes.len() + SLACK, "{name}: {reader} allocated {peak} bytes");
            println!("{name} ({} bytes): {reader}: peak {peak} bytes: {text}", bytes.len());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Safetensors files.

/// `(name, dtype, shape, little-endian bytes)`.
type Tensor = (String, Dtype, Vec<usize>, Vec<u8>);

fn f64_tensor(name: &str, shape: &[usize], values: &[f64]) -> Tensor {
    (name.to_string(), Dtype::F64, shape.to_vec(), f8_payload(values))
}

fn serialize(tensors: &[Tensor]) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// A safetensors file with a hand-written header.
fn st_raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

/// The 4 → 5 → 6 → 3 MLP of the loader cases, with biases, as tensors.
fn model_tensors() -> Vec<Tensor> {
    let mlp = Mlp::init(&[4, 5, 6, 3], Activation::Relu, true, 1).unwrap();
    let mut tensors = Vec::new();
    for (i, lin) in mlp.linears().iter().enumerate() {
        let (out, inp) = lin.weight().shape();
        tensors.push(f64_tensor(&format!("layers.{i}.weight"), &[out, inp], lin.weight().as_slice()));
        tensors.push(f64_tensor(&format!("layers.{i}.bias"), &[out], lin.bias().unwrap()));
    }
    tensors
}

fn without(tensors: &[Tensor], name: &str) -> Vec<Tensor> {
    tensors.iter().filter(|t| t.0 != name).cloned().collect()
}

fn with_shape(tensors: &[Tensor], name: &str, shape: &[usize]) -> Vec<Tensor> {
    let mut out = tensors.to_vec();
    let t = out.iter_mut().find(|t| t.0 == name).unwrap();
    let n: usize = shape.iter().product();
    t.2 = shape.to_vec();
    t.3 = f8_payload(&(0..n).map(|k| k as f64 * 0.01).collect::<Vec<_>>());
    out
}

fn renamed(tensors: &[Tensor], from: &str, to: &str) -> Vec<Tensor> {
    tensors
        .iter()
        .cloned()
        .map(|mut t| {
            (
                if t.0 == from {
                    t.0 = to.into()
                },
                t,
            )
                .1
        })
        .collect()
}

fn set_value(tensors: &[Tensor], name: &str, index: usize, value: f64) -> Vec<Tensor> {
    let mut out = tensors.to_vec();
    let t = out.iter_mut().find(|t| t.0 == name).unwrap();
    t.3[index * 8..index * 8 + 8].copy_from_slice(&value.to_le_bytes());
    out
}

fn bias_free(tensors: &[Tensor]) -> Vec<Tensor> {
    tensors.iter().filter(|t| !t.0.ends_with("bias")).cloned().collect()
}

/// What a loader case must give: the error's variant (by a predicate) and the tensor its
/// message names.
struct LoaderCase {
    name: &'static str,
    tensors: Vec<Tensor>,
    options: LoadOptions,
    variant: fn(&Error) -> bool,
    tensor: &'static str,
}

fn loader_cases() -> Vec<LoaderCase> {
    let m = model_tensors();
    let free = bias_free(&m);
    let opts = LoadOptions::default;
    let free_opts = LoadOptions::bias_free;
    let missing: fn(&Error) -> bool = |e| matches!(e, Error::MissingTensor { .. });
    let unexpected: fn(&Error) -> bool = |e| matches!(e, Error::UnexpectedTensor { .. });
    let transposed: fn(&Error) -> bool = |e| matches!(e, Error::TransposedTensor { .. });
    let shape: fn(&Error) -> bool = |e| matches!(e, Error::TensorShape { .. });
    let dtype: fn(&Error) -> bool = |e| matches!(e, Error::Dtype { .. });
    let non_finite: fn(&Error) -> bool = |e| matches!(e, Error::NonFinite { .. });
    let empty: fn(&Error) -> bool = |e| matches!(e, Error::Empty { .. });
    let mut extra = m.clone();
    extra.push(f64_tensor("layers.4.weight", &[3, 3], &[0.0; 9]));
    let mut orphan = m.clone();
    orphan.push(f64_tensor("layers.5.bias", &[3], &[0.0; 3]));
    let mut stray = m.clone();
    stray.push(f64_tensor("running_mean", &[3], &[0.0; 3]));
    let mut odd_index = m.clone();
    odd_index.push(f64_tensor("layers.01.weight", &[3, 3], &[0.0; 9]));
    let mut far = m.clone();
    far.push(f64_tensor("layers.99999999999999999999999.weight", &[3, 3], &[0.0; 9]));
    let int_weight = {
        let mut t = m.clone();
        let w = t.iter_mut().find(|t| t.0 == "layers.1.weight").unwrap();
        (w.1, w.3) = (Dtype::I64, (0..30i64).flat_map(|v| v.to_le_bytes()).collect());
        t
    };
    let half_bias = {
        let mut t = m.clone();
        let b = t.iter_mut().find(|t| t.0 == "layers.2.bias").unwrap();
        (b.1, b.3) = (Dtype::F16, vec![0; 6]);
        t
    };
    let lc = |name, tensors, options, variant, tensor| LoaderCase { name, tensors, options, variant, tensor };
    vec![
        lc("gap", without(&m, "layers.1.weight"), opts(), missing, "`layers.1.weight` not found"),
        lc("no weights", vec![], opts(), missing, "`layers.0.weight`"),
        lc("weight after a gap", extra, opts(), missing, "`layers.3.weight` not found"),
        lc("missing last weight, orphan bias", without(&m, "layers.2.weight"), opts(), unexpected, "`layers.2.bias`"),
        lc("missing bias", without(&m, "layers.1.bias"), opts(), missing, "`layers.1.bias` not found"),
        lc("bias-free file, biases expected", free.clone(), opts(), missing, "`layers.0.bias`"),
        lc("typo bais", renamed(&m, "layers.2.bias", "layers.2.bais"), opts(), unexpected, "`layers.2.bais`"),
        lc("orphan bias", orphan, opts(), unexpected, "`layers.5.bias`"),
        lc("stray tensor", stray, opts(), unexpected, "`running_mean`"),
        lc("leading zero index", odd_index, opts(), unexpected, "`layers.01.weight`"),
        lc("index beyond usize", far, opts(), unexpected, "layers.99999999999999999999999.weight"),
        lc(
            "biases of a bias-free model",
            m.clone(),
            free_opts(),
            unexpected,
            "`layers.0.bias`, `layers.1.bias`, `layers.2.bias`",
        ),
        lc(
            "first weight transposed",
            with_shape(&m, "layers.0.weight", &[4, 5]),
            opts(),
            transposed,
            "`layers.0.weight` is transposed: shape [4, 5], expected [5, 4]",
        ),
        lc(
            "middle weight transposed",
            with_shape(&m, "layers.1.weight", &[5, 6]),
            opts(),
            transposed,
            "`layers.1.weight` is transposed",
        ),
        lc(
            "last weight transposed",
            with_shape(&m, "layers.2.weight", &[6, 3]),
            opts(),
            transposed,
            "`layers.2.weight` is transposed",
        ),
        lc(
            "bias-free first weight transposed",
            with_shape(&free, "layers.0.weight", &[4, 5]),
            free_opts(),
            transposed,
            "`layers.0.weight` is transposed",
        ),
        lc(
            "bias-free last weight transposed",
            with_shape(&free, "layers.2.weight", &[6, 3]),
            free_opts(),
            transposed,
            "`layers.2.weight` is transposed",
        ),
        lc(
            "bias too long",
            with_shape(&m, "layers.1.bias", &[7]),
            opts(),
            shape,
            "`layers.1.bias` has shape [7], expected [6]",
        ),
        lc(
            "first bias too short",
            with_shape(&m, "layers.0.bias", &[4]),
            opts(),
            shape,
            "`layers.0.bias` has shape [4]",
        ),
        lc("bias 2-D", with_shape(&m, "layers.1.bias", &[6, 1]), opts(), shape, "`layers.1.bias` has shape [6, 1]"),
        lc(
            "weight input width",
            with_shape(&m, "layers.1.weight", &[6, 4]),
            opts(),
            shape,
            "`layers.1.weight` has shape [6, 4], expected [6, 5]",
        ),
        lc(
            "weight output width",
            with_shape(&m, "layers.1.weight", &[7, 5]),
            opts(),
            shape,
            "`layers.1.weight` has shape [7, 5], expected [6, 5]",
        ),
        lc(
            "bias-free chain break",
            with_shape(&free, "layers.2.weight", &[3, 7]),
            free_opts(),
            shape,
            "`layers.2.weight` has shape [3, 7]",
        ),
        lc(
            "weight 3-D",
            with_shape(&m, "layers.1.weight", &[6, 5, 1]),
            opts(),
            shape,
            "`layers.1.weight` has shape [6, 5, 1]",
        ),
        lc("weight 1-D", with_shape(&m, "layers.0.weight", &[20]), opts(), shape, "`layers.0.weight`"),
        lc(
            "zero-width output layer",
            with_shape(&with_shape(&m, "layers.2.weight", &[0, 6]), "layers.2.bias", &[0]),
            opts(),
            empty,
            "`layers.2.weight` of shape [0, 6]",
        ),
        lc("zero-width input", with_shape(&free, "layers.0.weight", &[5, 0]), free_opts(), empty, "`layers.0.weight`"),
        lc("I64 weight", int_weight, opts(), dtype, "`layers.1.weight` has dtype I64"),
        lc("F16 bias", half_bias, opts(), dtype, "`layers.2.bias` has dtype F16"),
        lc(
            "NaN weight",
            set_value(&m, "layers.1.weight", 2 * 5 + 3, f64::NAN),
            opts(),
            non_finite,
            "tensor `layers.1.weight` at [2, 3]",
        ),
        lc(
            "inf bias",
            set_value(&m, "layers.2.bias", 1, f64::INFINITY),
            opts(),
            non_finite,
            "tensor `layers.2.bias` at [1]",
        ),
        lc("huge weight", set_value(&m, "layers.0.weight", 0, f64::MAX * 2.0), opts(), non_finite, "`layers.0.weight`"),
    ]
}

#[test]
fn every_tensor_of_a_model_file_is_accounted_for() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for c in loader_cases() {
        let path = dir.path().join(format!("{}.safetensors", c.name.replace(' ', "_")));
        std::fs::write(&path, serialize(&c.tensors)).unwrap();
        match io::load_mlp_with(&path, Activation::Relu, &c.options) {
            Ok(_) => failures.push(format!("{}: loaded", c.name)),
            Err(e) => {
                let text = e.to_string();
                if !(c.variant)(&e) || !text.contains(c.tensor) || !text.contains(&path.display().to_string()) {
                    failures.push(format!("{}: wrong error {e:?}: {text}", c.name));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The valid file loads, from F64 or F32, and round-trips; a bias-free one loads when declared.
    let m = model_tensors();
    let path = dir.path().join("valid.safetensors");
    std::fs::write(&path, serialize(&m)).unwrap();
    let mlp = io::load_mlp(&path, Activation::Relu).unwrap();
    assert_eq!(mlp, Mlp::init(&[4, 5, 6, 3], Activation::Relu, true, 1).unwrap());
    let f32s: Vec<Tensor> = m
        .iter()
        .map(|(n, _, s, b)| {
            let v: Vec<u8> = b
                .chunks_exact(8)
                .flat_map(|c| (f64::from_le_bytes(c.try_into().unwrap()) as f32).to_le_bytes())
                .collect();
            (n.clone(), Dtype::F32, s.clone(), v)
        })
        .collect();
    std::fs::write(&path, serialize(&f32s)).unwrap();
    let widened = io::load_mlp(&path, Activation::Relu).unwrap();
    assert_eq!(widened.widths(), [4, 5, 6, 3]);
    let free = Mlp::init(&[4, 5, 3], Activation::Identity, false, 2).unwrap();
    io::save_mlp(&path, &free).unwrap();
    assert_eq!(io::load_mlp_with(&path, Activation::Identity, &LoadOptions::bias_free()).unwrap(), free);
    assert!(
        matches!(io::load_mlp(&path, Activation::Identity), Err(Error::MissingTensor { name, .. }) if name == "layers.0.bias")
    );
}

#[test]
fn name_maps_and_namings_are_strict_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fc.safetensors");
    let m = model_tensors();
    let fc: Vec<Tensor> = m.iter().cloned().map(|mut t| (t.0 = t.0.replace("layers.", "fc."), t).1).collect();
    std::fs::write(&path, serialize(&fc)).unwrap();
    let reference = Mlp::init(&[4, 5, 6, 3], Activation::Relu, true, 1).unwrap();

    // A naming template, or a name map, reads the same model.
    let naming = TensorNaming::new("fc.{i}.weight", "fc.{i}.bias");
    assert_eq!(io::load_mlp_with(&path, Activation::Relu, &naming.into()).unwrap(), reference);
    let map = |pairs: &[(&str, &str)]| pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    let mut rename = std::collections::BTreeMap::new();
    for i in 0..3 {
        for p in ["weight", "bias"] {
            rename.insert(format!("fc.{i}.{p}"), format!("layers.{i}.{p}"));
        }
    }
    let options = LoadOptions { rename: rename.clone(), ..LoadOptions::default() };
    assert_eq!(io::load_mlp_with(&path, Activation::Relu, &options).unwrap(), reference);

    // Errors name the tensor by its name in the file.
    std::fs::write(&path, serialize(&with_shape(&fc, "fc.1.weight", &[5, 6]))).unwrap();
    let e = io::load_mlp_with(&path, Activation::Relu, &options).unwrap_err();
    assert!(matches!(&e, Error::TransposedTensor { name, .. } if name == "fc.1.weight"), "{e}");
    // A map key the file lacks, and two tensors under one name.
    std::fs::write(&path, serialize(&fc)).unwrap();
    let mut lacking = rename.clone();
    lacking.insert("fc.9.weight".into(), "layers.9.weight".into());
    let e = io::load_mlp_with(&path, Activation::Relu, &LoadOptions { rename: lacking, ..LoadOptions::default() });
    assert!(matches!(&e, Err(Error::MissingTensor { name, .. }) if name == "fc.9.weight"), "{e:?}");
    std::fs::write(&path, serialize(&m)).unwrap();
    let clash = LoadOptions { rename: map(&[("layers.1.weight", "layers.0.weight")]), ..LoadOptions::default() };
    let e = io::load_mlp_with(&path, Activation::Relu, &clash).unwrap_err();
    assert!(matches!(&e, Error::InvalidParameter { .. }) && e.to_string().contains("layers.0.weight"), "{e}");
    // A partial map leaves the rest unread: named as unexpected.
    std::fs::write(&path, serialize(&fc)).unwrap();
    let partial = LoadOptions { rename: map(&[("fc.0.weight", "layers.0.weight")]), ..LoadOptions::default() };
    let e = io::load_mlp_with(&path, Activation::Relu, &partial).unwrap_err();
    assert!(matches!(&e, Error::UnexpectedTensor { names, .. } if names[0] == "fc.0.bias"), "{e}");
    // Namings without an index, or with the same template twice.
    for naming in [TensorNaming::new("w", "b"), TensorNaming::new("l{i}", "l{i}")] {
        let e = io::load_mlp_with(&path, Activation::Relu, &naming.into()).unwrap_err();
        assert!(matches!(e, Error::InvalidParameter { .. }), "{e}");
    }
}

#[test]
fn tensor_file_reads_any_checkpoint_strictly() {
    // TransformerLens-like names and shapes, F32, for the loaders to come.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tl.safetensors");
    let q: Vec<u8> = (0..4 * 128 * 32).flat_map(|k| (k as f32 * 0.5).to_le_bytes()).collect();
    let mut e: Vec<u8> = (0..114 * 128).flat_map(|k| (k as f32).to_le_bytes()).collect();
    let tensors = vec![
        ("blocks.0.attn.W_Q".to_string(), Dtype::F32, vec![4, 128, 32], q),
        ("embed.W_E".to_string(), Dtype::F32, vec![114, 128], e.clone()),
        ("blocks.0.attn.b_Q".to_string(), Dtype::F64, vec![4, 32], f8_payload(&[0.25; 128])),
    ];
    std::fs::write(&path, serialize(&tensors)).unwrap();
    let mut file = TensorFile::open(&path).unwrap();
    assert_eq!(file.names().collect::<Vec<_>>(), ["blocks.0.attn.W_Q", "blocks.0.attn.b_Q", "embed.W_E"]);
    assert_eq!(file.shape("blocks.0.attn.W_Q"), Some(&[4, 128, 32][..]));
    let w_q = file.take("blocks.0.attn.W_Q", &[4, 128, 32]).unwrap();
    assert_eq!((w_q.len(), w_q[4097]), (4 * 128 * 32, 2048.5));
    let err = file.take("embed.W_E", &[128, 114]).unwrap_err();
    assert!(matches!(err, Error::TransposedTensor { .. }), "{err}");
    let err = file.take("embed.W_E", &[114, 127]).unwrap_err();
    assert!(matches!(err, Error::TensorShape { .. }) && err.to_string().contains("expected [114, 127]"), "{err}");
    let err = file.take("blocks.0.attn.W_K", &[4, 128, 32]).unwrap_err();
    assert!(matches!(&err, Error::MissingTensor { name, .. } if name == "blocks.0.attn.W_K"), "{err}");
    assert_eq!(file.take_matrix("embed.W_E", 114, 128).unwrap()[(1, 0)], 128.0);
    // finish() names every tensor never taken.
    assert_eq!(file.remaining(), ["blocks.0.attn.b_Q"]);
    let err = file.finish().unwrap_err();
    assert!(matches!(&err, Error::UnexpectedTensor { names, .. } if names == &["blocks.0.attn.b_Q"]), "{err}");

    // A NaN deep inside a 3-D tensor is located.
    e[(113 * 128 + 7) * 4..(113 * 128 + 8) * 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let mut bad = tensors.clone();
    bad[1].3 = e;
    std::fs::write(&path, serialize(&bad)).unwrap();
    let mut file = TensorFile::open(&path).unwrap();
    let err = file.take_matrix("embed.W_E", 114, 128).unwrap_err();
    assert!(matches!(err, Error::NonFinite { row: 113, col: 7, .. }), "{err}");
    assert!(err.to_string().contains("tensor `embed.W_E` at [113, 7]"), "{err}");
    // Renaming, then finish() names the file's name.
    let file = TensorFile::open(&path).unwrap().renamed([("embed.W_E", "W_E")]).unwrap();
    assert!(file.contains("W_E") && !file.contains("embed.W_E"));
    let err = file.finish().unwrap_err().to_string();
    assert!(err.contains("`blocks.0.attn.W_Q`, `blocks.0.attn.b_Q`, `embed.W_E`"), "{err}");
}

fn st_corpus() -> Vec<Case> {
    let all = &["load_mlp", "load_mlp bias-free", "TensorFile"][..];
    let mlps = &["load_mlp", "load_mlp bias-free"][..];
    let mut cases = Vec::new();
    let good = serialize(&model_tensors());

    // Truncation at every offset, random bytes, bad header lengths.
    for cut in 0..good.len() {
        cases.push(case(format!("truncated at {cut}"), good[..cut].to_vec(), all, None));
    }
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    for k in 0..150 {
        let n = rng.below(400);
        cases.push(case(format!("random {k}"), rng.bytes(n), all, None));
    }
    for k in 0..100 {
        // A plausible header length, random content.
        let n = 8 + rng.below(300);
        let mut bytes = rng.bytes(n);
        bytes[..8].copy_from_slice(&((rng.below(n - 8 + 1)) as u64).to_le_bytes());
        cases.push(case(format!("random with a fitting length {k}"), bytes, all, None));
    }
    for (name, len) in [("header length u64 max", u64::MAX), ("header length 2^40", 1 << 40), ("header length 0", 0)] {
        let mut bytes = good.clone();
        bytes[..8].copy_from_slice(&len.to_le_bytes());
        cases.push(case(name, bytes, all, None));
    }
    let mut past = good.clone();
    past[..8].copy_from_slice(&(good.len() as u64).to_le_bytes());
    cases.push(case("header length past the end", past, all, Some("runs past the end")));
    let mut short = good.clone();
    short[..8].copy_from_slice(&20u64.to_le_bytes());
    cases.push(case("header length inside the JSON", short, all, None));

    // Headers that lie about the data.
    let d = f8_payload(&[0.0; 6]);
    for (name, header, data) in [
        (
            "huge shape",
            r#"{"layers.0.weight":{"dtype":"F64","shape":[1000000000000,64],"data_offsets":[0,48]}}"#,
            &d[..],
        ),
        (
            "wrapping shape",
            r#"{"layers.0.weight":{"dtype":"F64","shape":[288230376151711744,64],"data_offsets":[0,0]}}"#,
            &[][..],
        ),
        (
            "wrapping bytes",
            r#"{"layers.0.weight":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,0]}}"#,
            &[][..],
        ),
        (
            "offsets past the data",
            r#"{"layers.0.weight":{"dtype":"F64","shape":[2,3],"data_offsets":[0,4800]}}"#,
            &d[..],
        ),
        ("offsets reversed", r#"{"layers.0.weight":{"dtype":"F64","shape":[2,3],"data_offsets":[48,0]}}"#, &d[..]),
        (
            "offset u64 max",
            r#"{"layers.0.weight":{"dtype":"F64","shape":[2,3],"data_offsets":[0,18446744073709551615]}}"#,
            &d[..],
        ),
        (
            "shape and offsets disagree",
            r#"{"layers.0.weight":{"dtype":"F64","shape":[2,2],"data_offsets":[0,48]}}"#,
            &d[..],
        ),
        ("unknown dtype", r#"{"layers.0.weight":{"dtype":"F128","shape":[2,3],"data_offsets":[0,48]}}"#, &d[..]),
        ("negative dimension", r#"{"layers.0.weight":{"dtype":"F64","shape":[-2,3],"data_offsets":[0,48]}}"#, &d[..]),
        ("not an object", r#"[1, 2, 3]"#, &d[..]),
        ("deep nesting", &format!(r#"{{"a":{}{}}}"#, "[".repeat(2000), "]".repeat(2000)), &d[..]),
        (
            "duplicate names",
            r#"{"a":{"dtype":"F64","shape":[3],"data_offsets":[0,24]},"a":{"dtype":"F64","shape":[3],"data_offsets":[24,48]}}"#,
            &d[..],
        ),
        ("no tensors", r#"{}"#, &[][..]),
    ] {
        cases.push(case(name, st_raw(header, data), mlps, None));
    }

    // Every loader case, and its bias-free reading.
    for c in loader_cases() {
        cases.push(case(format!("model {}", c.name), serialize(&c.tensors), &[], None));
    }
    // A larger model with hostile changes: reading any of them allocates no more than the file.
    let big = Mlp::init(&[64, 256, 256, 10], Activation::Relu, true, 3).unwrap();
    let mut tensors = Vec::new();
    for (i, lin) in big.linears().iter().enumerate() {
        let (out, inp) = lin.weight().shape();
        tensors.push(f64_tensor(&format!("layers.{i}.weight"), &[out, inp], lin.weight().as_slice()));
        tensors.push(f64_tensor(&format!("layers.{i}.bias"), &[out], lin.bias().unwrap()));
    }
    let last = 10 * 256 - 1;
    cases.push(case(
        "large NaN in the last weight",
        serialize(&set_value(&tensors, "layers.2.weight", last, f64::NAN)),
        &["load_mlp"],
        Some("layers.2.weight"),
    ));
    cases.push(case(
        "large missing bias",
        serialize(&without(&tensors, "layers.2.bias")),
        &["load_mlp"],
        Some("layers.2.bias"),
    ));
    cases.push(case(
        "large transposed",
        serialize(&with_shape(&tensors, "layers.2.weight", &[256, 10])),
        &["load_mlp"],
        Some("layers.2.weight"),
    ));
    let big_bytes = serialize(&tensors);
    cases.push(case("large truncated", big_bytes[..big_bytes.len() - 1].to_vec(), all, None));
    cases
}

#[test]
fn malformed_safetensors_files_are_errors_naming_the_file_within_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let cases = st_corpus();
    // `widen` 3: a valid F32 file is held once as bytes and once widened to f64 (F64: twice).
    let lines = run_corpus(dir.path(), "safetensors", &cases, &ST_READERS, 3, &["huge", "wrapping", "header length"]);
    println!("{} malformed safetensors files × {} readers", cases.len(), ST_READERS.len());
    for line in lines {
        println!("{line}");
    }
}

#[test]
fn hostile_model_files_allocate_at_most_their_size() {
    // Failing loads stop before decoding anything: at most the file's bytes plus the slack.
    let dir = tempfile::tempdir().unwrap();
    let mut worst = (0usize, String::new());
    for c in st_corpus() {
        let path = dir.path().join("case.safetensors");
        std::fs::write(&path, &c.bytes).unwrap();
        for (reader, read) in &ST_READERS[..2] {
            let (outcome, peak) = peak_of(|| read(&path));
            if outcome.is_err() {
                assert!(
                    peak <= c.bytes.len() + SLACK,
                    "{}: {reader}: {peak} bytes for a {}-byte file",
                    c.name,
                    c.bytes.len()
                );
                let over = peak.saturating_sub(c.bytes.len());
                if over > worst.0 {
                    worst = (over, format!("{} / {reader}", c.name));
                }
            }
        }
    }
    println!("largest allocation beyond the file's size on a failing load: {} bytes ({})", worst.0, worst.1);
}

// ---------------------------------------------------------------------------------------------
// Random mutations of valid files.

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize, usize),
    Truncate(usize),
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let n = bytes.len().max(1);
        match *m {
            Mutation::Flip(at, mask) if !bytes.is_empty() => bytes[at % n] ^= mask.max(1),
            Mutation::Insert(at, byte) => bytes.insert(at % (bytes.len() + 1), byte),
            Mutation::Delete(at, len) if !bytes.is_empty() => {
                let start = at % n;
                let end = (start + len % 16 + 1).min(bytes.len());
                bytes.drain(start..end);
            }
            Mutation::Truncate(at) => bytes.truncate(at % (bytes.len() + 1)),
            _ => {}
        }
    }
    bytes
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::Flip(a, b)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::Insert(a, b)),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Delete(a, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
    ]
}

/// Runs `readers` on `bytes` written to a file: no panic (proptest reports one), and every
/// error names the file; the allocation stays within `widen` × the file plus the slack.
fn check_mutant(bytes: &[u8], ext: &str, readers: &[Reader], widen: usize) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("mutant.{ext}"));
    std::fs::write(&path, bytes).unwrap();
    for (reader, read) in readers {
        let (outcome, peak) = peak_of(|| read(&path));
        if let Err(e) = outcome {
            let text = e.to_string();
            prop_assert!(text.contains(&path.display().to_string()), "{}: {}", reader, text);
        }
        prop_assert!(peak <= widen * bytes.len() + SLACK, "{}: {} bytes for a {}-byte file", reader, peak, bytes.len());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn mutated_npy_files_never_panic(mutations in proptest::collection::vec(mutation(), 1..6), which in 0usize..3) {
        let dir = tempfile::tempdir().unwrap();
        let base = match which {
            0 => valid_npy_matrix(dir.path(), 12, 5),
            1 => npy(1, "{'descr': '<i8', 'fortran_order': False, 'shape': (9,), }", &[1u8; 72]),
            _ => npy(2, "{'descr': '<f4', 'fortran_order': True, 'shape': (3, 4), }", &[0u8; 48]),
        };
        // Integers may widen eightfold (i1 → i64), twice over for labels.
        check_mutant(&mutate(base, &mutations), "npy", &NPY_READERS, 16)?;
    }

    #[test]
    fn mutated_safetensors_files_never_panic(mutations in proptest::collection::vec(mutation(), 1..6), f32s: bool) {
        let mut tensors = model_tensors();
        if f32s {
            for t in &mut tensors {
                t.1 = Dtype::F32;
                t.3 = t.3.chunks_exact(8).flat_map(|c| (f64::from_le_bytes(c.try_into().unwrap()) as f32).to_le_bytes()).collect();
            }
        }
        check_mutant(&mutate(serialize(&tensors), &mutations), "safetensors", &ST_READERS, 4)?;
    }
}

#[test]
fn endless_devices_read_as_empty_files() {
    // A path to a device that never ends is read up to its reported length (0), not forever.
    let zero = Path::new("/dev/zero");
    if !zero.exists() {
        return;
    }
    for (reader, read) in NPY_READERS.iter().chain(&ST_READERS) {
        let (outcome, peak) = peak_of(|| read(zero));
        let text = outcome.expect_err(reader).to_string();
        assert!(text.contains("/dev/zero") && text.contains("too short"), "{reader}: {text}");
        assert!(peak <= SLACK, "{reader}: {peak} bytes");
    }
}
