//! The generic path on a user's section: the Jacobian Gram and the squared edges of a residual
//! block cost little more than the vector–Jacobian products they apply (one forward pass per
//! batch, every cotangent a VJP row), measured next to the same products alone; and the
//! equivalent MLP section's closed forms next to its generic path.

mod common;
#[path = "../tests/common/user_layers.rs"]
mod user_layers;

use criterion::Criterion;
use degeneracy::basis::{BasisFormula, JacobianGramAccumulator, JacobianPath, NodeBasis};
use degeneracy::estimate::Quadrature;
use degeneracy::graph::{EdgeConfig, compute_edge};
use degeneracy::{Activation, Linear, Matrix, Mlp, Network, Section, Sequential};
use std::hint::black_box;
use user_layers::{LayerNorm, Residual, pseudo_random};

const ROWS: usize = 1024;
const WIDTH: usize = 64;
const HIDDEN: usize = 256;

/// `Linear(32→64) → Residual(64, hidden 256) → LayerNorm(64) → Linear(64→10)`.
fn residual_network() -> Sequential {
    let linear = |out, inp, seed| Linear::new(pseudo_random(out, inp, seed, 0.3), Some(vec![0.1; out])).unwrap();
    Sequential::new(vec![
        Box::new(linear(WIDTH, 32, 1)),
        Box::new(Residual::new(WIDTH, HIDDEN, 2)),
        Box::new(LayerNorm { width: WIDTH, eps: 1e-5 }),
        Box::new(linear(10, WIDTH, 3)),
    ])
    .unwrap()
}

/// The activations at node `k`.
fn node(net: &dyn Network, x: &Matrix, k: usize) -> Matrix {
    let mut acts = vec![Matrix::default()];
    net.forward_nodes(x.view(), &[k], &mut acts).unwrap();
    acts.pop().unwrap()
}

/// What the Jacobian Gram applies: one linearisation, then the VJPs of every output direction
/// (one cotangent block each), in the accumulator's groups of blocks.
fn vjp_rows(section: &dyn Section, f: &Matrix, c_next: &Matrix) -> f64 {
    let lin = section.linearize(f.view()).unwrap();
    let (n, width) = (f.nrows(), c_next.nrows());
    let group = ((1usize << 21) / (n * f.ncols().max(width))).max(1);
    let mut gx = Matrix::default();
    let mut sink = 0.0;
    for start in (0..c_next.ncols()).step_by(group) {
        let dirs = start..(start + group).min(c_next.ncols());
        let cot = Matrix::from_fn(dirs.len() * n, width, |r, o| c_next[(o, dirs.start + r / n)]);
        lin.vjp(cot.view(), &mut gx).unwrap();
        sink += gx.as_slice()[0];
    }
    sink
}

fn jacobian_gram(section: &dyn Section, f: &Matrix, c_next: &Matrix) -> Matrix {
    let mut acc = JacobianGramAccumulator::new(BasisFormula::Jacobian, section, c_next.ncols()).unwrap();
    for first in (0..f.nrows()).step_by(256) {
        acc.update(section, f.rows(first..(first + 256).min(f.nrows())), c_next, Quadrature::Gradient).unwrap();
    }
    acc.finish().unwrap().0
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let x = pseudo_random(ROWS, 32, 9, 1.0);
    let residual = residual_network();
    let section = residual.section(1, 2).unwrap();
    let f = node(&residual, &x, 1);
    let c_next = pseudo_random(WIDTH + 1, WIDTH + 1, 11, 1.0);
    let identity = |name: &str| NodeBasis::new(name, Matrix::identity(WIDTH + 1), Matrix::identity(WIDTH + 1)).unwrap();
    let (b_in, b_out) = (identity("layers.1"), identity("layers.2"));

    // The equivalent MLP section: 64 → 256 → 64 with ReLU (the closed forms apply at layers.0).
    let mlp = Mlp::init(&[WIDTH, HIDDEN, WIDTH], Activation::Relu, true, 4).unwrap();
    let mx = pseudo_random(ROWS, WIDTH, 12, 1.0);
    let mlp_section = mlp.section(0, 1).unwrap();
    let mf = node(&mlp, &mx, 0);
    let mc_next = pseudo_random(HIDDEN + 1, HIDDEN + 1, 13, 1.0);
    let (m_in, m_out) = (
        NodeBasis::new("layers.0", Matrix::identity(WIDTH + 1), Matrix::identity(WIDTH + 1)).unwrap(),
        NodeBasis::new("layers.1", Matrix::identity(HIDDEN + 1), Matrix::identity(HIDDEN + 1)).unwrap(),
    );

    let mut group = c.benchmark_group("generic_section");
    group.sample_size(10);
    group.bench_function("residual_vjp_rows", |b| b.iter(|| black_box(vjp_rows(&*section, &f, &c_next))));
    group.bench_function("residual_jacobian_gram", |b| b.iter(|| black_box(jacobian_gram(&*section, &f, &c_next))));
    group.bench_function("residual_squared_edges", |b| {
        b.iter(|| black_box(compute_edge(&residual, &x, &b_in, &b_out, &EdgeConfig::default()).unwrap()))
    });
    group.bench_function("mlp_vjp_rows", |b| b.iter(|| black_box(vjp_rows(&*mlp_section, &mf, &mc_next))));
    group.bench_function("mlp_jacobian_gram_generic", |b| {
        b.iter(|| black_box(jacobian_gram(&*mlp_section, &mf, &mc_next)))
    });
    let generic = EdgeConfig { path: JacobianPath::Generic, ..EdgeConfig::default() };
    group.bench_function("mlp_squared_edges_product_form", |b| {
        b.iter(|| black_box(compute_edge(&mlp, &mx, &m_in, &m_out, &EdgeConfig::default()).unwrap()))
    });
    group.bench_function("mlp_squared_edges_generic", |b| {
        b.iter(|| black_box(compute_edge(&mlp, &mx, &m_in, &m_out, &generic).unwrap()))
    });
    group.finish();
    c.final_summary();
    common::print_time_ratios(
        "generic_section",
        &[
            ("residual Jacobian Gram / its VJP rows (≤ 1.5)", "residual_jacobian_gram", "residual_vjp_rows", None),
            ("residual squared edges / its VJP rows (≤ 1.5)", "residual_squared_edges", "residual_vjp_rows", None),
            ("MLP Jacobian Gram (generic) / its VJP rows", "mlp_jacobian_gram_generic", "mlp_vjp_rows", None),
            ("MLP edges: generic / product form", "mlp_squared_edges_generic", "mlp_squared_edges_product_form", None),
        ],
    );
}
