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
    eprintln!("logits: max |Δ| / max |logit| = {e:.1e}");

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
        eprintln!("node activations {name}: max |Δ| / max(1, max |a|) = {e:.1e}");
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

/// Architectures exercised by the finite-difference and reference tests: (name, config fields).
const VARIANTS: [(&str, &str); 6] = [
    ("plain_gelu", r#""normalization_type": null, "act_fn": "gelu""#),
    ("lnpre_gelu_new", r#""normalization_type": "LNPre", "act_fn": "gelu_new""#),
    ("ln_affine", r#""normalization_type": "LN", "act_fn": "gelu""#),
    (
        "parallel_rotary_neox",
        r#""normalization_type": "LNPre", "act_fn": "gelu", "parallel_attn_mlp": true, "positional_embedding_type": "rotary", "rotary_dim": 2, "original_architecture": "GPTNeoXForCausalLM""#,
    ),
    (
        "rotary_gptj",
        r#""normalization_type": "LNPre", "act_fn": "gelu_new", "positional_embedding_type": "rotary", "rotary_dim": 4"#,
    ),
    ("no_scale_relu", r#""normalization_type": null, "act_fn": "relu", "use_attn_scale": false"#),
];

mod reference {
    //! A direct TransformerLens-style forward pass (no folding, no module split) of the
    //! parameters as named in the state dict, and the models built from the same tensors.
    #![allow(clippy::needless_range_loop)]
    use super::*;
    use degeneracy::transformer::{TransformerConfig, TransformerWeights};
    use std::collections::BTreeMap;

    pub struct Case {
        pub json: String,
        pub tensors: BTreeMap<String, (Vec<usize>, Vec<f64>)>,
    }

    fn cfg_json(fields: &str) -> String {
        format!(
            r#"{{"n_layers": 2, "d_model": 6, "n_heads": 2, "d_head": 4, "d_mlp": 8, "d_vocab": 7, "n_ctx": 4,
                "eps": 1e-5, "model_name": "test", {fields}}}"#
        )
    }

    /// Random tensors for the variant (LayerNorm weights too with `"LN"`).
    pub fn case(fields: &str, seed: u64) -> Case {
        let json = cfg_json(fields);
        let config = TransformerConfig::from_json_str(&json).unwrap();
        let w = TransformerWeights::random(&config, 0.5, seed).unwrap();
        let mut tensors: BTreeMap<String, (Vec<usize>, Vec<f64>)> =
            w.named().into_iter().map(|(n, t)| (n, (t.shape.clone(), t.data.clone()))).collect();
        if config.ln_affine {
            let d = config.d_model;
            let mut k = seed;
            let mut next = || {
                k = k.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((k >> 33) % 1000) as f64 / 1000.0 - 0.5
            };
            let mut names = vec!["ln_final".to_string()];
            for l in 0..config.n_layers {
                names.push(format!("blocks.{l}.ln1"));
                names.push(format!("blocks.{l}.ln2"));
            }
            for name in names {
                tensors.insert(format!("{name}.w"), (vec![d], (0..d).map(|_| 1.0 + next()).collect()));
                tensors.insert(format!("{name}.b"), (vec![d], (0..d).map(|_| next()).collect()));
            }
        }
        config.validate().unwrap();
        Case { json, tensors }
    }

    /// Writes the state dict as safetensors.
    pub fn save(tensors: &BTreeMap<String, (Vec<usize>, Vec<f64>)>, path: &std::path::Path) {
        use safetensors::tensor::{Dtype, TensorView};
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, (s, v))| (n.clone(), s.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect()))
            .collect();
        let views: Vec<(String, TensorView<'_>)> =
            bytes.iter().map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F64, s.clone(), b).unwrap())).collect();
        std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
    }

    /// The model loaded from the case's files (the loader's folding of `"LN"` included).
    pub fn model(case: &Case) -> Transformer {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, st) = (dir.path().join("config.json"), dir.path().join("model.safetensors"));
        std::fs::write(&cfg, &case.json).unwrap();
        save(&case.tensors, &st);
        Transformer::load(cfg, st).unwrap()
    }

    fn act(name: &str, z: f64) -> f64 {
        match name {
            "relu" => z.max(0.0),
            "gelu" => 0.5 * z * (1.0 + libm_erf(z / 2f64.sqrt())),
            _ => 0.5 * z * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (z + 0.044715 * z * z * z)).tanh()),
        }
    }

    fn libm_erf(x: f64) -> f64 {
        // Abramowitz–Stegun 7.1.26 is too coarse; integrate erf' = 2/√π e^{−t²} (Simpson).
        let n = 2000;
        let h = x / n as f64;
        let f = |t: f64| (-t * t).exp();
        let mut s = f(0.0) + f(x);
        for i in 1..n {
            s += if i % 2 == 1 { 4.0 } else { 2.0 } * f(i as f64 * h);
        }
        s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
    }

    /// Logits at the last position of each sequence.
    pub fn logits(case: &Case, tokens: &Matrix) -> Matrix {
        let v: serde_json::Value = serde_json::from_str(&case.json).unwrap();
        let g = |k: &str| v[k].as_u64().unwrap() as usize;
        let (nl, d, h, e, m, voc) = (g("n_layers"), g("d_model"), g("n_heads"), g("d_head"), g("d_mlp"), g("d_vocab"));
        let norm = v["normalization_type"].as_str().map(String::from);
        let act_fn = v["act_fn"].as_str().unwrap().to_string();
        let parallel = v["parallel_attn_mlp"].as_bool().unwrap_or(false);
        let rotary = v["positional_embedding_type"].as_str() == Some("rotary");
        let rdim = v["rotary_dim"].as_u64().unwrap_or(0) as usize;
        let neox = v["original_architecture"].as_str() == Some("GPTNeoXForCausalLM");
        let scale = if v["use_attn_scale"].as_bool().unwrap_or(true) { (e as f64).sqrt() } else { 1.0 };
        let t = |n: &str| &case.tensors[n].1;
        let ln = |x: &[f64], name: &str| -> Vec<f64> {
            if norm.is_none() {
                return x.to_vec();
            }
            let mean = x.iter().sum::<f64>() / d as f64;
            let var = x.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / d as f64;
            let s = (var + 1e-5).sqrt();
            (0..d)
                .map(|i| {
                    let y = (x[i] - mean) / s;
                    if norm.as_deref() == Some("LN") {
                        y * t(&format!("{name}.w"))[i] + t(&format!("{name}.b"))[i]
                    } else {
                        y
                    }
                })
                .collect()
        };
        let rotate = |q: &mut [f64], pos: usize| {
            let half = rdim / 2;
            for i in 0..half {
                let ang = pos as f64 / 10000f64.powf(i as f64 / half as f64);
                let (a, b) = if neox { (i, i + half) } else { (2 * i, 2 * i + 1) };
                let (x, y) = (q[a], q[b]);
                q[a] = x * ang.cos() - y * ang.sin();
                q[b] = y * ang.cos() + x * ang.sin();
            }
        };
        let p = tokens.ncols();
        let mut out = Matrix::zeros(tokens.nrows(), voc);
        for s in 0..tokens.nrows() {
            let mut x: Vec<Vec<f64>> = (0..p)
                .map(|pos| {
                    let tok = tokens[(s, pos)] as usize;
                    (0..d)
                        .map(|i| {
                            t("embed.W_E")[tok * d + i] + if rotary { 0.0 } else { t("pos_embed.W_pos")[pos * d + i] }
                        })
                        .collect()
                })
                .collect();
            for l in 0..nl {
                let b = |n: &str| t(&format!("blocks.{l}.{n}"));
                let xn: Vec<Vec<f64>> = x.iter().map(|r| ln(r, &format!("blocks.{l}.ln1"))).collect();
                let proj = |w: &[f64], bias: &[f64], r: &[f64], hh: usize| -> Vec<f64> {
                    (0..e)
                        .map(|c| bias[hh * e + c] + (0..d).map(|i| r[i] * w[(hh * d + i) * e + c]).sum::<f64>())
                        .collect()
                };
                let mut attn = vec![vec![0.0; d]; p];
                for hh in 0..h {
                    let qs: Vec<Vec<f64>> = (0..p)
                        .map(|pos| {
                            let mut q = proj(b("attn.W_Q"), b("attn.b_Q"), &xn[pos], hh);
                            if rotary {
                                rotate(&mut q, pos);
                            }
                            q
                        })
                        .collect();
                    let ks: Vec<Vec<f64>> = (0..p)
                        .map(|pos| {
                            let mut k = proj(b("attn.W_K"), b("attn.b_K"), &xn[pos], hh);
                            if rotary {
                                rotate(&mut k, pos);
                            }
                            k
                        })
                        .collect();
                    let vs: Vec<Vec<f64>> =
                        (0..p).map(|pos| proj(b("attn.W_V"), b("attn.b_V"), &xn[pos], hh)).collect();
                    for qp in 0..p {
                        let sc: Vec<f64> =
                            (0..=qp).map(|kp| (0..e).map(|c| qs[qp][c] * ks[kp][c]).sum::<f64>() / scale).collect();
                        let mx = sc.iter().fold(f64::MIN, |a, &b| a.max(b));
                        let ex: Vec<f64> = sc.iter().map(|v| (v - mx).exp()).collect();
                        let z: f64 = ex.iter().sum();
                        for j in 0..d {
                            attn[qp][j] += (0..=qp)
                                .map(|kp| {
                                    ex[kp] / z
                                        * (0..e).map(|c| vs[kp][c] * b("attn.W_O")[(hh * e + c) * d + j]).sum::<f64>()
                                })
                                .sum::<f64>();
                        }
                    }
                }
                let mlp = |r: &[f64]| -> Vec<f64> {
                    let pre: Vec<f64> = (0..m)
                        .map(|o| b("mlp.b_in")[o] + (0..d).map(|i| r[i] * b("mlp.W_in")[i * m + o]).sum::<f64>())
                        .collect();
                    let post: Vec<f64> = pre.iter().map(|&z| act(&act_fn, z)).collect();
                    (0..d)
                        .map(|j| b("mlp.b_out")[j] + (0..m).map(|o| post[o] * b("mlp.W_out")[o * d + j]).sum::<f64>())
                        .collect()
                };
                for pos in 0..p {
                    let a: Vec<f64> = (0..d).map(|j| attn[pos][j] + b("attn.b_O")[j]).collect();
                    let mlp_in = if parallel { x[pos].clone() } else { (0..d).map(|j| x[pos][j] + a[j]).collect() };
                    let mo = mlp(&ln(&mlp_in, &format!("blocks.{l}.ln2")));
                    x[pos] = (0..d).map(|j| x[pos][j] + a[j] + mo[j]).collect();
                }
            }
            let xf = ln(&x[p - 1], "ln_final");
            for k in 0..voc {
                out[(s, k)] = t("unembed.b_U")[k] + (0..d).map(|i| xf[i] * t("unembed.W_U")[i * voc + k]).sum::<f64>();
            }
        }
        out
    }
}

