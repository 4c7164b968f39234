//! The kernel-side path (`docs/math.md` §3.5): when a node's statistics come from fewer rows than
//! its width, the bases decompose the `n × n` kernel of the rows instead of the `d × d` Gram. It
//! must equal the `d × d` path (the same statistics in dense form, `NodeStatistics::to_dense`)
//! within the fixtures' tolerances (`fixtures/INDEX.md`): the full Gram spectrum, the kept
//! dimensions, Λ (1e-10 of the largest), `C` sign-aligned on the directions with a clear Λ gap,
//! the projector `C C⁺` of those directions, and the edges.

mod common;

use common::{fixture_config, fixtures};
use degeneracy::basis::{Basis, BasisFormula, JacobianPath, LibConfig, NodeBasis, build_bases};
use degeneracy::data::ActivationSampler;
use degeneracy::estimate::{NodeStatistics, Quadrature};
use degeneracy::graph::{EdgeConfig, EdgeFormula, compute_edges};
use degeneracy::transformer::{LastPosModule, Transformer, read_tokens};
use degeneracy::{Activation, Matrix, Mlp, Network, io};

/// Tolerances of one comparison (relative to the largest entry unless named otherwise).
struct Tolerances {
    lambda: f64,
    c: f64,
    projector: f64,
    edges: f64,
    /// Λ below this fraction of the largest are rounding noise (block_diag at threshold 1e-15):
    /// such directions may be kept on one side only, and are not compared.
    lambda_noise: f64,
    /// The same for Gram eigenvalues: the `d × d` path finds the kernel side's exact zeros as
    /// rounding noise, which a threshold of 1e-15 can keep.
    gram_noise: f64,
}

const FIXTURE: Tolerances =
    Tolerances { lambda: 1e-10, c: 1e-8, projector: 1e-7, edges: 1e-10, lambda_noise: 0.0, gram_noise: 0.0 };

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

fn rel_max(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0_f64, |m, (x, y)| m.max((x - y).abs())) / max_abs(b).max(f64::MIN_POSITIVE)
}

/// Columns whose Λ is apart from every other by more than 1e-6 relative (INDEX.md's rule), and
/// above the noise floor.
fn good_columns(b: &NodeBasis, noise: f64) -> Vec<usize> {
    let Some(lambda) = &b.lambda else { return (0..b.dim()).collect() };
    let top = max_abs(lambda);
    (0..lambda.len())
        .filter(|&j| {
            let gap =
                (0..lambda.len()).filter(|&i| i != j).map(|i| (lambda[i] - lambda[j]).abs()).fold(f64::MAX, f64::min);
            gap > 1e-6 * lambda[j] && lambda[j] >= noise * top
        })
        .collect()
}

