//! Which numbers of kept directions (or edges) to evaluate: static schedules, and bisection for
//! the fewest that stay within a tolerance.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// A static set of points `n` (kept directions or edges) in `0..=max`.
///
/// As JSON: `{"type": "linear", "n_points": 10}`, `{"type": "exponential", "base": 1.05,
/// "all_below": 10}`, `{"type": "explicit", "points": [0, 5, 20]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// `n_points` evenly spaced points from 0 to `max`, both included: `n_i = ⌈i·max/(P−1)⌉`
    /// (the reference's `linspace` over the number of ablated directions); duplicates merged.
    Linear {
        /// Number of points, at least 2.
        n_points: usize,
    },
    /// Every `n ≤ all_below`, then steps that grow geometrically, `n ← n + ⌈base^x⌉` for
    /// x = 0, 1, …, and finally `max` (the reference's exponential schedule with
    /// `ablate_every_vec_cutoff = all_below`, read in kept directions; the papers used
    /// base 1.05 and every n ≤ 10).
    Exponential {
        /// Growth factor of the steps, ≥ 1.
        base: f64,
        /// Every point up to and including this one is evaluated.
        all_below: usize,
    },
    /// Exactly these points; those above a layer's maximum are skipped (as the reference does).
    Explicit {
        /// The points.
        points: Vec<usize>,
    },
}

impl Schedule {
    /// The most points a schedule may ask for (`n_points`, `all_below`, explicit points and
    /// their values): each point is one evaluation of the network downstream.
    pub const MAX_POINTS: usize = 1 << 20;

    /// The papers' node-ablation schedule: exponential, base 1.05, every n ≤ 10.
    pub fn paper() -> Self {
        Schedule::Exponential { base: 1.05, all_below: 10 }
    }

    /// Checks the counts against [`Schedule::MAX_POINTS`] and the base; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let bound = |name: &str, n: usize| {
            if n <= Self::MAX_POINTS {
                Ok(())
            } else {
                Err(Error::invalid(name, n, format!("must be at most {}", Self::MAX_POINTS)))
            }
        };
        match self {
            Schedule::Linear { n_points } => {
                bound("schedule.n_points", *n_points)?;
                if *n_points < 2 {
                    return Err(Error::invalid("schedule.n_points", n_points, "need at least 2 points"));
                }
            }
            Schedule::Exponential { base, all_below } => {
                bound("schedule.all_below", *all_below)?;
                if !(base.is_finite() && *base >= 1.0) {
                    return Err(Error::invalid("schedule.base", base, "must be finite and ≥ 1"));
                }
            }
            Schedule::Explicit { points } => {
                bound("schedule.points (count)", points.len())?;
                if points.is_empty() {
                    return Err(Error::invalid("schedule.points", "[]", "need at least one point"));
                }
                if let Some(&p) = points.iter().find(|&&p| p > Self::MAX_POINTS) {
                    bound("schedule.points", p)?;
                }
            }
        }
        Ok(())
    }

    /// The points for a maximum of `max`, ascending and distinct.
    pub fn points(&self, max: usize) -> Result<Vec<usize>> {
        self.validate()?;
        let mut points: Vec<usize> = match self {
            Schedule::Linear { n_points } => {
                let p = *n_points;
                if p < 2 {
                    return Err(Error::invalid("schedule.n_points", p, "need at least 2 points"));
                }
                (0..p).map(|i| (i * max).div_ceil(p - 1)).collect()
            }
            Schedule::Exponential { base, all_below } => {
                if !(base.is_finite() && *base >= 1.0) {
                    return Err(Error::invalid("schedule.base", base, "must be finite and ≥ 1"));
                }
                let mut points: Vec<usize> = (0..=(*all_below).min(max)).collect();
                let mut n = *all_below;
                let mut x = 0_i32;
                while n < max {
                    let step = base.powi(x).ceil();
                    n = if step >= (max - n) as f64 { max } else { n + step as usize };
                    points.push(n);
                    x = x.saturating_add(1);
                }
                points
            }
            Schedule::Explicit { points } => points.iter().copied().filter(|&n| n <= max).collect(),
        };
        points.sort_unstable();
        points.dedup();
        Ok(points)
    }
}

/// How a bisection step picks the next probe between a known-good and a known-bad number of
/// **ablated** edges `g < b` (the reference bisects over the number ablated).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Midpoint {
    /// `⌊(g + b)/2⌋`.
    #[default]
    Linear,
    /// The geometric mean `⌊exp((ln b + ln(g + 10⁻⁹))/2)⌋`: large strides while few edges are
    /// ablated, fine ones near the boundary (the reference's `logarithmic` scaling).
    Log,
}

