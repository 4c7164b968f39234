//! Between-chain convergence statistics on scalar traces: split-R̂ and an autocorrelation-based
//! effective sample size (neither exists in devinterp). The autocovariances come from an FFT,
//! so the ESS of C chains of T draws costs O(C·T log T).

/// Split-R̂ (Gelman et al., *Bayesian Data Analysis*, 3rd ed., §11.4): each chain is cut into two
/// halves (the middle element of an odd-length chain is dropped), then with `W` the mean of the
/// halves' variances (ddof 1), `B/T` the variance (ddof 1) of their means and `T` the half length,
/// R̂ = √(((T − 1)/T·W + B/T) / W). Values near 1 mean the chains agree; > 1.1 is the usual alarm.
///
/// `None` if there are no chains, the chains differ in length, a half has fewer than 2 draws, or
/// `W = 0`.
///
/// ```
/// use degeneracy::llc::split_rhat;
/// let a: Vec<f64> = (0..100).map(|i| ((i * 37 % 101) as f64).sin()).collect();
/// let b: Vec<f64> = (0..100).map(|i| ((i * 53 % 103) as f64).cos()).collect();
/// assert!(split_rhat(&[&a, &b]).unwrap() < 1.05);
/// let shifted: Vec<f64> = b.iter().map(|v| v + 5.0).collect();
/// assert!(split_rhat(&[&a, &shifted]).unwrap() > 2.0);
/// ```
pub fn split_rhat(chains: &[&[f64]]) -> Option<f64> {
    let n = chains.first()?.len();
    if chains.iter().any(|c| c.len() != n) || n < 4 {
        return None;
    }
    let half = n / 2;
    let halves: Vec<&[f64]> = chains.iter().flat_map(|c| [&c[..half], &c[n - half..]]).collect();
    let t = half as f64;
    let means: Vec<f64> = halves.iter().map(|h| mean(h)).collect();
    let w = halves
        .iter()
        .zip(&means)
        .map(|(h, &m)| h.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (t - 1.0))
        .sum::<f64>()
        / halves.len() as f64;
    let b_over_t = variance_ddof1(&means);
    if w <= 0.0 || !w.is_finite() {
        return None;
    }
    Some((((t - 1.0) / t * w + b_over_t) / w).sqrt())
}

/// Effective sample size of equally long chains, as Stan computes it (Vehtari et al. 2021,
/// "Rank-normalization, folding, and localization", without the rank normalisation): the
/// combined autocorrelation ρ_k = 1 − (W − mean_c γ_c(k)) / var⁺ (γ_c the biased autocovariance
/// of chain c, W the mean within-chain variance, var⁺ = (T − 1)/T·W + B/T), Geyer's initial
/// positive sequence of pair sums P_k = ρ_{2k} + ρ_{2k+1} truncated at the first negative one and
/// made monotone, τ = −1 + 2Σ P_k, ESS = C·T/τ. The autocovariances of all lags come from one
/// FFT per chain: O(C·T log T) (4 × 100,000 draws take milliseconds).
///
/// `None` for no chains, unequal lengths, fewer than 4 draws per chain, or constant traces.
pub fn effective_sample_size(chains: &[&[f64]]) -> Option<f64> {
    let n = chains.first()?.len();
    if chains.iter().any(|c| c.len() != n) || n < 4 {
        return None;
    }
    let nf = n as f64;
    let means: Vec<f64> = chains.iter().map(|c| mean(c)).collect();
    // Mean over chains of each chain's biased autocovariance at every lag.
    let mut acov = vec![0.0; n];
    for (c, &m) in chains.iter().zip(&means) {
        for (a, v) in acov.iter_mut().zip(autocovariance(c, m)) {
            *a += v / chains.len() as f64;
        }
    }
    let acov = |k: usize| acov[k];
    let acov0 = acov(0);
    let w = acov0 * nf / (nf - 1.0);
    let b_over_n = if chains.len() > 1 { variance_ddof1(&means) } else { 0.0 };
    let var_plus = (nf - 1.0) / nf * w + b_over_n;
    if var_plus <= 0.0 || !var_plus.is_finite() {
        return None;
    }
    let rho = |k: usize, ac: f64| if k == 0 { 1.0 } else { 1.0 - (w - ac) / var_plus };
    let mut tau = -1.0;
    let mut prev_pair = f64::INFINITY;
    let mut k = 0;
    while k + 1 < n {
        let pair = rho(k, if k == 0 { acov0 } else { acov(k) }) + rho(k + 1, acov(k + 1));
        if pair < 0.0 {
            break;
        }
        let pair = pair.min(prev_pair);
        tau += 2.0 * pair;
        prev_pair = pair;
        k += 2;
    }
    let tau = tau.max(1.0 / nf.log10().max(1.0));
    Some(chains.len() as f64 * nf / tau)
}

