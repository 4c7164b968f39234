//! Node and edge ablations against dense reference computations (the ablated network built
//! explicitly), chance level, the bisection's minimality, the log-norm ε and bad input.

mod common;

use common::fixtures;
use degeneracy::ablation::{
    Directions, EdgeAblation, Eval, Midpoint, by_layer_log_norm, evaluate, node_ablation_curve, rotation_matrix,
};
use degeneracy::basis::{Basis, BasisFormula, LibConfig, NodeBasis, fit_bases};
use degeneracy::graph::{EdgeConfig, Edges, compute_edges};
use degeneracy::nn::{Optimizer, TrainConfig, train};
use degeneracy::{Activation, Dataset, Error, Layer, Linear, Loss, Matrix, Mlp, Network, Targets, io};

fn digits() -> (Mlp, Dataset) {
    let dir = fixtures().join("digits_mlp");
    let mlp = io::load_mlp(dir.join("model.safetensors"), Activation::Relu).unwrap();
    let x = io::read_matrix(dir.join("inputs.npy")).unwrap();
    let labels = io::read_labels(dir.join("labels.npy")).unwrap();
    (mlp, Dataset::new(x, Targets::Labels(labels)).unwrap())
}

/// block_diag has no labels: it is scored by MSE against its own outputs.
fn block_diag() -> (Mlp, Dataset) {
    let dir = fixtures().join("block_diag");
    let mlp = io::load_mlp(dir.join("model.safetensors"), Activation::Relu).unwrap();
    let x = io::read_matrix(dir.join("inputs.npy")).unwrap();
    let mut y = Matrix::default();
    mlp.forward(x.view(), &mut y).unwrap();
    (mlp, Dataset::new(x, Targets::Values(y)).unwrap())
}

fn bases(mlp: &Mlp, data: &Dataset, formula: BasisFormula) -> Vec<NodeBasis> {
    let config = LibConfig { basis_formula: formula, center: formula != BasisFormula::Neuron, ..LibConfig::default() };
    fit_bases(mlp, data, &config).unwrap()
}

fn edges(mlp: &Mlp, data: &Dataset, bases: &[NodeBasis]) -> Vec<Edges> {
    compute_edges(mlp, data, bases, &EdgeConfig::default()).unwrap()
}

/// A modular-addition MLP trained to 100 % accuracy on all `p²` pairs.
fn modular_addition(p: usize) -> (Mlp, Dataset) {
    let data = degeneracy::data::modular_addition(p).unwrap();
    let mut mlp = Mlp::init(&[2 * p, 32, 32, p], Activation::Relu, true, 1).unwrap();
    let config = TrainConfig {
        optimizer: Optimizer::adam(3e-3),
        loss: Loss::CrossEntropy,
        epochs: 2000,
        batch_size: None,
        seed: 0,
        stop_at_accuracy: Some(1.0),
    };
    let report = train(&mut mlp, &data, &config).unwrap();
    assert_eq!(report.final_accuracy, Some(1.0), "premise: the model fits the task");
    (mlp, data)
}

/// The network with node `k`'s activations `f = [h, 1]` replaced by `f R`, built explicitly:
/// `R` is folded into linear layer `k` (`W_f ← W_f Rᵀ`, split back into weight and bias). Valid
/// when `(f R)` keeps the constant coordinate at 1 (checked by the callers), since the later
/// layers' biases stay as they are.
fn folded_network(mlp: &Mlp, k: usize, r: &Matrix) -> Mlp {
    let lin = &mlp.linears()[k];
    let (out, d) = lin.weight().shape();
    let wf = Matrix::from_fn(out, d + 1, |i, j| if j < d { lin.weight()[(i, j)] } else { lin.bias().unwrap()[i] });
    let wr = wf.matmul(&r.transpose()).unwrap();
    let new =
        Linear::new(Matrix::from_fn(out, d, |i, j| wr[(i, j)]), Some((0..out).map(|i| wr[(i, d)]).collect())).unwrap();
    let mut linears = mlp.linears().to_vec();
    linears[k] = new;
    Mlp::with_activations(linears, mlp.activations().to_vec()).unwrap()
}

/// max over samples of |(f R)_const − 1| at node `k`.
fn constant_drift(mlp: &Mlp, data: &Dataset, k: usize, r: &Matrix) -> f64 {
    let f = common::node_acts(mlp, data.inputs(), k);
    let fr = f.matmul(r).unwrap();
    let c = fr.ncols() - 1;
    (0..fr.nrows()).fold(0.0, |m, i| m.max((fr[(i, c)] - 1.0).abs()))
}

