//! Step 4 of the basis algorithm: the matrices `M'` (and `Λ'`) built from derivatives of the
//! section `F` after a node layer, projected on the next node layer's basis `C_next`.
//!
//! Two ways to the same `M'`: the closed form for a single `Linear → σ` layer (from the
//! moments of the derivative vectors, no per-sample Jacobians), and the generic path through
//! the section's vector–Jacobian products, which works for any chain and serves as the
//! reference in tests.

use super::BasisFormula;
use crate::error::{Error, Result};
use crate::estimate::{GramAccumulator, Moments, Quadrature, QuadraturePoint, StochasticSources};
use crate::matrix::{Matrix, MatrixView};
use crate::nn::{FoldedLinear, Linearized, ResidualLayer, Section};
use crate::scratch::ScratchMatrix;
use serde::{Deserialize, Serialize};

/// Values of the vector–Jacobian products held at once per work unit (cotangents are applied in
/// groups of this size).
pub(crate) const VJP_CHUNK_VALUES: usize = 1 << 21;

/// Streaming, mergeable estimate of the `M'` of a section (and `Λ'` for `(1-alpha)^2`), through
/// its vector–Jacobian products: the generic path of step 4, for any section.
///
/// With `P_in` input and `P_out` output positions per sample, `M' = 1/(N P_in) Σ_x Σ_{t,i}
/// Σ_s g_{t,i}(x)[s] g_{t,i}(x)[s]ᵀ` (rib's normalisation, `docs/math.md` §3): the rows of the
/// accumulator are one per sample, cotangent `(t, i)` and input position `s`.
///
/// The state is one [`GramAccumulator`] (serde), so shards merge exactly; the section, the next
/// basis `C_next` and the quadrature are inputs of every update and must be the same for all
/// shards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JacobianGramAccumulator {
    formula: BasisFormula,
    /// Width of the section's (folded) input.
    in_dim: usize,
    /// Columns of `C_next`.
    directions: usize,
    /// Output positions per sample.
    out_positions: usize,
    /// Random sources instead of the exact sums over positions / directions.
    #[serde(default)]
    sources: Option<StochasticSources>,
    acc: GramAccumulator,
}

impl JacobianGramAccumulator {
    /// An empty estimate for `section`, the next basis having `directions` columns; `formula` is
    /// `Jacobian` or `OneMinusAlphaSquared`.
    pub fn new(formula: BasisFormula, section: &dyn Section, directions: usize) -> Result<Self> {
        let in_dim = section.input().width;
        let width = match formula {
            BasisFormula::Jacobian => in_dim,
            BasisFormula::OneMinusAlphaSquared => 2 * in_dim,
            other => return Err(Error::invalid("basis_formula", other.name(), "has no Jacobian Gram")),
        };
        Ok(JacobianGramAccumulator {
            formula,
            in_dim,
            directions,
            out_positions: section.output().positions,
            sources: None,
            acc: GramAccumulator::new(width),
        })
    }

    /// The same estimate with random sources replacing the sums over output positions and/or
    /// directions (`jacobian` formula only; see [`StochasticSources`]).
    pub fn with_sources(mut self, sources: Option<StochasticSources>) -> Result<Self> {
        if let Some(s) = &sources {
            s.validate()?;
            if self.formula != BasisFormula::Jacobian {
                return Err(Error::invalid(
                    "stochastic sources",
                    self.formula.name(),
                    "only the jacobian basis has them",
                ));
            }
        }
        self.sources = sources;
        Ok(self)
    }

    /// Adds a batch of folded activations `f` of the section's input node (with random sources,
    /// as if its first sample were sample 0 of the dataset: use [`Self::update_at`]).
    pub fn update(
        &mut self,
        section: &dyn Section,
        f: MatrixView<'_>,
        c_next: &Matrix,
        quadrature: Quadrature,
    ) -> Result<()> {
        self.update_at(section, f, 0, c_next, quadrature)
    }

