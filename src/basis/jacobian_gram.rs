//! Step 4 of the basis algorithm: the matrices `M'` (and `Λ'`) built from derivatives of the
//! section `F` after a node layer, projected on the next node layer's basis `C_next`.
//!
//! Two ways to the same `M'`: the closed form for a single `Linear → σ` layer (from the
//! moments of the derivative vectors, no per-sample Jacobians), and the generic path through
//! the section's vector–Jacobian products, which works for any chain and serves as the
//! reference in tests.

use super::BasisFormula;
use crate::error::{Error, Result};
use crate::estimate::{GramAccumulator, Moments, Quadrature, QuadraturePoint};
use crate::matrix::{Matrix, MatrixView};
use crate::nn::{FoldedLinear, Layer, Section};
use serde::{Deserialize, Serialize};

/// Streaming, mergeable estimate of the `M'` of a section (and `Λ'` for `(1-alpha)^2`), through
/// its vector–Jacobian products: the generic path of step 4, for any section.
///
/// The state is one [`GramAccumulator`] (serde), so shards merge exactly; the section, the next
/// basis `C_next` and the quadrature are inputs of every update and must be the same for all
/// shards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JacobianGramAccumulator {
    formula: BasisFormula,
    /// Width of the section's (folded) input.
    in_dim: usize,
    /// Columns of `C_next` (the rows per sample of the `jacobian` formula).
    directions: usize,
    acc: GramAccumulator,
}

impl JacobianGramAccumulator {
    /// An empty estimate for a section with `in_dim` inputs, the next basis having `directions`
    /// columns; `formula` is `Jacobian` or `OneMinusAlphaSquared`.
    pub fn new(formula: BasisFormula, in_dim: usize, directions: usize) -> Result<Self> {
        let width = match formula {
            BasisFormula::Jacobian => in_dim,
            BasisFormula::OneMinusAlphaSquared => 2 * in_dim,
            other => return Err(Error::invalid("basis_formula", other.name(), "has no Jacobian Gram")),
        };
        Ok(JacobianGramAccumulator { formula, in_dim, directions, acc: GramAccumulator::new(width) })
    }

    /// Adds a batch of folded activations `f` of the section's input node.
    pub fn update(
        &mut self,
        section: &Section,
        f: MatrixView<'_>,
        c_next: &Matrix,
        quadrature: Quadrature,
    ) -> Result<()> {
        if f.ncols() != self.in_dim || section.in_dim() != self.in_dim {
            return Err(Error::shape(
                "JacobianGramAccumulator::update",
                &[f.nrows(), self.in_dim],
                &[f.nrows(), f.ncols()],
            ));
        }
        if c_next.ncols() != self.directions || c_next.nrows() != section.out_dim() {
            return Err(Error::shape(
                "JacobianGramAccumulator::update C_next",
                &[section.out_dim(), self.directions],
                &[c_next.nrows(), c_next.ncols()],
            ));
        }
        let points = quadrature.points();
        match self.formula {
            BasisFormula::Jacobian => update_jacobian(&mut self.acc, section, f, c_next, &points),
            _ => update_one_minus_alpha_squared(&mut self.acc, section, f, c_next, &points),
        }
    }

    /// Adds another shard's estimate.
    pub fn merge(&mut self, other: &JacobianGramAccumulator) -> Result<()> {
        if (other.formula, other.in_dim, other.directions) != (self.formula, self.in_dim, self.directions) {
            return Err(Error::invalid(
                "JacobianGramAccumulator::merge",
                "other shard",
                "built for another section or basis",
            ));
        }
        self.acc.merge(&other.acc)
    }

    /// `M'` and, for `(1-alpha)^2`, `Λ' = E[g fᵀ]`.
    pub fn finish(&self) -> Result<(Matrix, Option<Matrix>)> {
        let second = self.acc.finish()?.second_moment();
        let d = self.in_dim;
        Ok(match self.formula {
            // The rows were one per sample and direction: E over N·directions rows.
            BasisFormula::Jacobian => (second.scaled_by(self.directions as f64), None),
            _ => (Matrix::from_fn(d, d, |i, j| second[(i, j)]), Some(Matrix::from_fn(d, d, |i, j| second[(i, j + d)]))),
        })
    }
}

/// `M'`, dense or as `Gᵀ Â G` with a small core `Â`: the closed form is low-rank
/// (`d_out + 1 ≪ d_in` for wide inputs), and `R⁺ M' R⁺ᵀ = (G R⁺ᵀ)ᵀ Â (G R⁺ᵀ)` then costs
/// a fraction of the dense product.
pub(crate) enum JacobianGram {
    /// `M'` itself, `[d_in, d_in]`.
    Dense(Matrix),
    /// `M' = Gᵀ Â G` with `G` `[r, d_in]` and `Â` `[r, r]`.
    Factored { g: Matrix, core: Matrix },
}

impl JacobianGram {
    /// `M = R⁺ M' R⁺ᵀ`.
    pub(crate) fn project(&self, r_pinv: &Matrix) -> Result<Matrix> {
        match self {
            JacobianGram::Dense(m) => r_pinv.matmul(m)?.matmul(&r_pinv.transpose()),
            JacobianGram::Factored { g, core } => {
                let p = g.matmul(&r_pinv.transpose())?;
                p.transpose().matmul(core)?.matmul(&p)
            }
        }
    }
}