fn variant_tokens() -> Matrix {
    Matrix::from_fn(9, 4, |i, p| ((i * 3 + p * 5 + i * p) % 7) as f64)
}

#[test]
fn forward_matches_a_direct_transformerlens_computation_for_every_variant() {
    for (k, (name, fields)) in VARIANTS.iter().enumerate() {
        let case = reference::case(fields, k as u64);
        let model = reference::model(&case);
        let tokens = variant_tokens();
        let mut y = Matrix::default();
        model.forward(tokens.view(), &mut y).unwrap();
        let r = reference::logits(&case, &tokens);
        let e = common::rel_max_diff(&y, &r);
        assert!(e < 1e-10, "{name}: {e:e}");
        // Cut at the unembedding: the same logits. (Cut at add_resid1, rib runs the later
        // blocks' attention on the last position alone: another function for 2 blocks.)
        let cut = model.clone().with_last_pos_module(Some(LastPosModule::Unembed));
        let mut y2 = Matrix::default();
        cut.forward(tokens.view(), &mut y2).unwrap();
        assert!(common::rel_max_diff(&y2, &r) < 1e-10, "{name}: cut at unembed");
    }
}

/// `Σ cot · F(x)` by a five-point stencil in every input coordinate, against the VJP.
fn vjp_fd_error(section: &dyn degeneracy::Section, x: &Matrix, cot: &Matrix) -> f64 {
    let lin = section.linearize(x.view()).unwrap();
    let mut g = Matrix::default();
    lin.vjp(cot.view(), &mut g).unwrap();
    let f = |x: &Matrix| {
        let mut y = Matrix::default();
        section.forward(x.view(), &mut y).unwrap();
        y.as_slice().iter().zip(cot.as_slice()).map(|(a, b)| a * b).sum::<f64>()
    };
    let h = 2e-4;
    let mut worst: f64 = 0.0;
    for k in 0..x.as_slice().len() {
        let at = |d: f64| {
            let mut xd = x.clone();
            xd.as_mut_slice()[k] += d;
            f(&xd)
        };
        let fd = (at(-2.0 * h) - 8.0 * at(-h) + 8.0 * at(h) - at(2.0 * h)) / (12.0 * h);
        worst = worst.max((fd - g.as_slice()[k]).abs());
    }
    worst / g.max_abs().max(1e-300)
}

