//! File formats: round trips, and typed errors (never panics) on bad files and bad data.

mod common;

use common::fixtures;
use degeneracy::io::{self, LoadOptions, NpyRowReader, TensorNaming};
use degeneracy::{Activation, Dataset, Error, Layer, Matrix, Mlp, Targets};
use npyz::WriterBuilder;
use std::path::Path;

fn write_npy<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[u64], order: npyz::Order, data: &[T]) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut w = npyz::WriteOptions::new().default_dtype().shape(shape).order(order).writer(file).begin_nd().unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

#[test]
fn npy_round_trips_and_widens() {
    let dir = tempfile::tempdir().unwrap();
    let m = Matrix::from_fn(3, 2, |i, j| i as f64 - 0.5 * j as f64);
    io::write_matrix(dir.path().join("m.npy"), &m).unwrap();
    assert_eq!(io::read_matrix(dir.path().join("m.npy")).unwrap(), m);

    io::write_vector(dir.path().join("v.npy"), &[1.5, -2.0]).unwrap();
    assert_eq!(io::read_vector(dir.path().join("v.npy")).unwrap(), [1.5, -2.0]);

    io::write_ints(dir.path().join("l.npy"), &[3], &[2, 0, 1]).unwrap();
    assert_eq!(io::read_labels(dir.path().join("l.npy")).unwrap(), [2, 0, 1]);

    write_npy(&dir.path().join("f32.npy"), &[2, 2], npyz::Order::C, &[1.0f32, 2.0, 3.0, 0.25]);
    assert_eq!(io::read_matrix(dir.path().join("f32.npy")).unwrap().as_slice(), &[1.0, 2.0, 3.0, 0.25]);

    // Fortran order: element (i, j) stored at j·rows + i.
    write_npy(&dir.path().join("fortran.npy"), &[2, 3], npyz::Order::Fortran, &[1.0f64, 4.0, 2.0, 5.0, 3.0, 6.0]);
    let f = io::read_matrix(dir.path().join("fortran.npy")).unwrap();
    assert_eq!(f, Matrix::from_rows(&[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).unwrap());
    assert!(matches!(NpyRowReader::open(dir.path().join("fortran.npy"), 1), Err(Error::Malformed { .. })));

    write_npy(&dir.path().join("i32.npy"), &[2], npyz::Order::C, &[7i32, 1]);
    assert_eq!(io::read_labels(dir.path().join("i32.npy")).unwrap(), [7, 1]);
}

#[test]
fn chunked_reader_streams_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let m = Matrix::from_fn(10, 3, |i, j| (i * 3 + j) as f64);
    let path = dir.path().join("rows.npy");
    io::write_matrix(&path, &m).unwrap();
    let mut reader = NpyRowReader::open(&path, 4).unwrap();
    assert_eq!((reader.n_rows(), reader.n_cols()), (10, 3));
    let (mut chunk, mut rows, mut sizes) = (Matrix::default(), Vec::new(), Vec::new());
    while reader.next_chunk(&mut chunk).unwrap() {
        sizes.push(chunk.nrows());
        rows.extend_from_slice(chunk.as_slice());
    }
    assert_eq!(sizes, [4, 4, 2]);
    assert_eq!(rows, m.as_slice());

    // The reader reports the global row of a NaN.
    let mut bad = m.clone();
    bad[(6, 2)] = f64::NAN;
    io::write_matrix(&path, &bad).unwrap();
    let mut reader = NpyRowReader::open(&path, 4).unwrap();
    reader.next_chunk(&mut chunk).unwrap();
    assert!(matches!(reader.next_chunk(&mut chunk), Err(Error::NonFinite { row: 6, col: 2, .. })));
}

