//! Known learning coefficients, computed exactly in rational arithmetic.
//!
//! * [`regular`]: a non-degenerate minimum of a model with `d` free parameters has λ = d/2.
//! * [`reduced_rank_regression`]: y = B·A·x (Aoyagi & Watanabe 2005, "Stochastic complexities of
//!   reduced rank regression in Bayesian estimation", Neural Networks 18), four cases.
//! * [`deep_linear_network`]: a product of `L` weight matrices (Aoyagi 2024, "Consideration on the
//!   learning efficiency of multiple-layered neural networks with linear units", Neural
//!   Networks 172), with every intermediate quantity in [`DeepLinearLambda`].
//!
//! Values are [`Rational`]s; [`Rational::to_f64`] divides two exactly representable integers,
//! so dyadic values such as 44, 6.5 or 17.5 convert exactly and others are correctly rounded.
//!
//! ```
//! use degeneracy::llc::theory;
//! assert_eq!(theory::deep_linear_network(&[10, 10, 10, 10], 4)?.to_f64(), 44.0);
//! assert_eq!(theory::reduced_rank_regression(5, 3, 5, 0)?.to_f64(), 6.5);
//! assert_eq!(theory::regular(300).to_f64(), 150.0);
//! # Ok::<(), degeneracy::Error>(())
//! ```

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::{Add, Neg};

/// An exact fraction `numerator / denominator`, always reduced, denominator positive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rational {
    numerator: i128,
    denominator: i128,
}

impl Rational {
    /// `numerator / denominator`, reduced; errors on a zero denominator.
    pub fn new(numerator: i128, denominator: i128) -> Result<Self> {
        if denominator == 0 {
            return Err(Error::invalid("denominator", 0, "must be non-zero"));
        }
        Ok(Self::reduced(numerator, denominator))
    }

    /// The integer `n`.
    pub fn integer(n: i128) -> Self {
        Rational { numerator: n, denominator: 1 }
    }

    fn reduced(n: i128, d: i128) -> Self {
        let g = gcd(n.unsigned_abs(), d.unsigned_abs()).max(1) as i128;
        let s = if d < 0 { -1 } else { 1 };
        Rational { numerator: s * n / g, denominator: s * d / g }
    }

    /// The numerator (sign carrier).
    pub fn numerator(self) -> i128 {
        self.numerator
    }

    /// The denominator (positive).
    pub fn denominator(self) -> i128 {
        self.denominator
    }

    /// The nearest `f64` (exact when numerator and denominator are below 2⁵³ and the value is
    /// representable, e.g. every dyadic fraction of moderate size).
    pub fn to_f64(self) -> f64 {
        self.numerator as f64 / self.denominator as f64
    }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Add for Rational {
    type Output = Rational;
    fn add(self, o: Rational) -> Rational {
        Rational::reduced(
            self.numerator * o.denominator + o.numerator * self.denominator,
            self.denominator * o.denominator,
        )
    }
}

impl Neg for Rational {
    type Output = Rational;
    fn neg(self) -> Rational {
        Rational { numerator: -self.numerator, denominator: self.denominator }
    }
}

impl fmt::Display for Rational {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.denominator == 1 {
            write!(f, "{}", self.numerator)
        } else {
            write!(f, "{}/{}", self.numerator, self.denominator)
        }
    }
}

/// Largest width accepted by the formulas: keeps every intermediate product far inside `i128`.
const MAX_WIDTH: usize = 1 << 24;

fn check_width(name: &str, v: usize) -> Result<i128> {
    if v == 0 || v > MAX_WIDTH {
        return Err(Error::invalid(name, v, format!("must lie in 1..={MAX_WIDTH}")));
    }
    Ok(v as i128)
}

/// λ = d/2 for a regular (non-degenerate) minimum with `d` free parameters.
pub fn regular(d: usize) -> Rational {
    Rational::reduced(d as i128, 2)
}