#[test]
fn section_vjps_match_finite_differences_between_every_pair_of_node_layers() {
    for (k, (name, fields)) in VARIANTS.iter().enumerate().filter(|(_, (n, _))| !n.contains("relu")) {
        let case = reference::case(fields, 10 + k as u64);
        for lp in [None, Some(LastPosModule::AddResid1)] {
            let model = reference::model(&case).with_last_pos_module(lp);
            let tokens = variant_tokens().rows(0..2).to_owned();
            let n_nodes = model.node_layers().len();
            let all: Vec<usize> = (0..n_nodes).collect();
            let mut acts = vec![Matrix::default(); n_nodes];
            model.forward_nodes(tokens.view(), &all, &mut acts).unwrap();
            for from in 0..n_nodes - 1 {
                // Every consecutive section, and every section from here to a block boundary.
                for to in from + 1..n_nodes {
                    let consecutive = to == from + 1;
                    let boundary = model.node_layers()[to].name.starts_with("ln") || to == n_nodes - 1;
                    if !(consecutive || (boundary && to - from <= 12)) {
                        continue;
                    }
                    let section = model.section(from, to).unwrap();
                    let x = &acts[from];
                    let out = section.output();
                    // Two cotangent blocks.
                    let rows = x.nrows() / section.input().positions * out.positions;
                    let cot = Matrix::from_fn(2 * rows, out.width, |i, j| (((i * 7 + j * 13) % 11) as f64 - 5.0) / 5.0);
                    let mut y = Matrix::default();
                    section.forward(x.view(), &mut y).unwrap();
                    assert!(common::rel_max_diff(&y, &acts[to]) < 1e-12, "{name}: section {from}→{to} forward");
                    // Block 0 alone against finite differences; both blocks against block 0 and 1 alone.
                    let c0 = cot.rows(0..rows).to_owned();
                    let e = vjp_fd_error(&*section, x, &c0);
                    let (a, b) = (&model.node_layers()[from].name, &model.node_layers()[to].name);
                    assert!(e < 1e-7, "{name} {lp:?}: VJP {a} → {b}: {e:e}");
                    let lin = section.linearize(x.view()).unwrap();
                    let (mut g2, mut g0, mut g1) = (Matrix::default(), Matrix::default(), Matrix::default());
                    lin.vjp(cot.view(), &mut g2).unwrap();
                    lin.vjp(c0.view(), &mut g0).unwrap();
                    lin.vjp(cot.rows(rows..2 * rows), &mut g1).unwrap();
                    let half = g0.as_slice().len();
                    assert_eq!(&g2.as_slice()[..half], g0.as_slice(), "{name}: {a} → {b} block 0");
                    assert!(
                        max_abs_diff(&g2.as_slice()[half..], g1.as_slice()) <= 1e-14 * g1.max_abs(),
                        "{name}: {a} → {b} block 1"
                    );
                    // vjp_mapped = vjp · map.
                    let map = Matrix::from_fn(x.ncols(), 3, |i, j| ((i + 2 * j) % 5) as f64 - 2.0);
                    let mut mapped = Matrix::default();
                    lin.vjp_mapped(cot.view(), &map, &mut mapped).unwrap();
                    let expected = g2.matmul(&map).unwrap();
                    assert!(common::rel_max_diff(&mapped, &expected) < 1e-12, "{name}: {a} → {b} vjp_mapped");
                }
            }
        }
    }
}

#[test]
fn parameter_gradients_match_finite_differences() {
    for (k, (name, fields)) in VARIANTS.iter().enumerate().filter(|(_, (n, _))| !n.contains("relu")) {
        let case = reference::case(fields, 20 + k as u64);
        for lp in [None, Some(LastPosModule::AddResid1)] {
            let mut model = reference::model(&case).with_last_pos_module(lp);
            let tokens = variant_tokens();
            let grad_y = Matrix::from_fn(tokens.nrows(), 7, |i, j| (((i * 5 + j * 3) % 7) as f64 - 3.0) / 3.0);
            let mut gp = vec![0.0; model.n_params()];
            let mut gx = Matrix::default();
            model.backward(tokens.view(), grad_y.view(), &mut gx, &mut gp).unwrap();
            assert!(gx.as_slice().iter().all(|&v| v == 0.0), "token ids have no gradient");
            // Mis-shaped cotangents and gradient buffers are shape errors, not panics.
            let short = Matrix::zeros(tokens.nrows(), 6);
            let err = model.backward(tokens.view(), short.view(), &mut gx, &mut gp).unwrap_err();
            assert!(matches!(err, degeneracy::Error::ShapeMismatch { .. }), "{err}");
            let err = model.backward(tokens.view(), grad_y.view(), &mut gx, &mut gp[1..]).unwrap_err();
            assert!(matches!(err, degeneracy::Error::ShapeMismatch { .. }), "{err}");
            let mut p = vec![0.0; model.n_params()];
            model.copy_params(&mut p).unwrap();
            let h = 1e-3;
            let mut worst: f64 = 0.0;
            let scale = gp.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for i in (0..p.len()).step_by(3) {
                let mut at = |d: f64| {
                    let mut q = p.clone();
                    q[i] += d;
                    model.set_params(&q).unwrap();
                    let mut y = Matrix::default();
                    model.forward(tokens.view(), &mut y).unwrap();
                    y.as_slice().iter().zip(grad_y.as_slice()).map(|(a, b)| a * b).sum::<f64>()
                };
                let fd = (at(-2.0 * h) - 8.0 * at(-h) + 8.0 * at(h) - at(2.0 * h)) / (12.0 * h);
                worst = worst.max((fd - gp[i]).abs() / scale);
            }
            model.set_params(&p).unwrap();
            assert!(worst < 1e-7, "{name} {lp:?}: parameter gradient {worst:e}");
        }
    }
}

