//! Time per SGLD step (minibatch draw, loss and gradient, noise, update, diagnostics) on the
//! shapes of devinterp's recorded runs, next to one forward+backward of the same batch measured
//! in the same run:
//! * the deep linear network 10→10→10→10 without biases (300 parameters, n = 10000, batch 500);
//! * the digits-shaped ReLU MLP 64→40→40→10 (4,650 parameters with biases, n = 1797, batch 64; devinterp's recorded digits run had 3,210).
//!
//! devinterp 2.0.1 recorded 1.40 ms (DLN) and 4.06 ms (digits) per step on 2 threads.

mod common;

use criterion::Criterion;
use degeneracy::llc::{LlcConfig, LlcEstimator, LossModel, MlpLoss};
use degeneracy::nn::ForwardTrace;
use degeneracy::{Activation, Dataset, Layer, Loss, Matrix, Mlp, Targets};
use std::hint::black_box;

const GROUP: &str = "llc_step";

struct Case {
    name: &'static str,
    mlp: Mlp,
    data: Dataset,
    loss: Loss,
    batch: usize,
    devinterp_ms: f64,
}

fn cases() -> Vec<Case> {
    let dln = Mlp::init(&[10, 10, 10, 10], Activation::Identity, false, 0).unwrap();
    let x = Matrix::from_fn(10_000, 10, |i, j| ((i * 31 + j * 7) as f64 * 0.013).sin());
    let mut y = Matrix::default();
    dln.forward(x.view(), &mut y).unwrap();
    let dln_data = Dataset::new(x, Targets::Values(y)).unwrap();

    let digits = Mlp::init(&[64, 40, 40, 10], Activation::Relu, true, 0).unwrap();
    let x = Matrix::from_fn(1797, 64, |i, j| ((i * 13 + j * 5) % 17) as f64);
    let labels = (0..1797).map(|i| i % 10).collect();
    let digits_data = Dataset::new(x, Targets::Labels(labels)).unwrap();
    vec![
        Case { name: "dln_300_b500", mlp: dln, data: dln_data, loss: Loss::Mse, batch: 500, devinterp_ms: 1.40 },
        Case {
            name: "digits_4650_b64",
            mlp: digits,
            data: digits_data,
            loss: Loss::CrossEntropy,
            batch: 64,
            devinterp_ms: 4.06,
        },
    ]
}

fn bench(c: &mut Criterion, cases: &[Case]) {
    let mut group = c.benchmark_group(GROUP);
    for case in cases {
        let model = MlpLoss::new(&case.mlp, case.loss, case.data.clone()).unwrap();
        let w = model.params();
        let config = LlcConfig::new(1e-6).batch_size(case.batch).num_chains(1).num_init_loss_batches(1).seed(0);
        let estimator = LlcEstimator::new(config).unwrap();
        let mut chain = estimator.chain(model.clone(), &w, 0).unwrap();
        group.bench_function(format!("{}_sgld_step", case.name), |b| b.iter(|| black_box(chain.step().unwrap())));

        // One forward + backward of a batch of the same size, with the network's own buffers.
        let indices: Vec<usize> = (0..case.batch).map(|i| (i * 7) % case.data.len()).collect();
        let mut batch = degeneracy::data::Batch::default();
        case.data.gather(&indices, &mut batch).unwrap();
        let (mut trace, mut grad_out) = (ForwardTrace::default(), Matrix::default());
        let mut grad = vec![0.0; case.mlp.n_params()];
        group.bench_function(format!("{}_forward_backward", case.name), |b| {
            b.iter(|| {
                case.mlp.trace(black_box(batch.inputs()), &mut trace).unwrap();
                let l = case.loss.value_and_grad(trace.output().view(), batch.targets().unwrap(), Some(&mut grad_out));
                grad.fill(0.0);
                case.mlp.backward_trace(&mut trace, grad_out.view(), &mut grad, None).unwrap();
                black_box(l.unwrap())
            })
        });
        // The LossModel call alone (gather + set_params + forward + backward).
        let mut m = model.clone();
        group.bench_function(format!("{}_loss_and_grad", case.name), |b| {
            b.iter(|| black_box(m.loss_and_grad(&w, &indices, &mut grad).unwrap()))
        });
    }
    group.finish();
}

fn main() {
    let cases = cases();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &cases);
    c.final_summary();
    let rows: Vec<(String, String, String, Option<f64>)> = cases
        .iter()
        .flat_map(|k| {
            [
                (
                    format!("{} step / fwd+bwd", k.name),
                    format!("{}_sgld_step", k.name),
                    format!("{}_forward_backward", k.name),
                    None,
                ),
                (
                    format!("{} devinterp / step", k.name),
                    format!("{}_sgld_step", k.name),
                    String::new(),
                    Some(k.devinterp_ms * 1e6),
                ),
            ]
        })
        .collect();
    let rows: Vec<_> = rows.iter().map(|(l, b, base, r)| (l.as_str(), b.as_str(), base.as_str(), *r)).collect();
    common::print_time_ratios(GROUP, &rows);
}
