//! Which edges an edge ablation keeps.

use crate::error::{Error, Result};
use crate::matrix::Matrix;
use serde::{Deserialize, Serialize};

/// The edges kept between the directions of two node layers: entry `(i, j)` is the edge from
/// input direction `j` to output direction `i` (the layout of `Edges::e_hat`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeMask {
    rows: usize,
    cols: usize,
    keep: Vec<bool>,
    free_column: bool,
    n_kept: usize,
    n_countable: usize,
}

impl EdgeMask {
    /// The reference's top-`k` rule on an edge matrix `e_hat` (`[dim out, dim in]`):
    ///
    /// - with `free_column` (the input basis is centred, column 0 is its constant direction),
    ///   column 0 is always kept and does not count;
    /// - `k = 0` keeps no other edge; `k ≥` the number of countable edges keeps all;
    /// - otherwise the threshold is the `k`-th largest countable value and every countable entry
    ///   `≥` it is kept, so ties can keep more than `k` (never fewer).
    ///
    /// ```
    /// use degeneracy::{Matrix, ablation::EdgeMask};
    /// let e = Matrix::from_rows(&[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]])?;
    /// let m = EdgeMask::top_k(&e, 2, true)?;
    /// assert!(m.is_kept(0, 0) && m.is_kept(2, 1) && m.is_kept(2, 2) && !m.is_kept(1, 2));
    /// assert_eq!((m.n_kept(), m.n_countable()), (2, 6));
    /// # Ok::<(), degeneracy::Error>(())
    /// ```
    pub fn top_k(e_hat: &Matrix, k: usize, free_column: bool) -> Result<Self> {
        e_hat.check_finite("edge matrix")?;
        let (rows, cols) = e_hat.shape();
        if free_column && cols == 0 {
            return Err(Error::invalid("free constant column", true, "the edge matrix has no column"));
        }
        let skip = usize::from(free_column);
        let countable = |j: usize| j >= skip;
        let n_countable = rows * (cols - skip);
        let threshold = if k == 0 {
            f64::INFINITY
        } else if k >= n_countable {
            f64::NEG_INFINITY
        } else {
            let mut values: Vec<f64> =
                (0..rows).flat_map(|i| (skip..cols).map(move |j| (i, j))).map(|(i, j)| e_hat[(i, j)]).collect();
            values.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            values[k - 1]
        };
        let mut keep = vec![false; rows * cols];
        let mut n_kept = 0;
        for i in 0..rows {
            for j in 0..cols {
                let kept = !countable(j) || (k > 0 && e_hat[(i, j)] >= threshold);
                keep[i * cols + j] = kept;
                n_kept += usize::from(kept && countable(j));
            }
        }
        Ok(EdgeMask { rows, cols, keep, free_column, n_kept, n_countable })
    }

    /// Whether the edge from input direction `j` to output direction `i` is kept.
    ///
    /// # Panics
    /// If `(i, j)` is outside [`EdgeMask::shape`], as matrix indexing does.
    pub fn is_kept(&self, i: usize, j: usize) -> bool {
        self.keep[i * self.cols + j]
    }

    /// Row `i` (the input directions output direction `i` sees).
    ///
    /// # Panics
    /// If `i` is not below the number of rows.
    pub fn row(&self, i: usize) -> &[bool] {
        &self.keep[i * self.cols..(i + 1) * self.cols]
    }

    /// `(dim out, dim in)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Kept edges that count (the free constant column excluded): `≥ k`, more only on ties.
    pub fn n_kept(&self) -> usize {
        self.n_kept
    }

    /// Edges that count (all but the free constant column).
    pub fn n_countable(&self) -> usize {
        self.n_countable
    }

    /// Whether column 0 is kept for free.
    pub fn free_column(&self) -> bool {
        self.free_column
    }

    /// Whether every edge is kept (the ablation is then the identity).
    pub fn keeps_all(&self) -> bool {
        self.n_kept == self.n_countable
    }

    /// The mask as rows of booleans (for JSON).
    pub fn to_rows(&self) -> Vec<Vec<bool>> {
        (0..self.rows).map(|i| self.row(i).to_vec()).collect()
    }
}