/// The biased autocovariance γ(k) = Σ_t (x_t − m)(x_{t+k} − m) / T of `x` for every lag
/// k < T, by FFT (rustfft; zero-padded to a power of two ≥ 2T, so the circular correlation is
/// the linear one): O(T log T) instead of the O(T²) of summing lag by lag.
pub(crate) fn autocovariance(x: &[f64], m: f64) -> Vec<f64> {
    use rustfft::{FftPlanner, num_complex::Complex};
    let n = x.len();
    if n == 0 {
        return Vec::new();
    }
    let size = (2 * n).next_power_of_two();
    let mut buf: Vec<Complex<f64>> = x
        .iter()
        .map(|v| Complex::new(v - m, 0.0))
        .chain(std::iter::repeat(Complex::new(0.0, 0.0)))
        .take(size)
        .collect();
    let mut planner = FftPlanner::new();
    planner.plan_fft_forward(size).process(&mut buf);
    buf.iter_mut().for_each(|z| *z = Complex::new(z.norm_sqr(), 0.0));
    planner.plan_fft_inverse(size).process(&mut buf);
    let scale = 1.0 / (size as f64 * n as f64);
    buf[..n].iter().map(|z| z.re * scale).collect()
}

pub(crate) fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn variance_ddof1(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};

    fn ar1(rho: f64, n: usize, seed: u64) -> Vec<f64> {
        let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(seed);
        let mut x = 0.0;
        (0..n)
            .map(|_| {
                let e: f64 = StandardNormal.sample(&mut rng);
                x = rho * x + (1.0 - rho * rho).sqrt() * e;
                x
            })
            .collect()
    }

    #[test]
    fn ess_of_ar1_matches_its_integrated_autocorrelation() {
        // τ = (1 + ρ)/(1 − ρ) = 3 for ρ = 0.5: ESS ≈ 4·20000/3.
        let chains: Vec<Vec<f64>> = (0..4).map(|s| ar1(0.5, 20_000, s)).collect();
        let refs: Vec<&[f64]> = chains.iter().map(Vec::as_slice).collect();
        let ess = effective_sample_size(&refs).unwrap();
        let expected = 4.0 * 20_000.0 / 3.0;
        assert!((ess / expected - 1.0).abs() < 0.1, "ess {ess} vs {expected}");
        let white: Vec<Vec<f64>> = (0..2).map(|s| ar1(0.0, 5_000, 10 + s)).collect();
        let refs: Vec<&[f64]> = white.iter().map(Vec::as_slice).collect();
        let ess = effective_sample_size(&refs).unwrap();
        assert!((ess / 10_000.0 - 1.0).abs() < 0.15, "white-noise ess {ess}");
        assert!(split_rhat(&refs).unwrap() < 1.01);
    }

    #[test]
    fn fft_autocovariance_equals_the_lag_by_lag_sum() {
        for (n, seed) in [(1, 0), (2, 1), (7, 2), (64, 3), (1000, 4), (1537, 5)] {
            let x = ar1(0.7, n, seed);
            let m = mean(&x);
            let fast = autocovariance(&x, m);
            let scale = fast[0].abs().max(1e-300);
            for k in 0..n {
                let direct = x[..n - k].iter().zip(&x[k..]).map(|(a, b)| (a - m) * (b - m)).sum::<f64>() / n as f64;
                assert!((fast[k] - direct).abs() <= 1e-12 * scale, "n {n} lag {k}: {} vs {direct}", fast[k]);
            }
        }
    }

    #[test]
    fn degenerate_inputs_give_none() {
        assert_eq!(split_rhat(&[]), None);
        assert_eq!(split_rhat(&[&[1.0, 2.0, 3.0]]), None);
        assert_eq!(split_rhat(&[&[1.0; 10]]), None);
        assert_eq!(effective_sample_size(&[&[2.0; 10]]), None);
        assert_eq!(effective_sample_size(&[&[1.0, 2.0, 3.0, 4.0], &[1.0]]), None);
    }
}
