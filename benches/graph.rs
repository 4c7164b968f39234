//! Edge computation against rib's recorded edge phase, and Leiden on a 10⁵-edge graph.

mod common;

use criterion::Criterion;
use degeneracy::basis::{Basis, LibConfig, NodeBasis, fit_bases};
use degeneracy::graph::{EdgeConfig, LeidenConfig, WeightedGraph, compute_edges, leiden};
use degeneracy::{Activation, Matrix, Mlp, Network, io};
use std::hint::black_box;
use std::path::PathBuf;

struct Case {
    name: &'static str,
    mlp: Mlp,
    x: Matrix,
    bases: Vec<NodeBasis>,
    rib_seconds: f64,
}

fn cases() -> Vec<Case> {
    let digits = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/digits_mlp");
    let mlp = io::load_mlp(digits.join("model.safetensors"), Activation::Relu).unwrap();
    let x = io::read_matrix(digits.join("inputs.npy")).unwrap();
    let bases = fit_bases(&mlp, &x, &LibConfig::default()).unwrap();
    let big = Mlp::init(&[784, 100, 100, 10], Activation::Relu, true, 0).unwrap();
    let bx = Matrix::from_fn(512, 784, |i, j| ((i * 7919 + j * 104_729) % 1013) as f64 / 1013.0);
    let big_bases = fit_bases(&big, &bx, &LibConfig::default()).unwrap();
    vec![
        Case { name: "digits_squared", mlp, x, bases, rib_seconds: 0.042 },
        Case { name: "mlp784_squared", mlp: big, x: bx, bases: big_bases, rib_seconds: 0.29 },
    ]
}

/// The operands of the GEMMs the squared product form runs: per layer pair and 256-row work
/// unit, `L [256·dim_out, width]` (rows `s(x) ⊙ C_out[:, i]`) times `B [width, dim_in]`.
fn product_form_gemms(case: &Case) -> Vec<(Matrix, Matrix)> {
    let widths = case.mlp.widths();
    let mut out = Vec::new();
    for pair in case.bases.windows(2) {
        let k = case.mlp.node_index(&pair[0].node).unwrap();
        let (dim_in, dim_out, width) = (pair[0].dim(), pair[1].dim(), widths[k + 1]);
        for first in (0..case.x.nrows()).step_by(256) {
            let rows = (case.x.nrows() - first).min(256) * dim_out;
            let l = Matrix::from_fn(rows, width, |i, j| ((i * 31 + j * 17) % 13) as f64 - 6.0);
            let r = Matrix::from_fn(width, dim_in, |i, j| ((i * 7 + j * 3) % 11) as f64 - 5.0);
            out.push((l, r));
        }
    }
    out
}

/// 5 layers of 150 nodes, adjacent layers fully connected (90 000 edges) with weights that
/// form 6 planted modules plus noise.
fn big_graph() -> WeightedGraph {
    let (layers, width) = (5, 150);
    let mut edges = Vec::new();
    for l in 0..layers - 1 {
        for i in 0..width {
            for j in 0..width {
                let same = i * 6 / width == j * 6 / width;
                let noise = ((i * 7919 + j * 104_729 + l * 31) % 1000) as f64 / 1000.0;
                edges.push((l * width + i, (l + 1) * width + j, if same { 1.0 + noise } else { 0.05 * noise }));
            }
        }
    }
    WeightedGraph::new(layers * width, &edges).unwrap()
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let cases = cases();
    let mut group = c.benchmark_group("edges");
    group.sample_size(20);
    for case in &cases {
        group.bench_function(case.name, |b| {
            b.iter(|| black_box(compute_edges(&case.mlp, &case.x, &case.bases, &EdgeConfig::default()).unwrap()))
        });
    }
    // Baseline: GEMMs of the product form's flop count alone (per 256-row work unit and layer
    // pair, `[256·dim_out, width] × [width, dim_in]`), measured in this run.
    for case in &cases {
        let gemms = product_form_gemms(case);
        group.bench_function(format!("{}_gemms_only", case.name), |b| {
            b.iter(|| {
                for (l, r) in &gemms {
                    black_box(l.matmul(r).unwrap());
                }
            })
        });
    }
    group.finish();
    let graph = big_graph();
    let mut group = c.benchmark_group("leiden");
    group.sample_size(10);
    group.bench_function("fully_connected_5x150_90k_edges", |b| {
        b.iter(|| black_box(leiden(&graph, &LeidenConfig::default()).unwrap()))
    });
    group.finish();
    c.final_summary();

    println!("\nedges vs rib's recorded edge phase (2 threads), and vs GEMMs of the same flop count");
    for case in &cases {
        let gemm = common::median_ns("edges", &format!("{}_gemms_only", case.name));
        if let (Some(t), Some(g)) = (common::median_ns("edges", case.name), gemm) {
            println!(
                "  {:<16} {:8.2} ms   rib {:6.0} ms   speed-up {:5.1}×   GEMMs alone {:8.2} ms ({:.0} % of the time)",
                case.name,
                t / 1e6,
                case.rib_seconds * 1e3,
                case.rib_seconds * 1e9 / t,
                g / 1e6,
                100.0 * g / t
            );
        }
    }
    if let Some(t) = common::median_ns("leiden", "fully_connected_5x150_90k_edges") {
        println!("  Leiden, {} edges: {:.1} ms (target < 1 s)", graph.n_edges(), t / 1e6);
    }
}
