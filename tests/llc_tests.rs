//! The LLC estimator against exact theory, closed forms and the devinterp `llc_dln` fixture.

mod common;

use common::{dln_model, fixtures};
use degeneracy::llc::theory::{self, Rational};
use degeneracy::llc::{
    BehaviouralLoss, DivergenceCause, LlcConfig, LlcEstimator, LlcReport, LossModel, MlpLoss, Sampler,
};
use degeneracy::{Activation, Dataset, Error, Linear, Loss, Matrix, Mlp, Result, Targets, io};

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
    let model = quadratic(10);
    let config = LlcConfig::new(0.1).nbeta(10.0).batch_size(1).num_chains(2).num_draws(5000).seed(2);
    let report = LlcEstimator::new(config).unwrap().estimate(&model, &model.centre).unwrap();
    assert!(report.divergences.iter().all(Option::is_some));
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
