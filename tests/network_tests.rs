//! The estimators on a network made of a user's own layers, through the public API only, as a
//! downstream crate would use them: `Linear → residual block → LayerNorm → Linear`, with the
//! residual block and the LayerNorm written here as `Layer`s. Grams against a dense per-sample
//! reference (the test's own folded maps, central finite differences), the LIB, edges, modules,
//! diagnostics and the LLC, LIB invariance, users' bases, and users' errors.

use degeneracy::ablation::{EdgeAblation, Eval, evaluate, node_ablation_curve};
use degeneracy::basis::{Basis, BasisFormula, JacobianGramAccumulator, LibConfig, NodeBasis, fit_bases};
use degeneracy::data::ActivationSampler;
use degeneracy::diagnostics::{DiagnosticsConfig, diagnose};
use degeneracy::estimate::{NodeStatistics, Quadrature};
use degeneracy::graph::{EdgeConfig, EdgeNorm, InteractionGraph, LeidenConfig, compute_edges, find_modules};
use degeneracy::linalg::symmetric_eigen;
use degeneracy::llc::{LayerLoss, LlcConfig, LlcEstimator};
use degeneracy::nn::LayerKind;
use degeneracy::{Dataset, Error, Layer, Linear, Loss, Matrix, MatrixView, Network, Result, Sequential, Targets};
use proptest::prelude::*;

mod common;
use common::user_layers::{LayerNorm, Residual, pseudo_random};

// ---------------------------------------------------------------------------------------------
// The network and data.

fn linear(out: usize, inp: usize, seed: u64) -> Linear {
    Linear::new(pseudo_random(out, inp, seed, 0.8), Some(pseudo_random(1, out, seed + 50, 0.4).into_vec())).unwrap()
}

/// `Linear(3→4) → Residual(4, hidden 6) → LayerNorm(4) → Linear(4→3)`; node layers `layers.0`
/// … `layers.3`, `output`.
fn layers(seed: u64) -> (Linear, Residual, LayerNorm, Linear) {
    (linear(4, 3, seed), Residual::new(4, 6, seed + 10), LayerNorm { width: 4, eps: 1e-5 }, linear(3, 4, seed + 20))
}

fn network(seed: u64) -> Sequential {
    let (a, r, n, b) = layers(seed);
    Sequential::new(vec![Box::new(a), Box::new(r), Box::new(n), Box::new(b)]).unwrap()
}

fn inputs(n: usize, seed: u64) -> Matrix {
    pseudo_random(n, 3, seed + 99, 1.5)
}

fn fold(h: &Matrix, c: &[f64]) -> Matrix {
    let d = h.ncols();
    Matrix::from_fn(h.nrows(), d + 1, |i, j| if j < d { h[(i, j)] } else { c[i] })
}

fn forward(layer: &dyn Layer, x: &Matrix) -> Matrix {
    let mut y = Matrix::default();
    layer.forward(x.view(), &mut y).unwrap();
    y
}

/// The test's own folded section maps (`docs/math.md` §3.2), row by row on `[h, c]`:
/// affine: `[h Wᵀ + c b, c]`; homogeneous residual: `[c R(h/c), c]`; pass-through LayerNorm:
/// `[LN(h), c]`; the last affine layer drops the constant.
fn folded_section(k: usize, seed: u64, f: &Matrix) -> Matrix {
    let (a, r, n, b) = layers(seed);
    let d = f.ncols() - 1;
    let c: Vec<f64> = (0..f.nrows()).map(|i| f[(i, d)]).collect();
    let h = Matrix::from_fn(f.nrows(), d, |i, j| f[(i, j)]);
    let affine = |lin: &Linear| {
        Matrix::from_fn(f.nrows(), lin.weight().nrows(), |i, o| {
            (0..d).map(|j| lin.weight()[(o, j)] * h[(i, j)]).sum::<f64>() + c[i] * lin.bias().unwrap()[o]
        })
    };
    match k {
        0 => fold(&affine(&a), &c),
        1 => {
            let scaled = Matrix::from_fn(h.nrows(), d, |i, j| h[(i, j)] / c[i]);
            let y = forward(&r, &scaled);
            fold(&Matrix::from_fn(y.nrows(), d, |i, j| c[i] * y[(i, j)]), &c)
        }
        2 => fold(&forward(&n, &h), &c),
        3 => affine(&b),
        _ => unreachable!(),
    }
}

