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
    /// How many kept columns after the constant one are isolated coordinates
    /// ([`crate::nn::NodeLayer::isolated`]): the interaction step leaves them unrotated.
    pub isolated: usize,
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
///
/// `isolated`: the first `isolated` coordinates are each their own eigenvector, with their
/// diagonal Gram entry as eigenvalue, and the rest of the Gram is decomposed without them
/// (rib's `masked_eigendecompose` for `isolate_ln_var`); they come right after the constant
/// direction.
pub(crate) fn frame(
    folded_moments: &Moments,
    folded: bool,
    center: bool,
    isolated: usize,
    threshold: f64,
    node: &str,
) -> Result<Frame> {
    let hidden = if folded { folded_moments.without_constant() } else { folded_moments.clone() };
    let moments = &hidden;
    let d = moments.mean.len();
    if isolated > d {
        return Err(Error::invalid(
            format!("isolated coordinates of node {node}"),
            isolated,
            format!("the node has {d} coordinates besides the constant"),
        ));
    }
    let has_constant = folded && center;
    let (values, vectors) = if has_constant {
        let (vals, vecs) = masked_abs_eigen(&moments.covariance, isolated)?;
        // U = blockdiag over (hidden rows, constant row) with the constant direction first.
        let u = Matrix::from_fn(d + 1, d + 1, |i, j| match (i == d, j == 0) {
            (true, true) => 1.0,
            (false, false) => vecs[(i, j - 1)],
            _ => 0.0,
        });
        (std::iter::once(1.0).chain(vals).collect::<Vec<_>>(), u)
    } else if folded {
        masked_abs_eigen(&folded_moments.second_moment(), isolated)?
    } else if center {
        masked_abs_eigen(&moments.covariance, isolated)?
    } else {
        masked_abs_eigen(&moments.second_moment(), isolated)?
    };
    let mut gram_eigenvalues = values.clone();
    gram_eigenvalues.sort_by(|a, b| b.total_cmp(a));

    let keep: Vec<usize> = (0..values.len()).filter(|&j| values[j] > threshold).collect();
    if keep.is_empty() {
        return Err(Error::RankZero { node: node.to_string(), matrix: "gram", threshold });
    }
    // Isolated directions sit at 0..isolated after the constant one; a dropped one (a Gram
    // diagonal at or below the threshold) is simply not held apart.
    let first = usize::from(has_constant);
    let isolated = keep.iter().filter(|&&j| j >= first && j < first + isolated).count();
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
    Ok(Frame { gram_eigenvalues, kept, w, w_pinv, has_constant, isolated })
}

/// [`sorted_abs_eigen`] with the first `isolated` coordinates held apart: each is its own
/// eigenvector (eigenvalue: its diagonal entry), the rest of `m` is decomposed on its own.
pub(crate) fn masked_abs_eigen(m: &Matrix, isolated: usize) -> Result<(Vec<f64>, Matrix)> {
    if isolated == 0 {
        return sorted_abs_eigen(m);
    }
    let n = m.nrows();
    let sub = Matrix::from_fn(n - isolated, n - isolated, |i, j| m[(i + isolated, j + isolated)]);
    let (sub_values, sub_vectors) = sorted_abs_eigen(&sub)?;
    let values = (0..isolated).map(|i| m[(i, i)].abs()).chain(sub_values).collect();
    let vectors = Matrix::from_fn(n, n, |i, j| match (i < isolated, j < isolated) {
        (true, true) => f64::from(u8::from(i == j)),
        (false, false) => sub_vectors[(i - isolated, j - isolated)],
        _ => 0.0,
    });
    Ok((values, vectors))
}