mod invariance {
    use super::*;
    use degeneracy::basis::{Basis, LibConfig, NodeBasis, fit_bases};
    use degeneracy::graph::{EdgeConfig, compute_edges};
    use degeneracy::transformer::{Tensor, TransformerWeights};
    use proptest::prelude::*;

    fn inverse(a: &Matrix) -> Matrix {
        // A⁻¹ = (AᵀA)⁻¹ Aᵀ through the eigendecomposition of AᵀA.
        let ata = a.transpose().matmul(a).unwrap();
        let (vals, vecs) = degeneracy::linalg::symmetric_eigen(&ata).unwrap();
        let inv_diag = Matrix::from_diagonal(&vals.iter().map(|v| 1.0 / v).collect::<Vec<_>>());
        vecs.matmul(&inv_diag).unwrap().matmul(&vecs.transpose()).unwrap().matmul(&a.transpose()).unwrap()
    }

    /// `T ← T·A` on the last axis (`[.., d]` tensors) or `T ← A⁻¹ᵀ`-style on the `d_model` axis
    /// of `[h, d, e]` / `[d, k]` tensors (`left`: `T[.., i, c] ← Σ_j B[i, j] T[.., j, c]`).
    fn right(t: &mut Tensor, a: &Matrix) {
        let d = a.nrows();
        for row in t.data.chunks_mut(d) {
            let new: Vec<f64> = (0..d).map(|j| (0..d).map(|k| row[k] * a[(k, j)]).sum()).collect();
            row.copy_from_slice(&new);
        }
    }

    fn left(t: &mut Tensor, b: &Matrix) {
        let d = b.nrows();
        let cols = t.shape[t.shape.len() - 1];
        for block in t.data.chunks_mut(d * cols) {
            let old = block.to_vec();
            for i in 0..d {
                for c in 0..cols {
                    block[i * cols + c] = (0..d).map(|j| b[(i, j)] * old[j * cols + c]).sum();
                }
            }
        }
    }

    /// The residual stream in another basis: `r ↦ r A` everywhere it is written, `A⁻¹` wherever
    /// it is read. The function is the same; every residual node layer is mapped by `A`.
    fn rotate_residual(w: &TransformerWeights, a: &Matrix) -> TransformerWeights {
        let a_inv = inverse(a);
        let mut w = w.clone();
        right(&mut w.w_e, a);
        right(w.w_pos.as_mut().unwrap(), a);
        for b in &mut w.blocks {
            for t in [&mut b.w_q, &mut b.w_k, &mut b.w_v, &mut b.w_in] {
                left(t, &a_inv);
            }
            for t in [&mut b.w_o, &mut b.b_o, &mut b.w_out, &mut b.b_out] {
                right(t, a);
            }
        }
        left(&mut w.w_u, &a_inv);
        w
    }

    fn build(model: &Transformer, tokens: &Matrix) -> (Vec<NodeBasis>, Vec<Matrix>) {
        let nodes = ["ln1.0", "ln2.0", "unembed", "output"].map(String::from).to_vec();
        let lib = LibConfig { node_layers: Some(nodes), ..LibConfig::default() };
        let bases = fit_bases(model, tokens, &lib).unwrap();
        let edges = compute_edges(model, tokens, &bases, &EdgeConfig::default()).unwrap();
        (bases, edges.into_iter().map(|e| e.e_hat).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]

        /// An invertible map of the residual stream at every residual node layer, undone by the
        /// sections that read it, leaves the kept dimensions, every Λ and every edge unchanged.
        #[test]
        fn lib_and_edges_are_invariant_to_a_change_of_residual_basis(seed in 0u64..1000) {
            let (model, tokens) = small_model("", seed);
            let model = model.with_last_pos_module(Some(LastPosModule::AddResid1));
            let d = model.config().d_model;
            let a = Matrix::from_fn(d, d, |i, j| {
                1.5 * f64::from(u8::from(i == j)) + 0.6 * ((((i * 7 + j * 3) as u64 + seed) % 11) as f64 / 11.0 - 0.5)
            });
            let rotated = Transformer::new(model.config().clone(), rotate_residual(model.weights(), &a))
                .unwrap()
                .with_last_pos_module(Some(LastPosModule::AddResid1));
            let (mut y, mut y2) = (Matrix::default(), Matrix::default());
            model.forward(tokens.view(), &mut y).unwrap();
            rotated.forward(tokens.view(), &mut y2).unwrap();
            prop_assert!(common::rel_max_diff(&y2, &y) < 1e-11, "function changed");
            let (ba, ea) = build(&model, &tokens);
            let (bb, eb) = build(&rotated, &tokens);
            for (a, b) in ba.iter().zip(&bb) {
                prop_assert_eq!(a.dim(), b.dim(), "{}", a.node);
                if let (Some(la), Some(lb)) = (&a.lambda, &b.lambda) {
                    let e = max_abs_diff(la, lb) / max_abs(la);
                    prop_assert!(e < 1e-8, "{}: Λ {:e}", a.node, e);
                }
            }
            for (k, (a, b)) in ea.iter().zip(&eb).enumerate() {
                let e = common::rel_max_diff(b, a);
                prop_assert!(e < 1e-8, "edges {}: {:e}", k, e);
            }
        }
    }
}