/// The node-ablation directions compared throughout: LIB (C), its orthogonal frame W, PCA (C)
/// and the neurons by power, at node `k`.
fn all_directions(
    mlp: &Mlp,
    data: &Dataset,
    lib: &NodeBasis,
    pca: &NodeBasis,
    k: usize,
) -> Vec<(&'static str, Directions)> {
    let of = |b: &NodeBasis| Directions::new(b.c().clone(), b.c_pinv().clone()).unwrap();
    vec![
        ("LIB", of(lib)),
        ("LIB W", Directions::orthogonal(lib).unwrap()),
        ("PCA", of(pca)),
        ("neuron", Directions::neurons_by_power(mlp, data, k).unwrap()),
    ]
}

#[test]
fn keeping_every_direction_reproduces_the_unablated_score() {
    let (mlp, data) = digits();
    let lib = bases(&mlp, &data, BasisFormula::Jacobian);
    for eval in [Eval::Accuracy, Eval::CrossEntropy] {
        let base = evaluate(&mlp, &data, eval).unwrap();
        if eval == Eval::Accuracy {
            assert_eq!(base, 0.99609375, "fixture README: 99.6 % on the 1024 inputs");
        }
        for b in lib.iter().filter(|b| b.is_rotated()) {
            let node = mlp.node_index(&b.node).unwrap();
            let curve = node_ablation_curve(&mlp, &data, node, b, &[b.dim()], eval).unwrap();
            assert!((curve.scores[0].1 - base).abs() <= 1e-12, "{} {eval:?}: {:?} vs {base}", b.node, curve.scores);
        }
    }
}

#[test]
fn keeping_no_direction_is_chance_level() {
    // Chance level: every class has exactly p of the p² samples, so a network whose output does not
    // depend on the sample (zero activations, or only the mean kept) is right on exactly 1/p.
    let p = 11;
    let (mlp, data) = modular_addition(p);
    let chance = 1.0 / p as f64;
    let lib = bases(&mlp, &data, BasisFormula::Jacobian);
    let pca = bases(&mlp, &data, BasisFormula::Svd);
    for k in 0..mlp.n_layers() {
        for (name, d) in all_directions(&mlp, &data, &lib[k], &pca[k], k) {
            let curve = node_ablation_curve(&mlp, &data, k, &d, &[0, 1, d.dim()], Eval::Accuracy).unwrap();
            let [(_, none), (_, mean), (_, all)] = curve.scores[..] else { panic!("three points") };
            assert_eq!(all, 1.0, "{name} at layers.{k}: everything kept");
            assert!((none - chance).abs() < 1e-12, "{name} at layers.{k}: nothing kept gives {none}, chance {chance}");
            // The first direction is the constant one (the mean activation is kept): still chance.
            assert!((mean - chance).abs() < 1e-12, "{name} at layers.{k}: constant only gives {mean}");
        }
    }
}

#[test]
fn node_curves_match_the_explicitly_ablated_network() {
    let (mlp, data) = digits();
    let lib = bases(&mlp, &data, BasisFormula::Jacobian);
    let pca = bases(&mlp, &data, BasisFormula::Svd);
    let base_acc = evaluate(&mlp, &data, Eval::Accuracy).unwrap();
    for k in 0..mlp.n_layers() {
        for (name, d) in all_directions(&mlp, &data, &lib[k], &pca[k], k) {
            let dim = d.dim();
            let points = [1, 2, 3, dim / 3, dim / 2, dim - 1, dim];
            let ce = node_ablation_curve(&mlp, &data, k, &d, &points, Eval::CrossEntropy).unwrap();
            let acc = node_ablation_curve(&mlp, &data, k, &d, &points, Eval::Accuracy).unwrap();
            for ((n, ce), (_, acc)) in ce.scores.iter().zip(&acc.scores) {
                let r = rotation_matrix(&d, *n).unwrap();
                assert!(constant_drift(&mlp, &data, k, &r) < 1e-12, "premise: the constant coordinate is kept");
                let dense = folded_network(&mlp, k, &r);
                let ce_ref = evaluate(&dense, &data, Eval::CrossEntropy).unwrap();
                let acc_ref = evaluate(&dense, &data, Eval::Accuracy).unwrap();
                assert!((ce - ce_ref).abs() <= 1e-10 * ce_ref.max(1.0), "{name} layers.{k} n={n}: {ce} vs {ce_ref}");
                assert_eq!(*acc, acc_ref, "{name} layers.{k} n={n}");
            }
            // The curve is not flat: dropping directions costs accuracy somewhere.
            assert!(acc.scores[0].1 < base_acc - 0.05, "{name} layers.{k}: {:?}", acc.scores);
        }
    }
}

