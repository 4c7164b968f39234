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
    moments: Moments,
    folded: bool,
    center: bool,
    isolated: usize,
    threshold: f64,
    node: &str,
) -> Result<Frame> {
    let d = moments.mean.len() - usize::from(folded);
    if isolated > d {
        return Err(Error::invalid(
            format!("isolated coordinates of node {node}"),
            isolated,
            format!("the node has {d} coordinates besides the constant"),
        ));
    }
    let has_constant = folded && center;
    // Centred with a constant coordinate: the covariance of the hidden coordinates, and the
    // constant direction (eigenvalue 1) placed first. Otherwise the Gram as it is (uncentred
    // with a folded constant, or centred / uncentred without one).
    let (moments, (values, vectors)) = if has_constant {
        let hidden = moments.into_without_constant();
        let eigen = gram_eigen(&hidden, true, isolated, threshold)?;
        (hidden, eigen)
    } else {
        let eigen = gram_eigen(&moments, center, isolated, threshold)?;
        (moments, eigen)
    };
    let first = usize::from(has_constant);
    let values: Vec<f64> = if has_constant { std::iter::once(1.0).chain(values).collect() } else { values };
    let mut gram_eigenvalues = values.clone();
    gram_eigenvalues.sort_by(|a, b| b.total_cmp(a));

    // Values beyond the vectors' columns are the kernel side's exact zeros, never kept.
    let keep: Vec<usize> = (0..first + vectors.ncols()).filter(|&j| values[j] > threshold).collect();
    if keep.is_empty() {
        return Err(Error::RankZero { node: node.to_string(), matrix: "gram", threshold });
    }
    // Isolated directions sit at 0..isolated after the constant one; a dropped one (a Gram
    // diagonal at or below the threshold) is simply not held apart.
    let isolated = keep.iter().filter(|&&j| j >= first && j < first + isolated).count();
    let kept: Vec<f64> = keep.iter().map(|&j| values[j]).collect();
    let columns: Vec<usize> = keep.iter().filter(|&&j| j >= first).map(|&j| j - first).collect();
    // The kernel side returns the kept vectors only: then every column is kept, in order.
    let all = columns.iter().enumerate().all(|(i, &c)| i == c) && columns.len() == vectors.ncols();
    let u = if all { vectors } else { vectors.select_columns(&columns) };
    let ut = u.transpose();
    let (w, w_pinv) = if has_constant {
        // U = blockdiag(U_h, 1) with the constant direction first. Y is the identity with
        // last row [−μ, 1] (f·Y = [h − μ, 1]) and Y⁻¹ has last row [μ, 1], so W = Y U only
        // gains the last row [1, −μᵀU_h] and W⁺ = Uᵀ Y⁻¹ the first row [μ, 1].
        let mu = &moments.mean;
        // μᵀU_h row by row (per column the same order of additions as a column walk).
        let mut shift = vec![-0.0_f64; u.ncols()];
        for (r, &m) in mu.iter().enumerate() {
            for (acc, v) in shift.iter_mut().zip(u.row(r)) {
                *acc += m * v;
            }
        }
        let w = Matrix::from_fn(d + 1, u.ncols() + 1, |i, j| match (i == d, j) {
            (true, 0) => 1.0,
            (false, 0) => 0.0,
            (true, j) => -shift[j - 1],
            (false, j) => u[(i, j - 1)],
        });
        let w_pinv = Matrix::from_fn(u.ncols() + 1, d + 1, |j, c| match (j, c == d) {
            (0, true) => 1.0,
            (0, false) => mu[c],
            (_, true) => 0.0,
            (j, false) => ut[(j - 1, c)],
        });
        (w, w_pinv)
    } else {
        (u, ut)
    };
    Ok(Frame { gram_eigenvalues, kept, w, w_pinv, has_constant, isolated })
}

