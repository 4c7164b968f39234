//! Shared helpers for the integration tests.
#![allow(dead_code)]

pub mod user_layers;

use degeneracy::basis::{BasisFormula, JacobianPath, LibConfig};
use degeneracy::estimate::Quadrature;
use degeneracy::llc::MlpLoss;
use degeneracy::{Activation, Dataset, Layer, Loss, Matrix, Section, Targets, io};
use std::path::PathBuf;

/// The reference fixtures: `$DEGENERACY_FIXTURES`, else `../shared/fixtures` beside the crate.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("DEGENERACY_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"));
    assert!(dir.is_dir(), "fixtures not found at {} (set DEGENERACY_FIXTURES)", dir.display());
    dir
}

/// The LibConfig of a fixture run (`digits_mlp/jacobian_squared`...).
pub fn fixture_config(run: &str) -> LibConfig {
    let path = fixtures().join(run.split('/').next().unwrap()).join("config.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let c = &v["runs"][run.split('/').nth(1).unwrap()]["rib_build_config"];
    LibConfig {
        basis_formula: BasisFormula::from_name(c["basis_formula"].as_str().unwrap()).unwrap(),
        center: c["center"].as_bool().unwrap(),
        truncation_threshold: c["truncation_threshold"].as_f64().unwrap(),
        rotate_final_node_layer: c["rotate_final_node_layer"].as_bool().unwrap(),
        quadrature: Quadrature::from_name(
            c["integration_method"].as_str().unwrap(),
            c["n_intervals"].as_u64().unwrap() as usize,
        )
        .unwrap(),
        batch_size: 1024,
        node_layers: Some(
            c["node_layers"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect(),
        ),
        jacobian_path: JacobianPath::Auto,
    }
}

/// The `llc_dln` fixture's deep linear network as an MSE loss model, and its parameters `w*`.
pub fn dln_model() -> (MlpLoss, Vec<f64>) {
    let dir = fixtures().join("llc_dln");
    let mlp =
        io::load_mlp_with(dir.join("model.safetensors"), Activation::Identity, &io::LoadOptions::bias_free()).unwrap();
    let x = io::read_matrix(dir.join("inputs.npy")).unwrap();
    let y = io::read_matrix(dir.join("targets.npy")).unwrap();
    let model = MlpLoss::new(&mlp, Loss::Mse, Dataset::new(x, Targets::Values(y)).unwrap()).unwrap();
    let w = model.params();
    (model, w)
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

/// Largest relative error between a section's batched VJP (two cotangents at once, through
/// `Section::linearize`) and five-point central finite differences of its forward pass.
pub fn section_fd_error(section: &dyn Section, x: &Matrix, grad_y: &Matrix) -> f64 {
    let h = 1e-4;
    let objective = |x: &Matrix, g: &Matrix| {
        let mut y = Matrix::default();
        section.forward(x.view(), &mut y).unwrap();
        y.as_slice().iter().zip(g.as_slice()).map(|(a, b)| a * b).sum::<f64>()
    };
    // Two cotangent blocks: grad_y and −2·grad_y; block 1 must be −2 × block 0.
    let mut stacked = grad_y.as_slice().to_vec();
    stacked.extend(grad_y.as_slice().iter().map(|v| -2.0 * v));
    let cot = Matrix::from_vec(2 * grad_y.nrows(), grad_y.ncols(), stacked).unwrap();
    let mut gx = Matrix::default();
    section.linearize(x.view()).unwrap().vjp(cot.view(), &mut gx).unwrap();
    assert_eq!(gx.shape(), (2 * x.nrows(), x.ncols()));
    let stencil = |f: &mut dyn FnMut(f64) -> f64| (f(-2.0 * h) - 8.0 * f(-h) + 8.0 * f(h) - f(2.0 * h)) / (12.0 * h);
    let mut fd = vec![0.0; x.as_slice().len()];
    for (k, v) in fd.iter_mut().enumerate() {
        *v = stencil(&mut |d| {
            let mut xd = x.clone();
            xd.as_mut_slice()[k] += d;
            objective(&xd, grad_y)
        });
    }
    let scale = fd.iter().fold(1e-3_f64, |m, v| m.max(v.abs()));
    let n = fd.len();
    let first = gx.as_slice()[..n].iter().zip(&fd).fold(0.0_f64, |m, (a, b)| m.max((a - b).abs()));
    let second = gx.as_slice()[n..].iter().zip(&fd).fold(0.0_f64, |m, (a, b)| m.max((a + 2.0 * b).abs()));
    first.max(second) / scale
}

/// The folded activations of node `k` of `net` for inputs `x`.
pub fn node_acts(net: &dyn degeneracy::Network, x: &Matrix, k: usize) -> Matrix {
    let mut acts = vec![Matrix::default()];
    net.forward_nodes(x.view(), &[k], &mut acts).unwrap();
    acts.pop().unwrap()
}
