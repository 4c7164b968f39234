//! The transformer against rib's modular-addition fixture (`modadd_transformer/README.md`):
//! forward pass, node activations, bases and edges; invariances, VJPs, strict loading, LayerNorm
//! variance isolation and stochastic sources.

mod common;

use common::fixtures;
use degeneracy::io::{self, NpyData};
use degeneracy::transformer::{LastPosModule, Transformer, read_tokens};
use degeneracy::{Layer, Matrix, Network};
use std::path::PathBuf;

fn case() -> PathBuf {
    fixtures().join("modadd_transformer")
}

fn fixture_model() -> Transformer {
    let dir = case();
    Transformer::load(dir.join("model_config.json"), dir.join("model.safetensors"))
        .unwrap()
        .with_last_pos_module(Some(LastPosModule::AddResid1))
}

fn floats(path: PathBuf) -> (Vec<usize>, Vec<f64>) {
    let a = io::read_npy(&path).unwrap();
    match a.data {
        NpyData::Float(v) => (a.shape, v),
        NpyData::Int(_) => panic!("{}: float array expected", path.display()),
    }
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn forward_matches_the_fixture_logits_and_node_activations() {
    let model = fixture_model();
    let tokens = read_tokens(case().join("tokens.npy")).unwrap();
    let mut logits = Matrix::default();
    model.forward(tokens.view(), &mut logits).unwrap();
    let (shape, reference) = floats(case().join("logits.npy"));
    assert_eq!(shape, [3830, 114]);
    let e = max_abs_diff(logits.as_slice(), &reference) / max_abs(&reference);
    assert!(e < 1e-12, "logits: max |Δ| / max |logit| = {e:e}");

    let first = tokens.rows(0..256).to_owned();
    let names = ["ln1.0", "ln2.0", "unembed", "output"];
    let nodes: Vec<usize> = names.iter().map(|n| model.node_index(n).unwrap()).collect();
    let mut acts = vec![Matrix::default(); nodes.len()];
    model.forward_nodes(first.view(), &nodes, &mut acts).unwrap();
    for (k, (name, a)) in names.iter().zip(&acts).enumerate() {
        let (shape, reference) = floats(case().join(format!("node_acts_first256_{k}_{}.npy", name.replace('.', "_"))));
        assert_eq!(a.nrows() * a.ncols(), shape.iter().product::<usize>(), "{name}: {shape:?}");
        assert_eq!(a.ncols(), shape[2], "{name}");
        let e = max_abs_diff(a.as_slice(), &reference) / max_abs(&reference).max(1.0);
        assert!(e < 1e-13, "{name}: {e:e}");
    }
}

mod fixture_build {
    use super::*;
    use degeneracy::basis::{BasisFormula, JacobianPath, LibConfig, NodeBasis, fit_bases};
    use degeneracy::estimate::Quadrature;
    use degeneracy::graph::{EdgeConfig, EdgeFormula, Edges, compute_edges};
    use std::time::Instant;

    pub fn config(formula: BasisFormula) -> LibConfig {
        LibConfig {
            basis_formula: formula,
            center: true,
            truncation_threshold: 1e-15,
            rotate_final_node_layer: false,
            quadrature: Quadrature::Gradient,
            batch_size: 256,
            node_layers: Some(["ln1.0", "ln2.0", "unembed", "output"].map(String::from).to_vec()),
            jacobian_path: JacobianPath::Auto,
        }
    }

    pub fn build(formula: BasisFormula) -> (Vec<NodeBasis>, Vec<Edges>) {
        let model = fixture_model();
        let tokens = read_tokens(case().join("tokens.npy")).unwrap();
        let lib = config(formula);
        let t = Instant::now();
        let bases = fit_bases(&model, &tokens, &lib).unwrap();
        let t_bases = t.elapsed().as_secs_f64();
        let edge_config = EdgeConfig {
            formula: EdgeFormula::Squared,
            quadrature: Quadrature::Gradient,
            batch_size: 256,
            ..EdgeConfig::default()
        };
        let edges = compute_edges(&model, &tokens, &bases, &edge_config).unwrap();
        eprintln!("{formula:?}: bases {t_bases:.2} s, edges {:.2} s", t.elapsed().as_secs_f64() - t_bases);
        (bases, edges)
    }
}

/// The README's comparisons for one run; returns a report line per quantity.
fn compare_run(run: &str, bases: &[degeneracy::basis::NodeBasis], edges: &[degeneracy::graph::Edges]) {
    use degeneracy::basis::Basis;
    let dir = case().join(run);
    let pca = run == "pca";
    let mut good_cols: Vec<Vec<usize>> = Vec::new();
    // The README's C tolerance is 1e-3 for rib's own ln2.0 truncation and 1e-2 when it differs
    // (ln2.0 is noise-limited at threshold 1e-15, and its noise directions enter ln1.0's M').
    let ln2_ref = floats(dir.join("C_1_ln2_0.npy")).0[1];
    let same_ln2 = bases[1].dim() == ln2_ref;
    for (k, b) in bases.iter().enumerate().take(3) {
        let name = format!("{k}_{}", b.node.replace('.', "_"));
        let read = |what: &str| floats(dir.join(format!("{what}_{name}.npy")));
        let (c_shape, c_ref) = read("C");
        let (ref_dim, orig) = (c_shape[1], c_shape[0]);
        assert_eq!(b.orig_dim(), orig);

        // Kept dimensions: exact at ln1.0 and unembed, ±3 at ln2.0 (noise-limited, README).
        let ln2 = b.node == "ln2.0";
        let (ev_shape, ev_ref) = read("gram_eigvals");
        assert_eq!(ev_shape, [orig]);
        let ref_gram_kept = ev_ref.iter().filter(|&&v| v > 1e-15).count();
        if ln2 {
            assert!(
                b.gram_kept.len().abs_diff(ref_gram_kept) <= 3,
                "{name}: gram kept {} vs {ref_gram_kept}",
                b.gram_kept.len()
            );
            assert!(b.dim().abs_diff(ref_dim) <= 3, "{name}: dim {} vs {ref_dim}", b.dim());
        } else {
            assert_eq!(b.gram_kept.len(), ref_gram_kept, "{name}: gram kept");
            if b.dim() != ref_dim {
                // rib's smallest Λ at unembed (3.6e-14 = 1.7e-19 of the largest) is below what a
                // float64 eigensolver resolves on this M (its sub-block has rank 114 = rank W_U;
                // LAPACK and faer give 115 directions, MKL 116): only such a direction may differ.
                let (_, l_ref) = read("Lambda");
                let top = max_abs(&l_ref);
                assert!(
                    !pca && b.dim() + 1 == ref_dim && l_ref[ref_dim - 1] < 1e-18 * top,
                    "{name}: dim {} vs {ref_dim}",
                    b.dim()
                );
                eprintln!(
                    "{run} {}: dim {} vs rib {ref_dim} (rib's last Λ {:e} = {:e} of max)",
                    b.node,
                    b.dim(),
                    l_ref[ref_dim - 1],
                    l_ref[ref_dim - 1] / top
                );
            }
        }
        let n = b.dim().min(ref_dim);

        // Means exact; Gram eigenvalues above 1e-8·max within 1e-7.
        let (_, mean_ref) = read("mean");
        let e_mean = max_abs_diff(&b.mean, &mean_ref) / max_abs(&mean_ref);
        assert!(e_mean < 1e-12, "{name}: mean {e_mean:e}");
        let top = ev_ref[0];
        let e_ev = b
            .gram_eigenvalues
            .iter()
            .zip(&ev_ref)
            .filter(|(_, r)| **r > 1e-8 * top)
            .map(|(a, r)| ((a - r) / r).abs())
            .fold(0.0, f64::max);
        assert!(e_ev < 1e-7, "{name}: gram eigenvalues {e_ev:e}");

        // Λ (jacobian) in bands of the largest, as the README's tolerances.
        let good: Vec<usize> = if let Some(lambda) = &b.lambda {
            let (_, l_ref) = read("Lambda");
            let (_, gap) = read("Lambda_relgap");
            let top = max_abs(&l_ref);
            let (hi, mid) = if b.node == "ln1.0" { (1e-3, 1e-1) } else { (1e-8, 1e-6) };
            let mut worst = (0.0f64, 0.0f64);
            for i in 0..n {
                let rel = ((lambda[i] - l_ref[i]) / l_ref[i]).abs();
                if l_ref[i] > 1e-4 * top {
                    worst.0 = worst.0.max(rel);
                } else if l_ref[i] > 1e-8 * top {
                    worst.1 = worst.1.max(rel);
                }
            }
            assert!(worst.0 < hi && worst.1 < mid, "{name}: Λ {worst:?}");
            eprintln!(
                "{run} {}: dim {}/{ref_dim}, Λ rel >1e-4·max {:.1e}, 1e-8..1e-4 {:.1e}",
                b.node,
                b.dim(),
                worst.0,
                worst.1
            );
            // 'Good' as the README counts them (46 / 24 / 37): above 1e-8 of the largest Λ
            // besides the constant direction's, with a relative gap.
            let top_units = l_ref[1..].iter().fold(0.0f64, |m, v| m.max(*v));
            (0..n).filter(|&i| l_ref[i] > 1e-8 * top_units && gap[i] > 1e-6).collect()
        } else {
            // PCA: the constant direction, then Gram eigenvalues with a clear gap.
            let g = &b.gram_kept;
            let top = g[1..].iter().fold(0.0f64, |m, v| m.max(*v));
            (0..n)
                .filter(|&i| {
                    i == 0 || {
                        let gap =
                            |j: usize| if j == 0 || j >= g.len() { f64::INFINITY } else { (g[i] - g[j]).abs() / g[i] };
                        g[i] > 1e-8 * top && gap(i - 1).min(gap(i + 1)) > 1e-6
                    }
                })
                .collect()
        };

        // C on good columns, sign-aligned; the good-column projector C[:, g] C⁺[g, :].
        let c_tol = match (pca, b.node.as_str()) {
            (true, _) => 1e-6,
            (false, "unembed") => 1e-9,
            _ if same_ln2 => 1e-3,
            _ => 1e-2,
        };
        let scale = max_abs(&c_ref);
        let mut e_c: f64 = 0.0;
        for &j in &good {
            let col = b.c().col(j);
            let r: Vec<f64> = (0..orig).map(|i| c_ref[i * ref_dim + j]).collect();
            let s = col.iter().zip(&r).map(|(a, b)| a * b).sum::<f64>().signum();
            e_c = e_c.max(col.iter().zip(&r).fold(0.0f64, |m, (a, b)| m.max((s * a - b).abs())) / scale);
        }
        assert!(e_c < c_tol, "{name}: C good columns {e_c:e}");
        let (_, cp_ref) = read("C_pinv");
        let proj = |c: &dyn Fn(usize, usize) -> f64, cp: &dyn Fn(usize, usize) -> f64| {
            Matrix::from_fn(orig, orig, |i, l| good.iter().map(|&j| c(i, j) * cp(j, l)).sum())
        };
        let ours = proj(&|i, j| b.c()[(i, j)], &|j, l| b.c_pinv()[(j, l)]);
        let theirs = proj(&|i, j| c_ref[i * ref_dim + j], &|j, l| cp_ref[j * orig + l]);
        let e_p = max_abs_diff(ours.as_slice(), theirs.as_slice()) / theirs.max_abs();
        // C⁺'s rows mix in the noise Gram directions (D ≈ 1e-15, amplified by D^{-1/2} in R):
        // rib against itself reaches 1e-3 at ln2.0 with the same truncation; with a different
        // one (ours keeps one noise direction fewer) the README gives no figure, we allow 2e-2.
        let p_tol = if pca || b.node == "unembed" || same_ln2 { c_tol.max(1e-6) } else { 2e-2 };
        assert!(e_p < p_tol, "{name}: good-column projector {e_p:e}");
        eprintln!(
            "{run} {}: mean {e_mean:.1e}, gram eig {e_ev:.1e}, C ({} good) {e_c:.1e}, projector {e_p:.1e}",
            b.node,
            good.len()
        );
        good_cols.push(good);
    }
    good_cols.push((0..114).collect());

    for (k, e) in edges.iter().enumerate() {
        let file = format!("E_hat_{k}_{}__{}.npy", e.in_node.replace('.', "_"), e.out_node.replace('.', "_"));
        let (shape, r) = floats(dir.join(file));
        let (rows, cols) = (e.e_hat.nrows().min(shape[0]), e.e_hat.ncols().min(shape[1]));
        let at = |i: usize, j: usize| r[i * shape[1] + j];
        let top = max_abs(&r);
        let block_max = |is: &mut dyn Iterator<Item = (usize, usize)>| {
            is.fold(0.0f64, |m, (i, j)| m.max((e.e_hat[(i, j)] - at(i, j)).abs())) / top
        };
        let all = (0..rows).flat_map(|i| (0..cols).map(move |j| (i, j)));
        let e_block = block_max(&mut all.clone());
        let sum: f64 = e.e_hat.as_slice().iter().sum();
        let sum_ref: f64 = r.iter().sum();
        let e_sum = ((sum - sum_ref) / sum_ref).abs();
        let rel_above = |floor: f64| {
            all.clone()
                .filter(|&(i, j)| at(i, j) > floor * top)
                .map(|(i, j)| ((e.e_hat[(i, j)] - at(i, j)) / at(i, j)).abs())
                .fold(0.0f64, f64::max)
        };
        let first = e.in_node == "ln1.0";
        let (good_out, good_in) = (&good_cols[k + 1], &good_cols[k]);
        let good = good_out
            .iter()
            .filter(|&&i| i < rows)
            .flat_map(|&i| good_in.iter().filter(|&&j| j < cols).map(move |&j| (i, j)));
        let e_good = block_max(&mut good.clone());
        match (pca, first) {
            (false, true) => {
                let e3 = rel_above(1e-3);
                assert!(e_block < 1e-3 && e_sum < 1e-3 && e3 < 5e-2, "{}: {e_block:e} {e_sum:e} {e3:e}", e.in_node);
                eprintln!(
                    "{run} {} → {}: common block {e_block:.1e}, sum {e_sum:.1e}, >1e-3·max {e3:.1e}, good block {e_good:.1e}",
                    e.in_node, e.out_node
                );
            }
            (true, true) => {
                assert!(
                    e_block < 5e-3 && e_sum < 1e-3 && e_good < 1e-8,
                    "{}: {e_block:e} {e_sum:e} {e_good:e}",
                    e.in_node
                );
                eprintln!(
                    "{run} {} → {}: all rows {e_block:.1e}, sum {e_sum:.1e}, good block {e_good:.1e}",
                    e.in_node, e.out_node
                );
            }
            _ => {
                let e6 = rel_above(1e-6);
                assert!(e_block < 1e-9 && e6 < 1e-6 && e_sum < 1e-10, "{}: {e_block:e} {e6:e} {e_sum:e}", e.in_node);
                eprintln!(
                    "{run} {} → {}: max {e_block:.1e}, >1e-6·max {e6:.1e}, sum {e_sum:.1e}",
                    e.in_node, e.out_node
                );
            }
        }
    }
}

#[test]
fn jacobian_squared_build_matches_rib() {
    let (bases, edges) = fixture_build::build(degeneracy::basis::BasisFormula::Jacobian);
    compare_run("jacobian_squared", &bases, &edges);
}

#[test]
fn pca_build_matches_rib() {
    let (bases, edges) = fixture_build::build(degeneracy::basis::BasisFormula::Svd);
    compare_run("pca", &bases, &edges);
}

/// A small random transformer (no LayerNorm unless `ln`), all 5³ token sequences.
fn small_model(json_extra: &str, seed: u64) -> (Transformer, Matrix) {
    use degeneracy::transformer::{TransformerConfig, TransformerWeights};
    let text = format!(
        r#"{{"n_layers": 1, "d_model": 6, "n_heads": 2, "d_head": 3, "d_mlp": 10, "d_vocab": 5,
            "n_ctx": 3, "act_fn": "relu", "normalization_type": null {json_extra}}}"#
    );
    let config = TransformerConfig::from_json_str(&text).unwrap();
    let weights = TransformerWeights::random(&config, 0.6, seed).unwrap();
    let tokens = Matrix::from_fn(125, 3, |i, p| ((i / 5usize.pow(p as u32)) % 5) as f64);
    (Transformer::new(config, weights).unwrap(), tokens)
}

