//! Matrices to and from faer, nalgebra and (feature `ndarray`) ndarray.
//!
//! A [`Matrix`] is dense and row-major, so views of it are free wherever the other side can
//! describe a row-major layout: faer (any strides) and ndarray (C order) both ways where the
//! layout allows, nalgebra (strided views) from this crate's side. What copies:
//!
//! | conversion | copies? |
//! |---|---|
//! | `Matrix`/`MatrixView` → faer `MatRef`/`MatMut` ([`Matrix::as_faer`]) | no |
//! | faer `MatRef` → `MatrixView` ([`MatrixView::from_faer`]) | no; `None` unless row-major and contiguous |
//! | faer `MatRef` → `Matrix` (`From`) | yes |
//! | `MatrixView` → nalgebra view ([`MatrixView::as_nalgebra`]) | no (a strided view) |
//! | nalgebra `DMatrix` ↔ `Matrix` (`From`) | yes (nalgebra stores columns) |
//! | `MatrixView` → ndarray `ArrayView2` ([`MatrixView::as_ndarray`]) | no |
//! | ndarray `ArrayView2` → `MatrixView` (`TryFrom`) | no; an error unless in standard (C) layout |
//! | `Matrix` → ndarray `Array2` (`From`) | no (the buffer moves) |
//! | ndarray `ArrayView2` → `Matrix` (`From`) | yes |
//!
//! The faer types are faer 0.24's (the version this crate computes with).

use crate::matrix::{Matrix, MatrixView};
use faer::{MatMut, MatRef};

impl Matrix {
    /// A faer view of the matrix (no copy).
    ///
    /// ```
    /// let m = degeneracy::Matrix::from_rows(&[[1.0, 2.0], [3.0, 4.0]])?;
    /// assert_eq!(m.as_faer()[(1, 0)], 3.0);
    /// # Ok::<(), degeneracy::Error>(())
    /// ```
    pub fn as_faer(&self) -> MatRef<'_, f64> {
        self.view().as_faer()
    }

    /// A mutable faer view of the matrix (no copy).
    pub fn as_faer_mut(&mut self) -> MatMut<'_, f64> {
        let (r, c) = self.shape();
        MatMut::from_row_major_slice_mut(self.as_mut_slice(), r, c)
    }
}

impl<'a> MatrixView<'a> {
    /// A faer view (no copy).
    pub fn as_faer(&self) -> MatRef<'a, f64> {
        MatRef::from_row_major_slice(self.as_slice(), self.nrows(), self.ncols())
    }

    /// A view of a faer matrix stored row-major and contiguously (row stride = columns, column
    /// stride 1, as `MatRef::from_row_major_slice` or the transpose of an unpadded column-major
    /// slice give); `None` for any other layout, e.g. a `faer::Mat` (column-major, columns
    /// padded): copy with `Matrix::from` instead.
    ///
    /// ```
    /// use degeneracy::MatrixView;
    /// let data = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    /// let f = faer::MatRef::from_row_major_slice(&data, 2, 3);
    /// assert_eq!(MatrixView::from_faer(f).unwrap().row(1), &[4.0, 5.0, 6.0]);
    /// assert!(MatrixView::from_faer(f.transpose()).is_none()); // column-major: copy instead
    /// ```
    pub fn from_faer(m: MatRef<'a, f64>) -> Option<Self> {
        let (r, c) = (m.nrows(), m.ncols());
        if r == 0 || c == 0 {
            return MatrixView::new(r, c, &[]).ok();
        }
        let contiguous = m.col_stride() == 1 && (r == 1 || m.row_stride() == c as isize);
        if !contiguous {
            return None;
        }
        // SAFETY: the layout check above says the r·c elements from the first one are the
        // matrix in row-major order, inside the allocation `m` borrows for 'a.
        let data = unsafe { std::slice::from_raw_parts(m.as_ptr(), r * c) };
        MatrixView::new(r, c, data).ok()
    }
}

impl From<MatRef<'_, f64>> for Matrix {
    fn from(m: MatRef<'_, f64>) -> Self {
        Matrix::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)])
    }
}

#[cfg(feature = "nalgebra")]
mod nalgebra_interop {
    use super::*;

