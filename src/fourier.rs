//! Fourier labels of features of modular arithmetic: which frequencies of `a` and `b` a function
//! on the `p × p` grid of inputs `(a, b)` is made of.
//!
//! Models of `(a + b) mod p` compute with a few "key frequencies" `k`: `cos(2πk(a + b)/p)` and
//! its relatives (Nanda et al.; the LIB paper's modular-addition figures). A basis direction whose
//! activation over the grid is one such wave is labelled with its frequency pair, so that the
//! modules of the interaction graph can be read as frequencies. The definition is in
//! `docs/math.md` §8.

use crate::error::{Error, Result};
use rustfft::{FftPlanner, num_complex::Complex};
use serde::{Deserialize, Serialize};

/// The dominant frequencies of a function `g(a, b)` on the `p × p` grid.
///
/// Frequencies are folded to `0..=p/2`: `k` and `p − k` are one real frequency (a real `g` has
/// `|G(k_a, k_b)| = |G(p − k_a, p − k_b)|`), so `cos(k_a a + k_b b)` and `cos(k_a a − k_b b)` both
/// count for `(k_a, k_b)`. The dominant frequency of `a` is the non-zero `k_a` with the most
/// power summed over `k_b`; likewise for `b`; 0 where `g` does not depend on that input.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FourierLabel {
    /// The dominant frequency of `a`, in `0..=p/2` (0: `g` does not depend on `a`).
    pub a: usize,
    /// The dominant frequency of `b`, in `0..=p/2`.
    pub b: usize,
    /// The fraction of the non-constant power in the terms of these frequencies, folded
    /// `(a, b)`, `(a, 0)` and `(0, b)`: 1 for `cos(k(a + b))`, for `cos(k a) + cos(k b)`, for
    /// `cos(k a) cos(k b)`; 0 for a constant function.
    pub share: f64,
    /// The fraction of the total power in the constant term `|G(0, 0)|²` (1 for a constant
    /// function, 0 for one with mean zero over the grid).
    pub constant: f64,
}

impl FourierLabel {
    /// `"a3 b3"` (both frequencies), `"const"` for a constant function.
    pub fn short(&self) -> String {
        if self.constant >= 1.0 - 1e-12 { "const".into() } else { format!("a{} b{}", self.a, self.b) }
    }
}

/// Power below this fraction of the non-constant power is rounding, not a frequency.
const NEGLIGIBLE: f64 = 1e-9;

/// The power spectrum `|G(k_a, k_b)|²` of `values[a · p + b] = g(a, b)`, with
/// `G(k_a, k_b) = Σ_{a, b} g(a, b) e^{−2πi (k_a a + k_b b)/p}`, as `[k_a · p + k_b]`.
///
/// Errors unless `values` has `p²` finite entries and `p ≥ 2`.
pub fn power_spectrum(values: &[f64], p: usize) -> Result<Vec<f64>> {
    if p < 2 {
        return Err(Error::invalid("p", p, "a grid needs p ≥ 2"));
    }
    if values.len() != p * p {
        return Err(Error::shape("fourier grid [p, p]", &[p, p], &[values.len()]));
    }
    if let Some(k) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite { what: "fourier grid".into(), row: k / p, col: k % p, value: values[k] });
    }
    // A 2-D DFT as p transforms of length p along b, then p along a (rustfft: any p).
    let mut g: Vec<Complex<f64>> = values.iter().map(|&v| Complex::new(v, 0.0)).collect();
    let fft = FftPlanner::new().plan_fft_forward(p);
    fft.process(&mut g);
    let mut column = vec![Complex::new(0.0, 0.0); p];
    let mut power = vec![0.0; p * p];
    for kb in 0..p {
        column.iter_mut().enumerate().for_each(|(a, z)| *z = g[a * p + kb]);
        fft.process(&mut column);
        column.iter().enumerate().for_each(|(ka, z)| power[ka * p + kb] = z.norm_sqr());
    }
    Ok(power)
}