    /// Adds a batch whose first sample is sample `first_sample` of the dataset (the random
    /// sources depend on it, so the estimate does not depend on batching).
    pub fn update_at(
        &mut self,
        section: &dyn Section,
        f: MatrixView<'_>,
        first_sample: usize,
        c_next: &Matrix,
        quadrature: Quadrature,
    ) -> Result<()> {
        let (input, output) = (section.input(), section.output());
        if f.ncols() != self.in_dim || input.width != self.in_dim || f.nrows() % input.positions.max(1) != 0 {
            return Err(Error::shape(
                "JacobianGramAccumulator::update",
                &[input.positions, self.in_dim],
                &[f.nrows(), f.ncols()],
            ));
        }
        if c_next.ncols() != self.directions || c_next.nrows() != output.width {
            return Err(Error::shape(
                "JacobianGramAccumulator::update C_next",
                &[output.width, self.directions],
                &[c_next.nrows(), c_next.ncols()],
            ));
        }
        let points = quadrature.points();
        let scaled: Vec<Matrix> = points.iter().map(|p| f.scaled(p.alpha)).collect();
        let lins = scaled.iter().map(|x| section.linearize(x.view())).collect::<Result<Vec<_>>>()?;
        match self.formula {
            BasisFormula::Jacobian => {
                let n = f.nrows() / input.positions.max(1);
                let cotangents =
                    Cotangents { c_next, n, positions: output.positions, first_sample, sources: self.sources };
                update_jacobian(&mut self.acc, &lins, &points, f.nrows(), &cotangents)
            }
            _ => update_one_minus_alpha_squared(&mut self.acc, section, &lins, &points, f, c_next),
        }
    }

    /// Adds another shard's estimate.
    pub fn merge(&mut self, other: &JacobianGramAccumulator) -> Result<()> {
        if (other.formula, other.in_dim, other.directions, other.out_positions, other.sources)
            != (self.formula, self.in_dim, self.directions, self.out_positions, self.sources)
        {
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
            // One row per sample, input position and cotangent: E over N·P_in·K rows, M' needs
            // the sum over the K = P_out · directions cotangents (or the K sources, each scaled
            // by 1/√(number of sources)).
            BasisFormula::Jacobian => {
                let blocks = match self.sources {
                    Some(s) => s.blocks(self.out_positions, self.directions),
                    None => self.directions * self.out_positions,
                };
                (second.scaled_by(blocks as f64), None)
            }
            _ => (Matrix::from_fn(d, d, |i, j| second[(i, j)]), Some(Matrix::from_fn(d, d, |i, j| second[(i, j + d)]))),
        })
    }
}

/// `M'`, dense or as `Gᵀ Â G` with a small core `Â`: the closed form is low-rank
/// (`d_out + 1 ≪ d_in` for wide inputs), and `R⁺ M' R⁺ᵀ = (G R⁺ᵀ)ᵀ Â (G R⁺ᵀ)` then costs
/// a fraction of the dense product.
pub(crate) enum JacobianGram<'a> {
    /// `M'` itself, `[d_in, d_in]`.
    Dense(Matrix),
    /// `M' = Gᵀ Â G` with `G` `[r, d_in]` and `Â` `[r, r]`.
    Factored { g: Factor<'a>, core: Matrix },
}

impl JacobianGram<'_> {
    /// `P M' Pᵀ`.
    pub(crate) fn project(&self, p: &Matrix) -> Result<Matrix> {
        match self {
            JacobianGram::Dense(m) => p.matmul(m)?.matmul(&p.transpose()),
            JacobianGram::Factored { g, core } => {
                let gp = g.times_transposed(p);
                gp.transpose().matmul(core)?.matmul(&gp)
            }
        }
    }
}

/// The `G` of a factored `M'`, read from the layer's folded weight `W` without copying it (a
/// `d_out × d_in` copy is a fresh matrix, whose page faults cost more than the closed form's
/// arithmetic): the rows `[I]` (a residual block's skip path, `d_in` rows), then `W`, then
/// `e_cᵀ` (the constant input coordinate, when the layer carries the constant).
pub(crate) struct Factor<'a> {
    identity: bool,
    w: &'a Matrix,
    constant: bool,
}