    impl<'a> MatrixView<'a> {
        /// A strided nalgebra view of the rows (no copy).
        ///
        /// ```
        /// let m = degeneracy::Matrix::from_rows(&[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])?;
        /// let v = m.view().as_nalgebra();
        /// assert_eq!((v.nrows(), v.ncols(), v[(1, 2)]), (2, 3, 6.0));
        /// # Ok::<(), degeneracy::Error>(())
        /// ```
        pub fn as_nalgebra(&self) -> nalgebra::DMatrixView<'a, f64, nalgebra::Dyn, nalgebra::Dyn> {
            let (r, c) = self.shape();
            nalgebra::DMatrixView::from_slice_with_strides(self.as_slice(), r, c, c, 1)
        }
    }

    impl From<&nalgebra::DMatrix<f64>> for Matrix {
        fn from(m: &nalgebra::DMatrix<f64>) -> Self {
            Matrix::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)])
        }
    }

    impl From<&Matrix> for nalgebra::DMatrix<f64> {
        fn from(m: &Matrix) -> Self {
            nalgebra::DMatrix::from_row_slice(m.nrows(), m.ncols(), m.as_slice())
        }
    }
}

#[cfg(feature = "ndarray")]
mod ndarray_interop {
    use super::*;
    use crate::error::{Error, Result};
    use ndarray::{Array2, ArrayView2};

    impl<'a> MatrixView<'a> {
        /// An ndarray view (no copy).
        pub fn as_ndarray(&self) -> ArrayView2<'a, f64> {
            ArrayView2::from_shape(self.shape(), self.as_slice()).expect("a row-major buffer of rows × cols")
        }
    }

    impl<'a> TryFrom<ArrayView2<'a, f64>> for MatrixView<'a> {
        type Error = Error;

        /// The view of an array in standard (C) layout; an error for any other layout.
        fn try_from(a: ArrayView2<'a, f64>) -> Result<Self> {
            let (r, c) = a.dim();
            let data = a.to_slice().ok_or_else(|| {
                Error::invalid("ndarray layout", format!("strides {:?}", a.strides()), "needs standard (C) order")
            })?;
            MatrixView::new(r, c, data)
        }
    }

    impl From<ArrayView2<'_, f64>> for Matrix {
        fn from(a: ArrayView2<'_, f64>) -> Self {
            Matrix::from_fn(a.nrows(), a.ncols(), |i, j| a[(i, j)])
        }
    }

    impl From<Matrix> for Array2<f64> {
        fn from(m: Matrix) -> Self {
            let shape = m.shape();
            Array2::from_shape_vec(shape, m.into_vec()).expect("a row-major buffer of rows × cols")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faer_views_share_memory_both_ways() {
        let mut m = Matrix::from_fn(3, 2, |i, j| (i * 2 + j) as f64);
        assert_eq!(m.as_faer()[(2, 1)], 5.0);
        m.as_faer_mut()[(0, 1)] = -1.0;
        assert_eq!(m[(0, 1)], -1.0);
        let back = MatrixView::from_faer(m.as_faer()).unwrap();
        assert_eq!(back.as_slice().as_ptr(), m.as_slice().as_ptr(), "no copy");
        let col_major = faer::Mat::<f64>::from_fn(3, 2, |i, j| m[(i, j)]);
        assert!(MatrixView::from_faer(col_major.as_ref()).is_none());
        assert_eq!(Matrix::from(col_major.as_ref()), m);
        // An unpadded column-major slice's transpose is row-major: a view of Mᵀ.
        let data: Vec<f64> = (0..2).flat_map(|j| (0..3).map(move |i| (i, j))).map(|(i, j)| m[(i, j)]).collect();
        let t = MatrixView::from_faer(faer::MatRef::from_column_major_slice(&data, 3, 2).transpose()).unwrap();
        assert_eq!(t.shape(), (2, 3));
        assert_eq!(t.row(1), &[-1.0, 3.0, 5.0]);
    }

    #[cfg(feature = "nalgebra")]
    #[test]
    fn nalgebra_round_trip_and_view() {
        let m = Matrix::from_fn(3, 2, |i, j| (i * 2 + j) as f64);
        let n: nalgebra::DMatrix<f64> = (&m).into();
        assert_eq!(n[(2, 1)], 5.0);
        assert_eq!(Matrix::from(&n), m);
        let v = m.view().as_nalgebra();
        assert_eq!(v, n);
    }

    #[cfg(feature = "ndarray")]
    #[test]
    fn ndarray_views() {
        let m = Matrix::from_fn(3, 2, |i, j| (i * 2 + j) as f64);
        let a = m.view().as_ndarray();
        assert_eq!(a[(2, 1)], 5.0);
        assert_eq!(MatrixView::try_from(a).unwrap(), m.view());
        assert!(MatrixView::try_from(a.t()).is_err());
        assert_eq!(Matrix::from(a.t()), m.transpose());
        let owned: ndarray::Array2<f64> = m.clone().into();
        assert_eq!(owned, a);
    }
}
