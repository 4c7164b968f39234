//! Bases against the reference fixtures (tolerances of `fixtures/INDEX.md`), invariances, the
//! generic path as the reference of the closed form, shard merging and bad input.

mod common;

use common::{fixture_config, fixtures};
use degeneracy::basis::{Basis, BasisFormula, JacobianPath, LibConfig, NodeBasis, fit_bases};
use degeneracy::estimate::{NodeStatistics, Quadrature};
use degeneracy::{Activation, Error, Matrix, Mlp, Network, io};
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
        assert_eq!(b.gram_eigenvalues.len(), ev_ref.len(), "{name}: the full Gram spectrum");
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
        // C⁺C = L⁻¹Vᵀ D^{1/2} UᵀU D^{-1/2} V L: UᵀU's rounding (~ε) is amplified by
        // √(D_max/D_min)·√(Λ_max/Λ_min). INDEX.md's 1e-9 is for the MLP cases; block_diag
        // (Λ from 1e-11 to 1e6) gets that rounding bound instead.
        let id = b.c_pinv().matmul(b.c()).unwrap();
        let e = max_abs_diff(id.as_slice(), Matrix::identity(b.dim()).as_slice());
        let ratio =
            |v: &[f64]| (v.iter().fold(0.0_f64, |m, x| m.max(*x)) / v.iter().fold(f64::MAX, |m, x| m.min(*x))).sqrt();
        let amplification = ratio(&b.gram_kept) * b.lambda.as_deref().map_or(1.0, ratio);
        let tol = if lambda_noise_floor > 0.0 { 1e-9f64.max(64.0 * f64::EPSILON * amplification) } else { 1e-9 };
        assert!(e < tol, "{name}: C⁺ C − I {e:e} (tolerance {tol:e})");

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
    // The first layer's weights × 1e200: the later activations are finite (~1e200) but their
    // squares are not; the error names a node layer and the cause, not a decomposition's input.
    let mut huge = mlp.clone();
    let mut w = huge.params();
    w[..64 * 40].iter_mut().for_each(|v| *v *= 1e200);
    degeneracy::Layer::set_params(&mut huge, &w).unwrap();
    match fit_bases(&huge, &x, &LibConfig::default()) {
        Err(Error::NonFinite { what, .. }) => {
            assert!(what.contains("Gram of node layer layers.") && what.contains("overflow"), "{what}")
        }
        other => panic!("expected a Gram overflow naming the node layer, got {other:?}"),
    }
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

mod properties {
    use super::*;
    use degeneracy::{Layer, Linear};
    use proptest::prelude::*;