/// Builds the bases (and edges) from the same statistics with and without the kept rows, and
/// compares them; returns how many node layers took the kernel side.
fn compare_paths(
    what: &str,
    net: &dyn Network,
    x: &dyn ActivationSampler,
    config: &LibConfig,
    edges: Option<&EdgeConfig>,
    tol: &Tolerances,
) -> usize {
    let nodes = config.node_indices(net).unwrap();
    let stats = NodeStatistics::collect(net, x, &nodes, config.statistics_quadrature(), config.batch_size).unwrap();
    let kernel_nodes = nodes
        .iter()
        .filter(|&&k| stats.activations(k).unwrap().finish().unwrap().rows.is_some() && k + 1 < net.node_layers().len())
        .count();
    let dense = stats.to_dense().unwrap();
    assert!(nodes.iter().all(|&k| dense.activations(k).unwrap().finish().unwrap().rows.is_none()));
    let mut worst = [0.0_f64; 4]; // Λ, C, C C⁺, edges
    let kernel_bases = build_bases(net, x, &stats, config).unwrap();
    let dense_bases = build_bases(net, x, &dense, config).unwrap();
    for (a, b) in kernel_bases.iter().zip(&dense_bases) {
        let name = format!("{what} {}", b.node);
        // The full Gram spectrum: rel 1e-9 above 1e-8 of the largest, the threshold side below.
        assert_eq!(a.gram_eigenvalues.len(), b.gram_eigenvalues.len(), "{name}: spectrum length");
        let top = b.gram_eigenvalues.first().copied().unwrap_or(0.0);
        for (i, (&p, &q)) in a.gram_eigenvalues.iter().zip(&b.gram_eigenvalues).enumerate() {
            if q >= 1e-8 * top {
                assert!((p - q).abs() <= 1e-9 * q, "{name}: Gram eigenvalue {i}: {p} vs {q}");
            } else if p.max(q) < tol.gram_noise * top {
                continue;
            } else {
                let t = config.truncation_threshold;
                assert_eq!(p > t, q > t, "{name}: Gram eigenvalue {i}: {p} vs {q} across the threshold");
            }
        }
        let above = |x: &NodeBasis| x.gram_kept.iter().filter(|&&v| v >= tol.gram_noise * top).count();
        assert_eq!(above(a), above(b), "{name}: Gram directions kept");
        let good = good_columns(b, tol.lambda_noise);
        if tol.lambda_noise == 0.0 {
            assert_eq!(a.dim(), b.dim(), "{name}: kept dimension");
        } else {
            let floor = tol.lambda_noise * b.lambda.as_deref().map_or(0.0, max_abs);
            let n = a.dim().min(b.dim());
            let noise = |x: &NodeBasis| match &x.lambda {
                Some(l) => l[n..].iter().all(|&v| v < floor),
                None => x.dim() == n,
            };
            assert!(noise(a) && noise(b), "{name}: dimensions {} vs {} beyond the noise floor", a.dim(), b.dim());
        }
        if let (Some(la), Some(lb)) = (&a.lambda, &b.lambda) {
            let n = la.len().min(lb.len());
            let e = rel_max(&la[..n], &lb[..n]) * max_abs(&lb[..n]) / max_abs(lb);
            assert!(e < tol.lambda, "{name}: Λ {e:e}");
            worst[0] = worst[0].max(e);
        }
        let scale = b.c().max_abs();
        for &j in &good {
            let (ca, cb) = (a.c().col(j), b.c().col(j));
            let sign = ca.iter().zip(&cb).map(|(p, q)| p * q).sum::<f64>().signum();
            let e = ca.iter().zip(&cb).fold(0.0_f64, |m, (p, q)| m.max((sign * p - q).abs())) / scale;
            assert!(e < tol.c, "{name}: column {j} of C {e:e}");
            worst[1] = worst[1].max(e);
        }
        let projector = |x: &NodeBasis| {
            let (c, p) = (x.c().select_columns(&good), x.c_pinv().transpose().select_columns(&good));
            c.matmul(&p.transpose()).unwrap()
        };
        let e = rel_max(projector(a).as_slice(), projector(b).as_slice());
        assert!(e < tol.projector, "{name}: C C⁺ on the good columns {e:e}");
        worst[2] = worst[2].max(e);
    }
    if let Some(edge_config) = edges {
        let ea = compute_edges(net, x, &kernel_bases, edge_config).unwrap();
        let eb = compute_edges(net, x, &dense_bases, edge_config).unwrap();
        for (a, b) in ea.iter().zip(&eb) {
            if a.e_hat.shape() == b.e_hat.shape() {
                let e = rel_max(a.e_hat.as_slice(), b.e_hat.as_slice());
                assert!(e < tol.edges, "{what} {} → {}: edges {e:e}", a.in_node, a.out_node);
                worst[3] = worst[3].max(e);
            } else {
                assert!(tol.lambda_noise > 0.0, "{what}: edge shapes {:?} vs {:?}", a.e_hat.shape(), b.e_hat.shape());
            }
        }
    }
    eprintln!(
        "{what}: {kernel_nodes} node layer(s) from the kernel side; largest differences: Λ {:.1e}, C {:.1e}, C C⁺ {:.1e}, edges {:.1e}",
        worst[0], worst[1], worst[2], worst[3]
    );
    kernel_nodes
}

/// A fixed pseudo-random matrix with entries in [−½, ½).
fn pseudo_random(n: usize, d: usize, seed: u64) -> Matrix {
    Matrix::from_fn(n, d, |i, j| {
        let h = (i as u64).wrapping_mul(6_364_136_223_846_793_005)
            ^ (j as u64).wrapping_mul(1_442_695_040_888_963_407)
            ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let h = h.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(3_037_000_493);
        (h >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    })
}

fn first_rows(x: &Matrix, n: usize) -> Matrix {
    x.rows(0..n).to_owned()
}

fn digits() -> (Mlp, Matrix) {
    let dir = fixtures().join("digits_mlp");
    (
        io::load_mlp(dir.join("model.safetensors"), Activation::Relu).unwrap(),
        io::read_matrix(dir.join("inputs.npy")).unwrap(),
    )
}

fn run_edges(run: &str) -> EdgeConfig {
    let (case, name) = run.split_once('/').unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join(case).join("config.json")).unwrap()).unwrap();
    let c = &v["runs"][name]["rib_build_config"];
    let formula = c["edge_formula"].as_str().map_or(EdgeFormula::Squared, |f| EdgeFormula::from_name(f).unwrap());
    EdgeConfig { formula, quadrature: fixture_config(run).quadrature, ..EdgeConfig::default() }
}

#[test]
fn digits_jacobian_from_fewer_rows_than_the_width() {
    let (mlp, x) = digits();
    // 30 rows: below every width (65, 41, 41), so every node takes the kernel side.
    for n in [30, 60] {
        let run = "digits_mlp/jacobian_squared";
        let taken = compare_paths(run, &mlp, &first_rows(&x, n), &fixture_config(run), Some(&run_edges(run)), &FIXTURE);
        assert_eq!(taken, if n == 30 { 3 } else { 1 }, "{n} rows");
    }
}

#[test]
fn digits_one_minus_alpha_squared_from_fewer_rows_than_the_width() {
    let (mlp, x) = digits();
    let run = "digits_mlp/alpha2_functional";
    let taken = compare_paths(run, &mlp, &first_rows(&x, 30), &fixture_config(run), Some(&run_edges(run)), &FIXTURE);
    assert_eq!(taken, 3);
}

