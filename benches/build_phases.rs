//! The cost model of a LIB build (`docs/performance.md`, "Cost model"): for each case, the time
//! of every phase (Gram pass, Gram eigendecompositions, `M'`, whitened eigenproblem, `C`, edges),
//! its FLOPs, the GFLOP/s it reaches, and its ratio to faer doing the same work in this run:
//! faer's GEMM on the same shapes for the products and Grams, faer's self-adjoint
//! eigendecomposition of the same sizes for the eigenproblems (all threads, faer's own
//! parallelism).
//!
//! The small cases are criterion benches of the whole build (`sample_size(10)`) plus the median of
//! a few phase-timed runs; the two large ones are single timed runs (one takes about a minute), so
//! the whole bench finishes in a few minutes. `cargo bench --bench build_phases [-- FILTER]`
//! (FILTER selects cases by name, `a|b` for several).
//!
//! FLOP conventions (2 per multiply-add): a Gram of `n` rows of width `D` counts `n·D²` (one
//! triangle) and its faer baseline is the full `XᵀX` product (as in `benches/basis.rs`); a product
//! `[m, k]·[k, n]` `2mkn`; an eigendecomposition with vectors `9m³` (Golub–Van Loan). The ratio
//! does not depend on these conventions: it is faer's time for the same products and
//! eigenproblems over the phase's time. Products with more than 4096 rows are timed on 4096 rows
//! and scaled. The per-phase work follows the code's steps (see [`work`]); elementwise work and
//! copies count no FLOPs.

mod common;

use criterion::Criterion;
use degeneracy::basis::{Basis, LibConfig, NodeBasis, build_bases};
use degeneracy::estimate::NodeStatistics;
use degeneracy::graph::{EdgeConfig, compute_edges};
use degeneracy::{Activation, Matrix, Mlp, io, profile};
use faer::{Accum, Mat, Par};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

struct Case {
    name: &'static str,
    mlp: Mlp,
    x: Matrix,
    config: LibConfig,
    edges: Option<EdgeConfig>,
    /// Phase-timed runs (their median is reported); 1 for the large cases.
    runs: usize,
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
}

/// Seeded synthetic inputs in [0, 1) (the same as `benches/basis.rs`'s MNIST stand-in).
fn inputs(n: usize, d: usize) -> Matrix {
    Matrix::from_fn(n, d, |i, j| ((i * 7919 + j * 104_729) % 1013) as f64 / 1013.0)
}

fn cases() -> Vec<Case> {
    let digits = fixtures().join("digits_mlp");
    let mlp = |sizes: &[usize]| Mlp::init(sizes, Activation::Relu, true, 0).unwrap();
    vec![
        Case {
            name: "digits_jacobian_squared",
            mlp: io::load_mlp(digits.join("model.safetensors"), Activation::Relu).unwrap(),
            x: io::read_matrix(digits.join("inputs.npy")).unwrap(),
            config: LibConfig::default(),
            edges: Some(EdgeConfig::default()),
            runs: 15,
        },
        Case {
            name: "mlp784_x512_jacobian_squared",
            mlp: mlp(&[784, 100, 100, 10]),
            x: inputs(512, 784),
            config: LibConfig::default(),
            edges: Some(EdgeConfig::default()),
            runs: 7,
        },
        Case {
            name: "mlp1024x4_x20k_jacobian",
            mlp: mlp(&[1024, 1024, 1024, 1024, 1024, 10]),
            x: inputs(20_000, 1024),
            config: LibConfig::default(),
            edges: None,
            runs: 1,
        },
        Case {
            name: "one4096_x8k_jacobian",
            mlp: mlp(&[4096, 4096, 10]),
            x: inputs(8192, 4096),
            config: LibConfig::default(),
            edges: None,
            runs: 1,
        },
    ]
}

/// Seconds of each phase of one build.
#[derive(Clone, Default)]
struct Timing {
    grams: f64,
    frames: f64,
    m_dash: f64,
    whitened: f64,
    c: f64,
    bases_total: f64,
    edges: f64,
    total: f64,
}

