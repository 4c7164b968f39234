//! The only module that talks to faer: GEMM, Gram updates, symmetric eigendecomposition.
//!
//! Everything else in the crate calls these helpers on [`Matrix`]/[`MatrixView`], so a faer
//! release that renames its API touches this file alone. Conventions fixed here: eigenvalues
//! come back in **descending** order, eigenvectors as columns.

use crate::error::{Error, Result};
use crate::matrix::{Matrix, MatrixView};
use faer::diag::Diag;
use faer::linalg::evd::ComputeEigenvectors;
use faer::{Accum, Mat, MatMut, MatRef, Par};

/// Below this many multiply–adds a GEMM runs on the calling thread.
const PARALLEL_FLOP_THRESHOLD: usize = 1 << 24;

/// Sequential inside rayon workers (the caller already parallelises over batches or chains)
/// unless [`with_nested_products`] allows it, and for small products; all rayon threads
/// otherwise. faer splits a product over blocks of its output, never its inner dimension, so
/// the bits do not depend on this choice.
fn parallelism(flops: usize) -> Par {
    let nested_off = rayon::current_thread_index().is_some() && !NESTED_PRODUCTS.get();
    if flops < PARALLEL_FLOP_THRESHOLD || nested_off { Par::Seq } else { Par::rayon(0) }
}