/// Per-sample Jacobians of a row map by five-point central differences.
fn fd_jacobian(map: &dyn Fn(&Matrix) -> Matrix, row: &[f64]) -> Matrix {
    let h = 1e-4;
    let at = |d: usize, delta: f64| {
        let mut x = Matrix::from_rows(&[row]).unwrap();
        x[(0, d)] += delta;
        map(&x)
    };
    let out = map(&Matrix::from_rows(&[row]).unwrap()).ncols();
    let mut jac = Matrix::zeros(out, row.len());
    for d in 0..row.len() {
        let (m2, m1, p1, p2) = (at(d, -2.0 * h), at(d, -h), at(d, h), at(d, 2.0 * h));
        for o in 0..out {
            jac[(o, d)] = (m2[(0, o)] - 8.0 * m1[(0, o)] + 8.0 * p1[(0, o)] - p2[(0, o)]) / (12.0 * h);
        }
    }
    jac
}

fn rel(a: &Matrix, b: &Matrix) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let d = a.as_slice().iter().zip(b.as_slice()).fold(0.0_f64, |m, (x, y)| m.max((x - y).abs()));
    d / b.max_abs().max(f64::MIN_POSITIVE)
}

/// The folded activations of every node layer, from the user's own forward passes.
fn reference_nodes(seed: u64, x: &Matrix) -> Vec<Matrix> {
    let (a, r, n, b) = layers(seed);
    let ones = vec![1.0; x.nrows()];
    let h1 = forward(&a, x);
    let h2 = forward(&r, &h1);
    let h3 = forward(&n, &h2);
    vec![fold(x, &ones), fold(&h1, &ones), fold(&h2, &ones), fold(&h3, &ones), forward(&b, &h3)]
}

fn second_moment(f: &Matrix) -> Matrix {
    f.transpose().matmul(f).unwrap().scaled_by(1.0 / f.nrows() as f64)
}

// ---------------------------------------------------------------------------------------------
// Grams against the dense reference.

#[test]
fn activation_grams_match_the_per_sample_reference() {
    let (net, x) = (network(1), inputs(300, 1));
    assert_eq!(net.node_names(), ["layers.0", "layers.1", "layers.2", "layers.3", "output"]);
    let nodes: Vec<usize> = (0..5).collect();
    let stats = NodeStatistics::collect(&net, &x, &nodes, None, 64).unwrap();
    for (k, f) in reference_nodes(1, &x).iter().enumerate() {
        let m = stats.activations(k).unwrap().finish().unwrap();
        let e = rel(&m.second_moment(), &second_moment(f));
        assert!(e < 1e-10, "node {k}: Gram {e:e}");
    }
}

#[test]
fn jacobian_grams_match_finite_differences_of_the_folded_sections() {
    let (net, x, seed) = (network(2), inputs(120, 2), 2);
    let nodes = reference_nodes(seed, &x);
    for (k, f) in nodes.iter().enumerate().take(4) {
        let section = net.section(k, k + 1).unwrap();
        let width_out = section.output().width;
        let c_next = pseudo_random(width_out, width_out, 500 + k as u64, 1.0);
        // Reference: M' = (1/N) Σ_x J_xᵀ C Cᵀ J_x.
        let cct = c_next.matmul(&c_next.transpose()).unwrap();
        let mut m_ref = Matrix::zeros(f.ncols(), f.ncols());
        for i in 0..f.nrows() {
            let j = fd_jacobian(&|r: &Matrix| folded_section(k, seed, r), f.row(i));
            let t = j.transpose().matmul(&cct).unwrap().matmul(&j).unwrap();
            m_ref.as_mut_slice().iter_mut().zip(t.as_slice()).for_each(|(a, b)| *a += b / f.nrows() as f64);
        }
        let mut acc = JacobianGramAccumulator::new(BasisFormula::Jacobian, &*section, c_next.ncols()).unwrap();
        acc.update(&*section, f.view(), &c_next, Quadrature::Gradient).unwrap();
        let (m, _) = acc.finish().unwrap();
        let e = rel(&m, &m_ref);
        assert!(e < 1e-10, "section {k} → {}: M' {e:e}", k + 1);
        assert_eq!(section.structure().is_some(), k == 0 || k == 3, "affine sections offer their structure");
    }
}

