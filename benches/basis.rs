//! Gram accumulation against faer's GEMM on the same `XᵀX` shapes, and the whole `lib_build`
//! process (start to files written) against rib's recorded full builds.
//!
//! The process benchmark runs `target/release/examples/lib_build`; build it first with
//! `cargo build --release --example lib_build` (it is skipped with a note otherwise).

mod common;

use criterion::{BenchmarkId, Criterion};
use degeneracy::estimate::GramAccumulator;
use degeneracy::{Activation, Matrix, Mlp, io};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;

const SHAPES: [(usize, usize); 3] = [(1024, 65), (4096, 101), (4096, 785)];

fn gram_vs_gemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("gram");
    for (n, d) in SHAPES {
        let x = Matrix::from_fn(n, d, |i, j| ((i * 31 + j * 17) % 97) as f64 / 97.0 - 0.3);
        let xt = x.transpose();
        let id = format!("{n}x{d}");
        group.bench_function(BenchmarkId::new("accumulator_update", &id), |b| {
            b.iter(|| {
                let mut acc = GramAccumulator::new(d);
                acc.update(black_box(x.view())).unwrap();
                acc
            })
        });
        group.bench_function(BenchmarkId::new("faer_gemm_xtx", &id), |b| b.iter(|| xt.matmul(black_box(&x)).unwrap()));
    }
    group.finish();
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
}

fn write_config(dir: &Path, name: &str, model: &Path, inputs: &Path, formula: &str, method: &str, k: usize) -> PathBuf {
    let cfg = serde_json::json!({
        "model": model, "activation": "relu", "inputs": inputs, "basis_formula": formula,
        "edge_formula": null, "integration_method": method, "n_intervals": k, "center": true,
        "truncation_threshold": 1e-10, "rotate_final_node_layer": false, "batch_size": 1024,
        "out_dir": dir.join(format!("out_{name}")),
    });
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, cfg.to_string()).unwrap();
    path
}

/// (name, config, rib's recorded seconds on 2 threads)
fn process_cases(dir: &Path) -> Vec<(String, PathBuf, f64)> {
    let digits = fixtures().join("digits_mlp");
    let (model, inputs) = (digits.join("model.safetensors"), digits.join("inputs.npy"));
    let mut cases = vec![
        (
            "digits_jacobian".to_string(),
            write_config(dir, "digits_jacobian", &model, &inputs, "jacobian", "gradient", 0),
            0.113,
        ),
        (
            "digits_alpha2".to_string(),
            write_config(dir, "digits_alpha2", &model, &inputs, "(1-alpha)^2", "gauss-legendre", 4),
            0.308,
        ),
    ];
    // 784-100-100-10 with 512 samples (rib: 1.465 s); a seeded random model and inputs.
    let mlp = Mlp::init(&[784, 100, 100, 10], Activation::Relu, true, 0).unwrap();
    let big_model = dir.join("mlp784.safetensors");
    io::save_mlp(&big_model, &mlp).unwrap();
    let x = Matrix::from_fn(512, 784, |i, j| ((i * 7919 + j * 104_729) % 1013) as f64 / 1013.0);
    let big_inputs = dir.join("x784.npy");
    io::write_matrix(&big_inputs, &x).unwrap();
    cases.push((
        "mlp784_jacobian".into(),
        write_config(dir, "mlp784", &big_model, &big_inputs, "jacobian", "gradient", 0),
        1.465,
    ));
    cases
}

fn lib_build_process(c: &mut Criterion, cases: &[(String, PathBuf, f64)], exe: &Path) {
    let mut group = c.benchmark_group("lib_build_process");
    group.sample_size(20);
    for (name, cfg, _) in cases {
        group.bench_function(name.as_str(), |b| {
            b.iter(|| {
                let status = Command::new(exe).arg(cfg).status().unwrap();
                assert!(status.success());
            })
        });
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    gram_vs_gemm(&mut c);
    let exe = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/examples/lib_build");
    let tmp = tempfile::tempdir().unwrap();
    let cases = process_cases(tmp.path());
    let have_exe = exe.exists();
    if have_exe {
        lib_build_process(&mut c, &cases, &exe);
    }
    c.final_summary();

    println!("\ngram: faer GEMM time / accumulator time (≥ 1 means the accumulator is faster)");
    for (n, d) in SHAPES {
        let id = format!("{n}x{d}");
        if let (Some(acc), Some(gemm)) = (
            common::median_ns("gram", &format!("accumulator_update/{id}")),
            common::median_ns("gram", &format!("faer_gemm_xtx/{id}")),
        ) {
            println!(
                "  {id:<10} accumulator {:9.1} µs   GEMM {:9.1} µs   ratio {:.2}",
                acc / 1e3,
                gemm / 1e3,
                gemm / acc
            );
        }
    }
    if !have_exe {
        println!("\nlib_build_process skipped: run `cargo build --release --example lib_build` first");
        return;
    }
    println!("\nlib_build, whole process vs rib's recorded full build (2 threads)");
    for (name, _, rib) in &cases {
        if let Some(t) = common::median_ns("lib_build_process", name) {
            println!("  {name:<18} {:8.2} ms   rib {:7.1} ms   speed-up {:5.1}×", t / 1e6, rib * 1e3, rib * 1e9 / t);
        }
    }
}
