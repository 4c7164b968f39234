//! Dense row-major `f64` matrices: the currency of the public API.
//!
//! A batch is a matrix with one **row per sample**. The crate owns this small type instead of
//! exposing faer's, so a faer upgrade touches only [`crate::linalg`], and `.npy` files (C order)
//! map onto it without copies. [`MatrixView`] is a borrowed block of whole rows, which is all a
//! batch ever needs.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::ops::{Index, IndexMut, Range};

/// An owned, dense, row-major matrix of `f64`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Matrix {
    nrows: usize,
    ncols: usize,
    data: Vec<f64>,
}

/// A borrowed, contiguous block of rows of a row-major matrix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MatrixView<'a> {
    nrows: usize,
    ncols: usize,
    data: &'a [f64],
}

impl Matrix {
    /// An `nrows × ncols` matrix of zeros.
    pub fn zeros(nrows: usize, ncols: usize) -> Self {
        Matrix { nrows, ncols, data: vec![0.0; nrows * ncols] }
    }

    /// The `n × n` identity.
    pub fn identity(n: usize) -> Self {
        Self::from_fn(n, n, |i, j| if i == j { 1.0 } else { 0.0 })
    }

    /// Builds a matrix from `f(row, col)`.
    pub fn from_fn(nrows: usize, ncols: usize, mut f: impl FnMut(usize, usize) -> f64) -> Self {
        let mut data = Vec::with_capacity(nrows * ncols);
        for i in 0..nrows {
            for j in 0..ncols {
                data.push(f(i, j));
            }
        }
        Matrix { nrows, ncols, data }
    }

    /// Wraps row-major `data`; errors if its length is not `nrows * ncols`.
    pub fn from_vec(nrows: usize, ncols: usize, data: Vec<f64>) -> Result<Self> {
        if data.len() != nrows * ncols {
            return Err(Error::shape("Matrix::from_vec", &[nrows * ncols], &[data.len()]));
        }
        Ok(Matrix { nrows, ncols, data })
    }

    /// Builds a matrix from equally long rows.
    ///
    /// ```
    /// let m = degeneracy::Matrix::from_rows(&[[1.0, 2.0], [3.0, 4.0]]).unwrap();
    /// assert_eq!(m[(1, 0)], 3.0);
    /// ```
    pub fn from_rows<R: AsRef<[f64]>>(rows: &[R]) -> Result<Self> {
        let ncols = rows.first().map_or(0, |r| r.as_ref().len());
        let mut data = Vec::with_capacity(rows.len() * ncols);
        for r in rows {
            let r = r.as_ref();
            if r.len() != ncols {
                return Err(Error::shape("Matrix::from_rows", &[ncols], &[r.len()]));
            }
            data.extend_from_slice(r);
        }
        Ok(Matrix { nrows: rows.len(), ncols, data })
    }

    /// A diagonal matrix.
    pub fn from_diagonal(diag: &[f64]) -> Self {
        Self::from_fn(diag.len(), diag.len(), |i, j| if i == j { diag[i] } else { 0.0 })
    }

    /// Number of rows (samples, for a batch).
    pub fn nrows(&self) -> usize {
        self.nrows
    }

    /// Number of columns (features).
    pub fn ncols(&self) -> usize {
        self.ncols
    }

    /// `(nrows, ncols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.nrows, self.ncols)
    }

    /// The row-major data.
    pub fn as_slice(&self) -> &[f64] {
        &self.data
    }

    /// The row-major data, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [f64] {
        &mut self.data
    }

    /// Consumes the matrix, returning its row-major data.
    pub fn into_vec(self) -> Vec<f64> {
        self.data
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.ncols..(i + 1) * self.ncols]
    }

    /// Row `i`, mutable.
    pub fn row_mut(&mut self, i: usize) -> &mut [f64] {
        let c = self.ncols;
        &mut self.data[i * c..(i + 1) * c]
    }

    /// Column `j`, copied.
    pub fn col(&self, j: usize) -> Vec<f64> {
        (0..self.nrows).map(|i| self[(i, j)]).collect()
    }

    /// A view of the whole matrix.
    pub fn view(&self) -> MatrixView<'_> {
        MatrixView { nrows: self.nrows, ncols: self.ncols, data: &self.data }
    }

    /// A view of rows `range` (a batch of a dataset).
    pub fn rows(&self, range: Range<usize>) -> MatrixView<'_> {
        self.view().rows(range)
    }

    /// Reshapes to `nrows × ncols`, reusing the allocation; contents are unspecified
    /// afterwards. Buffers in hot loops call this instead of allocating anew.
    pub fn resize(&mut self, nrows: usize, ncols: usize) {
        self.nrows = nrows;
        self.ncols = ncols;
        self.data.resize(nrows * ncols, 0.0);
    }

    /// Sets every entry to `value`.
    pub fn fill(&mut self, value: f64) {
        self.data.fill(value);
    }

    /// The transpose.
    pub fn transpose(&self) -> Matrix {
        self.view().transpose()
    }

    /// Copies `columns` (in the given order) into a new matrix.
    pub fn select_columns(&self, columns: &[usize]) -> Matrix {
        Self::from_fn(self.nrows, columns.len(), |i, j| self[(i, columns[j])])
    }

    /// `self · other`.
    pub fn matmul(&self, other: &Matrix) -> Result<Matrix> {
        self.view().matmul(other.view())
    }

    /// `alpha · self`.
    pub fn scaled_by(&self, alpha: f64) -> Matrix {
        self.view().scaled(alpha)
    }

    /// `self ← self + alpha · other` (shapes must match; checked in debug builds).
    pub fn add_scaled(&mut self, alpha: f64, other: &Matrix) {
        debug_assert_eq!(self.shape(), other.shape());
        for (y, &x) in self.data.iter_mut().zip(&other.data) {
            *y += alpha * x;
        }
    }

    /// Largest absolute entry (0 for an empty matrix).
    pub fn max_abs(&self) -> f64 {
        self.data.iter().fold(0.0, |m, v| m.max(v.abs()))
    }

    /// Errors with [`Error::NonFinite`] at the first NaN or infinity.
    pub fn check_finite(&self, what: &str) -> Result<()> {
        self.view().check_finite(what)
    }
}