/// Aoyagi & Watanabe's learning coefficient of reduced-rank regression y = B·A·x with input
/// dimension `m`, hidden (inner) dimension `h`, output dimension `n` and true rank `r`
/// (`r ≤ min(m, h, n)`).
///
/// Case 1 (`n + r ≤ m + h`, `m + r ≤ n + h`, `h + r ≤ m + n`):
/// λ = [2(h + r)(m + n) − (m − n)² − (h + r)²] / 8, plus 1/8 when `m + h + n + r` is odd.
/// Case 2 (`m + h < n + r`): λ = (h·m − h·r + n·r)/2. Case 3 (`n + h < m + r`):
/// λ = (h·n − h·r + m·r)/2. Case 4 (`m + n < h + r`): λ = m·n/2.
pub fn reduced_rank_regression(m: usize, h: usize, n: usize, r: usize) -> Result<Rational> {
    let (mi, hi, ni) = (
        check_width("input dimension M", m)?,
        check_width("hidden dimension H", h)?,
        check_width("output dimension N", n)?,
    );
    if r > m.min(h).min(n) {
        return Err(Error::invalid("rank r", r, format!("must be at most min(M, H, N) = {}", m.min(h).min(n))));
    }
    let r = r as i128;
    Ok(if mi + hi < ni + r {
        Rational::reduced(hi * mi - hi * r + ni * r, 2)
    } else if ni + hi < mi + r {
        Rational::reduced(hi * ni - hi * r + mi * r, 2)
    } else if mi + ni < hi + r {
        Rational::reduced(mi * ni, 2)
    } else {
        let hr = hi + r;
        let base = 2 * hr * (mi + ni) - (mi - ni) * (mi - ni) - hr * hr;
        let odd = (mi + hi + ni + r) % 2;
        Rational::reduced(base + odd, 8)
    })
}

/// Every quantity of Aoyagi's deep-linear-network formula, for checking against the paper.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeepLinearLambda {
    /// `M_j = H_j − r` for every node layer `j = 0..=L`.
    pub m: Vec<usize>,
    /// The selected index set `S` (ascending indices), `|S| = ℓ + 1`.
    pub subset: Vec<usize>,
    /// ℓ = |S| − 1.
    pub ell: usize,
    /// Σ = Σ_{j∈S} M_j.
    pub sigma: usize,
    /// M = ⌈Σ/ℓ⌉.
    pub big_m: usize,
    /// a = Σ − (M − 1)·ℓ, in `1..=ℓ`.
    pub a: usize,
    /// The four terms: (−r² + r(H_0 + H_L))/2, a(ℓ − a)/(4ℓ), −(ℓ(ℓ − 1)/4)(Σ/ℓ)²,
    /// ½ Σ_{i<j∈S} M_i M_j.
    pub terms: [Rational; 4],
    /// λ, the sum of the terms.
    pub lambda: Rational,
}

/// Aoyagi's (2024) learning coefficient of a deep linear network with node widths `widths`
/// (input `H_0`, hidden…, output `H_L`; `L = widths.len() − 1` weight matrices) at a true
/// parameter whose product has rank `rank`.
///
/// ```
/// let lam = degeneracy::llc::theory::deep_linear_network(&[10, 10, 10, 10], 10)?;
/// assert_eq!(lam.to_f64(), 50.0); // full rank: the regular count of the 10 × 10 product
/// # Ok::<(), degeneracy::Error>(())
/// ```
pub fn deep_linear_network(widths: &[usize], rank: usize) -> Result<Rational> {
    Ok(deep_linear_network_details(widths, rank)?.lambda)
}