fn run_once(case: &Case) -> (Timing, NodeStatistics, Vec<NodeBasis>) {
    let start = Instant::now();
    let nodes = case.config.node_indices(&case.mlp).unwrap();
    let stats = NodeStatistics::collect(
        &case.mlp,
        &case.x,
        &nodes,
        case.config.statistics_quadrature(),
        case.config.batch_size,
    )
    .unwrap();
    let grams = start.elapsed().as_secs_f64();
    profile::reset();
    let t = Instant::now();
    let bases = build_bases(&case.mlp, &case.x, &stats, &case.config).unwrap();
    let bases_total = t.elapsed().as_secs_f64();
    let phase = |name: &str| profile::phases().iter().filter(|p| p.name == name).map(|p| p.seconds).sum::<f64>();
    let t = Instant::now();
    if let Some(edges) = &case.edges {
        std::hint::black_box(compute_edges(&case.mlp, &case.x, &bases, edges).unwrap());
    }
    let edges = t.elapsed().as_secs_f64();
    let timing = Timing {
        grams,
        frames: phase("bases/frames"),
        m_dash: phase("bases/m_dash"),
        whitened: phase("bases/whitened_eigen"),
        c: phase("bases/c"),
        bases_total,
        edges,
        total: start.elapsed().as_secs_f64(),
    };
    (timing, stats, bases)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn median_timing(runs: &[Timing]) -> Timing {
    let m = |f: fn(&Timing) -> f64| median(runs.iter().map(f).collect());
    Timing {
        grams: m(|t| t.grams),
        frames: m(|t| t.frames),
        m_dash: m(|t| t.m_dash),
        whitened: m(|t| t.whitened),
        c: m(|t| t.c),
        bases_total: m(|t| t.bases_total),
        edges: m(|t| t.edges),
        total: m(|t| t.total),
    }
}

/// faer's baselines of this run, cached per shape: seconds of a product `[m, k]·[k, n]`, of a
/// Gram `XᵀX` (`X` `[rows, d]`, the full product) and of an eigendecomposition.
#[derive(Default)]
struct Faer {
    gemm: HashMap<(usize, usize, usize), f64>,
    evd: HashMap<usize, f64>,
}

fn timed_median<F: FnMut()>(mut f: F, reps: usize) -> f64 {
    f();
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// Rows at most this many are timed; a product with more rows costs proportionally more.
const MAX_TIMED_ROWS: usize = 4096;

impl Faer {
    /// Seconds of faer's `A·B` (`A` `[m, k]`, `B` `[k, n]`, all threads); `transpose_a` times
    /// `XᵀX` with `X` `[k, m]` stored by rows instead (the Gram's access pattern).
    fn product(&mut self, m: usize, k: usize, n: usize, transpose_a: bool) -> f64 {
        if m == 0 || k == 0 || n == 0 {
            return 0.0;
        }
        // The long dimension (rows of the data) is capped and scaled.
        let (long, scale) = if transpose_a {
            (k, k as f64 / k.min(MAX_TIMED_ROWS) as f64)
        } else {
            (m, m as f64 / m.min(MAX_TIMED_ROWS) as f64)
        };
        let capped = long.min(MAX_TIMED_ROWS);
        let key = if transpose_a { (m, capped, usize::MAX - n) } else { (capped, k, n) };
        let seconds = *self.gemm.entry(key).or_insert_with(|| {
            let (rows, cols) = if transpose_a { (capped, m) } else { (capped, k) };
            let a = Mat::<f64>::from_fn(rows, cols, |i, j| ((i * 31 + j * 17) % 97) as f64 / 97.0 - 0.3);
            let b = Mat::<f64>::from_fn(if transpose_a { rows } else { k }, n, |i, j| {
                ((i * 13 + j * 7) % 89) as f64 / 89.0
            });
            let mut out = Mat::<f64>::zeros(if transpose_a { m } else { capped }, n);
            let flops = 2.0 * (rows * cols * n) as f64;
            let reps = if flops > 2e10 {
                1
            } else if flops > 1e8 {
                5
            } else {
                21
            };
            timed_median(
                || {
                    let lhs = if transpose_a { a.transpose() } else { a.as_ref() };
                    faer::linalg::matmul::matmul(out.as_mut(), Accum::Replace, lhs, b.as_ref(), 1.0, Par::rayon(0))
                },
                reps,
            )
        });
        seconds * scale
    }

    /// Seconds of faer's self-adjoint eigendecomposition with vectors of an `m × m` matrix, with
    /// faer's own parallelism.
    fn evd_seconds(&mut self, m: usize) -> f64 {
        if m == 0 {
            return 0.0;
        }
        *self.evd.entry(m).or_insert_with(|| {
            let a = Mat::<f64>::from_fn(m, m, |i, j| {
                let (i, j) = (i.min(j), i.max(j));
                1.0 / (1.0 + (j - i) as f64) + ((i * 7 + j * 13) % 29) as f64 / 290.0 + if i == j { 1.0 } else { 0.0 }
            });
            let par = Par::rayon(0);
            let params = Default::default();
            let req = faer::linalg::evd::self_adjoint_evd_scratch::<f64>(
                m,
                faer::linalg::evd::ComputeEigenvectors::Yes,
                par,
                params,
            );
            let mut mem = faer::dyn_stack::MemBuffer::new(req);
            let mut s = faer::diag::Diag::<f64>::zeros(m);
            let mut u = Mat::<f64>::zeros(m, m);
            let reps = if m >= 1500 {
                1
            } else if m >= 500 {
                3
            } else {
                9
            };
            timed_median(
                || {
                    faer::linalg::evd::self_adjoint_evd(
                        a.as_ref(),
                        s.as_mut(),
                        Some(u.as_mut()),
                        par,
                        faer::dyn_stack::MemStack::new(&mut mem),
                        params,
                    )
                    .unwrap()
                },
                reps,
            )
        })
    }
}

/// One piece of a phase's work.
#[derive(Clone, Copy)]
enum Op {
    /// `[m, k]·[k, n]`.
    Product(usize, usize, usize),
    /// `XᵀX`, `X` `[rows, d]`: counted as one triangle, timed for faer as the full product.
    Gram(usize, usize),
    /// Eigendecomposition with vectors, `m × m`.
    Evd(usize),
}

impl Op {
    fn flops(self) -> f64 {
        match self {
            Op::Product(m, k, n) => 2.0 * (m * k * n) as f64,
            Op::Gram(rows, d) => (rows * d * d) as f64,
            Op::Evd(m) => 9.0 * (m as f64).powi(3),
        }
    }

    fn faer_seconds(self, faer: &mut Faer) -> f64 {
        match self {
            Op::Product(m, k, n) => faer.product(m, k, n, false),
            Op::Gram(rows, d) => faer.product(d, rows, d, true),
            Op::Evd(m) => faer.evd_seconds(m),
        }
    }
}

/// The work of each phase, from the shapes the build saw (see the module doc's conventions).
fn work(case: &Case, stats: &NodeStatistics, bases: &[NodeBasis]) -> [(&'static str, Vec<Op>); 6] {
    let n = case.x.nrows();
    let nodes = stats.nodes();
    let widths: Vec<usize> = bases.iter().map(|b| b.orig_dim()).collect();
    let points = case.config.quadrature.points().len();
    let (mut grams, mut frames, mut m_dash, mut whitened, mut c, mut edges) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (slot, &k) in nodes.iter().enumerate() {
        let d = widths[slot];
        grams.push(Op::Gram(n, d));
        if let Some(&next) = widths.get(slot + 1) {
            // The forward product to the next node.
            grams.push(Op::Product(n, d, next));
        }
        if let Some(s) = stats.derivatives(k) {
            // The derivative moments' Gram, after the preactivations `f W_fᵀ` except for a ReLU
            // layer (its signs are read off the next node's activations).
            if case.mlp.activations()[k] != Activation::Relu {
                grams.push(Op::Product(n, d, s.dim()));
            }
            grams.push(Op::Gram(n, s.dim()));
        }
        let b = &bases[slot];
        if b.formula.is_none() {
            continue;
        }
        // Frame: the Gram's eigendecomposition, or the n × n kernel's (K = X Xᵀ, then U = Xᵀ Q
        // and its Cholesky QR).
        if n < d {
            frames.extend([Op::Product(n, d, n), Op::Evd(n), Op::Product(d, n, n), Op::Gram(d, n)]);
        } else {
            frames.push(Op::Evd(d));
        }
        let m = b.gram_kept.len();
        let masked = usize::from(b.has_constant_direction);
        let width = m - masked;
        if let Some(next) = bases.get(slot + 1) {
            // M' = Gᵀ Â G: Â's Q = C_h C_hᵀ.
            let (g, kn) = (widths[slot + 1], next.dim());
            m_dash.push(Op::Product(g, kn, g));
            // P = G R⁺ᵀ, then either the dense projection Pᵀ Â P and a width² EVD, or the r × r
            // side (Â's EVD, B = Â^{1/2} P, B Bᵀ and its EVD, Bᵀ W).
            whitened.push(Op::Product(g, d, m));
            if g < width {
                whitened.extend([
                    Op::Evd(g),
                    Op::Product(g, g, m),
                    Op::Product(g, m, g),
                    Op::Evd(g),
                    Op::Product(m, g, g),
                ]);
            } else {
                whitened.extend([Op::Product(m, g, g), Op::Product(m, g, m), Op::Evd(width)]);
            }
            // C = R V L and C⁺.
            c.extend([Op::Product(d, m, b.dim()), Op::Product(b.dim(), m, d)]);
            // Squared edges: the forward pass to the input node, its coordinates `f C_in` and
            // `f̂ C_in⁺`, then one product row per sample, output direction and point
            // (`[n·k_out, g] · [g, k_in]`, `docs/math.md` §4.1).
            if case.edges.is_some() {
                let k_in = b.dim();
                edges.extend(widths[..=slot].windows(2).map(|w| Op::Product(n, w[0], w[1])));
                edges.extend([Op::Product(n, d, k_in), Op::Product(n, k_in, d), Op::Product(n * kn * points, g, k_in)]);
            }
        }
    }
    [("grams", grams), ("frames", frames), ("m_dash", m_dash), ("whitened", whitened), ("c", c), ("edges", edges)]
}

fn report(case: &Case, timing: &Timing, stats: &NodeStatistics, bases: &[NodeBasis], faer: &mut Faer) {
    println!(
        "\n{} ({} rows; widths {:?}): total {:.4} s (bases {:.4} s)",
        case.name,
        case.x.nrows(),
        bases.iter().map(|b| b.orig_dim()).collect::<Vec<_>>(),
        timing.total,
        timing.bases_total,
    );
    println!("  {:<10} {:>10} {:>10} {:>9} {:>10} {:>7}", "phase", "seconds", "GFLOP", "GFLOP/s", "faer s", "ratio");
    let seconds = [timing.grams, timing.frames, timing.m_dash, timing.whitened, timing.c, timing.edges];
    let (mut sum_t, mut sum_f, mut sum_flops) = (0.0, 0.0, 0.0);
    for ((name, ops), t) in work(case, stats, bases).iter().zip(seconds) {
        if ops.is_empty() {
            continue;
        }
        let flops: f64 = ops.iter().map(|op| op.flops()).sum();
        let f: f64 = ops.iter().map(|op| op.faer_seconds(faer)).sum();
        sum_t += t;
        sum_f += f;
        sum_flops += flops;
        println!("  {name:<10} {t:>10.4} {:>10.3} {:>9.2} {f:>10.4} {:>7.2}", flops / 1e9, flops / t / 1e9, f / t);
    }
    println!(
        "  {:<10} {sum_t:>10.4} {:>10.3} {:>9.2} {sum_f:>10.4} {:>7.2}   (whole build / faer time: {:.2}×)",
        "all",
        sum_flops / 1e9,
        sum_flops / sum_t / 1e9,
        sum_f / sum_t,
        timing.total / sum_f
    );
    println!("  (ratio = faer's time for the same work / this phase's time; target ≥ 0.5)");
}

fn main() {
    let mut c = Criterion::default().sample_size(10).configure_from_args();
    // criterion's filter (a regex); `a|b` selects cases by name here too.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .flat_map(|a| a.split('|').map(String::from).collect::<Vec<_>>())
        .collect();
    let selected = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let cases: Vec<Case> = cases().into_iter().filter(|c| selected(c.name)).collect();
    {
        let mut group = c.benchmark_group("build_phases");
        for case in cases.iter().filter(|c| c.runs > 1) {
            group.bench_function(case.name, |b| b.iter(|| run_once(case)));
        }
        group.finish();
    }
    c.final_summary();
    let mut faer = Faer::default();
    println!("\nCost model: phase times (median of the phase-timed runs) against faer on the same work");
    for case in &cases {
        let mut runs = Vec::new();
        let mut last = None;
        for _ in 0..case.runs {
            let (t, stats, bases) = run_once(case);
            runs.push(t);
            last = Some((stats, bases));
        }
        let (stats, bases) = last.expect("at least one run");
        let timing = median_timing(&runs);
        if let Some(t) = common::median_ns("build_phases", case.name) {
            println!("\n{}: criterion median of the whole build {:.4} s", case.name, t / 1e9);
        }
        report(case, &timing, &stats, &bases, &mut faer);
    }
}
