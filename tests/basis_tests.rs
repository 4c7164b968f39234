//! Bases against the reference fixtures (tolerances of `fixtures/INDEX.md`), invariances, the
//! generic path as the reference of the closed form, shard merging and bad input.

mod common;

use common::fixtures;
use degeneracy::basis::{Basis, BasisFormula, JacobianPath, LibConfig, NodeBasis, fit_bases};
use degeneracy::estimate::{NodeStatistics, Quadrature};
use degeneracy::{Activation, Error, Matrix, Mlp, io};
use std::path::Path;

fn load(case: &str) -> (Mlp, Matrix) {
    let dir = fixtures().join(case);
    (
        io::load_mlp(dir.join("model.safetensors"), Activation::Relu).unwrap(),
        io::read_matrix(dir.join("inputs.npy")).unwrap(),
    )
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0.0, |m, x| m.max(x.abs()))
}

fn file_name(k: usize, node: &str) -> String {
    format!("{k}_{}", node.replace('.', "_"))
}

/// Every per-node comparison of INDEX.md for one run directory.
fn compare_run(run: &Path, bases: &[NodeBasis], threshold: f64, lambda_noise_floor: f64) {
    for (k, b) in bases.iter().enumerate().filter(|(_, b)| b.is_rotated()) {
        let name = file_name(k, &b.node);
        let read = |what: &str| io::read_matrix(run.join(format!("{what}_{name}.npy"))).unwrap();
        let c_ref = read("C");
        // Kept dimensions must agree exactly, except (block_diag, threshold 1e-15) for
        // reference directions whose Λ is rounding noise below `lambda_noise_floor`·max Λ.
        let n_common = b.dim().min(c_ref.ncols());
        if b.c().shape() != c_ref.shape() {
            let l_ref = read("Lambda").into_vec();
            let floor = lambda_noise_floor * max_abs(&l_ref);
            assert!(
                b.dim() < c_ref.ncols() && l_ref[n_common..].iter().all(|&l| l < floor),
                "{name}: kept dimensions {:?} vs {:?} (reference Λ {:?})",
                b.c().shape(),
                c_ref.shape(),
                &l_ref[n_common..]
            );
        }

        // Gram eigenvalues: rel 1e-9 above 1e-8·max; below, only the threshold side must agree.
        let ev_ref = read("gram_eigvals").into_vec();
        let top = ev_ref[0];
        for (i, (&a, &r)) in b.gram_eigenvalues.iter().zip(&ev_ref).enumerate() {
            if r >= 1e-8 * top {
                assert!((a - r).abs() <= 1e-9 * r, "{name}: gram eigenvalue {i}: {a} vs {r}");
            } else {
                assert_eq!(a > threshold, r > threshold, "{name}: gram eigenvalue {i} {a} vs {r} across the threshold");
            }
        }

        // C·C⁺ (oblique projector), C·Cᵀ, C⁺·C = I.
        if n_common == c_ref.ncols() {
            // (A dropped noise direction changes the projector by O(1): compared only when equal.)
            let proj = b.c().matmul(b.c_pinv()).unwrap();
            let proj_ref = read("proj_CCpinv");
            let e = max_abs_diff(proj.as_slice(), proj_ref.as_slice()) / max_abs(proj_ref.as_slice());
            assert!(e < 1e-7, "{name}: C C⁺ {e:e}");
        }
        let cct = b.c().matmul(&b.c().transpose()).unwrap();
        let cct_ref = read("CCt");
        let e = max_abs_diff(cct.as_slice(), cct_ref.as_slice()) / max_abs(cct_ref.as_slice());
        assert!(e < 1e-10, "{name}: C Cᵀ {e:e}");
        let id = b.c_pinv().matmul(b.c()).unwrap();
        let e = max_abs_diff(id.as_slice(), Matrix::identity(b.dim()).as_slice());
        assert!(e < 1e-9, "{name}: C⁺ C − I {e:e}");

        // C after per-column sign alignment, for directions with a clear Λ gap.
        // (The constant direction's gap is stored as inf, so read the raw array.)
        let gaps = b.lambda.as_ref().map(|_| {
            match io::read_npy(run.join(format!("Lambda_relgap_{name}.npy"))).unwrap().data {
                io::NpyData::Float(v) => v,
                io::NpyData::Int(_) => panic!("float gaps expected"),
            }
        });
        let scale = max_abs(c_ref.as_slice());
        for j in 0..n_common {
            if gaps.as_ref().is_some_and(|g| g[j] <= 1e-6) {
                continue;
            }
            let (col, col_ref) = (b.c().col(j), c_ref.col(j));
            let s = col.iter().zip(&col_ref).map(|(a, r)| a * r).sum::<f64>().signum();
            let e = col.iter().zip(&col_ref).fold(0.0_f64, |m, (a, r)| m.max((s * a - r).abs())) / scale;
            assert!(e < 1e-8, "{name}: column {j} of C {e:e}");
        }

        if let Some(lambda) = &b.lambda {
            let l_ref = read("Lambda").into_vec();
            let l_max = max_abs(&l_ref);
            let (lambda, l_ref) = (&lambda[..n_common], &l_ref[..n_common]);
            assert!(max_abs_diff(lambda, l_ref) / l_max < 1e-11, "{name}: Λ relative to max");
            for (i, (&a, &r)) in lambda.iter().zip(l_ref).enumerate() {
                if r >= lambda_noise_floor * l_max {
                    assert!((a - r).abs() <= 1e-6 * r, "{name}: Λ[{i}] {a} vs {r}");
                }
            }
        }
    }
}

