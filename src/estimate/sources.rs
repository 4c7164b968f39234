//! Stochastic sources (rib's `n_stochastic_sources_*`): seeded random ±1 combinations that
//! replace the sum over a section's output positions, and optionally over the next basis's
//! directions, in the Jacobian Gram and the squared edges (`docs/math.md` §3.4).
//!
//! The exact sums take one vector–Jacobian product per output position `t` and direction `i`.
//! With sources, cotangent `r` is `Σ_{t,i} φ_r(x, t, i) e_t ⊗ C[:, i]` with independent signs
//! `φ = ±1/√R` (R sources), so `E[Σ_r φ_r φ_rᵀ] = I` and every estimate stays unbiased while the
//! cost no longer grows with the context length. The signs depend on the seed and the sample's
//! index in the dataset only: the result does not depend on batching, threads or shards.

use crate::error::{Error, Result};
use crate::matrix::Matrix;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// How many random sources replace which sums (`None`: the exact sum).
///
/// ```
/// use degeneracy::basis::JacobianPath;
/// use degeneracy::estimate::StochasticSources;
/// // rib's `n_stochastic_sources_basis_pos: 1` for a long-context model.
/// let path = JacobianPath::Stochastic(StochasticSources { positions: Some(1), hidden: None, seed: 0 });
/// assert_ne!(path, JacobianPath::Auto);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StochasticSources {
    /// Sources replacing the sum over a section's output positions.
    pub positions: Option<usize>,
    /// Sources replacing the sum over the next basis's directions (the Jacobian Gram only: the
    /// edges have one row per direction).
    pub hidden: Option<usize>,
    /// Seed of the signs.
    pub seed: u64,
}

impl StochasticSources {
    /// Errors unless the counts are positive.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("n_stochastic_sources_pos", self.positions), ("n_stochastic_sources_hidden", self.hidden)] {
            if v == Some(0) {
                return Err(Error::invalid(name, 0, "must be at least 1 (or absent for the exact sum)"));
            }
        }
        Ok(())
    }

    /// Cotangent blocks per sample for `positions` output positions and `directions` next-basis
    /// directions: `(R_pos or positions) · (R_hidden or directions)`.
    pub(crate) fn blocks(&self, positions: usize, directions: usize) -> usize {
        self.positions.unwrap_or(positions) * self.hidden.unwrap_or(directions)
    }

    /// The sign of one source entry: `±1`, a hash of the seed, the sample and the indices.
    fn sign(&self, sample: u64, a: u64, b: u64, c: u64) -> f64 {
        let mut h = splitmix(self.seed ^ 0x9e37_79b9_7f4a_7c15);
        for v in [sample, a, b, c] {
            h = splitmix(h ^ v);
        }
        if h >> 63 == 0 { 1.0 } else { -1.0 }
    }

    /// Cotangent blocks `blocks` (of [`StochasticSources::blocks`]) for `n` samples from dataset
    /// row `first_sample` on: block `(r_p, r_h)` holds at output position `t` of sample `x` the
    /// combination `Σ_i φ(x, t, i) C_out[:, i]` over the directions the block covers (one, or all
    /// of them with hidden sources) and the positions it covers (one, or all of them with
    /// position sources), `φ = ±1/√R`.
    pub(crate) fn cotangents(
        &self,
        c_out: &Matrix,
        positions: usize,
        n: usize,
        first_sample: usize,
        blocks: Range<usize>,
        out: &mut Matrix,
    ) {
        let (width, dirs) = (c_out.nrows(), c_out.ncols());
        let per_hidden = self.hidden.unwrap_or(dirs);
        let rows = n * positions;
        let scale = 1.0 / (self.positions.map_or(1.0, |r| r as f64) * self.hidden.map_or(1.0, |r| r as f64)).sqrt();
        out.resize(blocks.len() * rows, width);
        out.fill(0.0);
        let mut weights = vec![0.0; dirs];
        for (k, block) in blocks.enumerate() {
            let (outer, inner) = (block / per_hidden, block % per_hidden);
            for x in 0..n {
                let sample = (first_sample + x) as u64;
                let ts = match self.positions {
                    Some(_) => 0..positions,
                    None => outer..outer + 1,
                };
                for t in ts {
                    // Position sources: outer is the position source r_p; otherwise the position.
                    let r_p = if self.positions.is_some() { outer as u64 } else { 0 };
                    match self.hidden {
                        None => {
                            let s = if self.positions.is_some() { self.sign(sample, r_p, t as u64, 0) } else { 1.0 };
                            let row = out.row_mut(k * rows + x * positions + t);
                            for (o, v) in row.iter_mut().enumerate() {
                                *v = s * scale * c_out[(o, inner)];
                            }
                        }
                        Some(_) => {
                            let r_h = inner as u64;
                            for (i, w) in weights.iter_mut().enumerate() {
                                let key = ((r_h as u128) << 32 | i as u128) as u64;
                                *w = scale * self.sign(sample, r_p, t as u64, key.wrapping_add(1));
                            }
                            let row = out.row_mut(k * rows + x * positions + t);
                            for (o, v) in row.iter_mut().enumerate() {
                                *v = c_out.row(o).iter().zip(&weights).map(|(c, w)| c * w).sum();
                            }
                        }
                    }
                }
            }
        }
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_are_balanced_and_depend_on_every_index() {
        let s = StochasticSources { positions: Some(3), hidden: None, seed: 7 };
        let n = 20_000;
        let mean: f64 = (0..n).map(|x| s.sign(x, 0, 1, 0)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.03, "{mean}");
        let corr: f64 = (0..n).map(|x| s.sign(x, 0, 1, 0) * s.sign(x, 0, 2, 0)).sum::<f64>() / n as f64;
        assert!(corr.abs() < 0.03, "{corr}");
        let other = StochasticSources { seed: 8, ..s };
        assert!((0..64).any(|x| s.sign(x, 0, 0, 0) != other.sign(x, 0, 0, 0)));
    }

    #[test]
    fn block_layout_covers_positions_and_directions() {
        let c = Matrix::from_fn(4, 3, |i, j| (i * 3 + j) as f64);
        // Hidden sources over one position: each row is C φ with φ = ±1/√2.
        let s = StochasticSources { positions: None, hidden: Some(2), seed: 1 };
        let mut out = Matrix::default();
        s.cotangents(&c, 2, 3, 10, 0..s.blocks(2, 3), &mut out);
        assert_eq!(out.shape(), (4 * 3 * 2, 4));
        // Block (t = 1, r_h = 0) is zero at position 0.
        let block = 2;
        assert!(out.row(block * 6).iter().all(|&v| v == 0.0));
        assert!(out.row(block * 6 + 1).iter().any(|&v| v != 0.0));
    }
}
