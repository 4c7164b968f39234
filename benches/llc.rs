//! Time per SGLD step (minibatch draw, loss and gradient, noise, update, diagnostics) on the
//! shapes of devinterp's recorded runs, next to one forward+backward of the same batch measured
//! in the same run:
//! * the deep linear network 10→10→10→10 without biases (300 parameters, n = 10000, batch 500);
//! * the digits-shaped ReLU MLP 64→40→40→10 (4,650 parameters with biases, n = 1797, batch 64; devinterp's recorded digits run had 3,210).
//!
//! devinterp 2.0.1 recorded 1.40 ms (DLN) and 4.06 ms (digits) per step on 2 threads.
//!
//! Also, in the same run:
//! * a restricted step (one layer's weights of the same model; the backward pass stays full, the
//!   update touches k coordinates) next to the full step: the target is restricted ≤ full;
//! * group `llc_calibration`: a calibration sweep of the DLN, 16 settings (lr 3e-5 … 1e-3 × γ 1 …
//!   1000, none diverges) × 4 chains × 500 steps, all chains on the rayon pool (target < 2 s).

mod common;

use criterion::Criterion;
use degeneracy::llc::{CalibrationAxis, CalibrationConfig, LlcConfig, LlcEstimator, LossModel, MlpLoss, ParamLayout};
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
    /// The tensor a restricted chain samples.
    restricted_to: &'static str,
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
        Case {
            name: "dln_300_b500",
            mlp: dln,
            data: dln_data,
            loss: Loss::Mse,
            batch: 500,
            devinterp_ms: 1.40,
            restricted_to: "layers.1.weight",
        },
        Case {
            name: "digits_4650_b64",
            mlp: digits,
            data: digits_data,
            loss: Loss::CrossEntropy,
            batch: 64,
            devinterp_ms: 4.06,
            restricted_to: "layers.1.weight",
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
        let subset = ParamLayout::mlp(&case.mlp).select(&[case.restricted_to]).unwrap();
        let mut restricted = estimator.clone().restrict(subset).chain(model.clone(), &w, 0).unwrap();
        group.bench_function(format!("{}_restricted_step", case.name), |b| {
            b.iter(|| black_box(restricted.step().unwrap()))
        });

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

const CALIBRATION: &str = "llc_calibration";

/// A calibration sweep of the `llc_dln` fixture (`$DEGENERACY_FIXTURES` or `../shared/fixtures`):
/// 16 settings × 4 chains × 500 steps, its own settings otherwise (nβ = n/ln n, batch 500).
fn bench_calibration(c: &mut Criterion) {
    let dir = std::env::var_os("DEGENERACY_FIXTURES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"))
        .join("llc_dln");
    let bias_free = degeneracy::io::LoadOptions::bias_free();
    let Ok(mlp) = degeneracy::io::load_mlp_with(dir.join("model.safetensors"), Activation::Identity, &bias_free) else {
        println!("{CALIBRATION}: fixture llc_dln not found under {} (set DEGENERACY_FIXTURES)", dir.display());
        return;
    };
    let x = degeneracy::io::read_matrix(dir.join("inputs.npy")).unwrap();
    let y = degeneracy::io::read_matrix(dir.join("targets.npy")).unwrap();
    let model = MlpLoss::new(&mlp, Loss::Mse, Dataset::new(x, Targets::Values(y)).unwrap()).unwrap();
    let w = model.params();
    let base = LlcConfig::new(1e-4).nbeta(1085.7362047581294).batch_size(500).num_chains(4).seed(0);
    let sweep = CalibrationConfig::new(
        vec![3e-5, 1e-4, 3e-4, 1e-3],
        CalibrationAxis::Localization(vec![1.0, 10.0, 100.0, 1000.0]),
    )
    .num_draws(500);
    let estimator = LlcEstimator::new(base).unwrap();
    let mut group = c.benchmark_group(CALIBRATION);
    group.sample_size(10);
    group.bench_function("dln_16_settings_4x500", |b| {
        b.iter(|| {
            let cal = estimator.calibrate(&model, &w, &sweep).unwrap();
            assert!(cal.settings.iter().all(|s| !s.diverged), "the timed sweep runs every step");
            black_box(cal)
        })
    });
    // A whole estimate with the fixture's settings (4 chains × 2000 draws, γ 1): devinterp's
    // wall seconds per step is this time / 8000 steps (its recorded 1.40 ms, INDEX.md).
    let fixture = LlcEstimator::new(base.localization(1.0).num_draws(2000)).unwrap();
    group.bench_function("dln_estimate_4x2000", |b| b.iter(|| black_box(fixture.estimate(&model, &w).unwrap())));
    // Baseline: the same 32,000 steps as one estimate of 64 chains × 500 draws.
    let one = LlcEstimator::new(base.num_chains(64).num_draws(500)).unwrap();
    group.bench_function("dln_one_estimate_64x500", |b| b.iter(|| black_box(one.estimate(&model, &w).unwrap())));
    group.finish();
}

fn main() {
    let cases = cases();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &cases);
    bench_calibration(&mut c);
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
                    format!("{} restricted / full step", k.name),
                    format!("{}_restricted_step", k.name),
                    format!("{}_sgld_step", k.name),
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
    match (
        common::median_ns(CALIBRATION, "dln_16_settings_4x500"),
        common::median_ns(CALIBRATION, "dln_one_estimate_64x500"),
    ) {
        (Some(t), Some(base)) => println!(
            "\n{CALIBRATION}: 16 settings × 4 chains × 500 steps in {:.3} s (target < 2 s); one estimate of the same \
             32,000 steps {:.3} s, ratio {:.2}",
            t / 1e9,
            base / 1e9,
            t / base
        ),
        _ => println!("\n{CALIBRATION}: (no estimate; run without a filter)"),
    }
}