mod sources {
    use super::*;
    use degeneracy::basis::{BasisFormula, JacobianGramAccumulator, JacobianPath, LibConfig, fit_bases};
    use degeneracy::estimate::{Quadrature, StochasticSources};
    use degeneracy::graph::{EdgeConfig, compute_edges};

    /// With one output position a single ±1 source is the exact sum (its sign squares away):
    /// the fixture's build with `n_stochastic_sources_*_pos: 1` equals the exact one.
    #[test]
    fn one_source_on_one_position_is_the_exact_sum() {
        let model = fixture_model();
        let tokens = read_tokens(case().join("tokens.npy")).unwrap();
        let exact_config = fixture_build::config(BasisFormula::Jacobian);
        let sources = StochasticSources { positions: Some(1), hidden: None, seed: 3 };
        let stochastic_config = LibConfig { jacobian_path: JacobianPath::Stochastic(sources), ..exact_config.clone() };
        let exact = fit_bases(&model, &tokens, &exact_config).unwrap();
        let stochastic = fit_bases(&model, &tokens, &stochastic_config).unwrap();
        for (a, b) in exact.iter().zip(&stochastic) {
            if let (Some(la), Some(lb)) = (&a.lambda, &b.lambda) {
                // Compare the directions above the noise floor of ln2.0 (rounding-level Λ).
                let top = max_abs(la);
                let n = la.iter().filter(|&&l| l > 1e-10 * top).count();
                let e = max_abs_diff(&la[..n], &lb[..n]) / top;
                assert!(e < 1e-12, "{}: Λ {e:e}", a.node);
            }
        }
        let edges = |path| {
            let config = EdgeConfig { batch_size: 256, path, ..EdgeConfig::default() };
            compute_edges(&model, &tokens, &exact[..2], &config).unwrap().remove(0).e_hat
        };
        let (e_exact, e_stoch) = (edges(JacobianPath::Auto), edges(JacobianPath::Stochastic(sources)));
        let e = max_abs_diff(e_exact.as_slice(), e_stoch.as_slice()) / e_exact.max_abs();
        assert!(e < 1e-12, "edges {e:e}");
    }