impl Factor<'_> {
    /// Rows of `G`.
    pub(crate) fn nrows(&self) -> usize {
        let d_in = self.w.ncols();
        usize::from(self.identity) * d_in + self.w.nrows() + usize::from(self.constant)
    }

    /// `G Xᵀ`, `[rows of G, rows of X]`; `X` has `d_in` columns.
    pub(crate) fn times_transposed(&self, x: &Matrix) -> Matrix {
        let (n, d_in) = (x.nrows(), self.w.ncols());
        let mut out = Matrix::zeros(self.nrows(), n);
        let skip = if self.identity { d_in * n } else { 0 };
        if self.identity {
            for j in 0..n {
                for (i, &v) in x.row(j).iter().enumerate() {
                    out[(i, j)] = v;
                }
            }
        }
        let w_rows = self.w.nrows() * n;
        crate::linalg::gemm(
            &mut out.as_mut_slice()[skip..skip + w_rows],
            self.w.view(),
            false,
            x.view(),
            true,
            1.0,
            false,
        );
        if self.constant {
            let last = out.nrows() - 1;
            for j in 0..n {
                out[(last, j)] = x[(j, d_in - 1)];
            }
        }
        out
    }
}

/// `M' = E_x Σ_i g_i g_iᵀ` for one folded layer `[h, c] ↦ [σ(p), κ(c)]`, `p = W_f f`, with
/// `g_i = Σ_α w_α J(αf)ᵀ C_next[:, i]`, from the moments `s` of `s(x) = Σ_α w_α σ'(α p(x))`:
///
/// `M' = W_fᵀ (Q ⊙ E[ssᵀ]) W_f + K (v e_cᵀ + e_c vᵀ) + K² ‖C_c‖² e_c e_cᵀ`
///
/// with `Q = C_h C_hᵀ`, `v = W_fᵀ (E[s] ⊙ C_h C_cᵀ)`, `K = Σ_α w_α κ'(α)`, `C_h` / `C_c` the
/// hidden rows / constant row of `C_next`, `e_c` the constant input coordinate. Returned as
/// `Gᵀ Â G` with `G = [W_f; e_cᵀ]` and `Â = [[Q ⊙ E[ssᵀ], K(E[s] ⊙ C_h C_cᵀ)], [·ᵀ, K²‖C_c‖²]]`.
///
/// `Â` is formed in one buffer: the lower triangle of `C_next C_nextᵀ` holds `Q`, `C_c C_hᵀ`
/// and `‖C_c‖²`; each entry is then scaled in place (`E[ssᵀ]` read from the accumulator's
/// scatter, no covariance formed).
pub(crate) fn closed_form<'a>(
    layer: &'a FoldedLinear,
    s: &GramAccumulator,
    c_next: &Matrix,
    points: &[QuadraturePoint],
) -> Result<JacobianGram<'a>> {
    let w = layer.folded_weight();
    let d_out = w.nrows();
    let constant = layer.carries_constant();
    let r = d_out + usize::from(constant);
    if s.dim() != d_out || c_next.nrows() < r {
        return Err(Error::shape(
            "closed-form M': derivative moments, C_next rows",
            &[d_out, r],
            &[s.dim(), c_next.nrows()],
        ));
    }
    let s = s.folded()?;
    let mut core = Matrix::zeros(r, r);
    crate::linalg::kernel_lower_add(&mut core, c_next.rows(0..r), 1.0);
    s.scale_by_second_moment_lower(&mut core)?;
    if constant {
        let k: f64 = points.iter().map(|p| p.weight * layer.constant_carrier(p.alpha).1).sum();
        let mean = s.mean();
        for (v, &mu) in core.row_mut(d_out).iter_mut().zip(mean) {
            *v *= k * mu;
        }
        core[(d_out, d_out)] *= k * k;
    }
    crate::linalg::symmetrize_from_lower(&mut core);
    Ok(JacobianGram::Factored { g: Factor { identity: false, w, constant }, core })
}

