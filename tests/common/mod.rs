//! Shared helpers for the integration tests.
#![allow(dead_code)]

use degeneracy::{Layer, Matrix};
use std::path::PathBuf;

/// The reference fixtures: `$DEGENERACY_FIXTURES`, else `../shared/fixtures` beside the crate.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("DEGENERACY_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"));
    assert!(dir.is_dir(), "fixtures not found at {} (set DEGENERACY_FIXTURES)", dir.display());
    dir
}

/// `max |a − b| / max |b|`.
pub fn rel_max_diff(a: &Matrix, b: &Matrix) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let diff = a.as_slice().iter().zip(b.as_slice()).fold(0.0_f64, |m, (x, y)| m.max((x - y).abs()));
    diff / b.max_abs().max(f64::MIN_POSITIVE)
}

/// Largest relative error (w.r.t. the largest gradient entry) between a layer's analytic
/// VJP / parameter gradient and five-point central finite differences of `Σ grad_y ⊙ layer(x)`
/// (truncation O(h⁴) ≈ 1e-16, rounding ≈ ε|f|/h ≈ 1e-12 at h = 1e-4).
pub fn finite_difference_error(layer: &mut dyn Layer, x: &Matrix, grad_y: &Matrix) -> (f64, f64) {
    let h = 1e-4;
    let objective = |layer: &dyn Layer, x: &Matrix| {
        let mut y = Matrix::default();
        layer.forward(x.view(), &mut y).unwrap();
        y.as_slice().iter().zip(grad_y.as_slice()).map(|(a, b)| a * b).sum::<f64>()
    };
    let mut gx = Matrix::default();
    let mut gp = vec![0.0; layer.n_params()];
    layer.backward(x.view(), grad_y.view(), &mut gx, &mut gp).unwrap();

    let stencil = |f: &mut dyn FnMut(f64) -> f64| (f(-2.0 * h) - 8.0 * f(-h) + 8.0 * f(h) - f(2.0 * h)) / (12.0 * h);
    let mut fd_x = Matrix::zeros(x.nrows(), x.ncols());
    for k in 0..x.as_slice().len() {
        fd_x.as_mut_slice()[k] = stencil(&mut |d| {
            let mut xd = x.clone();
            xd.as_mut_slice()[k] += d;
            objective(layer, &xd)
        });
    }
    let mut p = vec![0.0; layer.n_params()];
    layer.copy_params(&mut p).unwrap();
    let mut fd_p = vec![0.0; p.len()];
    for k in 0..p.len() {
        let orig = p[k];
        fd_p[k] = stencil(&mut |d| {
            let mut pd = p.clone();
            pd[k] = orig + d;
            layer.set_params(&pd).unwrap();
            objective(layer, x)
        });
    }
    layer.set_params(&p).unwrap();
    let rel = |a: &[f64], b: &[f64]| {
        let scale = b.iter().fold(1e-3_f64, |m, v| m.max(v.abs()));
        a.iter().zip(b).fold(0.0_f64, |m, (x, y)| m.max((x - y).abs())) / scale
    };
    (rel(gx.as_slice(), fd_x.as_slice()), rel(&gp, &fd_p))
}