mod loading {
    use super::*;
    use degeneracy::Error;
    use degeneracy::transformer::TransformerConfig;
    use safetensors::tensor::{Dtype, TensorView};
    use std::collections::BTreeMap;

    type Tensors = BTreeMap<String, (Vec<usize>, Vec<f64>)>;

    /// Writes `tensors` (and optional raw extra tensors) with `config`; returns the load result.
    fn load(
        config: &str,
        tensors: &Tensors,
        raw: &[(&str, Dtype, Vec<usize>, Vec<u8>)],
    ) -> degeneracy::Result<Transformer> {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, st) = (dir.path().join("config.json"), dir.path().join("model.safetensors"));
        std::fs::write(&cfg, config).unwrap();
        let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, (s, v))| (n.clone(), Dtype::F64, s.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect()))
            .chain(raw.iter().map(|(n, d, s, b)| (n.to_string(), *d, s.clone(), b.clone())))
            .collect();
        let views: Vec<(String, TensorView<'_>)> =
            bytes.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
        std::fs::write(&st, safetensors::serialize(views, None).unwrap()).unwrap();
        Transformer::load(cfg, st)
    }

    fn base() -> reference::Case {
        reference::case(r#""normalization_type": null, "act_fn": "relu""#, 3)
    }

    #[test]
    fn every_tensor_must_be_accounted_for_and_errors_name_it() {
        let case = base();
        assert!(load(&case.json, &case.tensors, &[]).is_ok());
        // Known buffers are accepted (a causal mask is checked).
        let causal: Vec<u8> = (0..16).map(|k| u8::from(k % 4 <= k / 4)).collect();
        let buffers = [
            ("blocks.0.attn.mask", Dtype::BOOL, vec![4, 4], causal.clone()),
            ("blocks.1.attn.IGNORE", Dtype::F64, vec![], f64::NEG_INFINITY.to_le_bytes().to_vec()),
        ];
        assert!(load(&case.json, &case.tensors, &buffers).is_ok());
        let mut not_causal = causal;
        not_causal[1] = 1;
        match load(&case.json, &case.tensors, &[("blocks.0.attn.mask", Dtype::BOOL, vec![4, 4], not_causal)]) {
            Err(Error::Malformed { reason, .. }) => assert!(reason.contains("blocks.0.attn.mask"), "{reason}"),
            other => panic!("non-causal mask: {other:?}"),
        }
        // A buffer of another element type is refused by name.
        match load(&case.json, &case.tensors, &[("blocks.0.attn.mask", Dtype::I64, vec![4, 4], vec![0u8; 128])]) {
            Err(Error::Dtype { name, .. }) => assert_eq!(name, "blocks.0.attn.mask"),
            other => panic!("integer mask: {other:?}"),
        }
        // Missing.
        let mut missing = case.tensors.clone();
        missing.remove("blocks.1.attn.W_K");
        match load(&case.json, &missing, &[]) {
            Err(Error::MissingTensor { name, path }) => {
                assert_eq!(name, "blocks.1.attn.W_K");
                assert!(path.ends_with("model.safetensors"));
            }
            other => panic!("missing tensor: {other:?}"),
        }
        // Unexpected (an unknown name, a block the config does not have).
        for extra in ["blocks.0.attn.W_X", "blocks.2.mlp.W_in"] {
            let mut more = case.tensors.clone();
            more.insert(extra.into(), (vec![2], vec![0.0, 1.0]));
            match load(&case.json, &more, &[]) {
                Err(Error::UnexpectedTensor { names, path }) => {
                    assert_eq!(names, [extra]);
                    assert!(path.ends_with("model.safetensors"));
                }
                other => panic!("unexpected tensor {extra}: {other:?}"),
            }
        }
        // Mis-shaped.
        let mut bad = case.tensors.clone();
        bad.insert("blocks.0.attn.W_Q".into(), (vec![2, 6, 3], vec![0.1; 36]));
        match load(&case.json, &bad, &[]) {
            Err(Error::TensorShape { name, expected, found, path }) => {
                assert_eq!(
                    (name.as_str(), expected.as_str(), found),
                    ("blocks.0.attn.W_Q", "[2, 6, 4]", vec![2, 6, 3])
                );
                assert!(path.ends_with("model.safetensors"));
            }
            other => panic!("mis-shaped tensor: {other:?}"),
        }
        // Wrong element type.
        let mut ints = case.tensors.clone();
        ints.remove("unembed.b_U");
        let raw = [("unembed.b_U", Dtype::I64, vec![7], vec![0u8; 56])];
        match load(&case.json, &ints, &raw) {
            Err(Error::Dtype { name, .. }) => assert_eq!(name, "unembed.b_U"),
            other => panic!("integer weights: {other:?}"),
        }
        // Non-finite weights.
        let mut nan = case.tensors.clone();
        nan.get_mut("blocks.0.mlp.b_in").unwrap().1[3] = f64::NAN;
        match load(&case.json, &nan, &[]) {
            Err(Error::NonFinite { what, col: 3, .. }) => assert!(what.contains("blocks.0.mlp.b_in"), "{what}"),
            other => panic!("NaN weight: {other:?}"),
        }
        // "LN" needs every LayerNorm's affine parameters.
        let ln = reference::case(r#""normalization_type": "LN", "act_fn": "relu""#, 4);
        let mut no_ln = ln.tensors.clone();
        no_ln.remove("blocks.1.ln2.b");
        match load(&ln.json, &no_ln, &[]) {
            Err(Error::MissingTensor { name, .. }) => assert_eq!(name, "blocks.1.ln2.b"),
            other => panic!("missing LayerNorm bias: {other:?}"),
        }
        // …and without "LN" they are unexpected.
        match load(&case.json, &ln.tensors, &[]) {
            Err(Error::UnexpectedTensor { names, .. }) => {
                let ln_only: Vec<&String> = ln.tensors.keys().filter(|n| !case.tensors.contains_key(*n)).collect();
                assert_eq!(ln_only.len(), 10, "2 blocks × (ln1, ln2) × (w, b) + ln_final (w, b): {ln_only:?}");
                assert_eq!(names.iter().collect::<Vec<_>>(), ln_only);
            }
            other => panic!("LayerNorm weights for a model without them: {other:?}"),
        }
    }

    #[test]
    fn config_values_that_change_the_computation_are_refused_by_name() {
        let ok = r#""n_layers": 1, "d_model": 8, "n_heads": 2, "d_head": 4, "d_mlp": 16, "d_vocab": 5, "n_ctx": 3"#;
        let parse = |extra: &str| TransformerConfig::from_json_str(&format!("{{{ok}, {extra}}}"));
        // Harmless unknown fields (names, seeds, dtypes) are accepted.
        assert!(
            parse(r#""act_fn": "relu", "model_name": "x", "seed": 3, "dtype": "float32", "tokenizer_name": null"#)
                .is_ok()
        );
        assert!(TransformerConfig::from_json_file(case().join("model_config.json")).is_ok());
        for (extra, key) in [
            (r#""act_fn": "solu_ln""#, "act_fn"),
            (r#""act_fn": "relu", "normalization_type": "RMS""#, "normalization_type"),
            (r#""act_fn": "relu", "positional_embedding_type": "alibi""#, "positional_embedding_type"),
            (r#""act_fn": "relu", "positional_embedding_type": "rotary""#, "rotary_dim"),
            (r#""act_fn": "relu", "positional_embedding_type": "rotary", "rotary_dim": 3"#, "rotary_dim"),
            (r#""act_fn": "relu", "attn_only": true"#, "attn_only"),
            (r#""act_fn": "relu", "attention_dir": "bidirectional""#, "attention_dir"),
            (r#""act_fn": "relu", "gated_mlp": true"#, "gated_mlp"),
            (r#""act_fn": "relu", "final_rms": true"#, "final_rms"),
            (r#""act_fn": "relu", "use_local_attn": true"#, "use_local_attn"),
            (r#""act_fn": "relu", "n_key_value_heads": 1"#, "n_key_value_heads"),
            (r#""act_fn": "relu", "d_vocab_out": 7"#, "d_vocab_out"),
            (r#""act_fn": "relu", "attn_scale": 3.0"#, "attn_scale"),
            (r#""act_fn": "relu", "parallel_attn_mlp": true"#, "parallel_attn_mlp"),
            (r#""act_fn": "relu", "eps": "small""#, "eps"),
        ] {
            match parse(extra) {
                Err(Error::InvalidParameter { name, .. }) => assert_eq!(name, key, "{extra}"),
                other => panic!("{extra}: {other:?}"),
            }
        }
        match TransformerConfig::from_json_str(r#"{"n_layers": 1, "d_model": 8}"#) {
            Err(Error::InvalidParameter { name, .. }) => assert_eq!(name, "n_heads"),
            other => panic!("missing field: {other:?}"),
        }
        assert!(matches!(TransformerConfig::from_json_str("{"), Err(Error::Malformed { .. })));
    }

    #[test]
    fn token_ids_are_checked_by_sequence_and_position() {
        let model = reference::model(&base());
        let mut y = Matrix::default();
        let bad = Matrix::from_rows(&[[0.0, 1.0, 2.0, 3.0], [1.0, 7.0, 0.0, 0.0]]).unwrap();
        match model.forward(bad.view(), &mut y) {
            Err(Error::InvalidParameter { name, .. }) => assert!(name.contains("sequence 1, position 1"), "{name}"),
            other => panic!("token 7 of 7: {other:?}"),
        }
        let frac = Matrix::from_rows(&[[0.0, 1.5, 2.0, 3.0]]).unwrap();
        assert!(matches!(model.forward(frac.view(), &mut y), Err(Error::InvalidParameter { .. })));
        let short = Matrix::from_rows(&[[0.0, 1.0, 2.0]]).unwrap();
        assert!(matches!(model.forward(short.view(), &mut y), Err(Error::ShapeMismatch { .. })));
        let dir = tempfile::tempdir().unwrap();
        io::write_ints(dir.path().join("neg.npy"), &[1, 3], &[0, -1, 2]).unwrap();
        assert!(matches!(read_tokens(dir.path().join("neg.npy")), Err(Error::InvalidParameter { .. })));
        io::write_ints(dir.path().join("flat.npy"), &[3], &[0, 1, 2]).unwrap();
        assert!(matches!(read_tokens(dir.path().join("flat.npy")), Err(Error::Malformed { .. })));
        assert!(model.clone().with_positions(5).is_err());
    }
}

/// A LayerNorm model (LNPre): the variance coordinate of `ln1_out.0` and `ln2_out.0` is its own
/// LIB direction (rib's `isolate_ln_var`), right after the constant one, end to end.
#[test]
fn layer_norm_variance_is_isolated_end_to_end() {
    use degeneracy::basis::{Basis, JacobianPath, LibConfig, fit_bases};
    use degeneracy::graph::{EdgeConfig, compute_edges};
    let case = reference::case(r#""normalization_type": "LNPre", "act_fn": "gelu""#, 31); // 2 blocks
    let model = reference::model(&case);
    let tokens =
        Matrix::from_fn(7usize.pow(3), 4, |i, p| if p == 3 { 0.0 } else { ((i / 7usize.pow(p as u32)) % 7) as f64 });
    let names = ["ln1_out.0", "ln2_out.0", "ln1_out.1", "unembed", "output"];
    let nodes: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    for (k, name) in names.iter().enumerate() {
        let node = &model.node_layers()[model.node_index(name).unwrap()];
        assert_eq!(node.isolated, usize::from(k < 3), "{name}");
    }
    let lib = LibConfig { node_layers: Some(nodes.clone()), truncation_threshold: 1e-12, ..LibConfig::default() };
    let bases = fit_bases(&model, &tokens, &lib).unwrap();
    let all: Vec<usize> = names.iter().map(|n| model.node_index(n).unwrap()).collect();
    let mut acts = vec![Matrix::default(); all.len()];
    model.forward_nodes(tokens.view(), &all, &mut acts).unwrap();
    for (b, f) in bases.iter().zip(&acts).take(3) {
        let (c, width) = (b.c(), b.orig_dim());
        let mean = &b.mean;
        // Column 1 = e_0 − μ₀ e_c, scaled: only the variance and the constant coordinate.
        assert!((1..width - 1).all(|i| c[(i, 1)] == 0.0), "{}: column 1 touches other coordinates", b.node);
        assert!(((c[(width - 1, 1)] / c[(0, 1)]) + mean[0]).abs() < 1e-12, "{}: centring of column 1", b.node);
        // Its Λ is its mean square: E[(f C)₁²] = Λ₁ (the isolated Gram diagonal is its variance).
        let coords = f.matmul(c).unwrap();
        let sq: f64 = (0..coords.nrows()).map(|i| coords[(i, 1)] * coords[(i, 1)]).sum::<f64>() / coords.nrows() as f64;
        let l1 = b.lambda.as_ref().unwrap()[1];
        assert!(((sq - l1) / l1).abs() < 1e-9, "{}: E[f̂₁²] {sq} vs Λ₁ {l1}", b.node);
    }
    // The generic path gives the same bases; without isolation column 1 mixes coordinates.
    let generic =
        fit_bases(&model, &tokens, &LibConfig { jacobian_path: JacobianPath::Generic, ..lib.clone() }).unwrap();
    for (a, b) in bases.iter().zip(&generic) {
        if let (Some(la), Some(lb)) = (&a.lambda, &b.lambda) {
            assert!(max_abs_diff(la, lb) < 1e-10 * max_abs(la), "{}", a.node);
        }
    }
    let mixed = fit_bases(&model.clone().with_isolate_ln_var(false), &tokens, &lib).unwrap();
    assert!((1..mixed[0].orig_dim() - 1).any(|i| mixed[0].c()[(i, 1)].abs() > 1e-8));
    let edges = compute_edges(&model, &tokens, &bases, &EdgeConfig::default()).unwrap();
    // The variance direction of ln2_out.0 interacts with the next layer.
    let out_of_variance: f64 = (0..edges[1].e_hat.nrows()).map(|i| edges[1].e_hat[(i, 1)]).sum();
    assert!(
        out_of_variance > 0.0 && edges.iter().all(|e| e.e_hat.as_slice().iter().all(|v| v.is_finite() && *v >= 0.0))
    );
}

mod lib_build_job {
    use super::*;
    use std::process::Command;

    fn run(config: &serde_json::Value) -> (bool, String, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.json");
        std::fs::write(&cfg, serde_json::to_string_pretty(config).unwrap()).unwrap();
        let out = Command::new(env!("CARGO"))
            .args(["run", "--release", "--quiet", "--example", "lib_build", "--"])
            .arg(&cfg)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned(), dir)
    }

    fn config(out: &std::path::Path) -> serde_json::Value {
        let c = case().canonicalize().unwrap();
        serde_json::json!({
            "model": c.join("model.safetensors"), "model_config": c.join("model_config.json"),
            "inputs": c.join("tokens.npy"), "last_pos_module_type": "add_resid1",
            "node_layers": ["ln1.0", "ln2.0", "unembed", "output"], "basis_formula": "jacobian",
            "edge_formula": "squared", "integration_method": "gradient", "center": true,
            "truncation_threshold": 1e-15, "batch_size": 256, "out_dir": out,
        })
    }

    #[test]
    fn lib_build_runs_the_fixture_transformer() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let (ok, stderr, _dir) = run(&config(&out));
        assert!(ok, "{stderr}");
        for k in 0..3 {
            let node = ["ln1_0", "ln2_0", "unembed"][k];
            for what in ["C", "C_pinv", "Lambda", "gram_eigvals"] {
                assert!(out.join(format!("{what}_{k}_{node}.npy")).exists(), "{what}_{k}_{node}.npy");
            }
        }
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
        let dims: Vec<u64> = report["nodes"].as_array().unwrap().iter().map(|n| n["dim"].as_u64().unwrap()).collect();
        assert_eq!(dims[0], 115);
        assert_eq!(report["n_samples"], 3830);
        assert!(out.join("modules.json").exists());
        // The edges that rib's tolerances pin down to 1e-9 of the largest.
        for (file, rows, cols) in
            [("E_hat_1_ln2_0__unembed.npy", dims[2], dims[1]), ("E_hat_2_unembed__output.npy", 114, dims[2])]
        {
            let e = io::read_matrix(out.join(file)).unwrap();
            assert_eq!(e.shape(), (rows as usize, cols as usize), "{file}");
            let (shape, r) = floats(case().join("jacobian_squared").join(file));
            let top = max_abs(&r);
            let worst = (0..e.nrows())
                .flat_map(|i| (0..e.ncols()).map(move |j| (i, j)))
                .fold(0.0f64, |m, (i, j)| m.max((e[(i, j)] - r[i * shape[1] + j]).abs()));
            assert!(worst / top < 1e-9, "{file}: {:e}", worst / top);
        }
        eprintln!("lib_build on the fixture: {}", report["seconds"]);
    }

    #[test]
    fn lib_build_refuses_transformer_keys_without_a_transformer() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = config(&tmp.path().join("out"));
        cfg["last_pos_module_type"] = "add_resid2".into();
        let (ok, stderr, _d) = run(&cfg);
        assert!(!ok && stderr.contains("last_pos_module_type"), "{stderr}");
        let mut mlp = config(&tmp.path().join("out"));
        mlp.as_object_mut().unwrap().remove("model_config");
        let (ok, stderr, _d) = run(&mlp);
        assert!(!ok && stderr.contains("model_config"), "{stderr}");
        let mut unknown = config(&tmp.path().join("out"));
        unknown["node_layers"] = serde_json::json!(["ln1.0", "ln3.0", "output"]);
        let (ok, stderr, _d) = run(&unknown);
        assert!(!ok && stderr.contains("ln3.0"), "{stderr}");
    }
}

/// The transformer as a `Layer`: it trains on modular addition (cross-entropy at the last
/// position), and the LLC of its training loss runs.
#[test]
fn a_small_transformer_trains_and_has_an_llc() {
    use degeneracy::nn::{Optimizer, TrainConfig, evaluate, train};
    use degeneracy::transformer::{TransformerConfig, TransformerWeights};
    use degeneracy::{Dataset, LayerLoss, LlcConfig, LlcEstimator, Loss, Targets};
    let p = 7;
    let config = TransformerConfig::from_json_str(&format!(
        r#"{{"n_layers": 1, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32, "d_vocab": {},
            "n_ctx": 3, "act_fn": "relu", "normalization_type": null}}"#,
        p + 1
    ))
    .unwrap();
    let mut model = Transformer::new(config.clone(), TransformerWeights::random(&config, 0.3, 2).unwrap())
        .unwrap()
        .with_last_pos_module(Some(LastPosModule::AddResid1));
    let tokens = Matrix::from_fn(p * p, 3, |i, k| [(i / p) as f64, (i % p) as f64, p as f64][k]);
    let labels: Vec<usize> = (0..p * p).map(|i| (i / p + i % p) % p).collect();
    let data = Dataset::new(tokens, Targets::Labels(labels)).unwrap();
    let before = evaluate(&model, &data, Loss::CrossEntropy).unwrap().0;
    let cfg = TrainConfig { optimizer: Optimizer::adam(1e-2), epochs: 300, ..TrainConfig::default() };
    train(&mut model, &data, &cfg).unwrap();
    let (after, accuracy) = evaluate(&model, &data, Loss::CrossEntropy).unwrap();
    assert!(after < 0.1 * before, "cross-entropy {before} → {after}");
    assert!(accuracy.unwrap() > 0.9, "{accuracy:?}");
    let loss = LayerLoss::new(&model, Loss::CrossEntropy, data).unwrap();
    let llc = LlcConfig::new(1e-4).localization(100.0).batch_size(49).num_chains(2).num_draws(100).seed(0);
    let report = LlcEstimator::new(llc).unwrap().estimate(&loss, &loss.params()).unwrap();
    assert!(report.llc_mean.is_finite() && report.llc_mean > 0.0, "{}", report.llc_mean);
}

/// The sections that are one affine layer say so, with their node's shape: the unembedding
/// (all positions, or the last one), not the attention.
#[test]
fn the_unembedding_is_a_structured_section_of_its_node_shape() {
    let (model, _) = small_model("", 1);
    for lp in [None, Some(LastPosModule::AddResid1), Some(LastPosModule::Unembed)] {
        let model = model.clone().with_last_pos_module(lp);
        let (u, out) = (model.node_index("unembed").unwrap(), model.node_index("output").unwrap());
        let section = model.section(u, out).unwrap();
        let shape = model.node_layers()[u].shape();
        match section.structure() {
            Some(layer) => {
                assert_ne!(lp, Some(LastPosModule::Unembed));
                assert_eq!(degeneracy::Section::input(layer), shape);
            }
            None => assert_eq!(lp, Some(LastPosModule::Unembed)),
        }
        // ln_final → output drops the identities: still one layer.
        let ln_final = model.node_index("ln_final").unwrap();
        assert_eq!(model.section(ln_final, out).unwrap().structure().is_some(), lp != Some(LastPosModule::Unembed));
        let (a, b) = (model.node_index("ln1.0").unwrap(), model.node_index("ln2.0").unwrap());
        assert!(model.section(a, b).unwrap().structure().is_none());
        let (m, e) = (model.node_index("ln2.0").unwrap(), model.node_index("ln_final").unwrap());
        assert!(model.section(m, e).unwrap().residual().is_some(), "the MLP block is a residual block");
    }
}

/// Edge ablation by bisection at δ = 0.001 accuracy on the test split (every (a, b) not in
/// `tokens.npy`), with the fixture's LIB and PCA edges: the edges needed per node layer against
/// rib's stored results for seed 0 (`notes/paper.md`: LIB 133 / 82 / 633, PCA 167 / 114 / 682).
/// Measured here: LIB 130 / 80 / 633, PCA 167 / 114 / 682. (About two minutes in release.)
#[test]
#[ignore = "slow: about two minutes; run with --ignored"]
fn edge_ablation_counts_match_the_paper() {
    use degeneracy::ablation::{EdgeAblation, Eval, Midpoint};
    use degeneracy::basis::BasisFormula;
    use degeneracy::{Dataset, Targets};
    let model = fixture_model();
    let train = read_tokens(case().join("tokens.npy")).unwrap();
    let p = 113;
    let mut seen = vec![false; p * p];
    for i in 0..train.nrows() {
        seen[train[(i, 0)] as usize * p + train[(i, 1)] as usize] = true;
    }
    let rest: Vec<usize> = (0..p * p).filter(|&k| !seen[k]).collect();
    let test = Matrix::from_fn(rest.len(), 3, |i, c| [(rest[i] / p) as f64, (rest[i] % p) as f64, p as f64][c]);
    let labels: Vec<usize> = rest.iter().map(|k| (k / p + k % p) % p).collect();
    let data = Dataset::new(test, Targets::Labels(labels)).unwrap();
    for formula in [BasisFormula::Jacobian, BasisFormula::Svd] {
        let (bases, edges) = fixture_build::build(formula);
        let mut counts = Vec::new();
        for (pair, e) in bases.windows(2).zip(&edges) {
            let ab = EdgeAblation::new(&model, &data, &pair[0], &pair[1], e, Eval::Accuracy).unwrap();
            let b = ab.bisect(0.001, Midpoint::Linear).unwrap();
            counts.push((b.n_edges_required, b.no_ablation_result, b.score));
        }
        eprintln!("{formula:?}: {counts:?}");
        let needed: Vec<usize> = counts.iter().map(|c| c.0).collect();
        match formula {
            // PCA edges are pinned down to 1e-8 (good block): the same counts.
            BasisFormula::Svd => assert_eq!(needed, [167, 114, 682]),
            // LIB's first two edge matrices depend on ln2.0's noise directions (README): a few
            // edges either way.
            _ => {
                for (n, paper) in needed.iter().zip([133, 82, 633]) {
                    assert!(n.abs_diff(paper) <= 4, "{needed:?}");
                }
            }
        }
    }
}