#[test]
fn bad_npy_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.npy");
    io::write_matrix(&good, &Matrix::from_fn(20, 4, |i, j| (i + j) as f64)).unwrap();
    let bytes = std::fs::read(&good).unwrap();

    let truncated = dir.path().join("truncated.npy");
    std::fs::write(&truncated, &bytes[..bytes.len() - 17]).unwrap();
    assert!(matches!(io::read_matrix(&truncated), Err(Error::Malformed { .. })));
    // The chunked reader sees the truncation in the header, before reading a row...
    assert!(matches!(NpyRowReader::open(&truncated, 8), Err(Error::Malformed { .. })));
    // ...and a file cut while it is being read still ends in a typed error.
    let shrinking = dir.path().join("shrinking.npy");
    std::fs::write(&shrinking, &bytes).unwrap();
    let mut reader = NpyRowReader::open(&shrinking, 8).unwrap();
    std::fs::OpenOptions::new().write(true).open(&shrinking).unwrap().set_len(bytes.len() as u64 - 17).unwrap();
    let mut chunk = Matrix::default();
    let mut outcome = Ok(true);
    while let Ok(true) = outcome {
        outcome = reader.next_chunk(&mut chunk);
    }
    assert!(matches!(outcome, Err(Error::Malformed { .. })), "{outcome:?}");

    let garbled = dir.path().join("garbled.npy");
    let mut g = bytes.clone();
    g[..6].copy_from_slice(b"NOTNPY");
    std::fs::write(&garbled, g).unwrap();
    assert!(matches!(io::read_matrix(&garbled), Err(Error::Malformed { .. })));

    assert!(matches!(io::read_matrix(dir.path().join("missing.npy")), Err(Error::Io { .. })));

    let ints = dir.path().join("ints.npy");
    io::write_ints(&ints, &[2], &[1, 2]).unwrap();
    assert!(matches!(io::read_matrix(&ints), Err(Error::Dtype { .. })));
    assert!(matches!(io::read_labels(&good), Err(Error::Dtype { .. })));

    let negative = dir.path().join("negative.npy");
    io::write_ints(&negative, &[3], &[0, -1, 2]).unwrap();
    assert!(matches!(io::read_labels(&negative), Err(Error::NegativeLabel { index: 1, label: -1, .. })));

    let three_d = dir.path().join("3d.npy");
    write_npy(&three_d, &[2, 2, 2], npyz::Order::C, &[0.0f64; 8]);
    assert!(matches!(io::read_matrix(&three_d), Err(Error::Malformed { .. })));

    let inf = dir.path().join("inf.npy");
    io::write_matrix(&inf, &Matrix::from_rows(&[[0.0, f64::INFINITY]]).unwrap()).unwrap();
    assert!(matches!(io::read_matrix(&inf), Err(Error::NonFinite { row: 0, col: 1, .. })));

    let bool_file = dir.path().join("bool.npy");
    write_npy(&bool_file, &[2], npyz::Order::C, &[true, false]);
    assert!(matches!(io::read_matrix(&bool_file), Err(Error::Dtype { .. })));
}

#[test]
fn safetensors_round_trip_and_naming() {
    let dir = tempfile::tempdir().unwrap();
    let mlp = Mlp::init(&[4, 5, 3], Activation::Relu, true, 9).unwrap();
    let path = dir.path().join("m.safetensors");
    io::save_mlp(&path, &mlp).unwrap();
    assert_eq!(io::load_mlp(&path, Activation::Relu).unwrap(), mlp);
    // The same file under another naming scheme has no layers.
    let other = TensorNaming::new("fc{i}.weight", "fc{i}.bias");
    assert!(matches!(io::load_mlp_with(&path, Activation::Relu, &other.into()), Err(Error::MissingTensor { .. })));

    // Bias-free models (the deep linear network of the LLC fixture) load too, when declared.
    let dln_path = fixtures().join("llc_dln/model.safetensors");
    let dln = io::load_mlp_with(&dln_path, Activation::Identity, &LoadOptions::bias_free()).unwrap();
    assert_eq!(dln.widths(), [10, 10, 10, 10]);
    assert_eq!(dln.n_params(), 300);
    assert!(dln.linears().iter().all(|l| l.bias().is_none()));
}