#[test]
fn integrated_gradients_scale_the_constant_too() {
    // Gauss–Legendre over α on the LayerNorm section (not homogeneous): g_i = Σ_α w_α J(αf)ᵀ C_i.
    let (net, x, seed) = (network(3), inputs(80, 3), 3);
    let f = &reference_nodes(seed, &x)[2];
    let section = net.section(2, 3).unwrap();
    let c_next = pseudo_random(5, 5, 7, 1.0);
    let rule = Quadrature::GaussLegendre(2);
    let mut m_ref = Matrix::zeros(5, 5);
    for i in 0..f.nrows() {
        let mut g = Matrix::zeros(5, 5); // column i: Σ_α w_α J(αf)ᵀ C[:, i]
        for p in rule.points() {
            let row: Vec<f64> = f.row(i).iter().map(|v| p.alpha * v).collect();
            let j = fd_jacobian(&|r: &Matrix| folded_section(2, seed, r), &row);
            let jc = j.transpose().matmul(&c_next).unwrap();
            g.as_mut_slice().iter_mut().zip(jc.as_slice()).for_each(|(a, b)| *a += p.weight * b);
        }
        let t = g.matmul(&g.transpose()).unwrap();
        m_ref.as_mut_slice().iter_mut().zip(t.as_slice()).for_each(|(a, b)| *a += b / f.nrows() as f64);
    }
    let mut acc = JacobianGramAccumulator::new(BasisFormula::Jacobian, &*section, 5).unwrap();
    acc.update(&*section, f.view(), &c_next, rule).unwrap();
    let e = rel(&acc.finish().unwrap().0, &m_ref);
    assert!(e < 1e-9, "M' with integrated gradients {e:e}");
}

// ---------------------------------------------------------------------------------------------
// The whole pipeline.

fn labelled(net: &Sequential, x: &Matrix) -> Dataset {
    let y = forward(net, x);
    let labels = (0..y.nrows())
        .map(|i| (0..y.ncols()).fold(0, |best, j| if y[(i, j)] > y[(i, best)] { j } else { best }))
        .collect();
    Dataset::new(x.clone(), Targets::Labels(labels)).unwrap()
}

fn rank(m: &Matrix, tol: f64) -> usize {
    let (v, _) = symmetric_eigen(m).unwrap();
    let top = v.iter().fold(0.0_f64, |a, b| a.max(b.abs()));
    v.iter().filter(|x| x.abs() > tol * top && x.abs() > 0.0).count()
}

#[test]
fn lib_edges_modules_diagnostics_and_llc_run_on_a_users_network() {
    let (net, x) = (network(4), inputs(256, 4));
    let bases = fit_bases(&net, &x, &LibConfig::default()).unwrap();
    assert_eq!(bases.len(), 5);
    for (b, node) in bases.iter().zip(net.node_layers()) {
        assert_eq!(b.orig_dim(), node.width, "{}", b.node);
        assert!(b.dim() >= 1 && b.dim() <= node.width);
    }
    let edges = compute_edges(&net, &x, &bases, &EdgeConfig::default()).unwrap();
    assert_eq!(edges.len(), 4);
    // The squared sum rule through the final linear section: column sums equal Λ (docs/math.md §4.2).
    let (e, lambda) = (&edges[3].e_hat, bases[3].lambda.as_ref().unwrap());
    for (j, &l) in lambda.iter().enumerate() {
        let col: f64 = (0..e.nrows()).map(|i| e[(i, j)]).sum();
        assert!((col - l).abs() <= 1e-9 * lambda[0], "column {j}: {col} vs Λ {l}");
    }
    let graph = InteractionGraph::build(&bases, &edges, &EdgeNorm::Sqrt, true).unwrap();
    let modules = find_modules(&graph, &LeidenConfig::default()).unwrap();
    assert_eq!(modules.membership.len(), bases.len());

    // Ranks against the dense reference; free directions only where a section is affine.
    let d = diagnose(&net, &x, &DiagnosticsConfig::default()).unwrap();
    let nodes = reference_nodes(4, &x);
    for (k, n) in d.nodes.iter().enumerate() {
        assert_eq!(n.activation.rank, rank(&second_moment(&nodes[k]), 1e-10), "{}", n.name);
        assert_eq!(n.free_directions.is_some(), k == 0 || k == 3, "{}", n.name);
    }
    assert_eq!((d.n_params, d.effective_params_bound), (None, None), "not counted: opaque sections");
    // The output's Jacobian w.r.t. layers.2 (the LayerNorm input) has rank ≤ 3 (LN removes the
    // mean direction, and there are 3 outputs).
    assert!(d.nodes[2].jacobian.rank <= 3);

    // The LLC of the training loss around the teacher (MSE against its own outputs).
    let data = Dataset::new(x.clone(), Targets::Values(forward(&net, &x))).unwrap();
    let model = LayerLoss::new(&net, Loss::Mse, data).unwrap();
    let w = model.params();
    assert_eq!(w.len(), 4 * 3 + 4 + 2 * 6 * 4 + 6 + 4 + 3 * 4 + 3);
    let config = LlcConfig::new(1e-4).localization(10.0).batch_size(64).num_chains(2).num_draws(200).seed(1);
    let report = LlcEstimator::new(config).unwrap().estimate(&model, &w).unwrap();
    assert!(report.llc_mean.is_finite() && report.llc_mean > 0.0 && report.llc_mean < w.len() as f64 / 2.0 * 1.5);
}

