//! Gram accumulation against faer's GEMM on the same `XᵀX` shapes, and the whole `lib_build`
//! process (start to files written) against rib's full builds: the same configs, edges included
//! (rib's medians on this machine, 2 threads, from issue 17).
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

struct Settings {
    formula: &'static str,
    edges: &'static str,
    method: &'static str,
    k: usize,
}

const JACOBIAN: Settings = Settings { formula: "jacobian", edges: "squared", method: "gradient", k: 0 };
const ALPHA2: Settings = Settings { formula: "(1-alpha)^2", edges: "functional", method: "gauss-legendre", k: 4 };

fn write_config(dir: &Path, name: &str, model: &Path, inputs: &Path, s: &Settings) -> PathBuf {
    let (formula, method, k) = (s.formula, s.method, s.k);
    let cfg = serde_json::json!({
        "model": model, "activation": "relu", "inputs": inputs, "basis_formula": formula,
        "edge_formula": s.edges, "integration_method": method, "n_intervals": k, "center": true,
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
            "digits_jacobian_squared".to_string(),
            write_config(dir, "digits_jacobian", &model, &inputs, &JACOBIAN),
            0.165,
        ),
        ("digits_alpha2_functional".to_string(), write_config(dir, "digits_alpha2", &model, &inputs, &ALPHA2), 0.407),
    ];
    // 784-100-100-10 with 512 samples, standing in for rib's MNIST checkpoint (rib: 1.18 s); a
    // seeded random model and inputs.
    let mlp = Mlp::init(&[784, 100, 100, 10], Activation::Relu, true, 0).unwrap();
    let big_model = dir.join("mlp784.safetensors");
    io::save_mlp(&big_model, &mlp).unwrap();
    let x = Matrix::from_fn(512, 784, |i, j| ((i * 7919 + j * 104_729) % 1013) as f64 / 1013.0);
    let big_inputs = dir.join("x784.npy");
    io::write_matrix(&big_inputs, &x).unwrap();
    cases.push((
        "mlp784_jacobian_squared".into(),
        write_config(dir, "mlp784", &big_model, &big_inputs, &JACOBIAN),
        1.18,
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
    println!("\nlib_build, whole process, edges included, vs rib's full build (2 threads)");
    for (name, _, rib) in &cases {
        if let Some(t) = common::median_ns("lib_build_process", name) {
            println!("  {name:<26} {:8.2} ms   rib {:7.1} ms   speed-up {:5.1}×", t / 1e6, rib * 1e3, rib * 1e9 / t);
        }
    }
}