    /// `M'` of the attention section over all 3 output positions: the mean over k seeds of the
    /// estimate with random sources converges to the exact sum as 1/√k.
    #[test]
    fn the_mean_over_seeds_converges_as_one_over_root_k() {
        let (model, tokens) = small_model("", 5);
        let (k0, k1) = (model.node_index("ln1.0").unwrap(), model.node_index("ln2.0").unwrap());
        let section = model.section(k0, k1).unwrap();
        assert_eq!(section.output().positions, 3);
        let mut acts = vec![Matrix::default()];
        model.forward_nodes(tokens.view(), &[k0], &mut acts).unwrap();
        let c_next = Matrix::from_fn(7, 5, |i, j| ((i * 5 + j * 3) % 7) as f64 / 7.0 - 0.4);
        let m_dash = |sources: Option<StochasticSources>| {
            let mut acc = JacobianGramAccumulator::new(BasisFormula::Jacobian, &*section, 5)
                .unwrap()
                .with_sources(sources)
                .unwrap();
            // Two batches: the sources follow the dataset row, not the batch.
            acc.update_at(&*section, acts[0].rows(0..180), 0, &c_next, Quadrature::Gradient).unwrap();
            acc.update_at(&*section, acts[0].rows(180..375), 60, &c_next, Quadrature::Gradient).unwrap();
            acc.finish().unwrap().0
        };
        let exact = m_dash(None);
        let norm = exact.max_abs();
        for (positions, hidden) in [(Some(1), None), (Some(2), Some(3)), (None, Some(1))] {
            // RMS error of the mean of k seeds over 8 disjoint groups of seeds.
            let error = |k: u64| {
                let mut sq = 0.0;
                for g in 0..8 {
                    let mut mean = Matrix::zeros(exact.nrows(), exact.ncols());
                    for seed in 0..k {
                        let s = StochasticSources { positions, hidden, seed: g * 1000 + seed };
                        mean.add_scaled(1.0 / k as f64, &m_dash(Some(s)));
                    }
                    sq += (max_abs_diff(mean.as_slice(), exact.as_slice()) / norm).powi(2);
                }
                (sq / 8.0).sqrt()
            };
            let (e4, e64) = (error(4), error(64));
            let ratio = e64 / e4;
            eprintln!(
                "sources pos {positions:?} hidden {hidden:?}: error 4 seeds {e4:.2e}, 64 seeds {e64:.2e}, ratio {ratio:.3} (1/√16 = 0.25)"
            );
            assert!((0.12..0.5).contains(&ratio), "error does not fall as 1/√k: {e4:e} → {e64:e}");
        }
    }
}
