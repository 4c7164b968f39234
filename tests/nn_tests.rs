//! The network core against the reference fixtures, finite differences and closed forms.

mod common;

use common::{finite_difference_error, fixtures, rel_max_diff, section_fd_error};
use degeneracy::nn::{Network, Optimizer, Sequential, TargetsView, TrainConfig, accuracy, evaluate, train};
use degeneracy::{Activation, Dataset, Elementwise, Layer, Linear, Loss, Matrix, Mlp, Targets, io};
use proptest::prelude::*;

fn fixture_forward(case: &str) -> f64 {
    let dir = fixtures().join(case);
    let mlp = io::load_mlp(dir.join("model.safetensors"), Activation::Relu).unwrap();
    let x = io::read_matrix(dir.join("inputs.npy")).unwrap();
    let expected = io::read_matrix(dir.join("logits.npy")).unwrap();
    let mut y = Matrix::default();
    mlp.forward(x.view(), &mut y).unwrap();
    rel_max_diff(&y, &expected)
}

#[test]
fn digits_forward_matches_reference_logits() {
    let err = fixture_forward("digits_mlp");
    assert!(err < 1e-12, "max |Δlogit| / max |logit| = {err:e}");
}

#[test]
fn block_diag_forward_matches_reference_logits() {
    let err = fixture_forward("block_diag");
    assert!(err < 1e-12, "max |Δlogit| / max |logit| = {err:e}");
}

#[test]
fn digits_accuracy_and_cross_entropy_match_reference() {
    // summary.json → model_eval_on_inputs_unfolded
    let dir = fixtures().join("digits_mlp");
    let mlp = io::load_mlp(dir.join("model.safetensors"), Activation::Relu).unwrap();
    let x = io::read_matrix(dir.join("inputs.npy")).unwrap();
    let labels = io::read_labels(dir.join("labels.npy")).unwrap();
    let data = Dataset::new(x, Targets::Labels(labels)).unwrap();
    let (ce, acc) = evaluate(&mlp, &data, Loss::CrossEntropy).unwrap();
    assert!((ce - 0.029_202_647_718_155_225).abs() < 1e-12, "cross-entropy {ce}");
    assert_eq!(acc, Some(0.99609375));
}

#[test]
fn mlp_node_names_follow_rib() {
    let mlp = Mlp::init(&[3, 4, 5, 2], Activation::Tanh, true, 1).unwrap();
    assert_eq!(mlp.node_names(), ["layers.0", "layers.1", "layers.2", "output"]);
    let widths: Vec<usize> = mlp.node_layers().iter().map(|n| n.width).collect();
    assert_eq!(widths, [4, 5, 6, 2], "folded widths: the constant coordinate at every node but the output");
    assert_eq!(mlp.node_index("layers.2").unwrap(), 2);
    assert_eq!(mlp.node_index("output").unwrap(), 3);
    assert!(matches!(mlp.node_index("layers.3"), Err(degeneracy::Error::UnknownNode { .. })));
    assert_eq!(mlp.widths(), [3, 4, 5, 2]);
    assert_eq!(mlp.n_params(), 3 * 4 + 4 + 4 * 5 + 5 + 5 * 2 + 2);
}

#[test]
fn sections_compose_to_the_network() {
    // Folded sections chained from [x, 1] reproduce the forward pass and node activations.
    let mlp = Mlp::init(&[3, 6, 5, 2], Activation::Gelu, true, 3).unwrap();
    let x = Matrix::from_fn(7, 3, |i, j| ((i * 3 + j) as f64 * 0.37).sin());
    let mut f = Matrix::from_fn(7, 4, |i, j| if j < 3 { x[(i, j)] } else { 1.0 });
    let all: Vec<usize> = (0..mlp.n_nodes()).collect();
    let mut acts = vec![Matrix::default(); all.len()];
    mlp.forward_nodes(x.view(), &all, &mut acts).unwrap();
    for (k, h) in acts.iter().enumerate().take(mlp.n_layers()) {
        assert_eq!(h.shape(), (7, mlp.widths()[k] + 1), "folded: the constant coordinate last");
        for i in 0..7 {
            assert_eq!(f.row(i), h.row(i));
            assert_eq!(f.row(i)[mlp.widths()[k]], 1.0, "constant coordinate");
        }
        let mut next = Matrix::default();
        mlp.section(k, k + 1).unwrap().forward(f.view(), &mut next).unwrap();
        f = next;
    }
    let mut y = Matrix::default();
    mlp.forward(x.view(), &mut y).unwrap();
    assert!(rel_max_diff(&f, &y) < 1e-15);
    assert_eq!(acts[mlp.n_layers()], y);
}

