//! The LLC estimator against exact theory, closed forms and the devinterp `llc_dln` fixture.

mod common;

use common::{dln_model, fixtures};
use degeneracy::basis::NodeBasis;
use degeneracy::graph::Modules;
use degeneracy::llc::theory::{self, Rational};
use degeneracy::llc::{
    BehaviouralLoss, CalibrationAxis, CalibrationConfig, ChainStd, Checkpoint, DivergenceCause, InitLoss, LlcConfig,
    LlcEstimator, LlcReport, LossModel, MlpLoss, NbetaDefault, ParamLayout, ParamSubset, Sampler, module_parameters,
};
use degeneracy::nn::{Optimizer, TrainConfig, train, train_observed};
use degeneracy::{Activation, Dataset, Error, Layer, Linear, Loss, Matrix, Mlp, Result, Targets, io};

// ---------------------------------------------------------------------------------------------
// theory

#[test]
fn dln_theory_matches_the_fixture_and_full_rank() {
    assert_eq!(theory::deep_linear_network(&[10, 10, 10, 10], 4).unwrap().to_f64(), 44.0);
    assert_eq!(theory::deep_linear_network(&[10, 10, 10, 10], 10).unwrap().to_f64(), 50.0);
}

#[test]
fn rrr_theory_matches_devinterp_cross_checks() {
    for ((m, h, n), expected) in
        [((5, 3, 5), 6.5), ((5, 4, 5), 8.0), ((4, 3, 8), 6.0), ((8, 3, 4), 6.0), ((3, 8, 4), 6.0)]
    {
        assert_eq!(theory::reduced_rank_regression(m, h, n, 0).unwrap().to_f64(), expected, "RRR ({m},{h},{n})");
        assert_eq!(theory::deep_linear_network(&[m, h, n], 0).unwrap().to_f64(), expected, "DLN ({m},{h},{n})");
    }
}

fn q(n: i128, d: i128) -> Rational {
    Rational::new(n, d).unwrap()
}