#[test]
fn bad_safetensors_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("digits_mlp/model.safetensors");
    let bytes = std::fs::read(&src).unwrap();

    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(io::load_mlp(&truncated, Activation::Relu), Err(Error::Malformed { .. })));

    let garbled = dir.path().join("garbled.safetensors");
    let mut g = bytes.clone();
    for b in &mut g[8..40] {
        *b = b'#';
    }
    std::fs::write(&garbled, g).unwrap();
    assert!(matches!(io::load_mlp(&garbled, Activation::Relu), Err(Error::Malformed { .. })));

    let tiny = dir.path().join("tiny.safetensors");
    std::fs::write(&tiny, b"abc").unwrap();
    assert!(matches!(io::load_mlp(&tiny, Activation::Relu), Err(Error::Malformed { .. })));

    // A wrong dtype (I64 weights) names the tensor.
    let data: Vec<u8> = [1i64, 2, 3, 4].iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![2, 2], &data).unwrap();
    let int_file = dir.path().join("int.safetensors");
    std::fs::write(&int_file, safetensors::serialize([("layers.0.weight", view)], None).unwrap()).unwrap();
    match io::load_mlp_with(&int_file, Activation::Relu, &LoadOptions::bias_free()) {
        Err(Error::Dtype { name, .. }) => assert_eq!(name, "layers.0.weight"),
        other => panic!("expected a dtype error, got {other:?}"),
    }

    // Consecutive layers that do not chain, either way round ([3, 2] then [2, 4] would chain
    // with both transposed: that is a checkpoint of the other convention, reported so).
    let le = |v: &[f64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (w0, w1) = (le(&[0.0; 6]), le(&[0.0; 20]));
    let views = [
        ("layers.0.weight", safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![3, 2], &w0).unwrap()),
        ("layers.1.weight", safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![5, 4], &w1).unwrap()),
    ];
    let chain = dir.path().join("chain.safetensors");
    std::fs::write(&chain, safetensors::serialize(views, None).unwrap()).unwrap();
    let chained = io::load_mlp_with(&chain, Activation::Relu, &LoadOptions::bias_free());
    assert!(matches!(&chained, Err(Error::TensorShape { name, .. }) if name == "layers.1.weight"), "{chained:?}");
}

#[test]
fn bad_data_is_a_typed_error() {
    let mlp = Mlp::init(&[4, 3, 2], Activation::Relu, true, 0).unwrap();
    let mut y = Matrix::default();
    // Inputs of the wrong width for the weights.
    assert!(matches!(mlp.forward(Matrix::zeros(2, 5).view(), &mut y), Err(Error::ShapeMismatch { .. })));
    // NaN / inf inputs and empty datasets are rejected when the dataset is built.
    let mut x = Matrix::zeros(3, 4);
    x[(1, 2)] = f64::NAN;
    assert!(matches!(Dataset::unlabelled(x), Err(Error::NonFinite { row: 1, col: 2, .. })));
    assert!(matches!(Dataset::unlabelled(Matrix::zeros(0, 4)), Err(Error::Empty { .. })));
    // Labels outside the model's classes.
    let data = Dataset::new(Matrix::zeros(2, 4), Targets::Labels(vec![0, 2])).unwrap();
    assert!(matches!(
        degeneracy::nn::evaluate(&mlp, &data, degeneracy::Loss::CrossEntropy),
        Err(Error::LabelOutOfRange { index: 1, label: 2, n_classes: 2 })
    ));
    // Non-finite parameters.
    let mut m = mlp.clone();
    let mut p = m.params();
    p[3] = f64::INFINITY;
    assert!(matches!(m.set_params(&p), Err(Error::NonFinite { col: 3, .. })));
    assert!(matches!(m.set_params(&p[1..]), Err(Error::ShapeMismatch { .. })));
}
