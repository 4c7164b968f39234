//! Forward + backward of the digits-shaped MLP (64→40→40→10) against a faer GEMM with the
//! same FLOPs, measured in the same run.

mod common;

use criterion::{BenchmarkId, Criterion, Throughput};
use degeneracy::nn::ForwardTrace;
use degeneracy::{Activation, Layer, Matrix, Mlp};
use std::hint::black_box;

const SIZES: [usize; 4] = [64, 40, 40, 10];
const BATCHES: [usize; 3] = [64, 1024, 8192];

/// Multiply–add count ×2 of one forward and backward pass (the input gradient of the first
/// layer is skipped, as `backward_trace` does without `grad_input`).
fn fwd_bwd_flops(n: usize) -> f64 {
    let layers: Vec<(usize, usize)> = SIZES.windows(2).map(|w| (w[0], w[1])).collect();
    let fwd: usize = layers.iter().map(|(i, o)| i * o).sum();
    let bwd_input: usize = layers.iter().skip(1).map(|(i, o)| i * o).sum();
    2.0 * n as f64 * (2 * fwd + bwd_input) as f64
}

/// A GEMM `[n, k] · [k, m]` with `2 n k m` equal to the forward+backward FLOPs.
fn equal_flop_gemm(n: usize) -> (Matrix, Matrix) {
    let k = 64;
    let m = (fwd_bwd_flops(n) / (2.0 * (n * k) as f64)).round() as usize;
    (Matrix::from_fn(n, k, |i, j| ((i + j) as f64).sin()), Matrix::from_fn(k, m, |i, j| ((i * j) as f64).cos()))
}

fn bench(c: &mut Criterion) {
    let mlp = Mlp::init(&SIZES, Activation::Relu, true, 0).unwrap();
    let mut group = c.benchmark_group("mlp_forward_backward");
    for n in BATCHES {
        let x = Matrix::from_fn(n, SIZES[0], |i, j| ((i * 7 + j) % 17) as f64 / 17.0);
        let grad_out = Matrix::from_fn(n, 10, |i, j| ((i + j) % 3) as f64 - 1.0);
        let (a, b) = equal_flop_gemm(n);
        let mut trace = ForwardTrace::default();
        let mut grad = vec![0.0; mlp.n_params()];
        group.throughput(Throughput::Elements(fwd_bwd_flops(n) as u64));
        group.bench_function(BenchmarkId::new("fwd_bwd", n), |bench| {
            bench.iter(|| {
                mlp.trace(black_box(x.view()), &mut trace).unwrap();
                grad.fill(0.0);
                mlp.backward_trace(&mut trace, grad_out.view(), &mut grad, None).unwrap();
            })
        });
        group.throughput(Throughput::Elements((2 * a.nrows() * a.ncols() * b.ncols()) as u64));
        group.bench_function(BenchmarkId::new("gemm_same_flops", n), |bench| {
            bench.iter(|| black_box(a.matmul(black_box(&b)).unwrap()))
        });
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    let rows: Vec<(String, String, String, f64, f64)> = BATCHES
        .iter()
        .map(|&n| {
            let (a, b) = equal_flop_gemm(n);
            (
                format!("fwd+bwd batch {n}"),
                format!("fwd_bwd/{n}"),
                format!("gemm_same_flops/{n}"),
                fwd_bwd_flops(n),
                (2 * a.nrows() * a.ncols() * b.ncols()) as f64,
            )
        })
        .collect();
    let rows: Vec<_> = rows.iter().map(|(l, b, g, f, fg)| (l.as_str(), b.as_str(), g.as_str(), *f, *fg)).collect();
    common::print_throughput_ratios("mlp_forward_backward", &rows);
}
