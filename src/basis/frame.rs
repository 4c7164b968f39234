//! Steps 1–3 of the basis algorithm: the (optionally centred) Gram matrix of a node layer,
//! its eigendecomposition, truncation, and the whitening maps `R`, `R⁺`.

use crate::error::{Error, Result};
use crate::estimate::Moments;
use crate::linalg::symmetric_eigen;
use crate::matrix::Matrix;

/// The PCA frame of one node layer (row-vector convention: coordinates are `f · W`).
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    /// Every Gram eigenvalue, absolute, descending (the reference's `gram_eigvals`).
    pub gram_eigenvalues: Vec<f64>,
    /// Kept eigenvalues `D`, in `U` column order (the constant direction first when centred).
    pub kept: Vec<f64>,
    /// `W = Y U`, shape `[orig, kept]`: centre (if `Y` is not the identity), then rotate.
    pub w: Matrix,
    /// `W⁺ = Uᵀ Y⁻¹`, shape `[kept, orig]`.
    pub w_pinv: Matrix,
    /// Whether column 0 is the constant (bias) direction.
    pub has_constant: bool,
}

impl Frame {
    /// `R = W D^{-1/2}`.
    pub fn r(&self) -> Matrix {
        Matrix::from_fn(self.w.nrows(), self.w.ncols(), |i, j| self.w[(i, j)] / self.kept[j].sqrt())
    }

    /// `R⁺ = D^{1/2} W⁺`.
    pub fn r_pinv(&self) -> Matrix {
        Matrix::from_fn(self.w_pinv.nrows(), self.w_pinv.ncols(), |i, j| self.w_pinv[(i, j)] * self.kept[i].sqrt())
    }
}

/// Builds the frame from the moments of a node's activations (folded: the constant coordinate
/// last, exactly 1).
///
/// `folded`: the node's activations carry the constant coordinate (last). With `center` and a
/// folded node, the Gram is `blockdiag(Cov, 1)`: its constant direction is known exactly, so it
/// is placed first without searching for it (the reference searches the eigenvectors for it,
/// which is ambiguous when a covariance eigenvalue equals 1). Without a constant coordinate,
/// centring uses the covariance and no shift (`Y = I`).
pub(crate) fn frame(folded_moments: &Moments, folded: bool, center: bool, threshold: f64, node: &str) -> Result<Frame> {
    let hidden = if folded { folded_moments.without_constant() } else { folded_moments.clone() };
    let moments = &hidden;
    let d = moments.mean.len();
    let has_constant = folded && center;
    let (values, vectors) = if has_constant {
        let (vals, vecs) = sorted_abs_eigen(&moments.covariance)?;
        // U = blockdiag over (hidden rows, constant row) with the constant direction first.
        let u = Matrix::from_fn(d + 1, d + 1, |i, j| match (i == d, j == 0) {
            (true, true) => 1.0,
            (false, false) => vecs[(i, j - 1)],
            _ => 0.0,
        });
        (std::iter::once(1.0).chain(vals).collect::<Vec<_>>(), u)
    } else if folded {
        sorted_abs_eigen(&folded_moments.second_moment())?
    } else if center {
        sorted_abs_eigen(&moments.covariance)?
    } else {
        sorted_abs_eigen(&moments.second_moment())?
    };
    let mut gram_eigenvalues = values.clone();
    gram_eigenvalues.sort_by(|a, b| b.total_cmp(a));

    let keep: Vec<usize> = (0..values.len()).filter(|&j| values[j] > threshold).collect();
    if keep.is_empty() {
        return Err(Error::RankZero { node: node.to_string(), matrix: "gram", threshold });
    }
    let u = vectors.select_columns(&keep);
    let kept: Vec<f64> = keep.iter().map(|&j| values[j]).collect();
    let (w, w_pinv) =
        if has_constant {
            // Y is the identity with last row [−μ, 1] (f·Y = [h − μ, 1]) and Y⁻¹ has last row
            // [μ, 1], so W = Y U and W⁺ = Uᵀ Y⁻¹ only change U's last row / add to Uᵀ's columns.
            let (mu, last) = (&moments.mean, d);
            let w = Matrix::from_fn(d + 1, u.ncols(), |i, j| {
                if i < last { u[(i, j)] } else { u[(last, j)] - (0..last).map(|r| mu[r] * u[(r, j)]).sum::<f64>() }
            });
            let w_pinv = Matrix::from_fn(u.ncols(), d + 1, |j, c| {
                if c < last { u[(c, j)] + u[(last, j)] * mu[c] } else { u[(last, j)] }
            });
            (w, w_pinv)
        } else {
            let ut = u.transpose();
            (u, ut)
        };
    Ok(Frame { gram_eigenvalues, kept, w, w_pinv, has_constant })
}

/// Eigenpairs with `|λ|`, sorted by `|λ|` descending (stable, so equal values keep faer's order).
pub(crate) fn sorted_abs_eigen(m: &Matrix) -> Result<(Vec<f64>, Matrix)> {
    let (vals, vecs) = symmetric_eigen(m)?;
    let mut order: Vec<usize> = (0..vals.len()).collect();
    order.sort_by(|&a, &b| vals[b].abs().total_cmp(&vals[a].abs()));
    Ok((order.iter().map(|&k| vals[k].abs()).collect(), vecs.select_columns(&order)))
}