/// The eigenpairs of a node's Gram — the covariance of `m` if `centred`, else its uncentred
/// second moment — with the first `isolated` coordinates held apart ([`masked_abs_eigen`]):
/// every value, `|λ|` descending, and the vectors of at least every value above `threshold`.
///
/// When the moments come from fewer rows than the width decomposed (`Moments::rows`), the
/// Gram `AᵀA / n` of the (centred) rows `A` has rank ≤ n: its non-zero eigenpairs come from the
/// `n × n` kernel `A Aᵀ / n` ([`kernel_abs_eigen`], `docs/math.md` §3.5) and the other values are
/// exactly 0, with no vectors (no positive threshold keeps them).
pub(crate) fn gram_eigen(m: &Moments, centred: bool, isolated: usize, threshold: f64) -> Result<(Vec<f64>, Matrix)> {
    let width = m.mean.len();
    if let Some(rows) = m.rows.as_ref().filter(|r| r.nrows() < width - isolated)
        && let Some((sub_values, sub_vectors)) =
            kernel_abs_eigen(&gram_rows(rows, &m.mean, centred, isolated), threshold)?
    {
        if isolated == 0 {
            return Ok((sub_values, sub_vectors));
        }
        // The isolated coordinates' values are the Gram's diagonal, as in the dense path.
        let n = rows.nrows() as f64;
        let shift = |i: usize| if centred { m.mean[i] } else { 0.0 };
        let diagonal =
            (0..isolated).map(|i| (0..rows.nrows()).map(|r| (rows[(r, i)] - shift(i)).powi(2)).sum::<f64>() / n);
        let cols = isolated + sub_vectors.ncols();
        let vectors = Matrix::from_fn(width, cols, |i, j| match (i < isolated, j < isolated) {
            (true, true) => f64::from(u8::from(i == j)),
            (false, false) => sub_vectors[(i - isolated, j - isolated)],
            _ => 0.0,
        });
        return Ok((diagonal.chain(sub_values).collect(), vectors));
    }
    let m = m.with_covariance()?;
    let gram = if centred { m.covariance.clone() } else { m.second_moment() };
    masked_abs_eigen(&gram, isolated)
}

/// Every eigenvalue of a node's Gram (`|λ|`, descending), without vectors: from the `n × n`
/// kernel when the moments hold their `n` rows and `n` is below the width (the other values
/// exactly 0), else from the `d × d` matrix.
pub(crate) fn gram_spectrum(m: &Moments, centred: bool) -> Result<Vec<f64>> {
    let width = m.mean.len();
    let mut values = match m.rows.as_ref().filter(|r| r.nrows() < width) {
        Some(rows) => {
            let a = gram_rows(rows, &m.mean, centred, 0);
            let mut values = crate::linalg::symmetric_eigenvalues(&kernel(&a))?;
            values.resize(width, 0.0);
            values
        }
        None => {
            let m = m.with_covariance()?;
            crate::linalg::symmetric_eigenvalues(&if centred { m.covariance.clone() } else { m.second_moment() })?
        }
    };
    values.iter_mut().for_each(|v| *v = v.abs());
    values.sort_by(|a, b| b.total_cmp(a));
    Ok(values)
}

/// The rows `A` whose `AᵀA / n` is the Gram: the columns from `skip` on, centred on `mean` if
/// `centred`.
fn gram_rows(rows: &Matrix, mean: &[f64], centred: bool, skip: usize) -> Matrix {
    Matrix::from_fn(rows.nrows(), rows.ncols() - skip, |i, j| {
        rows[(i, j + skip)] - if centred { mean[j + skip] } else { 0.0 }
    })
}

/// `A Aᵀ / n` for rows `A` (`n × m`).
fn kernel(a: &Matrix) -> Matrix {
    let n = a.nrows();
    let mut k = Matrix::zeros(n, n);
    crate::linalg::kernel_lower_add(&mut k, a.view(), 1.0 / n as f64);
    crate::linalg::symmetrize_from_lower(&mut k);
    k
}