/// The dominant frequencies of `values[a · p + b] = g(a, b)` (see [`FourierLabel`]): for `a`,
/// the non-zero folded `k_a` with the most power summed over every `k_b`; ties go to the smaller
/// frequency; 0 when the power of every non-zero `k_a` is below 1e-9 of the non-constant power
/// (rounding). Likewise for `b`.
///
/// ```
/// use degeneracy::fourier::fourier_label;
/// let p = 13;
/// // cos(2π·3(a + b)/p) + 0.1 cos(2π·5a/p)
/// let g: Vec<f64> = (0..p * p)
///     .map(|i| {
///         let (a, b) = ((i / p) as f64, (i % p) as f64);
///         let w = std::f64::consts::TAU / p as f64;
///         (w * 3.0 * (a + b)).cos() + 0.1 * (w * 5.0 * a).cos()
///     })
///     .collect();
/// let label = fourier_label(&g, p)?;
/// assert_eq!((label.a, label.b), (3, 3));
/// assert!((label.share - 1.0 / 1.01).abs() < 1e-12); // power 1 : 0.01
/// # Ok::<(), degeneracy::Error>(())
/// ```
pub fn fourier_label(values: &[f64], p: usize) -> Result<FourierLabel> {
    let power = power_spectrum(values, p)?;
    let total: f64 = power.iter().sum();
    let fold = |k: usize| k.min(p - k);
    let half = p / 2 + 1;
    // Folded power F[f_a][f_b] without the constant term.
    let mut folded = vec![0.0; half * half];
    for ka in 0..p {
        for kb in 0..p {
            if (ka, kb) != (0, 0) {
                folded[fold(ka) * half + fold(kb)] += power[ka * p + kb];
            }
        }
    }
    let rest = total - power[0];
    let constant = if total > 0.0 { power[0] / total } else { 1.0 };
    if rest <= 0.0 {
        return Ok(FourierLabel { a: 0, b: 0, share: 0.0, constant });
    }
    let dominant = |marginal: &dyn Fn(usize) -> f64| {
        let (mut best, mut at) = (NEGLIGIBLE * rest, 0);
        for k in 1..half {
            let m = marginal(k);
            if m > best {
                (best, at) = (m, k);
            }
        }
        at
    };
    let a = dominant(&|k| (0..half).map(|j| folded[k * half + j]).sum());
    let b = dominant(&|k| (0..half).map(|i| folded[i * half + k]).sum());
    // The terms {0, a} × {0, b} but (0, 0), each once.
    let mut terms: Vec<(usize, usize)> = Vec::with_capacity(3);
    for i in [a, 0] {
        for j in [b, 0] {
            if (i, j) != (0, 0) && !terms.contains(&(i, j)) {
                terms.push((i, j));
            }
        }
    }
    let explained: f64 = terms.iter().map(|&(i, j)| folded[i * half + j]).sum();
    Ok(FourierLabel { a, b, share: (explained / rest).min(1.0), constant })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::TAU;

    fn grid(p: usize, g: impl Fn(f64, f64) -> f64) -> Vec<f64> {
        (0..p * p).map(|i| g((i / p) as f64, (i % p) as f64)).collect()
    }

    #[test]
    fn the_spectrum_is_the_direct_double_sum_and_keeps_parseval() {
        let p = 7;
        let values = grid(p, |a, b| (a * 1.3 + b * b * 0.7).sin() + 0.2 * a);
        let power = power_spectrum(&values, p).unwrap();
        for (ka, kb) in [(0, 0), (1, 0), (2, 5), (6, 6), (3, 1)] {
            let (mut re, mut im) = (0.0, 0.0);
            for a in 0..p {
                for b in 0..p {
                    let phase = -TAU * ((ka * a + kb * b) as f64) / p as f64;
                    re += values[a * p + b] * phase.cos();
                    im += values[a * p + b] * phase.sin();
                }
            }
            let direct = re * re + im * im;
            assert!((power[ka * p + kb] - direct).abs() <= 1e-10 * direct.max(1.0), "({ka}, {kb})");
        }
        let energy: f64 = values.iter().map(|v| v * v).sum();
        let total: f64 = power.iter().sum();
        assert!((total - (p * p) as f64 * energy).abs() < 1e-9 * total);
    }

    #[test]
    fn a_wave_is_labelled_with_its_folded_frequencies() {
        let p = 11;
        let w = TAU / p as f64;
        // sin(2π(8a − 2b)/p + 0.4): frequency 8 of a folds to 3, −2 of b to 2.
        let wave = grid(p, |a, b| (w * (8.0 * a - 2.0 * b) + 0.4).sin() + 5.0);
        let label = fourier_label(&wave, p).unwrap();
        assert_eq!((label.a, label.b), (3, 2));
        assert!((label.share - 1.0).abs() < 1e-12);
        // Constant 5 against a wave of amplitude 1: |G(0,0)|² = (5p²)², the wave (p²/2)² twice.
        let expected = 25.0 / (25.0 + 0.5);
        assert!((label.constant - expected).abs() < 1e-12, "{}", label.constant);
        assert_eq!(label.short(), "a3 b2");
        let flat = fourier_label(&vec![2.0; p * p], p).unwrap();
        assert_eq!((flat.a, flat.b, flat.share, flat.short().as_str()), (0, 0, 0.0, "const"));
        // A function of a alone.
        let only_a = fourier_label(&grid(p, |a, _| (w * 4.0 * a).cos()), p).unwrap();
        assert_eq!((only_a.a, only_a.b), (4, 0));
        assert!((only_a.share - 1.0).abs() < 1e-12);
        // A sum of a function of a and one of b (an embedding summed over positions): one
        // frequency of each, fully explained.
        let sum = fourier_label(&grid(p, |a, b| (w * 2.0 * a).cos() + 0.7 * (w * 2.0 * b + 1.0).sin()), p).unwrap();
        assert_eq!((sum.a, sum.b), (2, 2));
        assert!((sum.share - 1.0).abs() < 1e-12);
        // Two frequencies: the stronger one labels, the weaker is the rest of the power.
        let two = fourier_label(&grid(p, |a, b| (w * (a + b)).cos() + 0.5 * (w * 4.0 * (a - b)).cos()), p).unwrap();
        assert_eq!((two.a, two.b), (1, 1));
        assert!((two.share - 1.0 / 1.25).abs() < 1e-12, "{}", two.share);
    }

    #[test]
    fn bad_grids_are_errors() {
        assert!(matches!(fourier_label(&[1.0; 5], 2), Err(Error::ShapeMismatch { .. })));
        assert!(matches!(fourier_label(&[1.0], 1), Err(Error::InvalidParameter { .. })));
        assert!(matches!(fourier_label(&[1.0, f64::NAN, 0.0, 0.0], 2), Err(Error::NonFinite { .. })));
    }
}
