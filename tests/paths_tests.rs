//! The generic path (sections' linearisations and vector–Jacobian products) against the closed
//! forms (the Jacobian Gram of an affine + elementwise section, the squared edges' product form)
//! on the fixture MLPs: the generic path is the definition, the closed forms must reproduce it.

mod common;

use common::{fixture_config, fixtures};
use degeneracy::basis::{Basis, JacobianPath, LibConfig, NodeBasis, fit_bases};
use degeneracy::graph::{EdgeConfig, EdgeFormula, compute_edges};
use degeneracy::{Activation, Matrix, Mlp, io};

fn load(case: &str) -> (Mlp, Matrix) {
    let dir = fixtures().join(case);
    (
        io::load_mlp(dir.join("model.safetensors"), Activation::Relu).unwrap(),
        io::read_matrix(dir.join("inputs.npy")).unwrap(),
    )
}

/// `max |a − b| / max |b|` over equally long slices.
fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0_f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
    a.iter().zip(b).fold(0.0_f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// `C[:, good] C⁺[good, :]` over the well-determined directions: Λ above `1e-8 ·` max Λ with a
/// relative gap above `1e-6` to its neighbours (the fixture READMEs' "good" columns; the others
/// are set by rounding-level entries of M and rotate with the summation order), all directions
/// for a basis without Λ.
fn projector(b: &NodeBasis, lambda: Option<&[f64]>) -> Matrix {
    let good: Vec<usize> = match lambda {
        None => (0..b.dim()).collect(),
        Some(l) => {
            let top = l.iter().fold(0.0_f64, |m, v| m.max(*v));
            let gap = |j: usize| {
                let near = |k: usize| (l[j] - l[k]).abs() / l[j].abs().max(l[k].abs());
                (0..l.len()).filter(|&k| k != j).map(near).fold(f64::INFINITY, f64::min)
            };
            (0..l.len()).filter(|&j| l[j] > 1e-8 * top && (j == 0 || gap(j) > 1e-6)).collect()
        }
    };
    let (c, c_pinv) = (b.c(), b.c_pinv());
    Matrix::from_fn(c.nrows(), c.nrows(), |i, j| good.iter().map(|&t| c[(i, t)] * c_pinv[(t, j)]).sum())
}

/// Worst relative differences (Λ, C C⁺ over the frame's condition number, edges) between the
/// two paths on a fixture run.
fn compare(run: &str, formula: EdgeFormula) -> (f64, f64, f64) {
    let (mlp, x) = load(run.split('/').next().unwrap());
    let base = fixture_config(run);
    let fast = fit_bases(&mlp, &x, &base).unwrap();
    let generic = fit_bases(&mlp, &x, &LibConfig { jacobian_path: JacobianPath::Generic, ..base.clone() }).unwrap();
    let (mut lambda, mut proj) = (0.0_f64, 0.0_f64);
    for (a, b) in fast.iter().zip(&generic) {
        // Directions whose Λ is rounding noise (below 1e-10 · max Λ; block_diag's threshold
        // 1e-15 keeps one at layers.3, 1.7e-14 in rib, varying ~80 % between summation
        // orders as its README states) may be kept by one path only; every other agrees.
        let signal = |b: &NodeBasis| match &b.lambda {
            Some(l) => l.iter().filter(|&&v| v >= 1e-10 * l.iter().fold(0.0_f64, |m, x| m.max(*x))).count(),
            None => b.dim(),
        };
        assert_eq!(signal(a), signal(b), "{run} {}: kept dimensions above the noise", a.node);
        if let (Some(la), Some(lb)) = (&a.lambda, &b.lambda) {
            let m = signal(a);
            lambda = lambda.max(rel(&lb[..m], &la[..m]));
        }
        let l = a.lambda.as_deref();
        // M' differs between the paths by rounding; the whitening R = W D^{-1/2} amplifies it in
        // C C⁺ by the frame's condition number √(D_max / D_min) (digits' pixels: D from 1.7e-6).
        let d = rel(projector(b, l).as_slice(), projector(a, l).as_slice());
        let kept = &a.gram_kept;
        let condition = if kept.is_empty() {
            1.0
        } else {
            (kept.iter().fold(0.0_f64, |m, v| m.max(*v)) / kept.iter().fold(f64::MAX, |m, v| m.min(*v))).sqrt()
        };
        proj = proj.max(d / condition);
    }
    let edge_config = EdgeConfig { formula, quadrature: base.quadrature, ..EdgeConfig::default() };
    let e_fast = compute_edges(&mlp, &x, &fast, &edge_config).unwrap();
    let e_generic = compute_edges(&mlp, &x, &fast, &EdgeConfig { path: JacobianPath::Generic, ..edge_config }).unwrap();
    let edges =
        e_fast.iter().zip(&e_generic).fold(0.0_f64, |m, (a, b)| m.max(rel(b.e_hat.as_slice(), a.e_hat.as_slice())));
    (lambda, proj, edges)
}

#[test]
fn generic_path_reproduces_the_closed_forms_on_digits() {
    let (lambda, proj, edges) = compare("digits_mlp/jacobian_squared", EdgeFormula::Squared);
    eprintln!("digits jacobian/squared: Λ {lambda:e}, C C⁺ / cond {proj:e}, edges {edges:e}");
    assert!(lambda < 1e-12 && proj < 1e-12 && edges < 1e-12, "Λ {lambda:e}, C C⁺ {proj:e}, edges {edges:e}");
}

#[test]
fn generic_path_reproduces_the_closed_forms_on_digits_functional() {
    let (lambda, proj, edges) = compare("digits_mlp/alpha2_functional", EdgeFormula::Functional);
    eprintln!("digits (1-alpha)^2/functional: Λ {lambda:e}, C C⁺ {proj:e}, edges {edges:e}");
    assert!(lambda < 1e-12 && proj < 1e-12 && edges < 1e-12, "Λ {lambda:e}, C C⁺ {proj:e}, edges {edges:e}");
}

#[test]
fn generic_path_reproduces_the_closed_forms_on_block_diag() {
    let (lambda, proj, edges) = compare("block_diag/rib", EdgeFormula::Squared);
    eprintln!("block_diag rib: Λ {lambda:e}, C C⁺ {proj:e}, edges {edges:e}");
    assert!(lambda < 1e-12 && proj < 1e-12 && edges < 1e-12, "Λ {lambda:e}, C C⁺ {proj:e}, edges {edges:e}");
}

/// A wide input (300 → 12 → 4, 600 rows): the closed form's `M'` has rank 13 against a
/// 300-dimensional frame, so its eigenpairs come from a 13 × 13 problem (`docs/math.md` §3.5);
/// the generic path decomposes the dense 300 × 300 `M`.
#[test]
fn low_rank_whitened_eigen_equals_the_dense_one() {
    let mlp = Mlp::init(&[300, 12, 4], Activation::Relu, true, 3).unwrap();
    let x = Matrix::from_fn(600, 300, |i, j| {
        (((i * 7919 + j * 104_729) % 1013) as f64 / 1013.0 - 0.5) * (1.0 + (j % 7) as f64)
    });
    let base = LibConfig::default();
    let fast = fit_bases(&mlp, &x, &base).unwrap();
    let generic = fit_bases(&mlp, &x, &LibConfig { jacobian_path: JacobianPath::Generic, ..base }).unwrap();
    for (a, b) in fast.iter().zip(&generic) {
        assert_eq!(a.dim(), b.dim(), "{}", a.node);
        if let (Some(la), Some(lb)) = (&a.lambda, &b.lambda) {
            assert!(rel(lb, la) < 1e-12, "{}: Λ {:e}", a.node, rel(lb, la));
        }
        let l = a.lambda.as_deref();
        let d = rel(projector(b, l).as_slice(), projector(a, l).as_slice());
        assert!(d < 1e-9, "{}: C C⁺ {d:e}", a.node);
    }
    assert!(fast[0].dim() <= 14, "at most the rank of M' (13) plus the constant: {}", fast[0].dim());
}
