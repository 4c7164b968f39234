//! The one-pass diagnostics statistics against a plain forward pass over the same data.

mod common;

use criterion::Criterion;
use degeneracy::diagnostics::DegeneracyStatistics;
use degeneracy::nn::ForwardTrace;
use degeneracy::{Activation, Matrix, Mlp, io};
use std::hint::black_box;
use std::path::PathBuf;

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let digits = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/digits_mlp");
    let cases: Vec<(&str, Mlp, Matrix)> = vec![
        (
            "digits",
            io::load_mlp(digits.join("model.safetensors"), Activation::Relu).unwrap(),
            io::read_matrix(digits.join("inputs.npy")).unwrap(),
        ),
        ("modadd", Mlp::init(&[46, 64, 64, 23], Activation::Relu, true, 0).unwrap(), {
            degeneracy::data::modular_addition(23).unwrap().inputs().clone()
        }),
    ];
    let mut group = c.benchmark_group("diagnostics");
    for (name, mlp, x) in &cases {
        group.bench_function(criterion::BenchmarkId::new("statistics", name), |b| {
            b.iter(|| black_box(DegeneracyStatistics::collect(mlp, x, 1024).unwrap()))
        });
        let mut trace = ForwardTrace::default();
        group.bench_function(criterion::BenchmarkId::new("forward", name), |b| {
            b.iter(|| mlp.trace(black_box(x.view()), &mut trace).unwrap())
        });
    }
    group.finish();
    c.final_summary();
    println!("\ndiagnostics statistics / plain forward pass (same data, same run)");
    for (name, _, _) in &cases {
        if let (Some(s), Some(f)) = (
            common::median_ns("diagnostics", &format!("statistics/{name}")),
            common::median_ns("diagnostics", &format!("forward/{name}")),
        ) {
            println!("  {name:<8} {:8.3} ms vs {:8.3} ms   ratio {:.1}×", s / 1e6, f / 1e6, s / f);
        }
    }
}