#[test]
fn node_curves_do_not_depend_on_threads_or_schedule() {
    let (mlp, data) = digits();
    let lib = bases(&mlp, &data, BasisFormula::Jacobian);
    let b = &lib[1];
    let points: Vec<usize> = (0..=b.dim()).collect();
    let curve = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| node_ablation_curve(&mlp, &data, 1, b, &points, Eval::CrossEntropy).unwrap())
    };
    let one = curve(1);
    assert_eq!(one, curve(2));
    assert_eq!(one, curve(3));
    for &n in &[0, 5, 17, b.dim()] {
        let single = node_ablation_curve(&mlp, &data, 1, b, &[n], Eval::CrossEntropy).unwrap();
        assert!((single.scores[0].1 - one.scores[n].1).abs() <= 1e-12, "n = {n}");
    }
}

/// The edge ablation of the pair `k → k + 1` in the neuron basis (identity `C`), built by hand:
/// linear layer `k` keeps weight `(i, j)` iff the mask keeps the edge `j → i`, the bias of unit
/// `i` iff it keeps the constant input's edge, and the later layers' biases iff the constant
/// output keeps the constant input.
fn hand_masked_network(mlp: &Mlp, k: usize, mask: &degeneracy::ablation::EdgeMask) -> Mlp {
    let lin = &mlp.linears()[k];
    let (out, d) = lin.weight().shape();
    let keep = |i: usize, j: usize| f64::from(u8::from(mask.is_kept(i, j)));
    let weight = Matrix::from_fn(out, d, |i, j| lin.weight()[(i, j)] * keep(i, j));
    let bias = (0..out).map(|i| lin.bias().unwrap()[i] * keep(i, d)).collect();
    let mut linears = mlp.linears().to_vec();
    linears[k] = Linear::new(weight, Some(bias)).unwrap();
    // The output node has no constant coordinate (the last layer carries none).
    let constant = if k + 1 < mlp.n_layers() { keep(out, d) } else { 1.0 };
    for l in linears.iter_mut().skip(k + 1) {
        let b: Vec<f64> = l.bias().unwrap().iter().map(|v| v * constant).collect();
        *l = Linear::new(l.weight().clone(), Some(b)).unwrap();
    }
    Mlp::with_activations(linears, mlp.activations().to_vec()).unwrap()
}

#[test]
fn neuron_edge_ablation_matches_the_hand_masked_network() {
    let (mlp, data) = digits();
    let neuron = bases(&mlp, &data, BasisFormula::Neuron);
    let e = edges(&mlp, &data, &neuron);
    for k in 0..2 {
        let abl = EdgeAblation::new(&mlp, &data, &neuron[k], &neuron[k + 1], &e[k], Eval::CrossEntropy).unwrap();
        for kept in [0, 40, 300, 900] {
            let mask = abl.mask(kept).unwrap();
            assert!(!mask.free_column(), "the neuron basis is not centred");
            let dense = hand_masked_network(&mlp, k, &mask);
            let reference = evaluate(&dense, &data, Eval::CrossEntropy).unwrap();
            let score = abl.score_mask(&mask).unwrap();
            assert!((score - reference).abs() <= 1e-10 * reference, "layers.{k}, k = {kept}: {score} vs {reference}");
        }
    }
}