/// `y = R(x A⁻¹)`: the residual block reading a reparameterised node.
#[derive(Clone, Debug)]
struct Reparameterised {
    a_inv: Matrix,
    inner: Residual,
}

impl Layer for Reparameterised {
    fn in_dim(&self) -> usize {
        self.a_inv.nrows()
    }
    fn out_dim(&self) -> usize {
        self.inner.out_dim()
    }
    fn forward(&self, x: MatrixView<'_>, y: &mut Matrix) -> Result<()> {
        self.inner.forward(x.matmul(self.a_inv.view())?.view(), y)
    }
    fn backward(&self, x: MatrixView<'_>, gy: MatrixView<'_>, gx: &mut Matrix, gp: &mut [f64]) -> Result<()> {
        let mut g = Matrix::default();
        self.inner.backward(x.matmul(self.a_inv.view())?.view(), gy, &mut g, gp)?;
        *gx = g.matmul(&self.a_inv.transpose())?;
        Ok(())
    }
    fn n_params(&self) -> usize {
        self.inner.n_params()
    }
    fn kind(&self) -> LayerKind<'_> {
        LayerKind::Homogeneous
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// An invertible map A at `layers.1` (the first linear layer writes `h A`, the residual block
    /// reads `h' A⁻¹`) leaves every Λ and every edge unchanged [P1 §6].
    #[test]
    fn lib_is_invariant_to_a_reparameterised_node(entries in proptest::collection::vec(-1.0..1.0_f64, 16)) {
        let a = Matrix::from_fn(4, 4, |i, j| f64::from(u8::from(i == j)) + 0.25 * entries[i * 4 + j]);
        let a_inv = inverse(&a);
        let (l0, r, n, l1) = layers(5);
        let w0 = a.transpose().matmul(l0.weight()).unwrap();
        let b0 = Matrix::from_rows(&[l0.bias().unwrap()]).unwrap().matmul(&a).unwrap().into_vec();
        let moved = Sequential::new(vec![
            Box::new(Linear::new(w0, Some(b0)).unwrap()),
            Box::new(Reparameterised { a_inv, inner: r }),
            Box::new(n),
            Box::new(l1),
        ])
        .unwrap();
        let (net, x) = (network(5), inputs(200, 5));
        let config = LibConfig::default();
        let (b1, b2) = (fit_bases(&net, &x, &config).unwrap(), fit_bases(&moved, &x, &config).unwrap());
        let (e1, e2) = (
            compute_edges(&net, &x, &b1, &EdgeConfig::default()).unwrap(),
            compute_edges(&moved, &x, &b2, &EdgeConfig::default()).unwrap(),
        );
        for (p, q) in b1.iter().zip(&b2) {
            let (lp, lq) = (p.lambda.as_deref().unwrap_or(&[]), q.lambda.as_deref().unwrap_or(&[]));
            prop_assert_eq!(lp.len(), lq.len(), "{}", p.node);
            let top = lp.iter().fold(0.0_f64, |m, v| m.max(*v));
            for (u, v) in lp.iter().zip(lq) {
                prop_assert!((u - v).abs() <= 1e-8 * top, "{}: Λ {} vs {}", p.node, u, v);
            }
        }
        for (p, q) in e1.iter().zip(&e2) {
            prop_assert!(rel(&q.e_hat, &p.e_hat) < 1e-8, "{} → {}", p.in_node, p.out_node);
        }
    }
}