/// The eigenpairs of `G = AᵀA / n` for `n` rows `A` (`n × m`, `n < m`) from the kernel
/// `K = A Aᵀ / n`: `K q = σ q` gives `G u = σ u` with `u = Aᵀ q / ‖Aᵀ q‖` (`‖Aᵀ q‖² = nσ`).
/// Returns all `m` values (`|σ|` descending, then `m − n` zeros) and the vectors of the values
/// above `threshold`. Vectors built this way lose orthogonality in proportion to
/// `ε σ_max / √(σ_i σ_j)`, which the frame's `W⁺ = Uᵀ` would amplify, so they are made
/// orthonormal by a Cholesky QR in order of decreasing σ (the leading, accurate ones move
/// least; every change stays within the eigenvectors' own rounding). `None` when that fails
/// (kept values so close to zero that their vectors are dependent): the caller then uses the
/// dense `m × m` matrix.
fn kernel_abs_eigen(a: &Matrix, threshold: f64) -> Result<Option<(Vec<f64>, Matrix)>> {
    let (n, m) = a.shape();
    let (values, vectors) = symmetric_eigen(&kernel(a))?;
    let order = abs_descending(&values);
    let sigma: Vec<f64> = order.iter().map(|&k| values[k].abs()).collect();
    let r = sigma.iter().take_while(|&&v| v > threshold).count();
    let q_kept = Matrix::from_fn(n, r, |i, j| vectors[(i, order[j])]);
    let mut u = Matrix::zeros(m, r);
    crate::linalg::gemm(u.as_mut_slice(), a.view(), true, q_kept.view(), false, 1.0, false);
    // Column norms accumulated row by row (the same order of additions as a column walk,
    // without striding through u a row length at a time).
    let mut norms = vec![-0.0_f64; r];
    for i in 0..m {
        for (acc, v) in norms.iter_mut().zip(u.row(i)) {
            *acc += v * v;
        }
    }
    norms.iter_mut().for_each(|v| *v = v.sqrt());
    if norms.iter().any(|&v| v <= 0.0 || v.is_nan()) {
        return Ok(None);
    }
    for i in 0..m {
        for (v, norm) in u.row_mut(i).iter_mut().zip(&norms) {
            *v /= norm;
        }
    }
    if !crate::linalg::orthonormalize_columns(&mut u) {
        return Ok(None);
    }
    let mut values = sigma;
    values.resize(m.max(n), 0.0);
    values.truncate(m);
    Ok(Some((values, u)))
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
    let order = abs_descending(&vals);
    Ok((order.iter().map(|&k| vals[k].abs()).collect(), vecs.select_columns(&order)))
}