fn activation() -> impl Strategy<Value = Activation> {
    prop_oneof![
        Just(Activation::Identity),
        Just(Activation::Relu),
        Just(Activation::Gelu),
        Just(Activation::GeluTanh),
        Just(Activation::Tanh),
        Just(Activation::Sigmoid),
    ]
}

fn matrix(rows: usize, cols: usize) -> impl Strategy<Value = Matrix> {
    proptest::collection::vec(-2.0..2.0_f64, rows * cols).prop_map(move |v| Matrix::from_vec(rows, cols, v).unwrap())
}

/// Whether every pre-activation is at least `margin` from ReLU's kink (finite differences
/// across a kink are meaningless).
fn away_from_kinks(mlp: &Mlp, x: &Matrix, margin: f64) -> bool {
    let mut trace = degeneracy::nn::ForwardTrace::default();
    mlp.trace(x.view(), &mut trace).unwrap();
    (0..mlp.n_layers()).all(|k| trace.preactivation(k).as_slice().iter().all(|z| z.abs() > margin))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn linear_gradients_match_finite_differences(
        n in 1usize..5, din in 1usize..6, dout in 1usize..6, bias: bool, seed: u64,
    ) {
        let mut lin = Mlp::init(&[din, dout], Activation::Identity, bias, seed).unwrap().linears()[0].clone();
        let x = Matrix::from_fn(n, din, |i, j| ((seed % 97) as f64 + (i * din + j) as f64).cos());
        let gy = Matrix::from_fn(n, dout, |i, j| ((i + 2 * j) as f64).sin());
        let (ex, ep) = finite_difference_error(&mut lin, &x, &gy);
        prop_assert!(ex < 1e-6 && ep < 1e-6, "input {ex:e}, params {ep:e}");
    }

    #[test]
    fn activation_vjps_match_finite_differences(act in activation(), x in matrix(3, 4), gy in matrix(3, 4)) {
        prop_assume!(act != Activation::Relu || x.as_slice().iter().all(|v| v.abs() > 1e-3));
        let mut layer = Elementwise::new(act, 4);
        let (ex, _) = finite_difference_error(&mut layer, &x, &gy);
        prop_assert!(ex < 1e-6, "{act:?}: {ex:e}");
    }

    #[test]
    fn mlp_gradients_match_finite_differences(
        act in activation(), hidden in 1usize..6, depth in 1usize..4, seed: u64, x in matrix(4, 3),
    ) {
        let mut sizes = vec![3];
        sizes.extend(std::iter::repeat_n(hidden, depth));
        sizes.push(2);
        let mut mlp = Mlp::init(&sizes, act, true, seed).unwrap();
        prop_assume!(act != Activation::Relu || away_from_kinks(&mlp, &x, 1e-3));
        let gy = Matrix::from_fn(4, 2, |i, j| 0.5 + (i as f64) - (j as f64));
        let (ex, ep) = finite_difference_error(&mut mlp, &x, &gy);
        prop_assert!(ex < 1e-6 && ep < 1e-6, "input {ex:e}, params {ep:e}");
    }

    #[test]
    fn section_vjps_match_finite_differences(act in activation(), k in 0usize..3, seed: u64, x in matrix(3, 4)) {
        // Folded coordinates [h, c] with c in (0, 2): the constant carrier is differentiated too.
        let mlp = Mlp::init(&[3, 3, 3, 2], act, true, seed).unwrap();
        let section = mlp.section(k, k + 1).unwrap();
        let w = section.structure().unwrap().folded_weight();
        let z = x.matmul(&w.transpose()).unwrap();
        prop_assume!(act != Activation::Relu || z.as_slice().iter().chain(x.col(3).iter()).all(|v| v.abs() > 1e-3));
        let gy = Matrix::from_fn(3, section.output().width, |i, j| 1.0 + (i * 7 + j) as f64 * 0.1);
        let ex = section_fd_error(&*section, &x, &gy);
        prop_assert!(ex < 1e-6, "{act:?} section {k}: {ex:e}");
    }

    #[test]
    fn loss_gradients_match_finite_differences(y in matrix(3, 4), t in matrix(3, 4), labels in proptest::collection::vec(0usize..4, 3)) {
        for (loss, targets) in [
            (Loss::Mse, TargetsView::Values(t.view())),
            (Loss::SumSquaredError, TargetsView::Values(t.view())),
            (Loss::CrossEntropy, TargetsView::Labels(&labels)),
        ] {
            let mut g = Matrix::default();
            loss.value_and_grad(y.view(), targets, Some(&mut g)).unwrap();
            for k in 0..12 {
                let (mut up, mut down) = (y.clone(), y.clone());
                up.as_mut_slice()[k] += 1e-6;
                down.as_mut_slice()[k] -= 1e-6;
                let fd = (loss.value_and_grad(up.view(), targets, None).unwrap()
                    - loss.value_and_grad(down.view(), targets, None).unwrap()) / 2e-6;
                prop_assert!((fd - g.as_slice()[k]).abs() < 1e-7, "{loss:?} entry {k}");
            }
        }
    }
}