/// Gauss–Jordan inverse of a small well-conditioned matrix.
fn inverse(a: &Matrix) -> Matrix {
    let n = a.nrows();
    let mut m = Matrix::from_fn(n, 2 * n, |i, j| if j < n { a[(i, j)] } else { f64::from(u8::from(j - n == i)) });
    for col in 0..n {
        let pivot = (col..n).max_by(|&p, &q| m[(p, col)].abs().total_cmp(&m[(q, col)].abs())).unwrap();
        for j in 0..2 * n {
            let t = m[(col, j)];
            m[(col, j)] = m[(pivot, j)];
            m[(pivot, j)] = t;
        }
        let p = m[(col, col)];
        for j in 0..2 * n {
            m[(col, j)] /= p;
        }
        for i in (0..n).filter(|&i| i != col) {
            let f = m[(i, col)];
            for j in 0..2 * n {
                m[(i, j)] -= f * m[(col, j)];
            }
        }
    }
    Matrix::from_fn(n, n, |i, j| m[(i, j + n)])
}

// ---------------------------------------------------------------------------------------------
// Users' bases.

/// A rotation of a node's units (the constant coordinate, last, kept apart).
fn rotation(width: usize, seed: u64) -> Matrix {
    let units = width - 1;
    // Gram–Schmidt on a pseudo-random matrix.
    let r = pseudo_random(units, units, seed, 1.0);
    let mut q: Vec<Vec<f64>> = Vec::new();
    for j in 0..units {
        let mut v: Vec<f64> = (0..units).map(|i| r[(i, j)] + f64::from(u8::from(i == j))).collect();
        for u in &q {
            let d: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= d * b);
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        q.push(v.iter().map(|a| a / norm).collect());
    }
    Matrix::from_fn(width, width, |i, j| match (i < units, j < units) {
        (true, true) => q[j][i],
        (false, false) => 1.0,
        _ => 0.0,
    })
}

#[test]
fn users_bases_flow_through_edges_graph_modules_and_ablations() {
    let (net, x) = (network(6), inputs(256, 6));
    let data = labelled(&net, &x);
    let lib = fit_bases(&net, &x, &LibConfig::default()).unwrap();
    let lib_edges = compute_edges(&net, &x, &lib, &EdgeConfig::default()).unwrap();

    // The LIB's own C as a user's basis: the same edges, exactly.
    let given: Vec<NodeBasis> = lib
        .iter()
        .map(|b| {
            let mut n = NodeBasis::new(&b.node, b.c().clone(), b.c_pinv().clone()).unwrap();
            if let Some(l) = &b.lambda {
                n = n.with_lambda(l.clone()).unwrap();
            }
            n.with_constant_direction(b.has_constant_direction)
        })
        .collect();
    assert_eq!(compute_edges(&net, &x, &given, &EdgeConfig::default()).unwrap(), lib_edges);

    // Rotations of every hidden node's units, the identity at the output.
    let rotated: Vec<NodeBasis> = net
        .node_layers()
        .iter()
        .enumerate()
        .map(|(k, node)| {
            let c = if node.constant { rotation(node.width, 40 + k as u64) } else { Matrix::identity(node.width) };
            NodeBasis::new(&node.name, c.clone(), c.transpose()).unwrap()
        })
        .collect();
    let edges = compute_edges(&net, &x, &rotated, &EdgeConfig::default()).unwrap();
    let graph = InteractionGraph::build(&rotated, &edges, &EdgeNorm::Sqrt, true).unwrap();
    let modules = find_modules(&graph, &LeidenConfig::default()).unwrap();
    assert_eq!(modules.layers, net.node_names());

    let base = evaluate(&net, &data, Eval::Accuracy).unwrap();
    assert_eq!(base, 1.0, "labelled by the network itself");
    for k in 0..4 {
        // Node ablation: everything kept is the network; nothing kept is not.
        let curve =
            node_ablation_curve(&net, &data, k, &rotated[k], &[0, rotated[k].dim()], Eval::CrossEntropy).unwrap();
        let full = evaluate(&net, &data, Eval::CrossEntropy).unwrap();
        assert!((curve.scores[1].1 - full).abs() <= 1e-12 * full.max(1.0), "node {k}");
        assert!(curve.scores[0].1 > full, "node {k}: ablating everything costs");
        // Edge ablation: keeping every edge is the network; the mask through a rotation (no
        // truncation) with all edges kept reproduces the unablated score.
        let abl = EdgeAblation::new(&net, &data, &rotated[k], &rotated[k + 1], &edges[k], Eval::CrossEntropy).unwrap();
        let all = abl.score(abl.total()).unwrap();
        assert!((all - full).abs() <= 1e-12 * full.max(1.0), "edges {k}");
        let bisect = abl.bisect(0.05, Default::default()).unwrap();
        assert!(bisect.n_edges_required <= abl.total());
    }
}