#[test]
fn planted_block_diagonal_edges_keep_the_model_exactly() {
    // In the neuron basis the cross-block weights and the zero biases give exactly-zero edges:
    // keeping exactly the non-zero edges is the model itself (MSE against its own outputs ≈ 0).
    let (mlp, data) = block_diag();
    let Targets::Values(y) = data.targets() else { panic!("values") };
    let power = y.as_slice().iter().map(|v| v * v).sum::<f64>() / y.as_slice().len() as f64;
    let neuron = bases(&mlp, &data, BasisFormula::Neuron);
    let e = edges(&mlp, &data, &neuron);
    for (k, edges) in e.iter().enumerate() {
        let nonzero = edges.e_hat.as_slice().iter().filter(|&&v| v > 0.0).count();
        assert!((8..=2 * 16 + 1).contains(&nonzero), "premise: block-diagonal support, got {nonzero}");
        let abl = EdgeAblation::new(&mlp, &data, &neuron[k], &neuron[k + 1], edges, Eval::Mse).unwrap();
        let mask = abl.mask(nonzero).unwrap();
        assert_eq!(mask.n_kept(), nonzero);
        let exact = abl.score_mask(&mask).unwrap();
        assert!(exact <= 1e-20 * power, "layers.{k}: keeping the support gives MSE {exact} (power {power})");
        // Half of the support: a real ablation, equal to the hand-masked network.
        let half = abl.mask(nonzero / 2).unwrap();
        let score = abl.score_mask(&half).unwrap();
        let reference = evaluate(&hand_masked_network(&mlp, k, &half), &data, Eval::Mse).unwrap();
        assert!(score > 1e-6 * power, "layers.{k}: dropping half the edges must show ({score})");
        assert!((score - reference).abs() <= 1e-10 * reference, "layers.{k}: {score} vs {reference}");
    }
}

#[test]
fn rotated_edge_ablation_matches_a_per_direction_computation() {
    let (mlp, data) = digits();
    let lib = bases(&mlp, &data, BasisFormula::Jacobian);
    let e = edges(&mlp, &data, &lib);
    for k in [0, 2] {
        let (input, output) = (&lib[k], &lib[k + 1]);
        let abl = EdgeAblation::new(&mlp, &data, input, output, &e[k], Eval::CrossEntropy).unwrap();
        let section = mlp.section(k, k + 1).unwrap();
        let f = common::node_acts(&mlp, data.inputs(), k);
        let u = f.matmul(input.c()).unwrap();
        for kept in [0, 25, 120, 400] {
            let mask = abl.mask(kept).unwrap();
            // Every output direction on its own: y_i = section((u ⊙ m_i) C⁺) C_out[:, i].
            let mut out_hat = Matrix::zeros(f.nrows(), output.dim());
            for i in 0..output.dim() {
                let masked =
                    Matrix::from_fn(u.nrows(), u.ncols(), |x, j| if mask.is_kept(i, j) { u[(x, j)] } else { 0.0 });
                let mut y = Matrix::default();
                section.forward(masked.matmul(input.c_pinv()).unwrap().view(), &mut y).unwrap();
                let yi = y.matmul(&output.c().select_columns(&[i])).unwrap();
                for x in 0..f.nrows() {
                    out_hat[(x, i)] = yi[(x, 0)];
                }
            }
            let f_out = out_hat.matmul(output.c_pinv()).unwrap();
            let y = if k + 1 < mlp.n_layers() {
                let mut y = Matrix::default();
                mlp.section(k + 1, mlp.n_layers()).unwrap().forward(f_out.view(), &mut y).unwrap();
                y
            } else {
                f_out
            };
            let labels = data.labels().unwrap();
            let reference =
                Loss::CrossEntropy.value_and_grad(y.view(), degeneracy::nn::TargetsView::Labels(labels), None).unwrap();
            let score = abl.score_mask(&mask).unwrap();
            assert!((score - reference).abs() <= 1e-10 * reference, "layers.{k}, k = {kept}: {score} vs {reference}");
        }
    }
}

#[test]
fn keeping_every_edge_is_the_unablated_network() {
    let (mlp, data) = digits();
    let lib = bases(&mlp, &data, BasisFormula::Jacobian);
    let e = edges(&mlp, &data, &lib);
    let base = evaluate(&mlp, &data, Eval::CrossEntropy).unwrap();
    for k in 0..e.len() {
        let abl = EdgeAblation::new(&mlp, &data, &lib[k], &lib[k + 1], &e[k], Eval::CrossEntropy).unwrap();
        let mask = abl.mask(abl.total()).unwrap();
        assert!(mask.keeps_all() && mask.free_column());
        assert_eq!(abl.score(abl.total()).unwrap(), base);
        assert_eq!(abl.score(mask.n_countable()).unwrap(), base);
        assert!(!abl.mask(mask.n_countable() / 2).unwrap().keeps_all());
    }
}

