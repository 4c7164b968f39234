//! The only module that talks to faer: GEMM, Gram updates, symmetric eigendecomposition.
//!
//! Everything else in the crate calls these helpers on [`Matrix`]/[`MatrixView`], so a faer
//! release that renames its API touches this file alone. Conventions fixed here: eigenvalues
//! come back in **descending** order, eigenvectors as columns.

use crate::error::{Error, Result};
use crate::matrix::{Matrix, MatrixView};
use faer::{Accum, MatMut, MatRef, Par, Side};

/// Below this many multiply–adds a GEMM runs on the calling thread.
const PARALLEL_FLOP_THRESHOLD: usize = 1 << 21;

/// Sequential inside rayon workers (the caller already parallelises over batches or chains)
/// and for small products; all rayon threads otherwise.
fn parallelism(flops: usize) -> Par {
    if flops < PARALLEL_FLOP_THRESHOLD || rayon::current_thread_index().is_some() { Par::Seq } else { Par::rayon(0) }
}

fn faer_ref(m: MatrixView<'_>) -> MatRef<'_, f64> {
    MatRef::from_row_major_slice(m.as_slice(), m.nrows(), m.ncols())
}

/// `dst ← alpha · op(a) · op(b)` (+ `dst` when `accumulate`), with `op` an optional transpose;
/// `dst` is the row-major data of the product (its shape follows from `a` and `b`).
///
/// Callers check shapes with typed errors first; a mismatch here is a bug in the crate.
pub(crate) fn gemm(
    dst: &mut [f64],
    a: MatrixView<'_>,
    transpose_a: bool,
    b: MatrixView<'_>,
    transpose_b: bool,
    alpha: f64,
    accumulate: bool,
) {
    let a = if transpose_a { faer_ref(a).transpose() } else { faer_ref(a) };
    let b = if transpose_b { faer_ref(b).transpose() } else { faer_ref(b) };
    let flops = a.nrows() * a.ncols() * b.ncols();
    let accum = if accumulate { Accum::Add } else { Accum::Replace };
    let dst = MatMut::from_row_major_slice_mut(dst, a.nrows(), b.ncols());
    faer::linalg::matmul::matmul(dst, accum, a, b, alpha, parallelism(flops));
    clear_upper_simd_state();
}

/// faer's AVX kernels can return with the upper halves of the YMM registers dirty; on some CPUs
/// (measured: AMD EPYC under virtualisation) every later non-VEX SSE instruction — the scalar
/// `f64` code of losses and activations compiled for baseline x86-64 — then pays a transition
/// penalty (the cross-entropy of a 64 × 10 batch went from 12 µs to 180 µs). `vzeroupper`
/// through the intrinsic (so the compiler knows what it clobbers) resets that state.
#[inline]
fn clear_upper_simd_state() {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx")]
        unsafe fn zero_upper() {
            // SAFETY: only called after the AVX check below.
            #[allow(unused_unsafe)]
            unsafe {
                std::arch::x86_64::_mm256_zeroupper()
            }
        }
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU supports AVX (checked just above).
            unsafe { zero_upper() }
        }
    }
}

/// Eigendecomposition of a symmetric matrix: `(values, vectors)` with values in **descending**
/// order and the matching eigenvectors as the columns of `vectors`. Reads the lower triangle.
pub fn symmetric_eigen(m: &Matrix) -> Result<(Vec<f64>, Matrix)> {
    let n = m.nrows();
    if m.ncols() != n {
        return Err(Error::shape("symmetric_eigen", &[n, n], &[n, m.ncols()]));
    }
    m.check_finite("symmetric_eigen input")?;
    if n == 0 {
        return Ok((Vec::new(), Matrix::zeros(0, 0)));
    }
    let evd = faer_ref(m.view())
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| Error::LinearAlgebra { op: "symmetric_eigen", reason: format!("{e:?}") })?;
    let (u, s) = (evd.U(), evd.S().column_vector());
    // faer sorts ascending; reverse once, here.
    let values = (0..n).rev().map(|k| s[k]).collect();
    let vectors = Matrix::from_fn(n, n, |i, j| u[(i, n - 1 - j)]);
    Ok((values, vectors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_transposes() {
        let a = Matrix::from_rows(&[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]).unwrap();
        let b = Matrix::from_rows(&[[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]).unwrap();
        let mut c = Matrix::zeros(2, 2);
        // aᵀ bᵀ = (b a)ᵀ
        gemm(c.as_mut_slice(), a.view(), true, b.view(), true, 1.0, false);
        let ba = b.matmul(&a).unwrap();
        assert_eq!(c, ba.transpose());
    }

    #[test]
    fn eigen_is_descending_and_reconstructs() {
        let m = Matrix::from_rows(&[[2.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 4.0]]).unwrap();
        let (vals, vecs) = symmetric_eigen(&m).unwrap();
        assert!(vals.windows(2).all(|w| w[0] >= w[1]));
        let recon = vecs.matmul(&Matrix::from_diagonal(&vals)).unwrap().matmul(&vecs.transpose()).unwrap();
        for i in 0..3 {
            for j in 0..3 {
                assert!((recon[(i, j)] - m[(i, j)]).abs() < 1e-12);
            }
        }
    }
}