thread_local! {
    static NESTED_PRODUCTS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with its large products parallel even inside a rayon worker: for a few independent
/// tasks of very different sizes (one wide node's frame beside narrow ones), whose threads
/// would otherwise idle while the largest runs on one.
pub(crate) fn with_nested_products<T>(f: impl FnOnce() -> T) -> T {
    let before = NESTED_PRODUCTS.replace(true);
    let out = f();
    NESTED_PRODUCTS.set(before);
    out
}

/// Factorisations (eigendecompositions, Cholesky and its triangular solve) at least this wide
/// are split into [`FACTORIZATION_TASKS`] parallel tasks; smaller ones run on the calling
/// thread. Measured here (2 cores) on the 784-wide build: its 512 × 512 kernel-side
/// eigendecomposition 36 → 24–28 ms split, the Cholesky QR of its 488 columns 11–13 → 9 ms.
const FACTORIZATION_PARALLEL_DIM: usize = 384;
/// A fixed number of tasks, not the pool's size: faer's parallel factorisations round
/// differently for different splits, and a fixed split gives the same bits on any machine and
/// thread count (measured: 1, 2 and 4 threads). Concurrent decompositions of different node
/// layers use further cores.
const FACTORIZATION_TASKS: usize = 2;

fn factorization_parallelism(n: usize) -> Par {
    if n >= FACTORIZATION_PARALLEL_DIM { Par::rayon(FACTORIZATION_TASKS) } else { Par::Seq }
}

fn faer_ref(m: MatrixView<'_>) -> MatRef<'_, f64> {
    MatRef::from_row_major_slice(m.as_slice(), m.nrows(), m.ncols())
}

fn faer_mut(m: &mut Matrix) -> MatMut<'_, f64> {
    let (r, c) = m.shape();
    MatMut::from_row_major_slice_mut(m.as_mut_slice(), r, c)
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

/// `g ← g + alpha · xᵀ x` on the **lower triangle** (and the diagonal blocks), in column
/// blocks of plain GEMMs: about 60 % of a full `xᵀx`'s FLOPs at full GEMM speed (faer's
/// triangular product was slower than a full GEMM on these shapes). Call
/// [`symmetrize_from_lower`] once after the last update.
pub(crate) fn gram_lower_add(g: &mut Matrix, x: MatrixView<'_>, alpha: f64) {
    gram_lower_add_ref(g, faer_ref(x), alpha);
}

/// [`gram_lower_add`] of the rows of `a`: `g ← g + alpha · a aᵀ` on the lower triangle (a
/// kernel matrix), without copying `aᵀ`.
pub(crate) fn kernel_lower_add(g: &mut Matrix, a: MatrixView<'_>, alpha: f64) {
    gram_lower_add_ref(g, faer_ref(a).transpose(), alpha);
}

fn gram_lower_add_ref(g: &mut Matrix, xr: MatRef<'_, f64>, alpha: f64) {
    const BLOCK: usize = 96;
    let (n, d) = (xr.nrows(), xr.ncols());
    let mut gm = faer_mut(g);
    for j0 in (0..d).step_by(BLOCK) {
        let (w, rows) = (BLOCK.min(d - j0), d - j0);
        let dst = gm.as_mut().submatrix_mut(j0, j0, rows, w);
        let lhs = xr.subcols(j0, rows).transpose();
        let rhs = xr.subcols(j0, w);
        faer::linalg::matmul::matmul(dst, Accum::Add, lhs, rhs, alpha, parallelism(n * rows * w));
    }
    clear_upper_simd_state();
}

/// Copies the lower triangle onto the upper one.
///
/// In square tiles: a plain loop writes the upper triangle a column at a time, a cache line per
/// entry (4097 × 4097, measured: 36–64 ms plain, 24–32 ms tiled).
pub(crate) fn symmetrize_from_lower(g: &mut Matrix) {
    const TILE: usize = 32;
    let n = g.nrows();
    let data = g.as_mut_slice();
    for i0 in (0..n).step_by(TILE) {
        for j0 in (0..=i0).step_by(TILE) {
            for i in i0..(i0 + TILE).min(n) {
                for j in j0..(j0 + TILE).min(i) {
                    data[j * n + i] = data[i * n + j];
                }
            }
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
    // The low-level call lets small decompositions run on the calling thread (the high-level
    // one uses faer's global parallelism, whose thread hand-offs dominate at these sizes).
    let par = factorization_parallelism(n);
    let params = Default::default();
    let req = faer::linalg::evd::self_adjoint_evd_scratch::<f64>(n, ComputeEigenvectors::Yes, par, params);
    let mut mem = faer::dyn_stack::MemBuffer::new(req);
    let (mut s, mut u) = (Diag::<f64>::zeros(n), Mat::<f64>::zeros(n, n));
    faer::linalg::evd::self_adjoint_evd(
        faer_ref(m.view()),
        s.as_mut(),
        Some(u.as_mut()),
        par,
        faer::dyn_stack::MemStack::new(&mut mem),
        params,
    )
    .map_err(|e| Error::LinearAlgebra { op: "symmetric_eigen", reason: format!("{e:?}") })?;
    clear_upper_simd_state();
    let s = s.column_vector();
    // faer sorts ascending; reverse once, here.
    let values = (0..n).rev().map(|k| s[k]).collect();
    let vectors = Matrix::from_fn(n, n, |i, j| u[(i, n - 1 - j)]);
    Ok((values, vectors))
}

/// Eigenvalues of a symmetric matrix, in **descending** order, without the eigenvectors (reads
/// the lower triangle): the spectra that are only reported or counted (the neuron basis, the
/// diagnostics' ranks) at a fraction of [`symmetric_eigen`]'s cost.
pub(crate) fn symmetric_eigenvalues(m: &Matrix) -> Result<Vec<f64>> {
    let n = m.nrows();
    if m.ncols() != n {
        return Err(Error::shape("symmetric_eigenvalues", &[n, n], &[n, m.ncols()]));
    }
    m.check_finite("symmetric_eigenvalues input")?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let par = factorization_parallelism(n);
    let params = Default::default();
    let req = faer::linalg::evd::self_adjoint_evd_scratch::<f64>(n, ComputeEigenvectors::No, par, params);
    let mut mem = faer::dyn_stack::MemBuffer::new(req);
    let mut s = Diag::<f64>::zeros(n);
    faer::linalg::evd::self_adjoint_evd(
        faer_ref(m.view()),
        s.as_mut(),
        None,
        par,
        faer::dyn_stack::MemStack::new(&mut mem),
        params,
    )
    .map_err(|e| Error::LinearAlgebra { op: "symmetric_eigenvalues", reason: format!("{e:?}") })?;
    clear_upper_simd_state();
    let s = s.column_vector();
    Ok((0..n).rev().map(|k| s[k]).collect())
}

/// Makes the columns of `u` (`m × r`, nearly orthonormal) orthonormal by a Cholesky QR:
/// `u ← u L⁻ᵀ` with `L Lᵀ = uᵀ u`. Column `j` becomes a combination of columns `0..=j` with a
/// positive weight on itself, so the leading columns move least. Returns `false`, leaving `u`
/// unchanged, unless the columns are far from dependent (each keeps at least half its norm
/// orthogonal to the ones before it): Cholesky QR is accurate only for well-conditioned `u`.
pub(crate) fn orthonormalize_columns(u: &mut Matrix) -> bool {
    let r = u.ncols();
    if r == 0 {
        return true;
    }
    // The Cholesky factorisation reads the lower triangle only.
    let mut s = Matrix::zeros(r, r);
    gram_lower_add(&mut s, u.view(), 1.0);
    let norms2: Vec<f64> = (0..r).map(|i| s[(i, i)]).collect();
    let par = factorization_parallelism(r);
    let params = Default::default();
    let req = faer::linalg::cholesky::llt::factor::cholesky_in_place_scratch::<f64>(r, par, params);
    let mut mem = faer::dyn_stack::MemBuffer::new(req);
    let regularization = faer::linalg::cholesky::llt::factor::LltRegularization {
        dynamic_regularization_delta: 0.0,
        dynamic_regularization_epsilon: 0.0,
    };
    let factored = faer::linalg::cholesky::llt::factor::cholesky_in_place(
        faer_mut(&mut s),
        regularization,
        par,
        faer::dyn_stack::MemStack::new(&mut mem),
        params,
    );
    if factored.is_err()
        || (0..r).any(|i| s[(i, i)].is_nan() || s[(i, i)] <= 0.5 * norms2[i].sqrt() || s[(i, i)].is_infinite())
    {
        clear_upper_simd_state();
        return false;
    }
    // u Lᵀ = u₀  ⇔  L uᵀ = u₀ᵀ: a lower-triangular solve on uᵀ (row-major u is column-major uᵀ).
    let (m, _) = u.shape();
    let lower = faer_ref(s.view());
    let ut = MatMut::from_row_major_slice_mut(u.as_mut_slice(), m, r).transpose_mut();
    faer::linalg::triangular_solve::solve_lower_triangular_in_place(lower, ut, par);
    clear_upper_simd_state();
    true
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
    fn gram_matches_dense_product() {
        let x = Matrix::from_fn(7, 3, |i, j| ((i * 3 + j) as f64).sin());
        let mut g = Matrix::zeros(3, 3);
        gram_lower_add(&mut g, x.view(), 0.5);
        symmetrize_from_lower(&mut g);
        let dense = x.transpose().matmul(&x).unwrap();
        for i in 0..3 {
            for j in 0..3 {
                assert!((g[(i, j)] - 0.5 * dense[(i, j)]).abs() < 1e-14);
            }
        }
    }

    #[test]
    fn eigenvalues_alone_equal_those_with_vectors() {
        let m = Matrix::from_fn(9, 9, |i, j| 1.0 / (1.0 + i as f64 + j as f64) + f64::from(u8::from(i == j)));
        let (with, _) = symmetric_eigen(&m).unwrap();
        let alone = symmetric_eigenvalues(&m).unwrap();
        for (a, b) in alone.iter().zip(&with) {
            assert!((a - b).abs() < 1e-13, "{a} vs {b}");
        }
    }

    #[test]
    fn cholesky_qr_orthonormalises_and_keeps_the_leading_column() {
        let mut u = Matrix::from_fn(7, 3, |i, j| f64::from(u8::from(i == j)) + 1e-6 * ((i * 3 + j) as f64).sin());
        let first: Vec<f64> = u.col(0);
        assert!(orthonormalize_columns(&mut u));
        let utu = u.transpose().matmul(&u).unwrap();
        for i in 0..3 {
            for j in 0..3 {
                assert!((utu[(i, j)] - f64::from(u8::from(i == j))).abs() < 1e-15, "({i}, {j})");
            }
        }
        // Column 0 is only rescaled.
        let norm = first.iter().map(|v| v * v).sum::<f64>().sqrt();
        for (a, b) in u.col(0).iter().zip(&first) {
            assert!((a - b / norm).abs() < 1e-15);
        }
        let mut dependent = Matrix::from_fn(5, 2, |i, _| i as f64);
        assert!(!orthonormalize_columns(&mut dependent));
        assert_eq!(dependent, Matrix::from_fn(5, 2, |i, _| i as f64));
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