/// Whether the k-th largest countable edge is strictly larger than the next one (no tie at the
/// threshold, so the top-k mask must keep exactly k).
fn strict_at(e: &Matrix, free_column: bool, k: usize) -> bool {
    let mut v: Vec<f64> =
        (0..e.nrows()).flat_map(|i| (usize::from(free_column)..e.ncols()).map(move |j| e[(i, j)])).collect();
    v.sort_by(|a, b| b.total_cmp(a));
    k == 0 || k >= v.len() || v[k - 1] > v[k]
}

#[test]
fn bisect_returns_the_smallest_edge_count_within_delta() {
    let (mlp, data) = digits();
    let delta = 0.001;
    println!("digits_mlp, accuracy within {delta}: edges needed (linear / log midpoint)");
    for formula in [BasisFormula::Jacobian, BasisFormula::Svd, BasisFormula::Neuron] {
        let b = bases(&mlp, &data, formula);
        let e = edges(&mlp, &data, &b);
        for k in 0..e.len() {
            let abl = EdgeAblation::new(&mlp, &data, &b[k], &b[k + 1], &e[k], Eval::Accuracy).unwrap();
            let mut found = Vec::new();
            for midpoint in [Midpoint::Linear, Midpoint::Log] {
                let r = abl.bisect(delta, midpoint).unwrap();
                let n = r.n_edges_required;
                let within = |k: usize| Eval::Accuracy.within(abl.score(k).unwrap(), r.no_ablation_result, delta);
                assert!(within(n), "{formula:?} layers.{k}: {n} edges are not within δ");
                assert!(n == 0 || !within(n - 1), "{formula:?} layers.{k}: {} edges are within δ too", n - 1);
                assert_eq!(abl.score(n).unwrap(), r.score);
                assert!(n == 0 || r.probes.iter().any(|p| p.0 + 1 == n), "k − 1 was evaluated");
                assert!(strict_at(&e[k].e_hat, b[k].has_constant_direction, n), "premise: no tie at the threshold");
                assert_eq!(r.mask.n_kept(), n, "the mask keeps exactly the reported count");
                assert_eq!(r.mask, abl.mask(n).unwrap());
                found.push((n, r.probes.len()));
            }
            println!(
                "  {:<8} {} → {}: {} / {} of {} ({} / {} probes)",
                formula.name(),
                b[k].node,
                b[k + 1].node,
                found[0].0,
                found[1].0,
                abl.total(),
                found[0].1,
                found[1].1
            );
        }
    }
}

#[test]
fn log_norm_eps_keeps_the_edges_above_the_smallest_kept_one() {
    let (mlp, data) = digits();
    let lib = bases(&mlp, &data, BasisFormula::Jacobian);
    let e = edges(&mlp, &data, &lib);
    let results: Vec<_> = (0..e.len())
        .map(|k| {
            let abl = EdgeAblation::new(&mlp, &data, &lib[k], &lib[k + 1], &e[k], Eval::Accuracy).unwrap();
            abl.bisect(0.001, Midpoint::Log).unwrap()
        })
        .collect();
    let norm = by_layer_log_norm(&results);
    for ((r, edges), (input, output)) in results.iter().zip(&e).zip(lib.iter().zip(&lib[1..])) {
        let w = norm.apply(&edges.e_hat, &edges.in_node).unwrap();
        let (skip_out, skip_in) =
            (usize::from(output.has_constant_direction), usize::from(input.has_constant_direction));
        let inner = |i: usize, j: usize| i >= skip_out && j >= skip_in;
        let kept_inner = (0..w.nrows())
            .flat_map(|i| (0..w.ncols()).map(move |j| (i, j)))
            .filter(|&(i, j)| inner(i, j) && r.mask.is_kept(i, j))
            .count();
        let positive = (0..w.nrows())
            .flat_map(|i| (0..w.ncols()).map(move |j| (i, j)))
            .filter(|&(i, j)| inner(i, j) && w[(i, j)] > 0.0)
            .count();
        assert!(kept_inner > 0, "{}: premise: some edge is kept", r.in_node);
        // The smallest kept edge is ε itself (log10 1 = 0), so one fewer survives.
        assert_eq!(positive, kept_inner - 1, "{}", r.in_node);
    }
}