/// `M' = E_x Σ_i g_i g_iᵀ` for one folded layer `[h, c] ↦ [σ(p), κ(c)]`, `p = W_f f`, with
/// `g_i = Σ_α w_α J(αf)ᵀ C_next[:, i]`, from the moments of `s(x) = Σ_α w_α σ'(α p(x))`:
///
/// `M' = W_fᵀ (Q ⊙ E[ssᵀ]) W_f + K (v e_cᵀ + e_c vᵀ) + K² ‖C_c‖² e_c e_cᵀ`
///
/// with `Q = C_h C_hᵀ`, `v = W_fᵀ (E[s] ⊙ C_h C_cᵀ)`, `K = Σ_α w_α κ'(α)`, `C_h` / `C_c` the
/// hidden rows / constant row of `C_next`, `e_c` the constant input coordinate. Returned as
/// `Gᵀ Â G` with `G = [W_f; e_cᵀ]` and `Â = [[Q ⊙ E[ssᵀ], K(E[s] ⊙ C_h C_cᵀ)], [·ᵀ, K²‖C_c‖²]]`.
pub(crate) fn closed_form(
    layer: &FoldedLinear,
    s: &Moments,
    c_next: &Matrix,
    points: &[QuadraturePoint],
) -> JacobianGram {
    let w = layer.folded_weight();
    let (d_out, d_in) = w.shape();
    let c_h = Matrix::from_fn(d_out, c_next.ncols(), |i, j| c_next[(i, j)]);
    let q = c_h.matmul(&c_h.transpose()).expect("shapes agree");
    let s2 = s.second_moment();
    if !layer.carries_constant() {
        let core = Matrix::from_fn(d_out, d_out, |i, j| q[(i, j)] * s2[(i, j)]);
        return JacobianGram::Factored { g: w.clone(), core };
    }
    let c_c = c_next.row(d_out);
    let k: f64 = points.iter().map(|p| p.weight * layer.constant_carrier(p.alpha).1).sum();
    let cross: Vec<f64> =
        (0..d_out).map(|i| k * s.mean[i] * c_h.row(i).iter().zip(c_c).map(|(a, b)| a * b).sum::<f64>()).collect();
    let corner = k * k * c_c.iter().map(|x| x * x).sum::<f64>();
    let core = Matrix::from_fn(d_out + 1, d_out + 1, |i, j| match (i < d_out, j < d_out) {
        (true, true) => q[(i, j)] * s2[(i, j)],
        (true, false) => cross[i],
        (false, true) => cross[j],
        (false, false) => corner,
    });
    let g =
        Matrix::from_fn(d_out + 1, d_in, |i, j| if i < d_out { w[(i, j)] } else { f64::from(u8::from(j == d_in - 1)) });
    JacobianGram::Factored { g, core }
}

/// Adds a batch to the generic `M'` accumulator of the `jacobian` formula: for every output
/// direction `i`, the rows `g_i(x) = Σ_α w_α VJP(αf(x), C_next[:, i])`. The accumulator's second
/// moment times `C_next.ncols()` is `M'`.
fn update_jacobian(
    acc: &mut GramAccumulator,
    section: &Section,
    f: MatrixView<'_>,
    c_next: &Matrix,
    points: &[QuadraturePoint],
) -> Result<()> {
    let n = f.nrows();
    let (mut grad_out, mut g, mut gx) =
        (Matrix::zeros(n, c_next.nrows()), Matrix::zeros(n, f.ncols()), Matrix::default());
    for i in 0..c_next.ncols() {
        for r in 0..n {
            for (o, row) in grad_out.row_mut(r).iter_mut().enumerate() {
                *row = c_next[(o, i)];
            }
        }
        g.fill(0.0);
        for p in points {
            let scaled = f.scaled(p.alpha);
            section.backward(scaled.view(), grad_out.view(), &mut gx, &mut [])?;
            g.add_scaled(p.weight, &gx);
        }
        acc.update(g.view())?;
    }
    Ok(())
}

/// Adds a batch to the `(1-alpha)^2` accumulator over rows `[g | f]` with
/// `g(x) = Σ_α w_α ∇_z[−‖(F(f) − F(z)) C_next‖²]_{z = αf} = Σ_α w_α 2 J(αf)ᵀ C Cᵀ (F(f) − F(αf))`.
/// Its second moment holds `M' = E[ggᵀ]` (top-left block) and `Λ' = E[gfᵀ]` (top-right).
fn update_one_minus_alpha_squared(
    acc: &mut GramAccumulator,
    section: &Section,
    f: MatrixView<'_>,
    c_next: &Matrix,
    points: &[QuadraturePoint],
) -> Result<()> {
    let (n, d) = f.shape();
    let q = c_next.matmul(&c_next.transpose())?;
    let (mut full, mut y, mut gx) = (Matrix::default(), Matrix::default(), Matrix::default());
    section.forward(f, &mut full)?;
    let mut g = Matrix::zeros(n, d);
    for p in points {
        let scaled = f.scaled(p.alpha);
        section.forward(scaled.view(), &mut y)?;
        for (yv, &fv) in y.as_mut_slice().iter_mut().zip(full.as_slice()) {
            *yv = 2.0 * (fv - *yv);
        }
        let grad_out = y.matmul(&q)?;
        section.backward(scaled.view(), grad_out.view(), &mut gx, &mut [])?;
        g.add_scaled(p.weight, &gx);
    }
    let rows = Matrix::from_fn(n, 2 * d, |r, j| if j < d { g[(r, j)] } else { f[(r, j - d)] });
    acc.update(rows.view())
}