// ---------------------------------------------------------------------------------------------
// Users' errors.

#[derive(Debug, PartialEq)]
struct TooFewRows(usize);

impl std::fmt::Display for TooFewRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "this layer needs batches of at least 16 rows, got {}", self.0)
    }
}

impl std::error::Error for TooFewRows {}

/// The identity, refusing batches of fewer than 16 rows with its own error.
#[derive(Clone, Debug)]
struct Fragile(usize);

impl Layer for Fragile {
    fn in_dim(&self) -> usize {
        self.0
    }
    fn out_dim(&self) -> usize {
        self.0
    }
    fn forward(&self, x: MatrixView<'_>, y: &mut Matrix) -> Result<()> {
        if x.nrows() < 16 {
            return Err(Error::user(TooFewRows(x.nrows())));
        }
        *y = x.to_owned();
        Ok(())
    }
    fn backward(&self, x: MatrixView<'_>, gy: MatrixView<'_>, gx: &mut Matrix, _: &mut [f64]) -> Result<()> {
        let mut y = Matrix::default();
        self.forward(x, &mut y)?;
        *gx = gy.to_owned();
        Ok(())
    }
}

/// A sampler over rows that fails on its second pass with its own error.
struct Flaky(Matrix, std::sync::atomic::AtomicUsize);

impl ActivationSampler for Flaky {
    fn n_samples(&self) -> usize {
        self.0.nrows()
    }
    fn dim(&self) -> usize {
        self.0.ncols()
    }
    fn for_each_chunk(&self, visit: &mut dyn FnMut(usize, MatrixView<'_>) -> Result<()>) -> Result<()> {
        if self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 {
            return Err(Error::user(TooFewRows(0)));
        }
        visit(0, self.0.view())
    }
}

#[test]
fn users_errors_come_back_and_downcast() {
    let net =
        Sequential::new(vec![Box::new(linear(4, 3, 1)), Box::new(Fragile(4)), Box::new(linear(2, 4, 2))]).unwrap();
    let x = inputs(64, 7);
    let small = LibConfig { batch_size: 8, ..LibConfig::default() };
    let err = fit_bases(&net, &x, &small).unwrap_err();
    assert_eq!(err.downcast_user::<TooFewRows>(), Some(&TooFewRows(8)), "{err}");
    assert!(fit_bases(&net, &x, &LibConfig { batch_size: 32, ..LibConfig::default() }).is_ok());

    let data = Dataset::new(x.clone(), Targets::Values(forward(&net, &x))).unwrap();
    let model = LayerLoss::new(&net, Loss::Mse, data).unwrap(); // the full batch passes
    let config = LlcConfig::new(1e-4).batch_size(8).num_chains(1).num_draws(10).seed(0);
    let err = LlcEstimator::new(config).unwrap().estimate(&model, &model.params()).unwrap_err();
    assert_eq!(err.downcast_user::<TooFewRows>(), Some(&TooFewRows(8)), "{err}");

    // A sampler's own error, from the second pass of a generic (1-alpha)^2 build.
    let flaky = Flaky(x.clone(), Default::default());
    let config = LibConfig { basis_formula: BasisFormula::OneMinusAlphaSquared, ..LibConfig::default() };
    let err = fit_bases(&network(8), &flaky, &config).unwrap_err();
    assert!(err.downcast_user::<TooFewRows>().is_some(), "{err}");
}