#[test]
fn dln_theory_reproduces_every_row_of_the_worked_table() {
    // notes/llc.md §4: widths, r, M_j, S, (ℓ, Σ, M, a), terms, λ.
    type Row = (&'static [usize], usize, &'static [usize], &'static [usize], [usize; 4], [Rational; 4], Rational);
    let rows: Vec<Row> = vec![
        (
            &[10, 10, 10, 10],
            4,
            &[6, 6, 6, 6],
            &[0, 1, 2, 3],
            [3, 24, 8, 3],
            [q(32, 1), q(0, 1), q(-96, 1), q(108, 1)],
            q(44, 1),
        ),
        (
            &[10, 10, 10, 10],
            10,
            &[0, 0, 0, 0],
            &[0, 1, 2, 3],
            [3, 0, 0, 3],
            [q(50, 1), q(0, 1), q(0, 1), q(0, 1)],
            q(50, 1),
        ),
        (
            &[10, 10, 10, 10],
            0,
            &[10, 10, 10, 10],
            &[0, 1, 2, 3],
            [3, 40, 14, 1],
            [q(0, 1), q(1, 6), q(-800, 3), q(300, 1)],
            q(67, 2),
        ),
        (&[5, 3, 5], 0, &[5, 3, 5], &[0, 1, 2], [2, 13, 7, 1], [q(0, 1), q(1, 8), q(-169, 8), q(55, 2)], q(13, 2)),
        (&[5, 4, 5], 0, &[5, 4, 5], &[0, 1, 2], [2, 14, 7, 2], [q(0, 1), q(0, 1), q(-49, 2), q(65, 2)], q(8, 1)),
        (&[4, 3, 8], 0, &[4, 3, 8], &[0, 1], [1, 7, 7, 1], [q(0, 1), q(0, 1), q(0, 1), q(6, 1)], q(6, 1)),
        (&[8, 3, 4], 0, &[8, 3, 4], &[1, 2], [1, 7, 7, 1], [q(0, 1), q(0, 1), q(0, 1), q(6, 1)], q(6, 1)),
        (&[3, 8, 4], 0, &[3, 8, 4], &[0, 2], [1, 7, 7, 1], [q(0, 1), q(0, 1), q(0, 1), q(6, 1)], q(6, 1)),
        (
            &[20, 10, 20],
            5,
            &[15, 5, 15],
            &[0, 1, 2],
            [2, 35, 18, 1],
            [q(175, 2), q(1, 8), q(-1225, 8), q(375, 2)],
            q(122, 1),
        ),
        (
            &[20, 10, 10, 20],
            5,
            &[15, 5, 5, 15],
            &[1, 2],
            [1, 10, 10, 1],
            [q(175, 2), q(0, 1), q(0, 1), q(25, 2)],
            q(100, 1),
        ),
        (
            &[8, 6, 4, 6, 8],
            2,
            &[6, 4, 2, 4, 6],
            &[1, 2, 3],
            [2, 10, 5, 2],
            [q(14, 1), q(0, 1), q(-25, 2), q(16, 1)],
            q(35, 2),
        ),
        (
            &[5, 5, 5, 5, 5],
            2,
            &[3, 3, 3, 3, 3],
            &[0, 1, 2, 3, 4],
            [4, 15, 4, 3],
            [q(8, 1), q(3, 16), q(-675, 16), q(45, 1)],
            q(11, 1),
        ),
        (
            &[10, 2, 10, 10],
            1,
            &[9, 1, 9, 9],
            &[0, 1, 2, 3],
            [3, 28, 10, 1],
            [q(19, 2), q(1, 6), q(-392, 3), q(135, 1)],
            q(14, 1),
        ),
    ];
    for (widths, r, m, s, [ell, sigma, big_m, a], terms, lambda) in rows {
        let d = theory::deep_linear_network_details(widths, r).unwrap();
        let what = format!("{widths:?} r={r}");
        assert_eq!(d.m, m, "{what}: M_j");
        assert_eq!(d.subset, s, "{what}: S");
        assert_eq!([d.ell, d.sigma, d.big_m, d.a], [ell, sigma, big_m, a], "{what}: ℓ, Σ, M, a");
        assert_eq!(d.terms, terms, "{what}: terms");
        assert_eq!(d.lambda, lambda, "{what}: λ");
    }
}

#[test]
fn rrr_and_dln_agree_for_positive_rank() {
    let mut checked = 0;
    for m in 1..=7 {
        for h in 1..=7 {
            for n in 1..=7 {
                for r in 1..=m.min(h).min(n) {
                    let rrr = theory::reduced_rank_regression(m, h, n, r).unwrap();
                    let dln = theory::deep_linear_network(&[m, h, n], r).unwrap();
                    assert_eq!(rrr, dln, "(M, H, N, r) = ({m}, {h}, {n}, {r})");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 500);
}

#[test]
fn regular_theory_is_half_the_dimension() {
    assert_eq!(theory::regular(7).to_f64(), 3.5);
    // A single linear layer is regular: the DLN formula with one matrix gives in·out/2.
    assert_eq!(theory::deep_linear_network(&[6, 5], 2).unwrap(), theory::regular(30));
}

// ---------------------------------------------------------------------------------------------
// the llc_dln fixture

/// The fixture's hyper-parameters (config.json).
fn dln_config() -> LlcConfig {
    LlcConfig::new(1e-4)
        .localization(1.0)
        .nbeta(1085.7362047581294)
        .batch_size(500)
        .num_chains(4)
        .num_draws(2000)
        .num_burnin_steps(0)
        .num_init_loss_batches(32)
        .seed(0)
}

#[test]
fn dln_estimate_matches_theory_and_devinterp() {
    let (model, w) = dln_model();
    assert_eq!(model.n_params(), 300);
    let report = LlcEstimator::new(dln_config()).unwrap().estimate(&model, &w).unwrap();
    let second_half = report.llc_over_steps(1000..2000).unwrap();
    println!(
        "DLN: llc {:.3} ± {:.3} per chain {:?}; second half {second_half:.3}; init_loss {:e}; R̂ {:?} ESS {:?}",
        report.llc_mean,
        report.llc_std,
        report.llc_per_chain,
        report.init_loss,
        report.diagnostics.r_hat,
        report.diagnostics.ess,
    );
    println!("DLN MALA {:?}", report.diagnostics.per_chain.iter().map(|c| c.mala_acceptance).collect::<Vec<_>>());
    assert!(report.all_healthy());
    // Noiseless teacher: the minibatch loss at w* is zero up to rounding.
    assert!(report.init_loss.is_finite() && report.init_loss.abs() < 1e-20, "init_loss {}", report.init_loss);
    assert!((38.0..=46.0).contains(&report.llc_mean), "λ̂ = {}", report.llc_mean);
    assert!((second_half / 44.0 - 1.0).abs() < 0.15, "second half {second_half}");
}

#[test]
fn dln_behavioural_loss_samples_the_same_posterior_with_nbeta_over_ten() {
    // Noiseless targets Y = f(X, w*): L_B = Σ_outputs (f − Y)² averaged over samples
    // = 10 × MSE (which also averages over the 10 outputs). With nβ/10 the behavioural
    // posterior equals the training one.
    let (train, w) = dln_model();
    let dir = fixtures().join("llc_dln");
    let mlp =
        io::load_mlp_with(dir.join("model.safetensors"), Activation::Identity, &io::LoadOptions::bias_free()).unwrap();
    let behavioural = BehaviouralLoss::new(&mlp, io::read_matrix(dir.join("inputs.npy")).unwrap()).unwrap();
    let y = io::read_matrix(dir.join("targets.npy")).unwrap();
    let max_dev = behavioural
        .reference_outputs()
        .as_slice()
        .iter()
        .zip(y.as_slice())
        .fold(0.0_f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(max_dev < 1e-12, "f(x, w*) vs fixture targets: {max_dev:e}");

    let nbeta = 1085.7362047581294;
    let config = dln_config();
    let t = LlcEstimator::new(config).unwrap().estimate(&train, &w).unwrap();
    let same_seed = LlcEstimator::new(config.nbeta(nbeta / 10.0)).unwrap().estimate(&behavioural, &w).unwrap();
    let other_seed = LlcEstimator::new(config.nbeta(nbeta / 10.0).seed(1)).unwrap().estimate(&behavioural, &w).unwrap();
    println!(
        "DLN training λ̂ {:.3} ± {:.3}; behavioural (nβ/10) same seed {:.3} ± {:.3}, seed 1 {:.3} ± {:.3}",
        t.llc_mean, t.llc_std, same_seed.llc_mean, same_seed.llc_std, other_seed.llc_mean, other_seed.llc_std
    );
    // Same seed, same batches: the two chains follow the same trajectory up to rounding.
    assert!((same_seed.llc_mean / t.llc_mean - 1.0).abs() < 1e-6);
    // Independent chains: agreement within the chains' spread, i.e. the range of the 8
    // per-chain values. The difference of two 4-chain means has SD ≈ σ_chain·√(1/2), the
    // expected range of 8 chains ≈ 2.8 σ_chain: a ~4 SD tolerance (seed pairs 0/1 … 14/15 gave
    // |Δ| / range ≤ 0.5).
    let all: Vec<f64> = t.llc_per_chain.iter().chain(&other_seed.llc_per_chain).copied().collect();
    let spread = all.iter().copied().fold(f64::MIN, f64::max) - all.iter().copied().fold(f64::MAX, f64::min);
    println!("|Δ| = {:.3}, chains' spread = {spread:.3}", (other_seed.llc_mean - t.llc_mean).abs());
    assert!((other_seed.llc_mean - t.llc_mean).abs() < spread, "difference exceeds the chains' spread {spread}");
    // The wrong factor (nβ unchanged) samples a 10× colder posterior: a different number.
    let wrong = LlcEstimator::new(config.num_chains(2).num_draws(500)).unwrap().estimate(&behavioural, &w).unwrap();
    let t_short = LlcEstimator::new(config.num_chains(2).num_draws(500)).unwrap().estimate(&train, &w).unwrap();
    println!("behavioural with nβ (not nβ/10), 2 × 500: {:.3} vs training {:.3}", wrong.llc_mean, t_short.llc_mean);
    assert!((wrong.llc_mean - t_short.llc_mean).abs() > 4.0 * spread);
}

// ---------------------------------------------------------------------------------------------
// A quadratic loss with a closed-form stationary λ̂ (notes/llc.md §2)

/// L(w) = ½ Σ_i h_i (w_i − c_i)², full batch (one "sample").
#[derive(Clone)]
struct Quadratic {
    h: Vec<f64>,
    centre: Vec<f64>,
}

impl LossModel for Quadratic {
    fn n_params(&self) -> usize {
        self.h.len()
    }
    fn n_samples(&self) -> usize {
        1
    }
    fn loss_and_grad(&mut self, w: &[f64], _batch: &[usize], grad: &mut [f64]) -> Result<f64> {
        let mut l = 0.0;
        for i in 0..w.len() {
            let u = w[i] - self.centre[i];
            grad[i] = self.h[i] * u;
            l += 0.5 * self.h[i] * u * u;
        }
        Ok(l)
    }
}

fn quadratic(d: usize) -> Quadratic {
    Quadratic { h: (1..=d).map(|i| 0.5 * i as f64).collect(), centre: (0..d).map(|i| (i as f64).sin()).collect() }
}

/// λ̂_∞ = Σ nβ h / (2 a (1 − ε a / 4)), a = nβ h + γ, and the standard error of a C × T average:
/// per coordinate X = nβ h u²/2 has variance 2 E[X]² (u Gaussian), u² has autocorrelation ρ^{2k}
/// with ρ = 1 − εa/2, so Var(mean) = Σ 2 E[X]² (1 + ρ²)/(1 − ρ²) / (C T).
fn sgld_closed_form(h: &[f64], nbeta: f64, gamma: f64, eps: f64, draws: usize) -> (f64, f64) {
    let (mut lam, mut var) = (0.0, 0.0);
    for &hi in h {
        let a = nbeta * hi + gamma;
        let ex = nbeta * hi / (2.0 * a * (1.0 - eps * a / 4.0));
        let rho = 1.0 - eps * a / 2.0;
        lam += ex;
        var += 2.0 * ex * ex * (1.0 + rho * rho) / (1.0 - rho * rho);
    }
    (lam, (var / draws as f64).sqrt())
}

#[test]
fn sgld_matches_the_closed_form_stationary_value_on_a_quadratic() {
    let model = quadratic(10);
    let w = model.centre.clone();
    let (nbeta, gamma) = (100.0, 1.0);
    for eps in [0.004, 0.001] {
        let (chains, draws) = (4, 20_000);
        let config = LlcConfig::new(eps)
            .localization(gamma)
            .nbeta(nbeta)
            .batch_size(1)
            .num_chains(chains)
            .num_draws(draws)
            .num_burnin_steps(200)
            .seed(7);
        let report = LlcEstimator::new(config).unwrap().estimate(&model, &w).unwrap();
        let (expected, se) = sgld_closed_form(&model.h, nbeta, gamma, eps, chains * draws);
        let continuum: f64 = model.h.iter().map(|&h| nbeta * h / (2.0 * (nbeta * h + gamma))).sum();
        println!(
            "quadratic ε = {eps}: λ̂ {:.4} (draws), closed form {expected:.4} ± {se:.4}, continuum {continuum:.4}, d/2 = 5",
            report.llc_draws_mean
        );
        assert_eq!(report.init_loss, 0.0);
        // 4 standard errors: a false alarm has probability < 1e-4.
        assert!(
            (report.llc_draws_mean - expected).abs() < 4.0 * se,
            "off by {:.2} SE",
            (report.llc_draws_mean - expected) / se
        );
        // The test discriminates: the step-size correction is many standard errors wide.
        assert!((expected - continuum).abs() > 10.0 * se);
    }
}

#[test]
fn sgnht_samples_the_quadratic_posterior() {
    // SGNHT's thermostat makes the discretisation bias small: at ε = 1e-4 the stationary
    // λ̂ should be the continuum value Σ nβh / (2(nβh + γ)) to well under 2 %.
    let model = quadratic(10);
    let w = model.centre.clone();
    let (nbeta, gamma) = (100.0, 1.0);
    let continuum: f64 = model.h.iter().map(|&h| nbeta * h / (2.0 * (nbeta * h + gamma))).sum();
    let config = LlcConfig::new(1e-4)
        .sampler(Sampler::sgnht())
        .localization(gamma)
        .nbeta(nbeta)
        .batch_size(1)
        .num_draws(20_000)
        .num_burnin_steps(2_000)
        .seed(3);
    let report = LlcEstimator::new(config).unwrap().estimate(&model, &w).unwrap();
    let thermostats: Vec<f64> = report.diagnostics.per_chain.iter().map(|c| c.final_thermostat).collect();
    println!(
        "sgnht: λ̂ {:.4} ± {:.4} vs continuum {continuum:.4}; thermostat {thermostats:?}",
        report.llc_draws_mean, report.llc_draws_std
    );
    assert!(report.all_healthy());
    assert!(report.diagnostics.per_chain.iter().all(|c| c.mala_acceptance.is_none()));
    assert!((report.llc_draws_mean / continuum - 1.0).abs() < 0.02);
    // With exact gradients the thermostat fluctuates around the diffusion A = 0.01 (per-chain
    // final values over 80 chains: 0.0013 … 0.0187; the 4-chain mean has SD ≈ 0.002).
    let mean = thermostats.iter().sum::<f64>() / thermostats.len() as f64;
    assert!((0.003..0.02).contains(&mean), "{thermostats:?}");
}

#[test]
fn rmsprop_sgld_with_a_constant_preconditioner_is_sgld_with_step_eps_g() {
    // With the offset eps = 10 ≫ |g| ≈ 0.1, G = 1/(√V + eps) ≈ 0.1 is constant to ~1 %, and the
    // update is SGLD with step ε·G: the closed form at ε/10 applies. (With devinterp's eps = 0.1
    // G follows |g|, and without the Γ correction the chain samples ∝ e^{−U}/G instead: biased
    // upwards, as docs/llc.md explains. That is devinterp's sampler, reproduced as is.)
    let model = quadratic(10);
    let w = model.centre.clone();
    let (nbeta, gamma, eps) = (100.0, 1.0, 0.04);
    let config = LlcConfig::new(eps)
        .sampler(Sampler::RmspropSgld { alpha: 0.99, eps: 10.0 })
        .localization(gamma)
        .nbeta(nbeta)
        .batch_size(1)
        .num_draws(20_000)
        .num_burnin_steps(500)
        .seed(4);
    let report = LlcEstimator::new(config).unwrap().estimate(&model, &w).unwrap();
    let (expected, se) = sgld_closed_form(&model.h, nbeta, gamma, eps / 10.0, 4 * 20_000);
    println!(
        "rmsprop_sgld (eps 10): λ̂ {:.4} vs SGLD closed form at ε/10 {expected:.4} ± {se:.4}",
        report.llc_draws_mean
    );
    assert!((report.llc_draws_mean / expected - 1.0).abs() < 0.03);
    // Noise scaled by G instead of √G would give a 10× colder chain; drift without G a 10× hotter.
    let mala = report.diagnostics.per_chain[0].mala_acceptance.unwrap();
    assert!(mala > 0.5, "MALA acceptance {mala}");
}

#[test]
fn bounding_box_noise_level_and_weight_decay_act_as_specified() {
    let model = quadratic(5);
    let w = model.centre.clone();
    let base = LlcConfig::new(0.004).nbeta(100.0).batch_size(1).num_chains(2).num_draws(2000).seed(9);
    // Box of half-width b: every coordinate stays within b of w*, so ‖w − w*‖ ≤ b·√d.
    for sampler in [Sampler::Sgld, Sampler::rmsprop_sgld(), Sampler::sgnht()] {
        let b = 0.01;
        let r = LlcEstimator::new(base.sampler(sampler).bounding_box(b)).unwrap().estimate(&model, &w).unwrap();
        let max = r.diagnostics.per_chain.iter().map(|c| c.max_distance).fold(0.0, f64::max);
        assert!(max <= b * 5f64.sqrt() + 1e-12 && max > 0.0, "{}: max distance {max}", sampler.name());
    }
    // No noise from the minimum: the chain never moves and λ̂ is exactly 0.
    let r = LlcEstimator::new(base.noise_level(0.0)).unwrap().estimate(&model, &w).unwrap();
    assert_eq!(r.llc_mean, 0.0);
    assert!(r.diagnostics.per_chain.iter().all(|c| c.max_distance == 0.0));
    // σ = 2 samples at temperature 4: λ̂ ≈ 4 × the σ = 1 value (closed form × σ²).
    let one = LlcEstimator::new(base.num_draws(20_000)).unwrap().estimate(&model, &w).unwrap();
    let two = LlcEstimator::new(base.num_draws(20_000).noise_level(2.0)).unwrap().estimate(&model, &w).unwrap();
    assert!((two.llc_mean / one.llc_mean / 4.0 - 1.0).abs() < 0.05, "{} vs {}", two.llc_mean, one.llc_mean);
    // Weight decay λ pulls towards 0: ∇U = (nβh + γ + λ)u + λc for u = w − c, so u has mean
    // −λc/a and variance 1/(a(1 − εa/4)), a = nβh + γ + λ, and E[nβL] = Σ nβh(mean² + var)/2.
    let (nbeta, gamma, lambda, eps) = (100.0, 1.0, 50.0, 0.004);
    let expected: f64 = model
        .h
        .iter()
        .zip(&model.centre)
        .map(|(&h, &c)| {
            let a = nbeta * h + gamma + lambda;
            nbeta * h / 2.0 * ((lambda * c / a).powi(2) + 1.0 / (a * (1.0 - eps * a / 4.0)))
        })
        .sum();
    let wd = LlcEstimator::new(base.num_draws(20_000).num_burnin_steps(500).weight_decay(lambda))
        .unwrap()
        .estimate(&model, &w)
        .unwrap();
    println!("weight decay: λ̂ {:.4} vs closed form {expected:.4} (without: {:.4})", wd.llc_draws_mean, one.llc_mean);
    assert!((wd.llc_draws_mean / expected - 1.0).abs() < 0.03);
    assert!(expected > one.llc_mean + 1.0); // the term matters
}

// ---------------------------------------------------------------------------------------------
// A regular model: full-rank linear regression with Gaussian noise

fn gaussian_matrix(rows: usize, cols: usize, seed: u64) -> Matrix {
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(seed);
    Matrix::from_fn(rows, cols, |_, _| StandardNormal.sample(&mut rng))
}

/// Least squares W* = Yᵀ X (XᵀX)⁻¹ (`[out, in]`), the exact minimiser of the empirical MSE.
fn least_squares(x: &Matrix, y: &Matrix) -> Matrix {
    let xtx = x.transpose().matmul(x).unwrap();
    let (vals, vecs) = degeneracy::linalg::symmetric_eigen(&xtx).unwrap();
    let inv_vals: Vec<f64> = vals.iter().map(|v| 1.0 / v).collect();
    let inv = vecs.matmul(&Matrix::from_diagonal(&inv_vals)).unwrap().matmul(&vecs.transpose()).unwrap();
    y.transpose().matmul(x).unwrap().matmul(&inv).unwrap()
}

#[test]
fn regular_model_gives_half_the_parameter_count() {
    let n = 10_000;
    for (i, (inp, out)) in [(3, 2), (5, 4)].into_iter().enumerate() {
        let x = gaussian_matrix(n, inp, 10 + i as u64);
        let teacher = gaussian_matrix(out, inp, 20 + i as u64);
        let noise = gaussian_matrix(n, out, 30 + i as u64);
        let mut y = x.matmul(&teacher.transpose()).unwrap();
        for (v, e) in y.as_mut_slice().iter_mut().zip(noise.as_slice()) {
            *v += 0.3 * e;
        }
        let w_star = least_squares(&x, &y);
        let mlp = Mlp::new(vec![Linear::new(w_star, None).unwrap()], Activation::Identity).unwrap();
        let model = MlpLoss::new(&mlp, Loss::Mse, Dataset::new(x, Targets::Values(y)).unwrap()).unwrap();
        let w = model.params();
        let d = model.n_params();
        // MSE Hessian ≈ (2/out)·I per output row for standard-normal inputs: a step with
        // ε·nβ·h = 0.1 (step-size bias +2.5 %, correlation time ~20 steps).
        let nbeta = n as f64 / (n as f64).ln();
        let eps = 0.1 / (nbeta * 2.0 / out as f64);
        let batch = 500;
        let config = LlcConfig::new(eps)
            .localization(1.0)
            .batch_size(batch)
            .num_draws(4000)
            .num_burnin_steps(200)
            // One full epoch: L̂₀ = L_n(w*) exactly (32 batches would add nβ × minibatch noise).
            .num_init_loss_batches(n / batch)
            .seed(5);
        let report = LlcEstimator::new(config).unwrap().estimate(&model, &w).unwrap();
        println!(
            "regular d = {d}: λ̂ {:.3} ± {:.3} (draws), all steps {:.3}, d/2 = {}; R̂ {:?}, ESS {:?}, MALA {:?}",
            report.llc_draws_mean,
            report.llc_draws_std,
            report.llc_mean,
            d as f64 / 2.0,
            report.diagnostics.r_hat,
            report.diagnostics.ess,
            report.diagnostics.per_chain[0].mala_acceptance
        );
        assert!(report.nbeta_is_default && (report.nbeta - nbeta).abs() < 1e-9);
        assert!((report.llc_draws_mean / (d as f64 / 2.0) - 1.0).abs() < 0.10);
    }
}

// ---------------------------------------------------------------------------------------------
// bad hyper-parameters and divergence

fn invalid_name(r: Result<LlcEstimator>) -> String {
    match r {
        Err(Error::InvalidParameter { name, .. }) => name,
        other => panic!("expected InvalidParameter, got {other:?}"),
    }
}

#[test]
fn bad_hyper_parameters_are_typed_errors() {
    let base = LlcConfig::new(1e-3);
    for lr in [0.0, -1e-4, f64::NAN, f64::INFINITY] {
        assert_eq!(invalid_name(LlcEstimator::new(base.lr(lr))), "lr");
    }
    for nb in [0.0, -3.0, f64::NAN] {
        assert_eq!(invalid_name(LlcEstimator::new(base.nbeta(nb))), "nbeta");
    }
    assert_eq!(invalid_name(LlcEstimator::new(base.localization(-1.0))), "localization");
    assert_eq!(invalid_name(LlcEstimator::new(base.num_chains(0))), "num_chains");
    assert_eq!(invalid_name(LlcEstimator::new(base.num_draws(0))), "num_draws");
    assert_eq!(invalid_name(LlcEstimator::new(base.batch_size(0))), "batch_size");
    assert_eq!(invalid_name(LlcEstimator::new(base.bounding_box(0.0))), "bounding_box");
    assert_eq!(
        invalid_name(LlcEstimator::new(base.sampler(Sampler::RmspropSgld { alpha: 1.0, eps: 0.1 }))),
        "rmsprop alpha"
    );

    let model = quadratic(3);
    let est = LlcEstimator::new(base.batch_size(2)).unwrap();
    assert!(
        matches!(est.estimate(&model, &model.centre), Err(Error::InvalidParameter { name, .. }) if name == "batch_size")
    );
    let est = LlcEstimator::new(base.batch_size(1)).unwrap();
    assert!(matches!(est.estimate(&model, &[0.0; 2]), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(est.estimate(&model, &[0.0, f64::NAN, 0.0]), Err(Error::NonFinite { .. })));
    // n = 1: the default nβ = n / ln n is undefined.
    assert!(
        matches!(est.estimate(&model, &model.centre), Err(Error::InvalidParameter { name, .. }) if name == "nbeta")
    );
}

/// Every count has a documented bound, and a total that overflows names all three keys that
/// make it (not `num_draws` alone).
#[test]
fn counts_above_their_bounds_are_errors_naming_the_key() {
    let base = LlcConfig::new(1e-3);
    let above_steps = LlcConfig::MAX_STEPS + 1;
    assert_eq!(invalid_name(LlcEstimator::new(base.num_chains(LlcConfig::MAX_CHAINS + 1))), "num_chains");
    assert_eq!(invalid_name(LlcEstimator::new(base.num_chains(usize::MAX))), "num_chains");
    assert_eq!(invalid_name(LlcEstimator::new(base.num_draws(above_steps))), "num_draws");
    assert_eq!(invalid_name(LlcEstimator::new(base.num_burnin_steps(usize::MAX))), "num_burnin_steps");
    assert_eq!(invalid_name(LlcEstimator::new(base.num_steps_bw_draws(above_steps))), "num_steps_bw_draws");
    let batches = LlcConfig::MAX_INIT_LOSS_BATCHES + 1;
    assert_eq!(invalid_name(LlcEstimator::new(base.num_init_loss_batches(batches))), "num_init_loss_batches");
    assert_eq!(invalid_name(LlcEstimator::new(base.batch_size(usize::MAX))), "batch_size");
    let total = "num_burnin_steps + num_draws × num_steps_bw_draws";
    let overflow = base.num_draws(LlcConfig::MAX_STEPS).num_burnin_steps(1);
    assert_eq!(invalid_name(LlcEstimator::new(overflow)), total);
    let product = base.num_draws(1 << 20).num_steps_bw_draws(1 << 20);
    assert_eq!(invalid_name(LlcEstimator::new(product)), total);
    // At the bounds themselves the configuration is valid.
    let at = base.num_chains(LlcConfig::MAX_CHAINS).num_draws(LlcConfig::MAX_STEPS);
    assert!(LlcEstimator::new(at.num_init_loss_batches(LlcConfig::MAX_INIT_LOSS_BATCHES)).is_ok());
}

/// A run whose traces cannot fit in memory (65 536 chains × 2³⁰ steps × 40 B = 2.8 PB) is
/// refused before its first step, naming the keys that size it; the error comes at once
/// instead of an abort on allocation or hours of sampling.
#[cfg(target_os = "linux")]
#[test]
fn a_run_that_cannot_fit_in_memory_is_refused_before_sampling() {
    let model = quadratic(3);
    let config = LlcConfig::new(1e-3).batch_size(1).nbeta(10.0);
    let huge = LlcEstimator::new(config.num_chains(LlcConfig::MAX_CHAINS).num_draws(LlcConfig::MAX_STEPS)).unwrap();
    match huge.estimate(&model, &model.centre) {
        Err(Error::InvalidParameter { name, reason, .. }) => {
            assert!(name.starts_with("num_chains × "), "{name}");
            assert!(reason.contains("GiB"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A run that fits is not refused.
    let small = LlcEstimator::new(config.num_chains(2).num_draws(10)).unwrap();
    assert!(small.estimate(&model, &model.centre).is_ok());
}

/// Returns NaN at step `at` of the chain whose clone id is `bad_id` (clones are made in chain
/// order on the calling thread, so id k + 1 is chain k).
struct NanAt {
    inner: Quadratic,
    id: usize,
    bad_id: usize,
    at: usize,
    calls: usize,
    clones: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Clone for NanAt {
    fn clone(&self) -> Self {
        let id = self.clones.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        NanAt { inner: self.inner.clone(), id, calls: 0, clones: self.clones.clone(), ..*self }
    }
}

impl LossModel for NanAt {
    fn n_params(&self) -> usize {
        self.inner.n_params()
    }
    fn n_samples(&self) -> usize {
        1
    }
    fn loss_and_grad(&mut self, w: &[f64], b: &[usize], grad: &mut [f64]) -> Result<f64> {
        let step = self.calls;
        self.calls += 1;
        let l = self.inner.loss_and_grad(w, b, grad)?;
        Ok(if self.id == self.bad_id && step == self.at { f64::NAN } else { l })
    }
    fn loss(&mut self, w: &[f64], b: &[usize]) -> Result<f64> {
        let mut g = vec![0.0; w.len()];
        self.inner.loss_and_grad(w, b, &mut g)
    }
}

#[test]
fn nan_loss_mid_chain_flags_that_chain_and_keeps_its_partial_trace() {
    let model = NanAt { inner: quadratic(4), id: 0, bad_id: 2, at: 37, calls: 0, clones: Default::default() };
    let w = model.inner.centre.clone();
    let config = LlcConfig::new(1e-3).nbeta(10.0).batch_size(1).num_chains(3).num_draws(100).seed(1);
    let report = LlcEstimator::new(config).unwrap().estimate(&model, &w).unwrap();
    let d = report.divergences[1].expect("chain 1 diverged");
    assert_eq!(d.step, 37);
    assert!(matches!(d.cause, DivergenceCause::NonFiniteLoss { value } if value.is_nan()));
    assert!(report.divergences[0].is_none() && report.divergences[2].is_none());
    assert_eq!(report.loss_trace[1].len(), 37);
    assert_eq!(report.loss_trace[0].len(), 100);
    assert!(report.llc_per_chain[1].is_nan());
    assert!(report.warnings.iter().any(|w| w.contains("chain 1 diverged at step 37")));
    assert_eq!(report.healthy_chains(), [0, 2]);
    assert_eq!(report.n_excluded_chains, 1);
    assert!(report.warnings.iter().any(|w| w.contains("1 of 3 chains diverged and were excluded")));
    let expected = (report.llc_per_chain[0] + report.llc_per_chain[2]) / 2.0;
    assert!(report.llc_mean.is_finite() && (report.llc_mean - expected).abs() < 1e-12);
    // The flag survives serialisation (NaN becomes null, never a number).
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["llc_per_chain"][1].is_null());
    assert_eq!(json["divergences"][1]["step"], 37);
}

#[test]
fn a_too_large_step_diverges_loudly() {
    // ε·(nβ h_max + γ) = 0.1·(10·5 + 1) > 4: the chain explodes geometrically (×1.55 per step).
    // No chain is healthy: an error callers cannot take for an estimate, carrying the report.
    let model = quadratic(10);
    let config = LlcConfig::new(0.1).nbeta(10.0).batch_size(1).num_chains(2).num_draws(5000).seed(2);
    let err = LlcEstimator::new(config).unwrap().estimate(&model, &model.centre).unwrap_err();
    let Error::NoHealthyChain { chains, report, .. } = err else { panic!("expected NoHealthyChain, got {err}") };
    assert_eq!(chains, 2);
    assert!(report.divergences.iter().all(Option::is_some));
    assert_eq!(report.n_excluded_chains, 2);
    assert!(report.llc_mean.is_nan());
    assert!(report.warnings.iter().any(|w| w.contains("every chain diverged")));
    assert!(report.loss_trace.iter().all(|t| t.len() < 5000 && t.iter().all(|v| v.is_finite())));
}

// ---------------------------------------------------------------------------------------------
// determinism

fn small_mlp_model() -> (MlpLoss, Vec<f64>) {
    let data = degeneracy::data::modular_addition(7).unwrap();
    let mlp = Mlp::init(&[14, 16, 7], Activation::Relu, true, 3).unwrap();
    let model = MlpLoss::new(&mlp, Loss::CrossEntropy, data).unwrap();
    let w = model.params();
    (model, w)
}

fn run_in_pool(threads: usize, config: LlcConfig) -> LlcReport {
    let (model, w) = small_mlp_model();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| LlcEstimator::new(config).unwrap().estimate(&model, &w).unwrap())
}

#[test]
fn reports_are_bitwise_identical_for_any_thread_count() {
    let config = LlcConfig::new(1e-3).batch_size(16).num_chains(4).num_draws(300).seed(11).shared_batch_order(false);
    let one = run_in_pool(1, config);
    let two = run_in_pool(2, config);
    let bits = |r: &LlcReport| r.loss_trace.iter().flatten().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&one), bits(&two));
    assert_eq!(one, two);
    assert_eq!(serde_json::to_string(&one).unwrap(), serde_json::to_string(&two).unwrap());
    // Chains differ from each other, and another seed gives other chains.
    assert_ne!(one.loss_trace[0], one.loss_trace[1]);
    let other = run_in_pool(2, config.seed(12));
    assert_ne!(one.loss_trace[0], other.loss_trace[0]);
    assert_ne!(one.llc_per_chain, other.llc_per_chain);
    // Seed s, chain c + 1 is not seed s + 1, chain c (devinterp PR #98).
    assert_ne!(one.loss_trace[1], other.loss_trace[0]);
}

// ---------------------------------------------------------------------------------------------
// Restricted LLC

/// L(w) = ½ Σ_{i<6} h_i (w_i − c_i)² + Σ_{j<2} q_j (w_{6+j} − c_{6+j})⁴, full batch: block A is
/// regular (λ_A = 6/2 = 3), block B a quartic potential (λ_B = 2 × ¼ = ½), and they do not
/// interact.
#[derive(Clone)]
struct TwoBlocks {
    h: Vec<f64>,
    q: Vec<f64>,
    centre: Vec<f64>,
}

impl LossModel for TwoBlocks {
    fn n_params(&self) -> usize {
        self.h.len() + self.q.len()
    }
    fn n_samples(&self) -> usize {
        1
    }
    fn loss_and_grad(&mut self, w: &[f64], _batch: &[usize], grad: &mut [f64]) -> Result<f64> {
        let mut l = 0.0;
        for (i, &h) in self.h.iter().enumerate() {
            let u = w[i] - self.centre[i];
            grad[i] = h * u;
            l += 0.5 * h * u * u;
        }
        for (j, &q) in self.q.iter().enumerate() {
            let k = self.h.len() + j;
            let u = w[k] - self.centre[k];
            grad[k] = 4.0 * q * u.powi(3);
            l += q * u.powi(4);
        }
        Ok(l)
    }
}

/// E[nβ q u⁴] under p(u) ∝ exp(−nβ q u⁴ − γu²/2), by Simpson's rule on a grid wide enough that
/// the density is below e⁻⁶⁰ at its ends: the exact (continuum) restricted λ̂ of one quartic
/// coordinate at finite nβ and γ (¼ as nβ → ∞).
fn quartic_expectation(nbeta: f64, q: f64, gamma: f64) -> f64 {
    let end = (60.0 / (nbeta * q)).powf(0.25);
    let n = 200_000;
    let dx = 2.0 * end / n as f64;
    let (mut z, mut m) = (0.0, 0.0);
    for k in 0..=n {
        let u = -end + k as f64 * dx;
        let weight = if k == 0 || k == n {
            1.0
        } else if k % 2 == 1 {
            4.0
        } else {
            2.0
        };
        let p = (-nbeta * q * u.powi(4) - 0.5 * gamma * u * u).exp();
        z += weight * p;
        m += weight * p * nbeta * q * u.powi(4);
    }
    m / z
}

/// Standard error of λ̂ over the draws by batch means: each chain's trace of nβ·(loss −
/// init_loss) after burn-in cut into `batches` consecutive blocks (much longer than the
/// correlation time), SE = sd(block means) / √(number of blocks). Independent of the
/// estimator's own ESS code.
fn batch_means_se(r: &LlcReport, burnin: usize, batches: usize) -> f64 {
    let mut means = Vec::new();
    for trace in &r.llc_trace_instantaneous {
        let draws = &trace[burnin..];
        let size = draws.len() / batches;
        for b in 0..batches {
            means.push(draws[b * size..(b + 1) * size].iter().sum::<f64>() / size as f64);
        }
    }
    let m = means.iter().sum::<f64>() / means.len() as f64;
    let var = means.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (means.len() - 1) as f64;
    (var / means.len() as f64).sqrt()
}

#[test]
fn restricted_llc_of_two_non_interacting_blocks_gives_each_block_and_their_sum() {
    // Tolerance: 4 standard errors (batch means over 4 × 40,000 draws) plus, for the quartic
    // block, 1 % of its value: the SGLD step-size bias, which the continuum expectation leaves
    // out (ε·curvature ≈ 0.02 at the typical |u|; the quadratic block's closed form includes it).
    let model = TwoBlocks {
        h: vec![0.5, 1.0, 1.5, 2.0, 2.5, 3.0],
        q: vec![1.0, 2.0],
        centre: (0..8).map(|i| (i as f64 * 0.7).cos()).collect(),
    };
    let w = model.centre.clone();
    let (nbeta, gamma, eps, burnin, draws) = (100.0, 1.0, 2e-4, 2000, 40_000);
    let config = LlcConfig::new(eps)
        .localization(gamma)
        .nbeta(nbeta)
        .batch_size(1)
        .num_draws(draws)
        .num_burnin_steps(burnin)
        .seed(21);
    let (a, b) = (ParamSubset::range("A", 0..6).unwrap(), ParamSubset::range("B", 6..8).unwrap());
    let expected_a = sgld_closed_form(&model.h, nbeta, gamma, eps, 1).0;
    let expected_b: f64 = model.q.iter().map(|&q| quartic_expectation(nbeta, q, gamma)).sum();
    let est = LlcEstimator::new(config).unwrap();
    let whole = est.estimate(&model, &w).unwrap();
    let breakdown = est.estimate_breakdown(&model, &w, &[a.clone(), b.clone()]).unwrap();
    let (ra, rb) = (&breakdown.entries[0].report, &breakdown.entries[1].report);
    // The breakdown is the restricted estimator run per subset (same seeds, same chains).
    let direct_b = LlcEstimator::new(config).unwrap().restrict(b).estimate(&model, &w).unwrap();
    assert_eq!(direct_b.loss_trace, rb.loss_trace);
    assert_eq!((ra.n_sampled_params, rb.n_sampled_params, whole.n_sampled_params), (6, 2, 8));
    for (what, r, expected, bias, asymptotic) in [
        ("A", ra, expected_a, 0.0, 3.0),
        ("B", rb, expected_b, 0.01 * expected_b, 0.5),
        ("A + B", &whole, expected_a + expected_b, 0.01 * expected_b, 3.5),
    ] {
        let se = batch_means_se(r, burnin, 40);
        println!(
            "restricted to {what}: λ̂ {:.4}, expected {expected:.4} ± {se:.4} (SE), λ = {asymptotic}",
            r.llc_draws_mean
        );
        assert!(r.all_healthy());
        assert!((r.llc_draws_mean - expected).abs() <= 4.0 * se + bias, "{what}");
        // And the finite-nβ, finite-γ values are within 5 % of the learning coefficients (the
        // quartic's is 2.8 % low: its flat bottom feels γ = 1 at nβ = 100).
        assert!((expected / asymptotic - 1.0).abs() < 0.05, "{what}: {expected} vs λ = {asymptotic}");
    }
    // The unsampled coordinates never move.
    let mut chain = LlcEstimator::new(config)
        .unwrap()
        .restrict(ParamSubset::range("A", 0..6).unwrap())
        .chain(model.clone(), &w, 0)
        .unwrap();
    for _ in 0..50 {
        chain.step().unwrap();
    }
    assert_eq!(&chain.params()[6..], &w[6..]);
    assert!(chain.params()[..6].iter().zip(&w).all(|(a, b)| a != b));
}

/// The Hessian eigenvalues of the fixture's MSE in layer `k`'s weights, the other layers held:
/// f = A·W_k·B·x, L = (1/10)·mean_x ‖A ΔW B x‖², so H = (2/10)·(AᵀA) ⊗ (B Σ Bᵀ), Σ = XᵀX/n.
fn dln_layer_hessian_eigenvalues(layers: &[Matrix], x: &Matrix, k: usize) -> Vec<f64> {
    let eye = Matrix::identity(10);
    let mut a = eye.clone();
    for l in layers.iter().skip(k + 1) {
        a = l.matmul(&a).unwrap();
    }
    let mut b = eye;
    for l in layers.iter().take(k) {
        b = l.matmul(&b).unwrap();
    }
    let sigma = x.transpose().matmul(x).unwrap().scaled_by(1.0 / x.nrows() as f64);
    let ata = a.transpose().matmul(&a).unwrap();
    let bsb = b.matmul(&sigma).unwrap().matmul(&b.transpose()).unwrap();
    let (alpha, _) = degeneracy::linalg::symmetric_eigen(&ata).unwrap();
    let (beta, _) = degeneracy::linalg::symmetric_eigen(&bsb).unwrap();
    alpha.iter().flat_map(|&p| beta.iter().map(move |&q| 0.2 * (p * q).max(0.0))).collect()
}

#[test]
fn per_layer_breakdown_on_the_dln_matches_the_quadratic_closed_form() {
    // With two of the three layers held at w*, the DLN is linear in the third, so each
    // restricted loss is an exact quadratic: layer 0 sees the full-rank W2·W1 (λ = 100/2 = 50),
    // layers 1 and 2 see the rank-4 products (λ = 10·4/2 = 20 each). For SGLD from w* with
    // full-data curvature the expected all-steps estimate is exact (notes/llc.md §2, with the
    // transient): per eigenvalue h, a = nβh + γ, ρ = 1 − εa/2, v = 1/(a(1 − εa/4)),
    // E[λ̂] = Σ nβh/2 · v · (1 − (1 − ρ^{2T}) / (T(1 − ρ²))). Minibatch gradient noise adds a
    // relative (εnβh)·O(1/batch) — negligible here.
    let (model, w) = dln_model();
    let config = dln_config();
    let mlp = io::load_mlp_with(
        fixtures().join("llc_dln/model.safetensors"),
        Activation::Identity,
        &io::LoadOptions::bias_free(),
    )
    .unwrap();
    let x = io::read_matrix(fixtures().join("llc_dln/inputs.npy")).unwrap();
    let layers: Vec<Matrix> = mlp.linears().iter().map(|l| l.weight().clone()).collect();
    let subsets = ParamLayout::mlp(&mlp).per_layer();
    assert_eq!(subsets.iter().map(|s| s.label()).collect::<Vec<_>>(), ["layers.0", "layers.1", "layers.2"]);
    let t = std::time::Instant::now();
    let breakdown = LlcEstimator::new(config).unwrap().estimate_breakdown(&model, &w, &subsets).unwrap();
    println!("DLN per-layer breakdown (3 × 4 × 2000 steps): {:.2} s", t.elapsed().as_secs_f64());
    let (nbeta, gamma, eps, steps) = (1085.7362047581294, 1.0, 1e-4, 2000.0);
    for (k, (entry, lambda)) in breakdown.entries.iter().zip([50.0, 20.0, 20.0]).enumerate() {
        let h = dln_layer_hessian_eigenvalues(&layers, &x, k);
        let rank = h.iter().filter(|&&v| v > 1e-10).count();
        let expected: f64 = h
            .iter()
            .map(|&h| {
                let a = nbeta * h + gamma;
                let rho = 1.0 - eps * a / 2.0;
                let v = 1.0 / (a * (1.0 - eps * a / 4.0));
                nbeta * h / 2.0 * v * (1.0 - (1.0 - rho.powf(2.0 * steps)) / (steps * (1.0 - rho * rho)))
            })
            .sum();
        let r = &entry.report;
        let se = r.llc_per_chain.iter().map(|v| (v - r.llc_mean).powi(2)).sum::<f64>().sqrt() / (4.0 * 3.0f64).sqrt();
        println!(
            "{}: {} params, rank {rank} (λ = {lambda}); λ̂ {:.3} ± {:.3} (SE {se:.3}), closed form {expected:.3}",
            entry.label, entry.n_params, r.llc_mean, r.llc_std
        );
        assert_eq!(entry.n_params, 100);
        assert_eq!(rank as f64, 2.0 * lambda);
        assert!(r.all_healthy());
        // 4 standard errors of the 4-chain mean, plus 2 % for the minibatch noise.
        assert!((r.llc_mean - expected).abs() <= 4.0 * se + 0.02 * expected, "{}", entry.label);
    }
}

#[test]
fn layouts_select_named_tensors_and_refuse_unknown_ones() {
    let mlp = Mlp::init(&[3, 4, 2], Activation::Relu, true, 0).unwrap();
    let layout = ParamLayout::mlp(&mlp);
    assert_eq!(layout.n_params(), mlp.n_params());
    // Per tensor and per layer, the subsets partition the parameters in flat order.
    for parts in [layout.per_tensor(), layout.per_layer()] {
        let all: Vec<usize> = parts.iter().flat_map(|s| s.indices().to_vec()).collect();
        assert_eq!(all, (0..mlp.n_params()).collect::<Vec<_>>());
    }
    // The flat order is the model's: the bias of layer 0 is where Mlp::params puts it.
    let bias = layout.tensor("layers.0.bias").unwrap();
    let params = mlp.params();
    assert_eq!(&params[bias.range()], mlp.linears()[0].bias().unwrap());
    let err = layout.select(&["layers.0.weight", "layers.9.weight"]).unwrap_err();
    assert!(matches!(&err, Error::InvalidParameter { name, .. } if name == "parameters"), "{err}");
    assert!(err.to_string().contains("layers.9.weight") && err.to_string().contains("layers.1.bias"));
    assert!(layout.select(&["layers.1.bias", "layers.1.bias"]).is_err());
    let empty: [&str; 0] = [];
    assert!(layout.select(&empty).is_err());
    // A subset beyond the model is refused before sampling, naming `parameters`.
    let x = Matrix::from_fn(50, 3, |i, j| (i + j) as f64 * 0.1);
    let model = BehaviouralLoss::new(&mlp, x).unwrap();
    let est = LlcEstimator::new(LlcConfig::new(1e-4).batch_size(10)).unwrap();
    let too_far = est.clone().restrict(ParamSubset::new("far", [0, 99]).unwrap());
    assert!(
        matches!(too_far.estimate(&model, &model.params()), Err(Error::InvalidParameter { name, .. }) if name == "parameters")
    );
}

#[test]
fn module_parameters_of_a_block_diagonal_network_are_its_blocks() {
    // Two blocks: inputs 0,1 → hidden 0,1 → output 0 and inputs 2,3 → hidden 2,3 → output 1,
    // in the neuron basis (identity C, the constant coordinate last, in its own module).
    let w0 = Matrix::from_fn(4, 4, |i, j| if i / 2 == j / 2 { 0.5 + (i + j) as f64 * 0.1 } else { 0.0 });
    let w1 = Matrix::from_fn(2, 4, |i, j| if i == j / 2 { 1.0 - j as f64 * 0.1 } else { 0.0 });
    let mlp = Mlp::new(
        vec![Linear::new(w0, Some(vec![0.1; 4])).unwrap(), Linear::new(w1, Some(vec![0.2; 2])).unwrap()],
        Activation::Identity,
    )
    .unwrap();
    let basis = |name: &str, n: usize| NodeBasis::new(name, Matrix::identity(n), Matrix::identity(n)).unwrap();
    let bases = vec![basis("layers.0", 5), basis("layers.1", 5), basis("output", 2)];
    let modules = Modules {
        layers: vec!["layers.0".into(), "layers.1".into(), "output".into()],
        membership: vec![vec![0, 0, 1, 1, 2], vec![0, 0, 1, 1, 3], vec![0, 1]],
        n_modules: 4,
        n_nonsingleton: 2,
        sizes: vec![5, 5, 1, 1],
        spans: vec![3, 3, 1, 1],
        quality: 0.0,
        modularity: 0.0,
        within_module_fraction: vec![1.0, 1.0],
        within_module_fraction_total: 1.0,
    };
    let found = module_parameters(&mlp, &bases, &modules).unwrap();
    // W0 (offsets 0..16, row-major [out, in]), b0 (16..20), W1 (20..28), b1 (28..30).
    assert_eq!(found.len(), 2, "the constant directions' modules own no parameter");
    assert_eq!(found[0].params.indices(), [0, 1, 4, 5, 16, 17, 20, 21, 28]);
    assert_eq!(found[1].params.indices(), [10, 11, 14, 15, 18, 19, 26, 27, 29]);
    assert_eq!(found[0].units[1], ("layers.1".to_string(), vec![0, 1]));
    assert_eq!((found[0].directions, found[1].module), (5, 1));
    // Every parameter that is not zero belongs to its block's module; the zeros between the
    // blocks belong to none.
    let params = mlp.params();
    let owned: Vec<usize> = found.iter().flat_map(|m| m.params.indices().to_vec()).collect();
    for (i, v) in params.iter().enumerate() {
        assert_eq!(owned.contains(&i), *v != 0.0, "parameter {i}");
    }
    // λ̂ per module in one call.
    let x = Matrix::from_fn(400, 4, |i, j| ((i * 7 + j * 3) as f64 * 0.37).sin());
    let model = BehaviouralLoss::new(&mlp, x).unwrap();
    let subsets: Vec<ParamSubset> = found.iter().map(|m| m.params.clone()).collect();
    let config = LlcConfig::new(1e-3).batch_size(100).num_draws(300).seed(1);
    let b = LlcEstimator::new(config).unwrap().estimate_breakdown(&model, &model.params(), &subsets).unwrap();
    assert!(b.entries.iter().all(|e| e.report.all_healthy() && e.report.llc_mean > 0.0 && e.n_params == 9));
}

// ---------------------------------------------------------------------------------------------
// Calibration

#[test]
fn calibration_on_the_dln_recommends_a_setting_whose_full_estimate_is_in_range() {
    let (model, w) = dln_model();
    let base = dln_config();
    // The bench's sweep: 4 step sizes × 4 localisations, 4 chains × 500 draws. lr 1e-2 diverges
    // (ε·nβ·h_max ≫ 4).
    let cal = CalibrationConfig::new(
        vec![3e-5, 1e-4, 3e-4, 1e-2],
        CalibrationAxis::Localization(vec![1.0, 10.0, 100.0, 1000.0]),
    )
    .num_draws(500);
    let t = std::time::Instant::now();
    let c = LlcEstimator::new(base).unwrap().calibrate(&model, &w, &cal).unwrap();
    println!("DLN calibration, 16 settings × 4 × 500: {:.2} s", t.elapsed().as_secs_f64());
    for p in &c.settings {
        println!(
            "  lr {:e} γ {:6}: λ̂ {:8.3} slope {:7.3} MALA {:?} R̂ {:?} healthy {} {:?}",
            p.lr, p.localization, p.llc_mean, p.relative_slope, p.mala_acceptance, p.rhat, p.healthy, p.problems
        );
    }
    assert_eq!(c.settings.len(), 16);
    // The divergent step is marked in every row, and no setting without an estimate passes.
    for j in 0..4 {
        let p = c.at(3, j).unwrap();
        assert!(p.diverged && p.n_diverged == 4 && !p.healthy && p.llc_mean.is_nan(), "{p:?}");
    }
    assert!(c.settings.iter().all(|p| p.llc_mean.is_finite() || p.diverged));
    let r = c.recommended.expect("a recommendation");
    let chosen = &c.settings[r.index];
    assert!(chosen.healthy && chosen.stationary && !chosen.diverged && !chosen.prior_dominated);
    let full = LlcEstimator::new(c.recommended_config().unwrap()).unwrap().estimate(&model, &w).unwrap();
    println!(
        "recommended lr {:e}, γ {}: 4 × 2000 λ̂ = {:.3} ± {:.3} (λ = 44)",
        r.lr, r.localization, full.llc_mean, full.llc_std
    );
    assert_eq!((full.config.num_chains, full.config.num_draws), (4, 2000));
    assert!((38.0..=46.0).contains(&full.llc_mean), "{}", full.llc_mean);
    // The heat map: valid SVG with a label per cell and "diverged" on the divergent column.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calibration.svg");
    c.draw(&path, "DLN calibration").unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    let texts: Vec<&str> = doc.descendants().filter(|n| n.is_text()).filter_map(|n| n.text()).collect();
    assert_eq!(texts.iter().filter(|t| t.trim() == "diverged").count(), 4);
    assert!(texts.iter().any(|t| t.contains("localization")));
}

#[test]
fn calibration_configs_are_validated_naming_the_field() {
    let ok = CalibrationConfig::new(vec![1e-4, 1e-3], CalibrationAxis::Nbeta(vec![10.0, 100.0]));
    assert!(ok.validate().is_ok());
    assert!(CalibrationConfig::new(vec![1e-4], CalibrationAxis::Localization(vec![0.0, 1.0])).validate().is_ok());
    let name = |c: CalibrationConfig| match c.validate() {
        Err(Error::InvalidParameter { name, .. }) => name,
        other => panic!("expected an error, got {other:?}"),
    };
    assert_eq!(name(CalibrationConfig::new(vec![], ok.axis.clone())), "calibrate.lr");
    assert_eq!(name(CalibrationConfig::new(vec![1e-4, -1.0], ok.axis.clone())), "calibrate.lr");
    assert_eq!(name(CalibrationConfig::new(vec![1e-4, 1e-4], ok.axis.clone())), "calibrate.lr");
    assert_eq!(name(CalibrationConfig::new(vec![1e-4], CalibrationAxis::Nbeta(vec![f64::NAN]))), "calibrate.nbeta");
    assert_eq!(
        name(CalibrationConfig::new(vec![1e-4], CalibrationAxis::Localization(vec![-1.0]))),
        "calibrate.localization"
    );
    assert_eq!(name(ok.clone().num_draws(2)), "calibrate.num_draws");
    assert_eq!(name(ok.clone().max_rhat(0.0)), "calibrate.max_rhat");
    assert_eq!(name(ok.clone().min_mala_acceptance(1.5)), "calibrate.min_mala_acceptance");
}

// ---------------------------------------------------------------------------------------------
// Trajectories

#[test]
fn trajectory_on_the_quickstart_run_grows_from_initialisation() {
    // The quickstart's training run (examples/quickstart/training.rs): modular addition p = 23,
    // ReLU MLP 46→64→64→23, full-batch Adam 3e-3, 800 epochs. Expected direction: λ̂ at the
    // last checkpoint is far above λ̂ at initialisation, for the training loss and for the
    // behavioural loss. At initialisation the logits are small and nearly constant, so neither
    // loss reacts to most parameter directions (their nβ·h is far below γ, and they count ≈ 0);
    // training makes the function react to more and more directions (measured: cross-entropy
    // 1.2 → 16, behavioural 13 → 1540, per-chain std ≤ 3 %).
    let data = degeneracy::data::modular_addition(23).unwrap();
    let mut mlp = Mlp::init(&[46, 64, 64, 23], Activation::Relu, true, 0).unwrap();
    let config = TrainConfig {
        optimizer: Optimizer::adam(3e-3),
        loss: Loss::CrossEntropy,
        epochs: 800,
        batch_size: None,
        seed: 0,
        stop_at_accuracy: None,
    };
    let mut kept = vec![(0usize, mlp.params())];
    let report = train_observed(&mut mlp, &data, &config, &mut |e, _, w| {
        if e + 1 == 100 || e + 1 == 800 {
            kept.push((e + 1, w.to_vec()));
        }
    })
    .unwrap();
    assert_eq!(report.final_accuracy, Some(1.0));
    assert_eq!(kept.last().unwrap().1, mlp.params(), "the callback sees the parameters after the epoch");
    let nets: Vec<(usize, Mlp)> = kept
        .iter()
        .map(|(e, w)| {
            let mut m = mlp.clone();
            m.set_params(w).unwrap();
            (*e, m)
        })
        .collect();
    let base = LlcConfig::new(1e-3).localization(100.0).batch_size(64).num_chains(4).seed(0);
    let ce: Vec<Checkpoint<MlpLoss>> = nets
        .iter()
        .map(|(e, m)| {
            let model = MlpLoss::new(m, Loss::CrossEntropy, data.clone()).unwrap();
            Checkpoint { label: format!("epoch {e}"), position: *e as f64, w_star: m.params(), model }
        })
        .collect();
    let beh: Vec<Checkpoint<BehaviouralLoss>> = nets
        .iter()
        .map(|(e, m)| {
            let model = BehaviouralLoss::from_dataset(m, &data).unwrap();
            Checkpoint { label: format!("epoch {e}"), position: *e as f64, w_star: m.params(), model }
        })
        .collect();
    let t_ce = LlcEstimator::new(base.num_burnin_steps(100).num_draws(300)).unwrap().estimate_trajectory(&ce).unwrap();
    let t_beh = LlcEstimator::new(base.lr(2e-5).num_burnin_steps(200).num_draws(400))
        .unwrap()
        .estimate_trajectory(&beh)
        .unwrap();
    for (what, t) in [("cross-entropy", &t_ce), ("behavioural", &t_beh)] {
        let v: Vec<(f64, f64)> = t.points.iter().map(|p| (p.report.llc_draws_mean, p.report.llc_draws_std)).collect();
        println!("{what}: λ̂ at epochs 0, 100, 800: {v:.3?}");
        assert!(t.failed().is_empty() && t.check().is_ok());
        let (first, last) = (&t.points[0], &t.points[2]);
        assert!(first.report.llc_draws_mean > 0.0);
        assert!(last.report.llc_draws_mean > 5.0 * first.report.llc_draws_mean, "{what}");
        // Same seeds at every checkpoint: the same minibatch order (shared lane) and noise.
        assert_eq!(first.report.config, last.report.config);
    }
    // One point per checkpoint in the picture.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trajectory.svg");
    t_beh.draw(&path, "behavioural λ̂ over training", "epoch").unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    assert_eq!(doc.descendants().filter(|n| n.has_tag_name("circle")).count(), 3);
    let summary = t_beh.summary();
    assert_eq!(summary.as_array().unwrap().len(), 3);
    let mut keys: Vec<&str> = summary[0].as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["checkpoint", "healthy_chains", "llc_mean", "llc_std"]);
}

// ---------------------------------------------------------------------------------------------
// MALA acceptance with noise level σ ≠ 1

/// The acceptance of a transition u → u' of the chain u' = ρu + √ε·σ·ξ, ρ = 1 − εa/2, read as
/// a MALA proposal for π ∝ exp(−a u²/(2σ²)): the AR(1) is reversible for N(0, v), v =
/// εσ²/(1 − ρ²), so q(u | u')/q(u' | u) = N_v(u)/N_v(u') and
/// log α = (u'² − u²)(1/(2v) − a/(2σ²)) = −ε a² (u'² − u²)/(8σ²) (summed over coordinates).
fn gaussian_mala_acceptance(a: &[f64], eps: f64, sigma: f64, u: &[f64], u_next: &[f64]) -> f64 {
    let log: f64 = a.iter().zip(u.iter().zip(u_next)).map(|(&a, (&x, &y))| -eps * a * a * (y * y - x * x)).sum::<f64>()
        / (8.0 * sigma * sigma);
    log.exp().min(1.0)
}

#[test]
fn mala_acceptance_with_noise_level_matches_the_gaussian_closed_form() {
    // Per transition: the chain's acceptance equals the closed form above to rounding.
    let model = quadratic(5);
    let (nbeta, gamma, eps) = (20.0, 0.5, 0.01);
    let a: Vec<f64> = model.h.iter().map(|&h| nbeta * h + gamma).collect();
    for sigma in [0.5, 2.0] {
        let config = LlcConfig::new(eps).nbeta(nbeta).localization(gamma).noise_level(sigma).batch_size(1).seed(3);
        let mut chain = LlcEstimator::new(config).unwrap().chain(model.clone(), &model.centre, 0).unwrap();
        let u = |w: &[f64]| w.iter().zip(&model.centre).map(|(w, c)| w - c).collect::<Vec<f64>>();
        let mut prev = u(chain.params());
        let mut max_err = 0.0_f64;
        for t in 0..500 {
            let now = u(chain.params());
            let rec = chain.step().unwrap();
            if t > 0 {
                let expected = gaussian_mala_acceptance(&a, eps, sigma, &prev, &now);
                max_err = max_err.max((rec.mala_acceptance.unwrap() - expected).abs());
            }
            prev = now;
        }
        println!("σ = {sigma}: max |α − closed form| = {max_err:e}");
        assert!(max_err < 1e-10);
    }

    // On average: in 1-D, u'² − u² = (u' − u)(u' + u) is a product of independent Gaussians, so
    // the stationary mean acceptance is E[α] = ½ + 1/(2k) − arctan(b/k)/(πk), k = √(1 − b²),
    // b = (εa)^{3/2} / (4√(1 − εa/4)), the same for every σ (the old formula, dividing by 2ε
    // only, gives b·σ² instead).
    let one = Quadratic { h: vec![1.0], centre: vec![0.3] };
    let (nbeta, gamma): (f64, f64) = (100.0, 1.0);
    let a = nbeta + gamma;
    let eps = 1.0 / a;
    let b = (eps * a).powf(1.5) / (4.0 * (1.0 - eps * a / 4.0).sqrt());
    let k = (1.0 - b * b).sqrt();
    let expected = 0.5 + 1.0 / (2.0 * k) - (b / k).atan() / (std::f64::consts::PI * k);
    for sigma in [0.5, 1.0, 2.0] {
        let config = LlcConfig::new(eps)
            .nbeta(nbeta)
            .localization(gamma)
            .noise_level(sigma)
            .batch_size(1)
            .num_draws(50_000)
            .seed(8);
        let r = LlcEstimator::new(config).unwrap().estimate(&one, &one.centre).unwrap();
        // Batch means over the acceptance traces, the first 100 transitions left out.
        let mut means = Vec::new();
        for trace in &r.traces.mala_acceptance {
            for block in trace[100..].chunks_exact(1000) {
                means.push(block.iter().sum::<f64>() / 1000.0);
            }
        }
        let m = means.iter().sum::<f64>() / means.len() as f64;
        let se = (means.iter().map(|v| (v - m).powi(2)).sum::<f64>() / ((means.len() - 1) * means.len()) as f64).sqrt();
        println!("σ = {sigma}: mean acceptance {m:.5} vs closed form {expected:.5} ± {se:.5}");
        assert!((m - expected).abs() < 5.0 * se, "σ = {sigma}");
        assert!(r.warnings.iter().any(|w| w.contains("noise_level")) == (sigma != 1.0));
    }
}

#[test]
fn rmsprop_sgld_runs_carry_the_missing_correction_in_their_warnings() {
    let model = quadratic(3);
    let config = LlcConfig::new(1e-3).sampler(Sampler::rmsprop_sgld()).nbeta(10.0).batch_size(1).num_draws(50);
    let r = LlcEstimator::new(config).unwrap().estimate(&model, &model.centre).unwrap();
    assert!(r.warnings.iter().any(|w| w.contains("no Γ correction") && w.contains("+16 %")), "{:?}", r.warnings);
    let r = LlcEstimator::new(config.sampler(Sampler::Sgld)).unwrap().estimate(&model, &model.centre).unwrap();
    assert!(r.warnings.iter().all(|w| !w.contains("Γ")));
}

// ---------------------------------------------------------------------------------------------
// devinterp's conventions

#[test]
fn devinterp_preset_sets_its_conventions() {
    let x = Matrix::from_fn(100, 2, |i, j| ((i * 3 + j) as f64 * 0.21).sin());
    let y = Matrix::from_fn(100, 1, |i, _| x[(i, 0)] * 0.5 + 0.1 * ((i * 7) as f64).cos());
    let mlp =
        Mlp::new(vec![Linear::new(Matrix::from_rows(&[[0.4, -0.2]]).unwrap(), None).unwrap()], Activation::Identity)
            .unwrap();
    let mut model = MlpLoss::new(&mlp, Loss::Mse, Dataset::new(x, Targets::Values(y)).unwrap()).unwrap();
    let w = model.params();
    let full_loss = model.full_loss(&w).unwrap();
    let config = LlcConfig::new(1e-3).batch_size(50).num_chains(4).num_draws(100).seed(4).devinterp_compatible();
    assert_eq!((config.sgld.localization, config.nbeta_default), (0.0, NbetaDefault::BatchSize));
    let r = LlcEstimator::new(config).unwrap().estimate(&model, &w).unwrap();
    // nβ = b / ln b from the batch size, not n / ln n.
    assert!((r.nbeta - 50.0 / 50f64.ln()).abs() < 1e-12 && r.nbeta_is_default);
    // One init loss for every chain over min(4 chains, 100/50 batches) = one epoch = L_n(w*).
    assert!(r.init_loss_per_chain.iter().all(|&l| l == r.init_loss));
    assert!((r.init_loss - full_loss).abs() < 1e-14, "{} vs {full_loss}", r.init_loss);
    // ddof 1.
    let m = r.llc_per_chain.iter().sum::<f64>() / 4.0;
    let sd1 = (r.llc_per_chain.iter().map(|v| (v - m).powi(2)).sum::<f64>() / 3.0).sqrt();
    assert!((r.llc_std - sd1).abs() < 1e-12);
    // Explicit settings win, and the default conventions stay this crate's.
    let explicit = LlcEstimator::new(config.nbeta(7.0)).unwrap().params_for(&model, &w).unwrap();
    assert_eq!(explicit.nbeta(), 7.0);
    let ours = LlcConfig::new(1e-3).batch_size(50);
    assert_eq!(
        (ours.chain_std, ours.init_loss, ours.sgld.localization),
        (ChainStd::Population, InitLoss::PerChain, 1.0)
    );
    let p = LlcEstimator::new(ours).unwrap().params_for(&model, &w).unwrap();
    assert!((p.nbeta() - 100.0 / 100f64.ln()).abs() < 1e-12);
    // devinterp's default_nbeta falls back to 1 for a batch of 1 (and the report warns).
    let one = LlcEstimator::new(config.batch_size(1)).unwrap().estimate(&model, &w).unwrap();
    assert_eq!(one.nbeta, 1.0);
    assert!(one.warnings.iter().any(|w| w.contains("nbeta = 1")));
}

/// devinterp's `Polynomial` test model: f(x) = x·Π w_i^{p_i}, MSE against y, data of
/// `tests/slt/sampler_accuracy_test.py` (x ~ N(0, 2²), y = 0.25·N(0, 1), 1000 samples), drawn
/// here from our own generator.
#[derive(Clone)]
struct Polynomial {
    powers: Vec<i32>,
    x: Vec<f64>,
    y: Vec<f64>,
}

impl LossModel for Polynomial {
    fn n_params(&self) -> usize {
        self.powers.len()
    }
    fn n_samples(&self) -> usize {
        self.x.len()
    }
    fn loss_and_grad(&mut self, w: &[f64], batch: &[usize], grad: &mut [f64]) -> Result<f64> {
        let prod: f64 = w.iter().zip(&self.powers).map(|(w, &p)| w.powi(p)).product();
        // ∂prod/∂w_i = p_i w_i^{p_i − 1} Π_{j≠i} w_j^{p_j}.
        let dprod: Vec<f64> = (0..w.len())
            .map(|i| {
                if self.powers[i] == 0 {
                    return 0.0;
                }
                let others: f64 = (0..w.len()).filter(|&j| j != i).map(|j| w[j].powi(self.powers[j])).product();
                self.powers[i] as f64 * w[i].powi(self.powers[i] - 1) * others
            })
            .collect();
        let m = batch.len() as f64;
        let (mut loss, mut g) = (0.0, 0.0);
        for &k in batch {
            let r = self.x[k] * prod - self.y[k];
            loss += r * r;
            g += 2.0 * r * self.x[k];
        }
        for (gi, d) in grad.iter_mut().zip(&dprod) {
            *gi = g / m * d;
        }
        Ok(loss / m)
    }
}

#[test]
fn devinterp_preset_reproduces_its_normal_crossing_test() {
    // devinterp tests/slt/sampler_accuracy_test.py: SGLD, lr 4e-4, nβ = default_nbeta(1000), no
    // localisation, full batch, 10 chains × 5000 draws, init loss over the first batch; asserts
    // mean − 3.5 std < λ < mean + 3.5 std (torch's std, ddof 1). λ = 1/(2 max(a, b)) for the
    // potential w₁^{2a} w₂^{2b}.
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(42);
    let x: Vec<f64> = (0..1000).map(|_| Normal::new(0.0, 2.0).unwrap().sample(&mut rng)).collect();
    let y: Vec<f64> = (0..1000).map(|_| 0.25 * Normal::new(0.0, 1.0).unwrap().sample(&mut rng)).collect();
    let cases = [([0, 1], 0.5), ([1, 1], 0.5), ([0, 2], 0.25), ([1, 2], 0.25), ([2, 2], 0.25)].into_iter().chain([
        ([0, 3], 0.166),
        ([1, 3], 0.166),
        ([2, 3], 0.166),
        ([3, 3], 0.166),
    ]);
    let config = LlcConfig::new(4e-4).batch_size(1000).num_chains(10).num_draws(5000).seed(42).devinterp_compatible();
    for (powers, truth) in cases {
        let model = Polynomial { powers: powers.to_vec(), x: x.clone(), y: y.clone() };
        let r = LlcEstimator::new(config).unwrap().estimate(&model, &[0.0, 0.0]).unwrap();
        println!("powers {powers:?}: λ̂ {:.4} ± {:.4} (ddof 1), λ = {truth}", r.llc_mean, r.llc_std);
        assert!((r.nbeta - 1000.0 / 1000f64.ln()).abs() < 1e-9);
        assert!(r.llc_mean - 3.5 * r.llc_std < truth && truth < r.llc_mean + 3.5 * r.llc_std, "{powers:?}");
    }
}

#[test]
fn devinterp_preset_reproduces_its_reduced_rank_regression_test() {
    // devinterp tests/slt/rrr_test.py: x ~ N(0, 1)^{1000 × M}, y ~ N(0, 1)^{1000 × N}
    // (independent: the truth is rank 0), B·A trained by full-batch Adam(0.01) for 5000 steps,
    // then SGLD lr 6e-4, localization 1, nβ = default_nbeta(loader) (batch 1000), 3 chains ×
    // 2000 draws; asserts np.isclose(mean, λ, rtol = 0.4).
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};
    for (m, h, n) in [(5, 3, 5), (5, 4, 5), (4, 3, 8), (8, 3, 4), (3, 8, 4)] {
        let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(1);
        let x = Matrix::from_fn(1000, m, |_, _| StandardNormal.sample(&mut rng));
        let y = Matrix::from_fn(1000, n, |_, _| StandardNormal.sample(&mut rng));
        let data = Dataset::new(x, Targets::Values(y)).unwrap();
        let mut rrr = Mlp::init(&[m, h, n], Activation::Identity, false, 1).unwrap();
        let train_config = TrainConfig {
            optimizer: Optimizer::adam(0.01),
            loss: Loss::Mse,
            epochs: 5000,
            batch_size: None,
            seed: 1,
            stop_at_accuracy: None,
        };
        train(&mut rrr, &data, &train_config).unwrap();
        let model = MlpLoss::new(&rrr, Loss::Mse, data).unwrap();
        let config = LlcConfig::new(6e-4)
            .batch_size(1000)
            .num_chains(3)
            .num_draws(2000)
            .seed(42)
            .devinterp_compatible()
            .localization(1.0);
        let r = LlcEstimator::new(config).unwrap().estimate(&model, &model.params()).unwrap();
        let truth = theory::reduced_rank_regression(m, h, n, 0).unwrap().to_f64();
        println!("RRR ({m}, {h}, {n}): λ̂ {:.3} ± {:.3}, λ = {truth}", r.llc_mean, r.llc_std);
        assert!((r.llc_mean - truth).abs() <= 1e-8 + 0.4 * truth, "({m}, {h}, {n})");
    }
}