/// `M'` of a residual block `f ↦ f + σ(f W_fᵀ) R` (see [`crate::nn::ResidualLayer`]), from the
/// moments of `s(x) = Σ_α w_α σ'(α p(x))`, `p = W_f f`: with `g_i = K C_i + W_fᵀ (s ⊙ R C_i)`,
/// `K = Σ_α w_α`,
///
/// `M' = K² CCᵀ + K (CCᵀRᵀ diag(E[s]) W_f + W_fᵀ diag(E[s]) R CCᵀ) + W_fᵀ ((R CCᵀ Rᵀ) ⊙ E[ssᵀ]) W_f`,
///
/// returned as `Gᵀ Â G` with `G = [I; W_f]` and `Â = [[K² CCᵀ, K CCᵀRᵀ diag(E[s])], [K diag(E[s])
/// R CCᵀ, (R CCᵀ Rᵀ) ⊙ E[ssᵀ]]]`.
pub(crate) fn closed_form_residual<'a>(
    block: ResidualLayer<'a>,
    s: &Moments,
    c_next: &Matrix,
    points: &[QuadraturePoint],
) -> Result<JacobianGram<'a>> {
    let w = block.hidden.folded_weight();
    let (h, d) = w.shape();
    if block.readout.shape() != (h, d) || c_next.nrows() != d || s.mean.len() != h {
        return Err(Error::shape(
            "residual block: W_f, R [units, width], C_next rows, derivative moments",
            &[h, d, h, d, d, h],
            &[h, d, block.readout.nrows(), block.readout.ncols(), c_next.nrows(), s.mean.len()],
        ));
    }
    let k: f64 = points.iter().map(|p| p.weight).sum();
    let cc = c_next.matmul(&c_next.transpose())?;
    let rc = block.readout.matmul(c_next)?;
    let x = rc.matmul(&c_next.transpose())?; // R CCᵀ, [h, d]
    let q = rc.matmul(&rc.transpose())?; // R CCᵀ Rᵀ, [h, h]
    let s2 = s.second_moment();
    let core = Matrix::from_fn(d + h, d + h, |i, j| match (i < d, j < d) {
        (true, true) => k * k * cc[(i, j)],
        (true, false) => k * s.mean[j - d] * x[(j - d, i)],
        (false, true) => k * s.mean[i - d] * x[(i - d, j)],
        (false, false) => q[(i - d, j - d)] * s2[(i - d, j - d)],
    });
    Ok(JacobianGram::Factored { g: Factor { identity: true, w, constant: false }, core })
}

/// The cotangents `(t, i)` for `t` in output positions and `i` in `directions` of `c_out`:
/// block `b` of `out` (one per pair, `b = t · dirs + i` over the pairs in `pairs`) holds
/// `C_out[:, i]` at position `t` of every sample and zero elsewhere.
pub(crate) fn basis_cotangents(
    c_out: &Matrix,
    positions: usize,
    n: usize,
    pairs: std::ops::Range<usize>,
    out: &mut Matrix,
) {
    let (width, dirs) = (c_out.nrows(), c_out.ncols());
    let rows = n * positions;
    out.resize(pairs.len() * rows, width);
    if positions > 1 {
        // Only position t of each sample is written below.
        out.fill(0.0);
    }
    for (b, pair) in pairs.enumerate() {
        let (t, i) = (pair / dirs, pair % dirs);
        for x in 0..n {
            let row = out.row_mut(b * rows + x * positions + t);
            for (o, v) in row.iter_mut().enumerate() {
                *v = c_out[(o, i)];
            }
        }
    }
}

/// How many cotangents to apply together so that the products stay near [`VJP_CHUNK_VALUES`].
pub(crate) fn cotangent_group(rows_in: usize, width_in: usize, rows_out: usize, width_out: usize) -> usize {
    let per = (rows_in * width_in).max(rows_out * width_out).max(1);
    (VJP_CHUNK_VALUES / per).max(1)
}

/// The cotangents of a batch: every `(t, i)` (output position, direction of `C_next`), or
/// random sources.
struct Cotangents<'a> {
    c_next: &'a Matrix,
    n: usize,
    positions: usize,
    first_sample: usize,
    sources: Option<StochasticSources>,
}

impl Cotangents<'_> {
    fn blocks(&self) -> usize {
        match self.sources {
            Some(s) => s.blocks(self.positions, self.c_next.ncols()),
            None => self.positions * self.c_next.ncols(),
        }
    }

    fn fill(&self, blocks: std::ops::Range<usize>, out: &mut Matrix) {
        match &self.sources {
            Some(s) => s.cotangents(self.c_next, self.positions, self.n, self.first_sample, blocks, out),
            None => basis_cotangents(self.c_next, self.positions, self.n, blocks, out),
        }
    }
}