#[test]
fn digits_pca_and_neuron_from_fewer_rows_than_the_width() {
    let (mlp, x) = digits();
    for formula in [BasisFormula::Svd, BasisFormula::Neuron] {
        let center = formula != BasisFormula::Neuron;
        let config = LibConfig { basis_formula: formula, center, ..fixture_config("digits_mlp/jacobian_squared") };
        let taken =
            compare_paths(formula.name(), &mlp, &first_rows(&x, 30), &config, Some(&EdgeConfig::default()), &FIXTURE);
        assert_eq!(taken, 3);
    }
}

#[test]
fn block_diag_from_fewer_rows_than_the_width() {
    let dir = fixtures().join("block_diag");
    let mlp = io::load_mlp(dir.join("model.safetensors"), Activation::Relu).unwrap();
    let x = first_rows(&io::read_matrix(dir.join("inputs.npy")).unwrap(), 6);
    // Threshold 1e-15 keeps rounding-noise Λ (INDEX.md: block_diag's Λ below 1e-10 of the largest
    // are noise, and its rib/pca edges depend on the rounding through ReLU'(0)).
    let loose = Tolerances { lambda_noise: 1e-10, gram_noise: 1e-12, edges: 5e-2, ..FIXTURE };
    let neuron = Tolerances { gram_noise: 1e-12, ..FIXTURE };
    for (run, tol) in [("block_diag/rib", &loose), ("block_diag/pca", &loose), ("block_diag/neuron", &neuron)] {
        let taken = compare_paths(run, &mlp, &x, &fixture_config(run), Some(&run_edges(run)), tol);
        assert!(taken >= 1, "{run}");
    }
}

#[test]
fn transformer_from_fewer_rows_than_the_width() {
    let dir = fixtures().join("modadd_transformer");
    let model = Transformer::load(dir.join("model_config.json"), dir.join("model.safetensors"))
        .unwrap()
        .with_last_pos_module(Some(LastPosModule::AddResid1));
    let tokens = first_rows(&read_tokens(dir.join("tokens.npy")).unwrap(), 20);
    for formula in [BasisFormula::Jacobian, BasisFormula::Svd] {
        let config = LibConfig {
            basis_formula: formula,
            truncation_threshold: 1e-15,
            batch_size: 256,
            node_layers: Some(["ln1.0", "ln2.0", "unembed", "output"].map(String::from).to_vec()),
            ..LibConfig::default()
        };
        // The fixture's threshold 1e-15 keeps noise-level Λ at ln2.0 (its README): compared
        // above 1e-10 of the largest, as there.
        let tol = Tolerances { lambda_noise: 1e-10, ..FIXTURE };
        let taken = compare_paths(formula.name(), &model, &tokens, &config, Some(&EdgeConfig::default()), &tol);
        assert!(taken >= 2, "{}: {taken}", formula.name());
    }
}

/// A planted case: 300-wide inputs of rank 12 with variances over seven decades (Λ over eight),
/// 40 rows, a hidden layer of 60 (wider than the rows too), both centrings and every formula;
/// the `jacobian` basis also with its generic (vector–Jacobian) `M'`.
#[test]
fn planted_wide_layers_from_few_rows() {
    let mlp = Mlp::init(&[300, 60, 5], Activation::Relu, true, 7).unwrap();
    let n = 40;
    // x = Z · diag(scales) · A + offsets: Z [n, 12] and A [12, 300] pseudo-random.
    let (z, a) = (pseudo_random(n, 12, 1), pseudo_random(12, 300, 2));
    let x = Matrix::from_fn(n, 300, |i, j| {
        (0..12).map(|t| 10f64.powf(1.0 - t as f64 / 3.0) * z[(i, t)] * a[(t, j)]).sum::<f64>() + 0.05 * (j % 17) as f64
    });
    for center in [true, false] {
        for (formula, quadrature) in [
            (BasisFormula::Jacobian, Quadrature::Gradient),
            (BasisFormula::Jacobian, Quadrature::GaussLegendre(2)),
            (BasisFormula::OneMinusAlphaSquared, Quadrature::GaussLegendre(2)),
            (BasisFormula::Svd, Quadrature::Gradient),
        ] {
            let config = LibConfig { basis_formula: formula, center, quadrature, ..LibConfig::default() };
            let edges = EdgeConfig {
                formula: if formula == BasisFormula::OneMinusAlphaSquared {
                    EdgeFormula::Functional
                } else {
                    EdgeFormula::Squared
                },
                quadrature,
                ..EdgeConfig::default()
            };
            let what = format!("planted {} centred {center} {quadrature:?}", formula.name());
            assert_eq!(compare_paths(&what, &mlp, &x, &config, Some(&edges), &FIXTURE), 2, "{what}");
            if formula == BasisFormula::Jacobian {
                let generic = LibConfig { jacobian_path: JacobianPath::Generic, ..config };
                compare_paths(&format!("{what}, generic M'"), &mlp, &x, &generic, Some(&edges), &FIXTURE);
            }
        }
    }
}
