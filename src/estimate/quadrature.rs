//! Quadrature rules over α ∈ [0, 1] for integrated gradients, exactly as rib builds them.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// How `∫₀¹ dα` is approximated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "method", content = "n_intervals")]
pub enum Quadrature {
    /// A single point α = 1 with weight 1: plain gradients instead of integrated gradients.
    Gradient,
    /// numpy's `leggauss(n_intervals + 1)` mapped to [0, 1].
    GaussLegendre(usize),
    /// `n_intervals + 1` equally spaced points in [ε, 1 − ε], ε = 10⁻³ / (n_intervals + 1),
    /// end points half-weighted; `n_intervals = 0` is the single point α = ½.
    Trapezoidal(usize),
}

/// One quadrature node: evaluate at `alpha`, multiply by `weight`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuadraturePoint {
    /// The scale applied to the node layer's (folded) activations.
    pub alpha: f64,
    /// The weight of this point.
    pub weight: f64,
}

impl Quadrature {
    /// The largest `n_intervals` accepted: every quadrature point costs a linearisation per
    /// batch, and rib's configs use at most a few dozen.
    pub const MAX_INTERVALS: usize = 10_000;

    /// Checks `n_intervals ≤` [`Quadrature::MAX_INTERVALS`]; the error names the key.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Quadrature::GaussLegendre(k) | Quadrature::Trapezoidal(k) if k > Self::MAX_INTERVALS => {
                Err(Error::invalid("n_intervals", k, format!("must be at most {}", Self::MAX_INTERVALS)))
            }
            _ => Ok(()),
        }
    }

    /// Parses rib's `integration_method` + `n_intervals` (`gradient` requires 0 intervals).
    pub fn from_name(method: &str, n_intervals: usize) -> Result<Self> {
        let quadrature = Self::parse(method, n_intervals)?;
        quadrature.validate()?;
        Ok(quadrature)
    }

    fn parse(method: &str, n_intervals: usize) -> Result<Self> {
        match method {
            "gradient" if n_intervals == 0 => Ok(Quadrature::Gradient),
            "gradient" => Err(Error::invalid("n_intervals", n_intervals, "must be 0 for integration_method gradient")),
            "gauss-legendre" => Ok(Quadrature::GaussLegendre(n_intervals)),
            "trapezoidal" => Ok(Quadrature::Trapezoidal(n_intervals)),
            _ => Err(Error::invalid("integration_method", method, "expected gradient, gauss-legendre or trapezoidal")),
        }
    }

    /// The nodes and weights, α ascending.
    pub fn points(self) -> Vec<QuadraturePoint> {
        match self {
            Quadrature::Gradient => vec![QuadraturePoint { alpha: 1.0, weight: 1.0 }],
            Quadrature::GaussLegendre(k) => gauss_legendre(k + 1)
                .into_iter()
                .map(|(x, w)| QuadraturePoint { alpha: (x + 1.0) / 2.0, weight: w / 2.0 })
                .collect(),
            Quadrature::Trapezoidal(0) => vec![QuadraturePoint { alpha: 0.5, weight: 1.0 }],
            Quadrature::Trapezoidal(k) => {
                let eps = 1e-3 / (k + 1) as f64;
                (0..=k)
                    .map(|i| {
                        let alpha = eps + (1.0 - 2.0 * eps) * i as f64 / k as f64;
                        let end = i == 0 || i == k;
                        QuadraturePoint { alpha, weight: if end { 0.5 / k as f64 } else { 1.0 / k as f64 } }
                    })
                    .collect()
            }
        }
    }
}

/// Gauss–Legendre nodes and weights on [−1, 1], ascending, symmetrised like numpy's
/// `leggauss`. Newton's method on Legendre's recurrence from Chebyshev starting points
/// (quadratic convergence; a dozen steps reach machine precision). Written here rather than
/// taken from `gauss-quad`, which pulls a second nalgebra and returns nodes asymmetric at 1e-16.
fn gauss_legendre(n: usize) -> Vec<(f64, f64)> {
    let mut out = vec![(0.0, 0.0); n];
    for i in 0..n.div_ceil(2) {
        let mut x = (std::f64::consts::PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
        let mut dp = 0.0;
        for _ in 0..100 {
            // P_n(x) and P_n'(x) by the three-term recurrence.
            let (mut p0, mut p1) = (1.0, x);
            for k in 2..=n {
                let p2 = ((2 * k - 1) as f64 * x * p1 - (k - 1) as f64 * p0) / k as f64;
                p0 = p1;
                p1 = p2;
            }
            dp = n as f64 * (x * p1 - p0) / (x * x - 1.0);
            let step = p1 / dp;
            x -= step;
            if step.abs() < 1e-16 {
                break;
            }
        }
        let w = 2.0 / ((1.0 - x * x) * dp * dp);
        out[i] = (-x, w);
        out[n - 1 - i] = (x, w);
    }
    if n % 2 == 1 {
        out[n / 2].0 = 0.0;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauss_legendre_matches_closed_forms() {
        let two = gauss_legendre(2);
        assert!((two[1].0 - 1.0 / 3f64.sqrt()).abs() < 2.3e-16 && (two[0].1 - 1.0).abs() < 1e-15, "{two:?}");
        // Five points (numpy leggauss(5)).
        let five = gauss_legendre(5);
        let x = [-0.906_179_845_938_664, -0.538_469_310_105_683_1, 0.0];
        let w = [0.236_926_885_056_189_08, 0.478_628_670_499_366_47, 0.568_888_888_888_888_9];
        for i in 0..3 {
            assert!((five[i].0 - x[i]).abs() < 1e-15 && (five[i].1 - w[i]).abs() < 1e-15, "{i}");
            assert_eq!(five[i].0, -five[4 - i].0);
        }
    }

    #[test]
    fn rules_integrate_polynomials_exactly() {
        // ∫₀¹ α^m dα = 1/(m+1); K+1 Gauss points are exact to degree 2K+1.
        for k in 0..6 {
            let pts = Quadrature::GaussLegendre(k).points();
            for m in 0..=2 * k + 1 {
                let s: f64 = pts.iter().map(|p| p.weight * p.alpha.powi(m as i32)).sum();
                assert!((s - 1.0 / (m + 1) as f64).abs() < 1e-14, "k={k} m={m}");
            }
        }
        for k in [0, 1, 4, 10] {
            let s: f64 = Quadrature::Trapezoidal(k).points().iter().map(|p| p.weight).sum();
            assert!((s - 1.0).abs() < 1e-15);
        }
        let t = Quadrature::Trapezoidal(4).points();
        assert!((t[0].alpha - 2e-4).abs() < 1e-18 && (t[4].alpha - (1.0 - 2e-4)).abs() < 1e-15);
        assert_eq!(t[0].weight, 0.125);
    }

    #[test]
    fn names_parse() {
        assert_eq!(Quadrature::from_name("gauss-legendre", 4).unwrap(), Quadrature::GaussLegendre(4));
        assert!(Quadrature::from_name("gradient", 2).is_err());
        assert!(Quadrature::from_name("simpson", 2).is_err());
    }
}