/// Adds a batch to the generic `M'` accumulator of the `jacobian` formula: for every cotangent
/// `(t, i)` (or source), the rows `g(x)[s] = Σ_α w_α VJP(αf(x), e_t ⊗ C_next[:, i])[s]`.
fn update_jacobian(
    acc: &mut GramAccumulator,
    lins: &[Box<dyn Linearized + '_>],
    points: &[QuadraturePoint],
    rows_in: usize,
    cotangents: &Cotangents<'_>,
) -> Result<()> {
    let (width_in, rows_out, width_out) = (acc.dim(), cotangents.n * cotangents.positions, cotangents.c_next.nrows());
    let n_pairs = cotangents.blocks();
    let group = cotangent_group(rows_in, width_in, rows_out, width_out);
    let (mut cot, mut g, mut gx) = (ScratchMatrix::take(), ScratchMatrix::take(), ScratchMatrix::take());
    for start in (0..n_pairs).step_by(group) {
        let pairs = start..(start + group).min(n_pairs);
        cotangents.fill(pairs.clone(), &mut cot);
        if let ([point], [lin]) = (points, lins) {
            // One point (plain gradients): the VJP is the row block itself.
            lin.vjp(cot.view(), &mut g)?;
            if point.weight != 1.0 {
                g.as_mut_slice().iter_mut().for_each(|v| *v *= point.weight);
            }
        } else {
            g.resize(pairs.len() * rows_in, width_in);
            g.fill(0.0);
            for (p, lin) in points.iter().zip(lins) {
                lin.vjp(cot.view(), &mut gx)?;
                g.add_scaled(p.weight, &gx);
            }
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
    section: &dyn Section,
    lins: &[Box<dyn Linearized + '_>],
    points: &[QuadraturePoint],
    f: MatrixView<'_>,
    c_next: &Matrix,
) -> Result<()> {
    let (n, d) = f.shape();
    let q = c_next.matmul(&c_next.transpose())?;
    let (mut full, mut gx) = (Matrix::default(), Matrix::default());
    section.forward(f, &mut full)?;
    let mut g = Matrix::zeros(n, d);
    for (p, lin) in points.iter().zip(lins) {
        let y = lin.output();
        let diff = Matrix::from_fn(y.nrows(), y.ncols(), |r, c| 2.0 * (full[(r, c)] - y[(r, c)]));
        let grad_out = diff.matmul(&q)?;
        lin.vjp(grad_out.view(), &mut gx)?;
        g.add_scaled(p.weight, &gx);
    }
    let rows = Matrix::from_fn(n, 2 * d, |r, j| if j < d { g[(r, j)] } else { f[(r, j - d)] });
    acc.update(rows.view())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `G Xᵀ` of every shape of factor equals the product with `G` written out densely.
    #[test]
    fn factor_times_transposed_equals_the_dense_product() {
        let w = Matrix::from_fn(3, 5, |i, j| (i * 5 + j) as f64 - 6.5);
        let x = Matrix::from_fn(4, 5, |i, j| ((i * 3 + j * 2) % 7) as f64 / 2.0 - 1.0);
        for (identity, constant) in [(false, false), (false, true), (true, false)] {
            let factor = Factor { identity, w: &w, constant };
            let mut rows: Vec<Vec<f64>> = Vec::new();
            if identity {
                rows.extend((0..5).map(|i| (0..5).map(|j| f64::from(u8::from(i == j))).collect()));
            }
            rows.extend((0..3).map(|i| w.row(i).to_vec()));
            if constant {
                rows.push((0..5).map(|j| f64::from(u8::from(j == 4))).collect());
            }
            let g = Matrix::from_fn(rows.len(), 5, |i, j| rows[i][j]);
            assert_eq!(factor.nrows(), g.nrows());
            let expected = g.matmul(&x.transpose()).unwrap();
            let got = factor.times_transposed(&x);
            assert_eq!(got.shape(), expected.shape());
            for (a, b) in got.as_slice().iter().zip(expected.as_slice()) {
                assert!((a - b).abs() < 1e-12, "identity {identity}, constant {constant}: {a} vs {b}");
            }
        }
    }
}