/// [`deep_linear_network`] with every intermediate quantity (`M_j`, `S`, ℓ, Σ, M, a, terms).
///
/// The subset `S` satisfies (a) max_{S} M_j < min_{k∉S} M_k, (b) Σ_S M_j ≥ ℓ·max_S M_j,
/// (c) Σ_S M_j < ℓ·min_{k∉S} M_k; by (a) it is a prefix of the indices sorted by `M_j`, so the
/// prefixes of length 2, 3, … are tried in turn and the first that qualifies is taken.
pub fn deep_linear_network_details(widths: &[usize], rank: usize) -> Result<DeepLinearLambda> {
    if widths.len() < 2 {
        return Err(Error::invalid("widths", format!("{widths:?}"), "need at least input and output widths"));
    }
    for &w in widths {
        check_width("width", w)?;
    }
    let min_w = *widths.iter().min().expect("non-empty");
    if rank > min_w {
        return Err(Error::invalid("rank", rank, format!("must be at most the smallest width {min_w}")));
    }
    let m: Vec<usize> = widths.iter().map(|&h| h - rank).collect();
    let mut order: Vec<usize> = (0..m.len()).collect();
    order.sort_by_key(|&j| m[j]);
    let mut chosen = None;
    for k in 2..=m.len() {
        let (inside, outside) = order.split_at(k);
        let ell = (k - 1) as i128;
        let max_in = inside.iter().map(|&j| m[j]).max().expect("k ≥ 2") as i128;
        let sum_in: i128 = inside.iter().map(|&j| m[j] as i128).sum();
        let min_out = outside.iter().map(|&j| m[j] as i128).min();
        let a_ok = min_out.is_none_or(|mo| max_in < mo);
        let b_ok = sum_in >= ell * max_in;
        let c_ok = min_out.is_none_or(|mo| sum_in < ell * mo);
        if a_ok && b_ok && c_ok {
            chosen = Some(k);
            break;
        }
    }
    let k = chosen.ok_or_else(|| {
        Error::invalid(
            "widths",
            format!("{widths:?} with rank {rank}"),
            "no index subset satisfies Aoyagi's conditions",
        )
    })?;
    let mut subset = order[..k].to_vec();
    subset.sort_unstable();
    let ell = k - 1;
    let sigma: usize = subset.iter().map(|&j| m[j]).sum();
    let big_m = sigma.div_ceil(ell);
    // a = Σ − (M − 1)ℓ, computed in signed arithmetic (M = 0 when Σ = 0).
    let a = (sigma as i128 - (big_m as i128 - 1) * ell as i128) as usize;
    let (r, l, s, ai) = (rank as i128, ell as i128, sigma as i128, a as i128);
    let (h0, hl) = (widths[0] as i128, widths[widths.len() - 1] as i128);
    let mut pair_sum: i128 = 0;
    for (x, &i) in subset.iter().enumerate() {
        for &j in &subset[x + 1..] {
            pair_sum += m[i] as i128 * m[j] as i128;
        }
    }
    let terms = [
        Rational::reduced(-r * r + r * (h0 + hl), 2),
        Rational::reduced(ai * (l - ai), 4 * l),
        -Rational::reduced((l - 1) * s * s, 4 * l),
        Rational::reduced(pair_sum, 2),
    ];
    let lambda = terms[0] + terms[1] + terms[2] + terms[3];
    Ok(DeepLinearLambda { m, subset, ell, sigma, big_m, a, terms, lambda })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rational_arithmetic_reduces() {
        let x = Rational::new(6, -4).unwrap();
        assert_eq!((x.numerator(), x.denominator()), (-3, 2));
        assert_eq!(x + Rational::integer(2), Rational::new(1, 2).unwrap());
        assert_eq!(format!("{}", Rational::new(-1, 6).unwrap()), "-1/6");
        assert!(Rational::new(1, 0).is_err());
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(deep_linear_network(&[10], 0).is_err());
        assert!(deep_linear_network(&[10, 0, 3], 0).is_err());
        assert!(deep_linear_network(&[10, 3, 10], 4).is_err());
        assert!(reduced_rank_regression(3, 2, 3, 3).is_err());
    }
}