fn fixture_config(run: &str) -> LibConfig {
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

fn check_fixture(run: &str, path: JacobianPath) {
    let case = run.split('/').next().unwrap();
    let (mlp, x) = load(case);
    let config = LibConfig { jacobian_path: path, ..fixture_config(run) };
    let bases = fit_bases(&mlp, &x, &config).unwrap();
    let floor = if case == "block_diag" { 1e-10 } else { 0.0 };
    compare_run(&fixtures().join(run), &bases, config.truncation_threshold, floor);
}

#[test]
fn digits_jacobian_basis_matches_rib() {
    check_fixture("digits_mlp/jacobian_squared", JacobianPath::Auto);
}

#[test]
fn digits_jacobian_basis_generic_path_matches_rib() {
    check_fixture("digits_mlp/jacobian_squared", JacobianPath::Generic);
}

#[test]
fn digits_one_minus_alpha_squared_basis_matches_rib() {
    check_fixture("digits_mlp/alpha2_functional", JacobianPath::Auto);
}

#[test]
fn block_diag_rib_basis_matches_rib() {
    check_fixture("block_diag/rib", JacobianPath::Auto);
}

#[test]
fn block_diag_pca_basis_matches_rib() {
    check_fixture("block_diag/pca", JacobianPath::Auto);
}

#[test]
fn block_diag_neuron_basis_matches_rib() {
    check_fixture("block_diag/neuron", JacobianPath::Auto);
}

#[test]
fn bad_input_is_a_typed_error() {
    let (mlp, x) = load("digits_mlp");
    let bad_nodes = LibConfig { node_layers: Some(vec!["layers.0".into(), "layers.7".into()]), ..LibConfig::default() };
    assert!(matches!(fit_bases(&mlp, &x, &bad_nodes), Err(Error::UnknownNode { .. })));
    let unordered = LibConfig { node_layers: Some(vec!["layers.1".into(), "layers.0".into()]), ..LibConfig::default() };
    assert!(matches!(fit_bases(&mlp, &x, &unordered), Err(Error::InvalidParameter { .. })));
    let wrong_width = Matrix::zeros(4, 63);
    assert!(matches!(fit_bases(&mlp, &wrong_width, &LibConfig::default()), Err(Error::ShapeMismatch { .. })));
    let empty = Matrix::zeros(0, 64);
    assert!(matches!(fit_bases(&mlp, &empty, &LibConfig::default()), Err(Error::Empty { .. })));
    let mut nan = x.clone();
    nan[(700, 3)] = f64::NAN;
    match fit_bases(&mlp, &nan, &LibConfig { batch_size: 256, ..LibConfig::default() }) {
        Err(Error::NonFinite { row: 700, col: 3, what, .. }) => assert!(what.contains("layers.0"), "{what}"),
        other => panic!("expected NonFinite at row 700, got {other:?}"),
    }
    // Constant inputs: the output depends on no direction → no Λ above the threshold.
    let constant = Matrix::from_fn(16, 64, |_, j| j as f64 / 64.0);
    let rotate = LibConfig { rotate_final_node_layer: true, ..LibConfig::default() };
    assert!(matches!(fit_bases(&mlp, &constant, &rotate), Err(Error::RankZero { .. })));
    let neg = LibConfig { truncation_threshold: -1.0, ..LibConfig::default() };
    assert!(matches!(fit_bases(&mlp, &x, &neg), Err(Error::InvalidParameter { .. })));
}

#[test]
fn statistics_from_shards_merge_to_one_pass() {
    let (mlp, x) = load("digits_mlp");
    let nodes = [0, 1, 2, 3];
    let q = Some(Quadrature::GaussLegendre(2));
    let whole = NodeStatistics::collect(&mlp, &x, &nodes, q, 1024).unwrap();
    for splits in [vec![1, 1023], vec![100, 333, 591], vec![512, 512]] {
        let mut merged = NodeStatistics::new(&mlp, &nodes, q).unwrap();
        let mut start = 0;
        for len in splits {
            let shard = x.rows(start..start + len).to_owned();
            // Shards go through serde as if they came from other processes.
            let json = serde_json::to_string(&NodeStatistics::collect(&mlp, &shard, &nodes, q, 77).unwrap()).unwrap();
            merged.merge(&serde_json::from_str(&json).unwrap()).unwrap();
            start += len;
        }
        for &k in &nodes {
            for (a, b) in [(whole.activations(k), merged.activations(k)), (whole.derivatives(k), merged.derivatives(k))]
            {
                let (Some(a), Some(b)) = (a, b) else { continue };
                let (a, b) = (a.finish().unwrap(), b.finish().unwrap());
                assert_eq!(a.count, b.count);
                let (sa, sb) = (a.second_moment(), b.second_moment());
                let e = max_abs_diff(sa.as_slice(), sb.as_slice()) / max_abs(sa.as_slice());
                assert!(e < 1e-12, "node {k}: {e:e}");
                assert!(max_abs_diff(&a.mean, &b.mean) <= 1e-12 * max_abs(&a.mean));
            }
        }
    }
    let other = NodeStatistics::new(&mlp, &[0, 1], q).unwrap();
    assert!(NodeStatistics::new(&mlp, &nodes, q).unwrap().merge(&other).is_err());
}