/// Eigenpairs with `|λ|`, sorted by `|λ|` descending (stable, so equal values keep faer's order).
pub(crate) fn sorted_abs_eigen(m: &Matrix) -> Result<(Vec<f64>, Matrix)> {
    let (vals, vecs) = symmetric_eigen(m)?;
    let mut order: Vec<usize> = (0..vals.len()).collect();
    order.sort_by(|&a, &b| vals[b].abs().total_cmp(&vals[a].abs()));
    Ok((order.iter().map(|&k| vals[k].abs()).collect(), vecs.select_columns(&order)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimate::GramAccumulator;

    /// Folded rows `[v, a, b, c, 1]` with `v` correlated to the rest (a planted LayerNorm
    /// variance coordinate).
    fn planted(n: usize) -> Moments {
        let x = Matrix::from_fn(n, 5, |i, j| {
            let t = i as f64 * 0.37;
            match j {
                0 => 2.0 + t.sin() + 0.5 * (1.3 * t).cos(),
                1 => t.sin() - 0.2 * (2.1 * t).sin(),
                2 => (1.3 * t).cos() + 0.1 * t.cos(),
                3 => (0.7 * t).sin() * 3.0,
                _ => 1.0,
            }
        });
        let mut acc = GramAccumulator::new(5);
        acc.update(x.view()).unwrap();
        acc.finish().unwrap()
    }

    #[test]
    fn an_isolated_coordinate_is_its_own_direction_after_the_constant() {
        let m = planted(200);
        let f = frame(&m, true, true, 1, 1e-12, "planted").unwrap();
        let cov = m.without_constant().covariance;
        assert!(cov[(0, 1)].abs() > 0.1, "the planted coordinate is correlated with the others");
        assert_eq!((f.has_constant, f.isolated), (true, 1));
        // Column 1 is e_0 centred: W[:, 1] = Y e_0 = e_0 − μ₀ e_c, with eigenvalue Cov₀₀.
        assert_eq!(f.kept[1], cov[(0, 0)]);
        let mu0 = m.mean[0];
        for i in 0..5 {
            let expected = match i {
                0 => 1.0,
                4 => -mu0,
                _ => 0.0,
            };
            assert!((f.w[(i, 1)] - expected).abs() < 1e-15, "W[{i}, 1] = {}", f.w[(i, 1)]);
        }
        // The remaining columns are eigenvectors of Cov[1.., 1..] and do not touch coordinate 0.
        for j in 2..f.kept.len() {
            assert_eq!(f.w[(0, j)], 0.0);
            for r in 1..4 {
                let mv: f64 = (1..4).map(|c| cov[(r, c)] * f.w[(c, j)]).sum();
                assert!((mv - f.kept[j] * f.w[(r, j)]).abs() < 1e-12, "column {j}, row {r}");
            }
        }
        // W⁺ W = I on the kept directions.
        let id = f.w_pinv.matmul(&f.w).unwrap();
        assert!(
            crate::matrix::Matrix::identity(id.nrows())
                .as_slice()
                .iter()
                .zip(id.as_slice())
                .all(|(a, b)| (a - b).abs() < 1e-12)
        );
        // Without isolation the same data mixes coordinate 0 into every direction.
        let plain = frame(&m, true, true, 0, 1e-12, "planted").unwrap();
        assert_eq!(plain.isolated, 0);
        assert!((1..plain.kept.len()).all(|j| plain.w[(0, j)].abs() > 1e-6));
    }

    #[test]
    fn a_truncated_isolated_coordinate_is_not_held_apart() {
        // Coordinate 0 constant: its centred variance is 0, below the threshold.
        let x = Matrix::from_fn(50, 4, |i, j| match j {
            0 => 3.0,
            1 => (i as f64).sin(),
            2 => (i as f64 * 0.3).cos(),
            _ => 1.0,
        });
        let mut acc = GramAccumulator::new(4);
        acc.update(x.view()).unwrap();
        let f = frame(&acc.finish().unwrap(), true, true, 1, 1e-12, "dead").unwrap();
        assert_eq!(f.isolated, 0);
        assert_eq!(f.kept.len(), 3);
        assert!(frame(&acc.finish().unwrap(), true, true, 4, 1e-12, "too many").is_err());
    }
}
