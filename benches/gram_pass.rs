//! One Gram pass over a 1024-wide node layer at 4k, 16k and 64k rows: time should grow linearly
//! with the rows and peak memory (heap beyond the data, counted by this binary's allocator)
//! stay flat. The pass's GEMM flop count gives the throughput next to a same-shape faer GEMM.

mod common;

use criterion::Criterion;
use degeneracy::estimate::NodeStatistics;
use degeneracy::{Activation, Matrix, Mlp};
#[path = "../tests/common/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{Counting, peak_during};
use std::hint::black_box;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const WIDTH: usize = 1024;

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mlp = Mlp::init(&[WIDTH, 4], Activation::Relu, true, 0).unwrap();
    let mut group = c.benchmark_group("gram_pass");
    group.sample_size(10);
    let mut peaks = Vec::new();
    // Warm the thread pools and per-thread buffers, so that every measured pass starts alike (the
    // first pass of a process also grows them, which is not a cost of its rows). More rows than
    // the width, so that the warm pass reaches the d × d products.
    let warm = Matrix::from_fn(2 * WIDTH, WIDTH, |i, j| ((i + j) % 7) as f64);
    black_box(NodeStatistics::collect(&mlp, &warm, &[0], None, 1024).unwrap());
    for rows in [4096, 16384, 65536] {
        let x = Matrix::from_fn(rows, WIDTH, |i, j| ((i * 31 + j * 17) % 101) as f64 / 101.0);
        let (_, peak) = peak_during(|| black_box(NodeStatistics::collect(&mlp, &x, &[0], None, 1024).unwrap()));
        peaks.push((rows, peak));
        group.bench_function(format!("rows_{rows}"), |b| {
            b.iter(|| black_box(NodeStatistics::collect(&mlp, &x, &[0], None, 1024).unwrap()))
        });
        // Baseline: the same-shape product Xᵀ X through faer (what the Gram's lower triangle
        // computes in ~60 % of the flops).
        let folded = Matrix::from_fn(rows, WIDTH + 1, |i, j| if j < WIDTH { x[(i, j)] } else { 1.0 });
        let t = folded.transpose();
        group.bench_function(format!("gemm_xtx_{rows}"), |b| b.iter(|| black_box(t.matmul(&folded).unwrap())));
    }
    group.finish();
    c.final_summary();
    println!("\ngram_pass: time and peak heap (beyond the data) against the rows");
    let base = common::median_ns("gram_pass", "rows_4096");
    for (rows, peak) in peaks {
        let t = common::median_ns("gram_pass", &format!("rows_{rows}"));
        let g = common::median_ns("gram_pass", &format!("gemm_xtx_{rows}"));
        match (t, base, g) {
            (Some(t), Some(b), Some(g)) => println!(
                "  {rows:>6} rows: {:8.1} ms ({:.2}× the 4k time for {:.0}× the rows), GEMM XᵀX {:8.1} ms (ratio {:.2}), peak {:.1} MB",
                t / 1e6,
                t / b,
                rows as f64 / 4096.0,
                g / 1e6,
                t / g,
                peak as f64 / 1e6
            ),
            _ => {
                println!("  {rows:>6} rows: peak {:.1} MB (no time estimate; run without a filter)", peak as f64 / 1e6)
            }
        }
    }
}