impl<'a> MatrixView<'a> {
    /// Views row-major `data` as `nrows × ncols`.
    pub fn new(nrows: usize, ncols: usize, data: &'a [f64]) -> Result<Self> {
        if data.len() != nrows * ncols {
            return Err(Error::shape("MatrixView::new", &[nrows * ncols], &[data.len()]));
        }
        Ok(MatrixView { nrows, ncols, data })
    }

    /// Number of rows.
    pub fn nrows(&self) -> usize {
        self.nrows
    }

    /// Number of columns.
    pub fn ncols(&self) -> usize {
        self.ncols
    }

    /// `(nrows, ncols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.nrows, self.ncols)
    }

    /// The row-major data.
    pub fn as_slice(&self) -> &'a [f64] {
        self.data
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &'a [f64] {
        &self.data[i * self.ncols..(i + 1) * self.ncols]
    }

    /// Rows `range` of this view.
    pub fn rows(&self, range: Range<usize>) -> MatrixView<'a> {
        let c = self.ncols;
        MatrixView { nrows: range.len(), ncols: c, data: &self.data[range.start * c..range.end * c] }
    }

    /// `alpha · self`, as an owned matrix.
    pub fn scaled(&self, alpha: f64) -> Matrix {
        Matrix { nrows: self.nrows, ncols: self.ncols, data: self.data.iter().map(|v| alpha * v).collect() }
    }

    /// Copies into an owned matrix.
    pub fn to_owned(&self) -> Matrix {
        Matrix { nrows: self.nrows, ncols: self.ncols, data: self.data.to_vec() }
    }

    /// The transpose, as an owned matrix.
    ///
    /// In square tiles, so that neither the reads nor the writes stride through memory a row
    /// at a time (the eigenvector matrices of the bases are transposed whole).
    pub fn transpose(&self) -> Matrix {
        const TILE: usize = 32;
        let (rows, cols) = (self.nrows, self.ncols);
        let mut data = vec![0.0; rows * cols];
        for i0 in (0..rows).step_by(TILE) {
            for j0 in (0..cols).step_by(TILE) {
                for i in i0..(i0 + TILE).min(rows) {
                    for j in j0..(j0 + TILE).min(cols) {
                        data[j * rows + i] = self.data[i * cols + j];
                    }
                }
            }
        }
        Matrix { nrows: cols, ncols: rows, data }
    }

    /// `self · other`.
    pub fn matmul(&self, other: MatrixView<'_>) -> Result<Matrix> {
        if self.ncols != other.nrows {
            return Err(Error::shape("matmul", &[self.ncols, other.ncols], &[other.nrows, other.ncols]));
        }
        let mut out = Matrix::zeros(self.nrows, other.ncols);
        crate::linalg::gemm(out.as_mut_slice(), *self, false, other, false, 1.0, false);
        Ok(out)
    }

    /// Errors with [`Error::NonFinite`] at the first NaN or infinity.
    pub fn check_finite(&self, what: &str) -> Result<()> {
        match self.data.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(k) => Err(Error::NonFinite {
                what: what.to_string(),
                row: k / self.ncols.max(1),
                col: k % self.ncols.max(1),
                value: self.data[k],
            }),
        }
    }
}

impl Index<(usize, usize)> for Matrix {
    type Output = f64;
    fn index(&self, (i, j): (usize, usize)) -> &f64 {
        debug_assert!(i < self.nrows && j < self.ncols);
        &self.data[i * self.ncols + j]
    }
}

impl IndexMut<(usize, usize)> for Matrix {
    fn index_mut(&mut self, (i, j): (usize, usize)) -> &mut f64 {
        debug_assert!(i < self.nrows && j < self.ncols);
        &mut self.data[i * self.ncols + j]
    }
}

impl Index<(usize, usize)> for MatrixView<'_> {
    type Output = f64;
    fn index(&self, (i, j): (usize, usize)) -> &f64 {
        debug_assert!(i < self.nrows && j < self.ncols);
        &self.data[i * self.ncols + j]
    }
}

impl<'a> From<&'a Matrix> for MatrixView<'a> {
    fn from(m: &'a Matrix) -> Self {
        m.view()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_transpose() {
        let m = Matrix::from_rows(&[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).unwrap();
        assert_eq!(m.rows(1..2).row(0), &[4.0, 5.0, 6.0]);
        let t = m.transpose();
        assert_eq!(t.shape(), (3, 2));
        assert_eq!(t[(2, 1)], 6.0);
        assert!(Matrix::from_rows(&[vec![1.0], vec![1.0, 2.0]]).is_err());
    }

    #[test]
    fn non_finite_is_located() {
        let mut m = Matrix::zeros(3, 4);
        m[(2, 1)] = f64::NAN;
        match m.check_finite("x") {
            Err(Error::NonFinite { row: 2, col: 1, .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
