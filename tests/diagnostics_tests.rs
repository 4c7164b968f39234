//! Degeneracy diagnostics on planted cases with exact answers, against an independent dense
//! computation on the fixture models, and the deep linear network against Aoyagi's value.

mod common;

use common::fixtures;
use degeneracy::diagnostics::{DegeneracyStatistics, DiagnosticsConfig, diagnose, diagnose_from};
use degeneracy::linalg::symmetric_eigen;
use degeneracy::nn::ForwardTrace;
use degeneracy::{Activation, Layer, Linear, Matrix, Mlp, io};
use std::collections::HashMap;

fn inputs(n: usize, d: usize, seed: u64) -> Matrix {
    Matrix::from_fn(n, d, |i, j| {
        let h = (i as u64 * 6_364_136_223_846_793_005 + j as u64 * 1_442_695_040_888_963_407 + seed * 7919)
            .wrapping_mul(2_862_933_555_777_941_757);
        (h >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    })
}

fn dense_rank(m: &Matrix, tol: f64) -> usize {
    let (v, _) = symmetric_eigen(m).unwrap();
    let top = v.iter().fold(0.0_f64, |a, b| a.max(b.abs()));
    v.iter().filter(|x| x.abs() > tol * top && x.abs() > 0.0).count()
}

#[test]
fn inputs_in_a_subspace_have_that_rank() {
    // x = z A with z ∈ R^3: the folded activations [x, 1] span 3 + 1 dimensions of 7.
    let (z, a) = (inputs(200, 3, 1), inputs(3, 6, 2));
    let x = z.matmul(&a).unwrap();
    let mlp = Mlp::init(&[6, 5, 2], Activation::Tanh, true, 3).unwrap();
    let d = diagnose(&mlp, &x, &DiagnosticsConfig::default()).unwrap();
    assert_eq!(d.nodes[0].activation.rank, 4);
    assert!(d.nodes[0].activation.gap() > 1e6, "a clean cut: {}", d.nodes[0].activation.gap());
    // (a): the 5 × 7 first-layer weights have 5 · (7 − 4) free directions.
    assert_eq!(d.nodes[0].free_directions.as_ref().unwrap().activation, 15);
    assert_eq!(d.nodes[0].relu, None);
}

/// A ReLU layer with planted units: 0 dead, 1 always on, 2 and 3 identical, 4 = 2·unit 2
/// (same firing set, proportional activation), 5 generic.
fn planted_relu_net() -> (Mlp, Matrix) {
    let x = inputs(300, 3, 7);
    let w1 = Matrix::from_rows(&[
        [1.0, 0.0, 0.0],
        [0.1, 0.2, 0.0],
        [0.5, -1.0, 0.3],
        [0.5, -1.0, 0.3],
        [1.0, -2.0, 0.6],
        [-0.7, 0.2, 1.0],
    ])
    .unwrap();
    let b1 = vec![-10.0, 5.0, 0.05, 0.05, 0.1, 0.0];
    let w2 = Matrix::from_fn(2, 6, |i, j| ((i * 6 + j) as f64 * 0.37).sin());
    let mlp = Mlp::new(
        vec![Linear::new(w1, Some(b1)).unwrap(), Linear::new(w2, Some(vec![0.1, -0.2])).unwrap()],
        Activation::Relu,
    )
    .unwrap();
    (mlp, x)
}

#[test]
fn planted_relu_units_are_found_and_counted() {
    let (mlp, x) = planted_relu_net();
    let d = diagnose(&mlp, &x, &DiagnosticsConfig::default()).unwrap();
    let relu = d.nodes[1].relu.as_ref().unwrap();
    assert_eq!(relu.dead, [0]);
    assert_eq!(relu.always_on, [1]);
    assert_eq!(relu.sync_groups, [vec![2, 3, 4]]);
    // Activations at layers.1: unit 0 is 0, units 2, 3, 4 span one dimension, and unit 1 is
    // affine in x on every sample: [h, 1] has rank 1 (units 2–4) + 1 (unit 1, with the
    // constant it is a new direction) + 1 (unit 5) + 1 (constant) = 4 of 7.
    assert_eq!(d.nodes[1].activation.rank, 4);
    assert_eq!(d.nodes[1].free_directions.as_ref().unwrap().activation, 2 * (7 - 4));
    // (c): one group of 3 → 3·2 = 6; one always-on unit → 0.
    assert_eq!(d.nodes[1].free_directions.as_ref().unwrap().synchronised, 6);
    // The dead unit's pre-activation gets no gradient: the Jacobian Gram w.r.t. z_0 loses it.
    assert!(d.nodes[0].preactivation_jacobian.as_ref().unwrap().rank <= 5);
}

#[test]
fn shards_merge_to_the_same_diagnosis() {
    let (mlp, x) = planted_relu_net();
    let whole = DegeneracyStatistics::collect(&mlp, &x, 1024).unwrap();
    let mut merged = DegeneracyStatistics::new(&mlp).unwrap();
    for (a, b) in [(0, 70), (70, 71), (71, 300)] {
        let shard = DegeneracyStatistics::collect(&mlp, &x.rows(a..b).to_owned(), 32).unwrap();
        let json = serde_json::to_string(&shard).unwrap();
        merged.merge(&serde_json::from_str(&json).unwrap()).unwrap();
    }
    let (dw, dm) = (diagnose_from(&mlp, &whole, 1e-10).unwrap(), diagnose_from(&mlp, &merged, 1e-10).unwrap());
    for (a, b) in dw.nodes.iter().zip(&dm.nodes) {
        assert_eq!((a.activation.rank, a.jacobian.rank, &a.relu), (b.activation.rank, b.jacobian.rank, &b.relu));
        assert_eq!(a.free_directions, b.free_directions);
    }
}

#[test]
fn deep_linear_network_counts_against_aoyagi() {
    // llc_dln: 10-10-10-10, no bias, W0 of rank 4, W1 and W2 invertible; λ = 44 (Aoyagi).
    let dir = fixtures().join("llc_dln");
    let mlp =
        io::load_mlp_with(dir.join("model.safetensors"), Activation::Identity, &io::LoadOptions::bias_free()).unwrap();
    let x = io::read_matrix(dir.join("inputs.npy")).unwrap();
    let d = diagnose(&mlp, &x, &DiagnosticsConfig::default()).unwrap();
    // Activation ranks (with the constant): x full (10 + 1), h1 = W0 x and h2 rank 4 (+1).
    let ranks: Vec<usize> = d.nodes.iter().map(|n| n.activation.rank).collect();
    assert_eq!(ranks, [11, 5, 5]);
    // Jacobians: W2 W1 and W2 are invertible, the output is the identity → full rank.
    assert!(d.nodes.iter().all(|n| n.preactivation_jacobian.as_ref().unwrap().rank == 10));
    // (a) for W1 and W2: 10 · (10 − 4) each (no bias: the constant is not a parameter input).
    let a: Vec<usize> = d.nodes.iter().map(|n| n.free_directions.as_ref().unwrap().activation).collect();
    assert_eq!(a, [0, 60, 60]);
    assert_eq!(d.n_params, Some(300));
    assert_eq!(d.free_directions_total, Some(120));
    assert_eq!(d.effective_params_bound, Some(300 - 120));
    // The count misses the GL(10) reparameterisations at the hidden nodes, so it bounds the
    // effective parameter count from above: 2λ = 88 ≤ 180 (the bound is not clamped: an
    // over-count would show as a value below 88, even below 0).
    assert!(d.effective_params_bound.is_some_and(|b| 88 <= b));
}

/// Independent dense computation: activations, per-sample Jacobians by explicit products of
/// weight matrices and ReLU masks, firing patterns grouped by a hash map of full columns.
#[test]
fn fixture_models_match_a_dense_computation() {
    for case in ["digits_mlp", "block_diag"] {
        let dir = fixtures().join(case);
        let mlp = io::load_mlp(dir.join("model.safetensors"), Activation::Relu).unwrap();
        let x = io::read_matrix(dir.join("inputs.npy")).unwrap();
        let tol = 1e-10;
        let d = diagnose(&mlp, &x, &DiagnosticsConfig { rank_tol: tol, batch_size: 500 }).unwrap();
        let mut trace = ForwardTrace::default();
        mlp.trace(x.view(), &mut trace).unwrap();
        let n = x.nrows();
        for k in 0..mlp.n_layers() {
            let h = Matrix::from_fn(n, mlp.widths()[k], |i, j| trace.node(k)[(i, j)]);
            let f = Matrix::from_fn(n, h.ncols() + 1, |i, j| if j < h.ncols() { h[(i, j)] } else { 1.0 });
            let gram = Matrix::from_fn(f.ncols(), f.ncols(), |a, b| {
                (0..n).map(|i| f[(i, a)] * f[(i, b)]).sum::<f64>() / n as f64
            });
            assert_eq!(d.nodes[k].activation.rank, dense_rank(&gram, tol), "{case} layers.{k} activation rank");

            // J(x) = W_L ⋯ diag(σ'(z_k)) W_k … as explicit matrices, summed JᵀJ.
            let mut jtj = Matrix::zeros(h.ncols(), h.ncols());
            for i in 0..n {
                let mut j = Matrix::identity(mlp.out_dim());
                for l in (k..mlp.n_layers()).rev() {
                    let w = mlp.linears()[l].weight();
                    let masked = if l + 1 < mlp.n_layers() {
                        Matrix::from_fn(w.nrows(), w.ncols(), |a, b| {
                            if trace.preactivation(l)[(i, a)] > 0.0 { w[(a, b)] } else { 0.0 }
                        })
                    } else {
                        w.clone()
                    };
                    j = j.matmul(&masked).unwrap();
                }
                let t = j.transpose().matmul(&j).unwrap();
                for (a, b) in jtj.as_mut_slice().iter_mut().zip(t.as_slice()) {
                    *a += b / n as f64;
                }
            }
            assert_eq!(d.nodes[k].jacobian.rank, dense_rank(&jtj, tol), "{case} layers.{k} Jacobian rank");
            // The spectrum too, not only its count (the Gram is formed as W_hᵀ K W_h here).
            let (mut dense, _) = symmetric_eigen(&jtj).unwrap();
            dense.iter_mut().for_each(|v| *v = v.abs());
            dense.sort_by(|a, b| b.total_cmp(a));
            let spectrum = &d.nodes[k].jacobian.spectrum;
            assert_eq!(spectrum.len(), dense.len(), "{case} layers.{k} Jacobian spectrum length");
            let err = spectrum.iter().zip(&dense).fold(0.0f64, |m, (a, b)| m.max((a - b).abs())) / dense[0];
            assert!(err < 1e-12, "{case} layers.{k} Jacobian spectrum {err:e}");

            if k > 0 {
                let z = trace.preactivation(k - 1);
                let mut by_pattern: HashMap<Vec<bool>, Vec<usize>> = HashMap::new();
                for u in 0..z.ncols() {
                    by_pattern.entry((0..n).map(|i| z[(i, u)] > 0.0).collect()).or_default().push(u);
                }
                let relu = d.nodes[k].relu.as_ref().unwrap();
                let dead: Vec<usize> =
                    by_pattern.iter().filter(|(p, _)| p.iter().all(|&b| !b)).flat_map(|(_, u)| u.clone()).collect();
                let on: Vec<usize> =
                    by_pattern.iter().filter(|(p, _)| p.iter().all(|&b| b)).flat_map(|(_, u)| u.clone()).collect();
                let mut groups: Vec<Vec<usize>> = by_pattern
                    .iter()
                    .filter(|(p, u)| u.len() > 1 && p.iter().any(|&b| b) && !p.iter().all(|&b| b))
                    .map(|(_, u)| u.clone())
                    .collect();
                groups.sort();
                let (mut dead, mut on) = (dead, on);
                dead.sort();
                on.sort();
                assert_eq!(
                    (&relu.dead, &relu.always_on, &relu.sync_groups),
                    (&dead, &on, &groups),
                    "{case} layers.{k} ReLU groups"
                );
            }
        }
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    use degeneracy::Error;
    let (mlp, x) = planted_relu_net();
    let bad_tol = DiagnosticsConfig { rank_tol: -1.0, batch_size: 10 };
    assert!(matches!(diagnose(&mlp, &x, &bad_tol), Err(Error::InvalidParameter { .. })));
    assert!(matches!(
        diagnose(&mlp, &Matrix::zeros(3, 4), &DiagnosticsConfig::default()),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(diagnose(&mlp, &Matrix::zeros(0, 3), &DiagnosticsConfig::default()), Err(Error::Empty { .. })));
    let mut nan = x.clone();
    nan[(17, 1)] = f64::NAN;
    assert!(matches!(diagnose(&mlp, &nan, &DiagnosticsConfig::default()), Err(Error::NonFinite { row: 17, .. })));
}