/// The indices of `values` by `|λ|` descending (stable).
fn abs_descending(values: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].abs().total_cmp(&values[a].abs()));
    order
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
        let f = frame(m.clone(), true, true, 1, 1e-12, "planted").unwrap();
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
        let plain = frame(m.clone(), true, true, 0, 1e-12, "planted").unwrap();
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
        let f = frame(acc.finish().unwrap(), true, true, 1, 1e-12, "dead").unwrap();
        assert_eq!(f.isolated, 0);
        assert_eq!(f.kept.len(), 3);
        assert!(frame(acc.finish().unwrap(), true, true, 4, 1e-12, "too many").is_err());
    }

    /// Folded rows `[x, 1]` of width `d + 1` with `n < d` and spectra over several decades.
    fn wide_rows(n: usize, d: usize) -> Matrix {
        Matrix::from_fn(n, d + 1, |i, j| {
            if j == d {
                return 1.0;
            }
            (0..n.min(6))
                .map(|t| {
                    let scale = 10f64.powi(1 - t as i32);
                    scale * ((i * 7 + t * 13 + 1) as f64 * 0.37 + (j * (t + 2)) as f64 * 0.71).sin()
                })
                .sum::<f64>()
                + 0.3 * (j as f64)
        })
    }

    fn moments_of(x: &Matrix) -> (Moments, Moments) {
        let mut acc = GramAccumulator::new(x.ncols());
        acc.update(x.view()).unwrap();
        // The bases' moments: rows kept, the d × d covariance not formed.
        let kernel = acc.finish_rows().unwrap();
        assert!(kernel.rows.is_some(), "fewer rows than the width keep the rows");
        assert_eq!(kernel.covariance.nrows(), 0);
        let with_covariance = kernel.with_covariance().unwrap();
        assert_eq!(*with_covariance, acc.finish().unwrap(), "the covariance formed on demand is finish()'s");
        let dense = acc.to_dense().unwrap().finish().unwrap();
        assert!(dense.rows.is_none());
        (kernel, dense)
    }

    fn assert_same_frame(a: &Frame, b: &Frame, what: &str) {
        assert_eq!(a.gram_eigenvalues.len(), b.gram_eigenvalues.len(), "{what}: spectrum length");
        let top = b.gram_eigenvalues[0];
        for (x, y) in a.gram_eigenvalues.iter().zip(&b.gram_eigenvalues) {
            if *y >= 1e-8 * top {
                assert!((x - y).abs() <= 1e-10 * y, "{what}: eigenvalue {x} vs {y}");
            } else {
                assert!(*x <= 1e-8 * top, "{what}: eigenvalue {x} vs {y}");
            }
        }
        assert_eq!((a.kept.len(), a.has_constant, a.isolated), (b.kept.len(), b.has_constant, b.isolated), "{what}");
        let scale = b.w.max_abs();
        for j in 0..a.kept.len() {
            assert!((a.kept[j] - b.kept[j]).abs() <= 1e-10 * b.kept[0].max(b.kept[j]), "{what}: D[{j}]");
            let gap = b
                .kept
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != j)
                .map(|(_, v)| (v - b.kept[j]).abs())
                .fold(f64::MAX, f64::min);
            if gap <= 1e-6 * b.kept[j] {
                continue;
            }
            let (ca, cb) = (a.w.col(j), b.w.col(j));
            let sign = ca.iter().zip(&cb).map(|(x, y)| x * y).sum::<f64>().signum();
            let e = ca.iter().zip(&cb).fold(0.0_f64, |m, (x, y)| m.max((sign * x - y).abs())) / scale;
            assert!(e < 1e-9, "{what}: column {j} of W {e:e}");
        }
        let (pa, pb) = (a.w.matmul(&a.w_pinv).unwrap(), b.w.matmul(&b.w_pinv).unwrap());
        let e = pa.as_slice().iter().zip(pb.as_slice()).fold(0.0_f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(e < 1e-9 * pb.max_abs(), "{what}: W W⁺ {e:e}");
        for f in [a, b] {
            let id = f.w_pinv.matmul(&f.w).unwrap();
            let e = (0..id.nrows())
                .flat_map(|i| (0..id.ncols()).map(move |j| (i, j)))
                .fold(0.0_f64, |m, (i, j)| m.max((id[(i, j)] - f64::from(u8::from(i == j))).abs()));
            assert!(e < 1e-12, "{what}: W⁺ W − I {e:e}");
        }
    }

    #[test]
    fn the_kernel_side_equals_the_dense_frame_in_every_case() {
        for (n, d) in [(7, 12), (3, 40), (11, 12)] {
            let (kernel, dense) = moments_of(&wide_rows(n, d));
            for (folded, center) in [(true, true), (true, false), (false, true), (false, false)] {
                for isolated in [0, 1, 2] {
                    let what = format!("n {n}, d {d}, folded {folded}, centred {center}, isolated {isolated}");
                    let a = frame(kernel.clone(), folded, center, isolated, 1e-10, "planted").unwrap();
                    let b = frame(dense.clone(), folded, center, isolated, 1e-10, "planted").unwrap();
                    // Rank ≤ n (≤ n − 1 centred), plus the constant and the isolated directions.
                    assert!(a.kept.len() <= n + 1 + isolated, "{what}: {} kept", a.kept.len());
                    // The kernel side was taken: the values beyond its rank are exact zeros.
                    let zeros = a.gram_eigenvalues.iter().filter(|&&v| v == 0.0).count();
                    assert!(zeros + n + 1 + isolated >= d, "{what}: {zeros} exact zeros");
                    assert_same_frame(&a, &b, &what);
                }
            }
        }
    }

    #[test]
    fn the_kernel_spectrum_pads_with_zeros() {
        let (kernel, dense) = moments_of(&wide_rows(5, 30));
        for centred in [true, false] {
            let (a, b) = (gram_spectrum(&kernel, centred).unwrap(), gram_spectrum(&dense, centred).unwrap());
            assert_eq!(a.len(), 31);
            assert!(a[5..].iter().all(|&v| v == 0.0 || v < 1e-13 * a[0]), "{a:?}");
            for (x, y) in a.iter().zip(&b).filter(|&(_, y)| *y >= 1e-8 * b[0]) {
                assert!((x - y).abs() <= 1e-10 * y, "{x} vs {y}");
            }
        }
    }
}