impl Midpoint {
    /// Parses `linear` or `log` (also `logarithmic`).
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "linear" => Ok(Midpoint::Linear),
            "log" | "logarithmic" => Ok(Midpoint::Log),
            _ => Err(Error::invalid("midpoint", name, "expected linear or log")),
        }
    }

    /// A point strictly between `good` and `bad` (`bad − good ≥ 2`).
    fn between(self, good: usize, bad: usize) -> usize {
        let m = match self {
            Midpoint::Linear => good + (bad - good) / 2,
            Midpoint::Log => (((bad as f64).ln() + (good as f64 + 1e-9).ln()) / 2.0).exp().floor() as usize,
        };
        m.clamp(good + 1, bad - 1)
    }
}

/// The smallest `k` in `0..=total` with `good(k)`, by bisection, assuming `good` is monotone
/// (false below the answer, true from it on). `good(total)` is assumed, not evaluated; every
/// other candidate, `k = 0` included, is decided only by evaluating it. The bisection runs over
/// the number ablated, `total − k`, with the given midpoint rule. When it returns `k`, either
/// `k = total` or `good(k)` was evaluated true, and either `k = 0` or `good(k − 1)` was
/// evaluated false.
///
/// ```
/// use degeneracy::ablation::{Midpoint, bisect_smallest};
/// for midpoint in [Midpoint::Linear, Midpoint::Log] {
///     let mut probes = 0;
///     let k = bisect_smallest(1000, midpoint, |k| { probes += 1; Ok(k >= 137) })?;
///     assert_eq!(k, 137);
///     assert!(probes <= 20);
/// }
/// # Ok::<(), degeneracy::Error>(())
/// ```
pub fn bisect_smallest(total: usize, midpoint: Midpoint, mut good: impl FnMut(usize) -> Result<bool>) -> Result<usize> {
    // Ablated counts: `g` is known good (0 ablated = everything kept), `b` known bad; `total + 1`
    // stands for "nothing known", so that keeping no edge at all is evaluated too.
    let (mut g, mut b) = (0_usize, total + 1);
    while b - g > 1 {
        let a = midpoint.between(g, b);
        if good(total - a)? {
            g = a;
        } else {
            b = a;
        }
    }
    Ok(total - g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_schedules() {
        // The reference's docstring examples, read as kept directions (12 − ablated).
        let exp = |cutoff, n| Schedule::Exponential { base: 2.0, all_below: cutoff }.points(n).unwrap();
        assert_eq!(exp(3, 12), [0, 1, 2, 3, 4, 6, 10, 12]);
        assert_eq!(exp(0, 12), [0, 1, 3, 7, 12]);
        assert_eq!(exp(1, 12), [0, 1, 2, 4, 8, 12]);
        assert_eq!(exp(3, 24), [0, 1, 2, 3, 4, 6, 10, 18, 24]);
        assert_eq!(exp(30, 12), (0..=12).collect::<Vec<_>>());
        let lin = |p, n| Schedule::Linear { n_points: p }.points(n).unwrap();
        assert_eq!(lin(3, 12), [0, 6, 12]);
        assert_eq!(lin(11, 120), (0..=10).map(|i| 12 * i).collect::<Vec<_>>());
        assert_eq!(lin(5, 2), [0, 1, 2]);
        assert!(Schedule::Linear { n_points: 1 }.points(5).is_err());
        assert!(Schedule::Exponential { base: 0.5, all_below: 1 }.points(5).is_err());
        let explicit = Schedule::Explicit { points: vec![9, 3, 3, 40] };
        assert_eq!(explicit.points(10).unwrap(), [3, 9]);
    }

    #[test]
    fn paper_schedule_covers_small_counts_then_grows() {
        let p = Schedule::paper().points(129).unwrap();
        assert_eq!(&p[..11], (0..=10).collect::<Vec<_>>().as_slice());
        assert_eq!(*p.last().unwrap(), 129);
        // Non-decreasing steps (1, 2, 2, …, growing), except the last one, cut at the maximum.
        let steps: Vec<usize> = p[10..].windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(steps[..3], [1, 2, 2]);
        assert!(steps[..steps.len() - 1].windows(2).all(|w| w[1] >= w[0]), "{steps:?}");
    }

    #[test]
    fn bisect_finds_the_boundary_everywhere() {
        for total in [0, 1, 2, 3, 17, 100] {
            for answer in 0..=total {
                for midpoint in [Midpoint::Linear, Midpoint::Log] {
                    let mut seen = Vec::new();
                    let k = bisect_smallest(total, midpoint, |k| {
                        assert!(k < total && !seen.contains(&k), "k = {k} probed twice or = total");
                        seen.push(k);
                        Ok(k >= answer)
                    })
                    .unwrap();
                    assert_eq!(k, answer, "total {total}, {midpoint:?}");
                    assert!(k == total || seen.contains(&k));
                    assert!(k == 0 || seen.contains(&(k - 1)));
                }
            }
        }
    }
}