#[test]
fn section_chains_match_their_composition_and_gradients() {
    let mlp = Mlp::init(&[3, 4, 4, 2], Activation::Tanh, true, 11).unwrap();
    let x = Matrix::from_fn(5, 4, |i, j| if j == 3 { 0.5 + 0.1 * i as f64 } else { ((i + j) as f64).sin() });
    let chain = mlp.section(0, 3).unwrap();
    let (mut a, mut b, mut y) = (Matrix::default(), Matrix::default(), Matrix::default());
    mlp.section(0, 1).unwrap().forward(x.view(), &mut a).unwrap();
    mlp.section(1, 2).unwrap().forward(a.view(), &mut b).unwrap();
    mlp.section(2, 3).unwrap().forward(b.view(), &mut a).unwrap();
    chain.forward(x.view(), &mut y).unwrap();
    assert_eq!(y, a);
    assert_eq!(chain.linearize(x.view()).unwrap().output(), a.view());
    let gy = Matrix::from_fn(5, 2, |i, j| (i as f64) - (j as f64) * 0.3);
    let ex = section_fd_error(&*chain, &x, &gy);
    assert!(ex < 1e-6, "{ex:e}");
    assert!(mlp.section(2, 2).is_err() && mlp.section(0, 4).is_err());
}

#[test]
fn trainer_fits_xor_and_is_deterministic() {
    let x = Matrix::from_rows(&[[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]).unwrap();
    let data = Dataset::new(x, Targets::Labels(vec![0, 1, 1, 0])).unwrap();
    let config = TrainConfig {
        optimizer: Optimizer::adam(0.05),
        epochs: 500,
        stop_at_accuracy: Some(1.0),
        ..TrainConfig::default()
    };
    let run = || {
        let mut mlp = Mlp::init(&[2, 8, 2], Activation::Tanh, true, 7).unwrap();
        let report = train(&mut mlp, &data, &config).unwrap();
        (mlp.params(), report)
    };
    let (p1, r1) = run();
    let (p2, _) = run();
    assert_eq!(p1, p2, "same seed, same parameters");
    assert_eq!(r1.final_accuracy, Some(1.0));
    assert!(r1.epoch_losses.len() < 500, "stopped early at 100 % accuracy");
}

#[test]
fn sgd_minibatch_decreases_regression_loss() {
    // (Not sin(a·(3i + j)): those columns span only {sin, cos} and the weights are not identifiable.)
    let x = Matrix::from_fn(64, 3, |i, j| ((i * 7919 + j * 104_729) % 1013) as f64 / 1013.0 - 0.5);
    let t = Matrix::from_fn(64, 1, |i, _| x[(i, 0)] - 2.0 * x[(i, 2)]);
    let data = Dataset::new(x, Targets::Values(t)).unwrap();
    let mut mlp =
        Mlp::new(vec![Linear::new(Matrix::zeros(1, 3), Some(vec![0.0])).unwrap()], Activation::Identity).unwrap();
    let config = TrainConfig {
        optimizer: Optimizer::Sgd { lr: 0.1, momentum: 0.9 },
        loss: Loss::Mse,
        epochs: 200,
        batch_size: Some(16),
        ..TrainConfig::default()
    };
    let report = train(&mut mlp, &data, &config).unwrap();
    assert!(report.final_loss < 1e-10, "linear target is learnt exactly: {}", report.final_loss);
    let w = mlp.linears()[0].weight();
    assert!((w[(0, 0)] - 1.0).abs() < 1e-5 && (w[(0, 2)] + 2.0).abs() < 1e-5);
}

#[test]
fn accuracy_uses_first_maximum() {
    let y = Matrix::from_rows(&[[1.0, 1.0], [0.0, 2.0]]).unwrap();
    assert_eq!(accuracy(y.view(), &[0, 1]).unwrap(), 1.0);
    assert_eq!(accuracy(y.view(), &[1, 1]).unwrap(), 0.5);
}

/// The same layers as an `Mlp` and as a `Sequential` of boxed layers: same nodes, activations,
/// sections (affine + elementwise, hence the closed forms), and gradients.
#[test]
fn sequential_of_mlp_layers_is_the_mlp() {
    for act in [Activation::Relu, Activation::Gelu, Activation::Tanh] {
        let mlp = Mlp::init(&[3, 5, 4, 2], act, true, 9).unwrap();
        let mut layers: Vec<Box<dyn Layer>> = Vec::new();
        for (k, lin) in mlp.linears().iter().enumerate() {
            layers.push(Box::new(lin.clone()));
            if k + 1 < mlp.n_layers() {
                layers.push(Box::new(Elementwise::new(act, lin.weight().nrows())));
            }
        }
        let seq = Sequential::new(layers).unwrap();
        assert_eq!(seq.node_layers(), mlp.node_layers());
        let x = Matrix::from_fn(6, 3, |i, j| ((i * 5 + j) as f64 * 0.41).cos());
        let nodes = [0, 1, 2, 3];
        let (mut a, mut b) = (vec![Matrix::default(); 4], vec![Matrix::default(); 4]);
        mlp.forward_nodes(x.view(), &nodes, &mut a).unwrap();
        seq.forward_nodes(x.view(), &nodes, &mut b).unwrap();
        for (p, q) in a.iter().zip(&b) {
            assert!(rel_max_diff(q, p) < 1e-15, "{act:?}");
        }
        for (from, to) in [(0, 1), (1, 2), (2, 3), (0, 3)] {
            let (s, t) = (mlp.section(from, to).unwrap(), seq.section(from, to).unwrap());
            assert_eq!(s.structure().is_some(), t.structure().is_some());
            assert_eq!((s.input(), s.output()), (t.input(), t.output()));
            let (mut y1, mut y2) = (Matrix::default(), Matrix::default());
            s.forward(a[from].view(), &mut y1).unwrap();
            t.forward(a[from].view(), &mut y2).unwrap();
            assert!(rel_max_diff(&y2, &y1) < 1e-15, "{act:?} {from} → {to}");
        }
        let (mut g1, mut g2) = (vec![0.0; mlp.n_params()], vec![0.0; seq.n_params()]);
        let gy = Matrix::from_fn(6, 2, |i, j| (i + j) as f64 - 2.0);
        let (mut gx1, mut gx2) = (Matrix::default(), Matrix::default());
        mlp.backward(x.view(), gy.view(), &mut gx1, &mut g1).unwrap();
        seq.backward(x.view(), gy.view(), &mut gx2, &mut g2).unwrap();
        assert!(rel_max_diff(&gx2, &gx1) < 1e-14);
        let scale = g1.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
        assert!(g1.iter().zip(&g2).all(|(a, b)| (a - b).abs() <= 1e-14 * scale));
    }
}

/// AdamW against PyTorch's documented algorithm, stepped by hand on `L(w) = (w·1 − 0)² = w²`:
/// `w ← w(1 − lr λ)`, then the bias-corrected Adam step; and its settings are checked by name.
#[test]
fn adamw_decays_then_takes_the_adam_step() {
    let data = Dataset::new(Matrix::from_rows(&[[1.0]]).unwrap(), Targets::Values(Matrix::zeros(1, 1))).unwrap();
    let (lr, wd, b1, b2, eps) = (0.1, 0.5, 0.9, 0.98, 1e-8);
    let mut mlp =
        Mlp::new(vec![Linear::new(Matrix::from_rows(&[[2.0]]).unwrap(), None).unwrap()], Activation::Identity).unwrap();
    let optimizer = Optimizer::AdamW { lr, beta1: b1, beta2: b2, eps, weight_decay: wd };
    let config = TrainConfig { optimizer, loss: Loss::Mse, epochs: 3, ..TrainConfig::default() };
    train(&mut mlp, &data, &config).unwrap();
    let (mut w, mut m, mut v) = (2.0f64, 0.0, 0.0);
    for t in 1..=3 {
        let g = 2.0 * w;
        w *= 1.0 - lr * wd;
        m = b1 * m + (1.0 - b1) * g;
        v = b2 * v + (1.0 - b2) * g * g;
        let (m_hat, v_hat) = (m / (1.0 - b1.powi(t)), v / (1.0 - b2.powi(t)));
        w -= lr * m_hat / (v_hat.sqrt() + eps);
    }
    let got = mlp.params()[0];
    assert!((got - w).abs() < 1e-14, "{got} vs {w}");
    // Without decay it is Adam.
    let mut a =
        Mlp::new(vec![Linear::new(Matrix::from_rows(&[[2.0]]).unwrap(), None).unwrap()], Activation::Identity).unwrap();
    let mut b = a.clone();
    let no_decay = Optimizer::AdamW { lr, beta1: b1, beta2: b2, eps, weight_decay: 0.0 };
    train(&mut a, &data, &TrainConfig { optimizer: no_decay, ..config.clone() }).unwrap();
    let adam = Optimizer::Adam { lr, beta1: b1, beta2: b2, eps };
    train(&mut b, &data, &TrainConfig { optimizer: adam, ..config.clone() }).unwrap();
    assert_eq!(a.params(), b.params());
    let bad = TrainConfig { optimizer: Optimizer::adamw(1e-3, -1.0), ..config };
    assert!(
        matches!(train(&mut a, &data, &bad), Err(degeneracy::Error::InvalidParameter { name, .. }) if name == "weight_decay")
    );
}