    fn inputs(n: usize, d: usize, seed: u64) -> Matrix {
        // A fixed pseudo-random design with full column rank.
        Matrix::from_fn(n, d, |i, j| {
            let h = (i as u64 * 6_364_136_223_846_793_005 + j as u64 * 1_442_695_040_888_963_407 + seed * 7919)
                .wrapping_mul(2_862_933_555_777_941_757);
            (h >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        })
    }

    fn lambdas(bases: &[NodeBasis]) -> Vec<Vec<f64>> {
        bases.iter().filter_map(|b| b.lambda.clone()).collect()
    }

    fn assert_same_lambdas(a: &[Vec<f64>], b: &[Vec<f64>], tol: f64) -> Result<(), TestCaseError> {
        prop_assert_eq!(a.len(), b.len());
        for (la, lb) in a.iter().zip(b) {
            prop_assert_eq!(la.len(), lb.len(), "retained dimension");
            let top = la.iter().fold(0.0_f64, |m, v| m.max(*v));
            for (x, y) in la.iter().zip(lb) {
                prop_assert!((x - y).abs() <= tol * top, "Λ {} vs {} (max {})", x, y, top);
            }
        }
        Ok(())
    }

    /// A well-conditioned invertible matrix: I + small perturbation, scaled.
    fn invertible(d: usize, seed: u64) -> Matrix {
        let r = inputs(d, d, seed);
        Matrix::from_fn(d, d, |i, j| 1.5 * f64::from(u8::from(i == j)) + 0.6 * r[(i, j)])
    }

    fn inverse(a: &Matrix) -> Matrix {
        // Solve via the eigendecomposition of AᵀA: A⁻¹ = (AᵀA)⁻¹ Aᵀ.
        let ata = a.transpose().matmul(a).unwrap();
        let (vals, vecs) = degeneracy::linalg::symmetric_eigen(&ata).unwrap();
        let inv_diag = Matrix::from_diagonal(&vals.iter().map(|v| 1.0 / v).collect::<Vec<_>>());
        vecs.matmul(&inv_diag).unwrap().matmul(&vecs.transpose()).unwrap().matmul(&a.transpose()).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// An invertible affine map at the input node (x ↦ xA + c, compensated in the first
        /// layer) leaves the function, every Λ and every retained dimension unchanged.
        #[test]
        fn lib_is_invariant_to_affine_maps_at_the_input(seed in 0u64..1000, act in 0usize..3) {
            let act = [Activation::Relu, Activation::Tanh, Activation::Gelu][act];
            let mlp = Mlp::init(&[5, 7, 6, 3], act, true, seed).unwrap();
            let x = inputs(300, 5, seed);
            let a = invertible(5, seed + 1);
            let a_inv = inverse(&a);
            let c: Vec<f64> = (0..5).map(|j| 0.3 * j as f64 - 0.5).collect();
            let x2 = Matrix::from_fn(300, 5, |i, j| (0..5).map(|k| x[(i, k)] * a[(k, j)]).sum::<f64>() + c[j]);
            // z = x W0ᵀ + b0 = (x2 − c) A⁻¹ W0ᵀ + b0: W0' = W0 A⁻ᵀ, b0' = b0 − c A⁻¹ W0ᵀ.
            let l0 = &mlp.linears()[0];
            let w0 = l0.weight().matmul(&a_inv.transpose()).unwrap();
            let shift = Matrix::from_rows(std::slice::from_ref(&c)).unwrap().matmul(&w0.transpose()).unwrap();
            let b0: Vec<f64> = l0.bias().unwrap().iter().zip(shift.row(0)).map(|(b, s)| b - s).collect();
            let mut linears = mlp.linears().to_vec();
            linears[0] = Linear::new(w0, Some(b0)).unwrap();
            let mlp2 = Mlp::new(linears, act).unwrap();

            let (mut y, mut y2) = (Matrix::default(), Matrix::default());
            mlp.forward(x.view(), &mut y).unwrap();
            mlp2.forward(x2.view(), &mut y2).unwrap();
            prop_assert!(common::rel_max_diff(&y2, &y) < 1e-12, "function changed");

            let config = LibConfig::default();
            let la = lambdas(&fit_bases(&mlp, &x, &config).unwrap());
            let lb = lambdas(&fit_bases(&mlp2, &x2, &config).unwrap());
            assert_same_lambdas(&la, &lb, 1e-8)?;
        }

        /// In a linear network an invertible map A at a hidden node (Aᵀ into it, A⁻ᵀ out of it)
        /// is a reparameterisation too.
        #[test]
        fn lib_is_invariant_to_linear_maps_at_hidden_nodes(seed in 0u64..1000, node in 1usize..3) {
            let mlp = Mlp::init(&[4, 6, 6, 3], Activation::Identity, true, seed).unwrap();
            let x = inputs(200, 4, seed);
            let a = invertible(6, seed + 7);
            let a_inv = inverse(&a);
            let mut linears = mlp.linears().to_vec();
            let into = &mlp.linears()[node - 1];
            let w_in = a.transpose().matmul(into.weight()).unwrap();
            let b_in = Matrix::from_rows(&[into.bias().unwrap().to_vec()]).unwrap().matmul(&a).unwrap().into_vec();
            linears[node - 1] = Linear::new(w_in, Some(b_in)).unwrap();
            let out = &mlp.linears()[node];
            linears[node] = Linear::new(out.weight().matmul(&a_inv.transpose()).unwrap(), out.bias().map(<[f64]>::to_vec)).unwrap();
            let mlp2 = Mlp::new(linears, Activation::Identity).unwrap();
            let (mut y, mut y2) = (Matrix::default(), Matrix::default());
            mlp.forward(x.view(), &mut y).unwrap();
            mlp2.forward(x.view(), &mut y2).unwrap();
            prop_assert!(common::rel_max_diff(&y2, &y) < 1e-11, "function changed");
            let config = LibConfig::default();
            assert_same_lambdas(&lambdas(&fit_bases(&mlp, &x, &config).unwrap()), &lambdas(&fit_bases(&mlp2, &x, &config).unwrap()), 1e-8)?;
        }

        /// The closed-form Jacobian Gram equals the generic vector–Jacobian path for every
        /// activation and quadrature (the generic path is the reference).
        #[test]
        fn closed_form_matches_generic_path(seed in 0u64..1000, act in 0usize..6, rule in 0usize..3, k in 0usize..4) {
            let act = [Activation::Relu, Activation::Tanh, Activation::Gelu, Activation::GeluTanh, Activation::Sigmoid, Activation::Identity][act];
            let quadrature = [Quadrature::Gradient, Quadrature::GaussLegendre(k), Quadrature::Trapezoidal(k)][rule];
            let mlp = Mlp::init(&[4, 6, 5, 3], act, true, seed).unwrap();
            let x = inputs(150, 4, seed);
            let base = LibConfig { quadrature, batch_size: 64, ..LibConfig::default() };
            let auto = fit_bases(&mlp, &x, &base).unwrap();
            let generic = fit_bases(&mlp, &x, &LibConfig { jacobian_path: JacobianPath::Generic, ..base }).unwrap();
            assert_same_lambdas(&lambdas(&auto), &lambdas(&generic), 1e-10)?;
            for (a, g) in auto.iter().zip(&generic) {
                let (pa, pg) = (a.c().matmul(&a.c().transpose()).unwrap(), g.c().matmul(&g.c().transpose()).unwrap());
                prop_assert!(common::rel_max_diff(&pa, &pg) < 1e-8, "C Cᵀ at {}", a.node);
            }
        }
    }

    /// The LIB identities of `docs/math.md`: coordinates are uncorrelated with second moments Λ,
    /// and C⁺ inverts C on the kept subspace.
    #[test]
    fn lib_coordinates_have_second_moments_lambda() {
        let (mlp, x) = load("digits_mlp");
        let bases = fit_bases(&mlp, &x, &LibConfig::default()).unwrap();
        for b in bases.iter().filter(|b| b.lambda.is_some()) {
            let f = common::node_acts(&mlp, &x, mlp.node_index(&b.node).unwrap());
            let coords = b.transform(f.view()).unwrap();
            let n = coords.nrows() as f64;
            let second = coords.transpose().matmul(&coords).unwrap();
            let lambda = b.lambda.as_ref().unwrap();
            for i in 0..b.dim() {
                for j in 0..b.dim() {
                    let expected = if i == j { lambda[i] } else { 0.0 };
                    assert!((second[(i, j)] / n - expected).abs() < 1e-9 * lambda[0], "{} ({i},{j})", b.node);
                }
            }
            let back = b.inverse(coords.view()).unwrap().matmul(b.c()).unwrap();
            assert!(common::rel_max_diff(&back, &coords) < 1e-10);
        }
    }
}

#[test]
fn npy_sampler_gives_the_in_memory_bases() {
    let (mlp, x) = load("digits_mlp");
    let path = fixtures().join("digits_mlp/inputs.npy");
    // Chunks of 128 rows split into the same 64-row batches as the in-memory pass.
    let sampler = degeneracy::data::NpySampler::open(&path, 128).unwrap();
    let config = LibConfig { batch_size: 64, ..fixture_config("digits_mlp/jacobian_squared") };
    let from_file = fit_bases(&mlp, &sampler, &config).unwrap();
    let in_memory = fit_bases(&mlp, &x, &config).unwrap();
    for (a, b) in from_file.iter().zip(&in_memory) {
        assert!(a.c() == b.c(), "{}: same batches, same order: bitwise equal", a.node);
    }
}

#[test]
fn jacobian_gram_accumulator_merges_shards_and_checks_shapes() {
    use degeneracy::basis::JacobianGramAccumulator;
    let (mlp, x) = load("digits_mlp");
    let bases = fit_bases(&mlp, &x, &LibConfig::default()).unwrap();
    let section = mlp.section(1, 2).unwrap();
    let section = &*section;
    let c_next = bases[2].c().clone();
    let f = common::node_acts(&mlp, &x, 1);
    for formula in [BasisFormula::Jacobian, BasisFormula::OneMinusAlphaSquared] {
        let q = Quadrature::GaussLegendre(2);
        let mut whole = JacobianGramAccumulator::new(formula, section, c_next.ncols()).unwrap();
        whole.update(section, f.view(), &c_next, q).unwrap();
        let mut a = JacobianGramAccumulator::new(formula, section, c_next.ncols()).unwrap();
        let mut b = a.clone();
        a.update(section, f.rows(0..300), &c_next, q).unwrap();
        b.update(section, f.rows(300..1024), &c_next, q).unwrap();
        a.merge(&b).unwrap();
        let (mw, lw) = whole.finish().unwrap();
        let (mm, lm) = a.finish().unwrap();
        assert!(common::rel_max_diff(&mm, &mw) < 1e-12);
        assert_eq!(lw.is_some(), formula == BasisFormula::OneMinusAlphaSquared);
        if let (Some(lw), Some(lm)) = (lw, lm) {
            assert!(common::rel_max_diff(&lm, &lw) < 1e-12);
        }
        assert!(a.update(section, f.rows(0..3), &Matrix::zeros(3, 3), q).is_err());
    }
    assert!(JacobianGramAccumulator::new(BasisFormula::Svd, section, 3).is_err());
}

/// Bases and squared edges built in pools of 1 and 2 threads, bit for bit: the digits fixture
/// (both formulas), a 300-wide node seen through 200 rows (the kernel side and its Cholesky QR),
/// 784-100-100-10 × 512 rows (a kernel side with parallel products beside narrow nodes) and a
/// node 1600 wide (a split eigendecomposition).
#[test]
fn bases_are_bitwise_identical_for_any_thread_count() {
    use degeneracy::graph::{EdgeConfig, EdgeFormula, compute_edges};
    let (digits, x) = load("digits_mlp");
    let wide = Mlp::init(&[300, 64, 10], Activation::Relu, true, 3).unwrap();
    let wide_x = Matrix::from_fn(200, 300, |i, j| ((i * 7919 + j * 104_729) % 1013) as f64 / 1013.0 - 0.3);
    let mnist = Mlp::init(&[784, 100, 100, 10], Activation::Relu, true, 0).unwrap();
    let mnist_x = Matrix::from_fn(512, 784, |i, j| ((i * 7919 + j * 104_729) % 1013) as f64 / 1013.0);
    let big = Mlp::init(&[1600, 16, 4], Activation::Relu, true, 5).unwrap();
    let big_x = Matrix::from_fn(1700, 1600, |i, j| ((i * 131 + j * 71 + i * j) % 997) as f64 / 997.0 - 0.5);
    let cases: [(&Mlp, &Matrix, LibConfig); 5] = [
        (&digits, &x, fixture_config("digits_mlp/jacobian_squared")),
        (&digits, &x, fixture_config("digits_mlp/alpha2_functional")),
        (&wide, &wide_x, LibConfig::default()),
        (&mnist, &mnist_x, LibConfig::default()),
        (&big, &big_x, LibConfig::default()),
    ];
    for (mlp, x, config) in cases {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let bases = fit_bases(mlp, x, &config).unwrap();
                let edges = EdgeConfig {
                    formula: EdgeFormula::Squared,
                    quadrature: config.quadrature,
                    batch_size: config.batch_size,
                    path: JacobianPath::Auto,
                };
                let edges = compute_edges(mlp, x, &bases, &edges).unwrap();
                (bases, edges)
            })
        };
        let ((one, e_one), (two, e_two)) = (run(1), run(2));
        for (a, b) in one.iter().zip(&two) {
            assert!(a.c() == b.c() && a.c_pinv() == b.c_pinv(), "{}: C differs between 1 and 2 threads", a.node);
            assert!(a.lambda == b.lambda && a.gram_eigenvalues == b.gram_eigenvalues, "{}", a.node);
        }
        for (a, b) in e_one.iter().zip(&e_two) {
            assert!(a.e_hat == b.e_hat, "{} → {}: edges differ between 1 and 2 threads", a.in_node, a.out_node);
        }
    }
}