#[test]
fn block_diag_bisect_with_the_mse_analogue() {
    // No labels: MSE against the model's own outputs (base 0), δ = 0.001 × the mean square output.
    let (mlp, data) = block_diag();
    let Targets::Values(y) = data.targets() else { panic!("values") };
    let delta = 1e-3 * y.as_slice().iter().map(|v| v * v).sum::<f64>() / y.as_slice().len() as f64;
    println!("block_diag, MSE within {delta:.3e}: edges needed");
    for formula in [BasisFormula::Jacobian, BasisFormula::Svd, BasisFormula::Neuron] {
        let b = bases(&mlp, &data, formula);
        let e = edges(&mlp, &data, &b);
        let mut needed = Vec::new();
        for k in 0..e.len() {
            let abl = EdgeAblation::new(&mlp, &data, &b[k], &b[k + 1], &e[k], Eval::Mse).unwrap();
            let r = abl.bisect(delta, Midpoint::Linear).unwrap();
            let n = r.n_edges_required;
            assert!(abl.score(n).unwrap() <= delta);
            assert!(n == 0 || abl.score(n - 1).unwrap() > delta);
            needed.push(n);
        }
        println!("  {:<8} {needed:?}", formula.name());
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let (mlp, data) = digits();
    let lib = bases(&mlp, &data, BasisFormula::Jacobian);
    let e = edges(&mlp, &data, &lib);
    let dim = lib[1].dim();
    assert!(matches!(
        node_ablation_curve(&mlp, &data, 1, &lib[1], &[dim + 1], Eval::Accuracy),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(matches!(
        node_ablation_curve(&mlp, &data, 1, &lib[0], &[0], Eval::Accuracy),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        node_ablation_curve(&mlp, &data, 1, &lib[1], &[0], Eval::Mse),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(matches!(
        EdgeAblation::new(&mlp, &data, &lib[0], &lib[1], &e[1], Eval::Accuracy),
        Err(Error::InvalidParameter { .. })
    ));
    let abl = EdgeAblation::new(&mlp, &data, &lib[0], &lib[1], &e[0], Eval::Accuracy).unwrap();
    assert!(matches!(abl.bisect(-1.0, Midpoint::Linear), Err(Error::InvalidParameter { .. })));
    let other = degeneracy::ablation::EdgeMask::top_k(&e[1].e_hat, 3, true).unwrap();
    assert!(matches!(abl.score_mask(&other), Err(Error::ShapeMismatch { .. })));
    let unlabelled = Dataset::unlabelled(data.inputs().clone()).unwrap();
    assert!(evaluate(&mlp, &unlabelled, Eval::Accuracy).is_err());
}

#[test]
fn output_node_ablation_projects_the_outputs() {
    // A rotated output node (PCA of the logits): the ablated network is y ↦ y R_n.
    let (mlp, data) = digits();
    let config = LibConfig { basis_formula: BasisFormula::Svd, rotate_final_node_layer: true, ..LibConfig::default() };
    let out = fit_bases(&mlp, &data, &config).unwrap().pop().unwrap();
    assert!(out.is_rotated() && !mlp.node_layers()[mlp.n_layers()].constant);
    let mut y = Matrix::default();
    mlp.forward(data.inputs().view(), &mut y).unwrap();
    let labels = degeneracy::nn::TargetsView::Labels(data.labels().unwrap());
    let points: Vec<usize> = (0..=out.dim()).collect();
    let curve = node_ablation_curve(&mlp, &data, mlp.n_layers(), &out, &points, Eval::CrossEntropy).unwrap();
    for &(n, score) in &curve.scores {
        let projected = y.matmul(&rotation_matrix(&out, n).unwrap()).unwrap();
        let reference = Loss::CrossEntropy.value_and_grad(projected.view(), labels, None).unwrap();
        assert!((score - reference).abs() <= 1e-10 * reference, "n = {n}: {score} vs {reference}");
    }
    let uniform = (out.orig_dim() as f64).ln();
    assert!((curve.scores[0].1 - uniform).abs() < 1e-12, "zero logits: ln(classes), got {:?}", curve.scores[0]);
}

#[test]
fn edge_scores_do_not_depend_on_threads() {
    let (mlp, data) = digits();
    let lib = bases(&mlp, &data, BasisFormula::Jacobian);
    let e = edges(&mlp, &data, &lib);
    let scores = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let abl = EdgeAblation::new(&mlp, &data, &lib[0], &lib[1], &e[0], Eval::CrossEntropy).unwrap();
            [0, 10, 100, 500].map(|k| abl.score(k).unwrap())
        })
    };
    assert_eq!(scores(1), scores(2));
    assert_eq!(scores(1), scores(3));
}
