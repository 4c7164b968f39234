//! Streaming, mergeable first and second moments of row vectors.
//!
//! The state is `(count, mean, scatter)` with `scatter = Σ (x − μ)(x − μ)ᵀ`, updated with
//! Chan et al.'s pairwise formula. Centring inside each batch avoids the cancellation of
//! `E[xxᵀ] − μμᵀ`; the merge is the same formula, so shards from other threads, processes or
//! machines combine exactly (up to rounding), in any grouping.

use crate::error::{Error, Result};
use crate::linalg;
use crate::matrix::{Matrix, MatrixView};
use crate::scratch::ScratchMatrix;
use serde::{Deserialize, Serialize};

/// Rows per chunk when a large batch is split over threads (the determinism grid).
const PARALLEL_CHUNK: usize = crate::data::ROW_GRID;
/// Wider rows keep the one-GEMM path: its product dominates the centring, and every chunk
/// would hold a `d × d` state.
const PARALLEL_MAX_DIM: usize = 256;

/// Accumulates the mean and the Gram (scatter) matrix of a stream of `dim`-wide rows.
///
/// ```
/// use degeneracy::{Matrix, estimate::GramAccumulator};
/// let x = Matrix::from_rows(&[[1.0, 2.0], [3.0, 6.0], [5.0, 1.0]])?;
/// let (mut a, mut b) = (GramAccumulator::new(2), GramAccumulator::new(2));
/// a.update(x.rows(0..1))?;
/// b.update(x.rows(1..3))?;
/// a.merge(&b)?;
/// let m = a.finish()?;
/// assert_eq!(m.mean, [3.0, 3.0]);
/// assert!((m.second_moment()[(0, 1)] - (2.0 + 18.0 + 5.0) / 3.0).abs() < 1e-14);
/// # Ok::<(), degeneracy::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GramAccumulator {
    count: u64,
    mean: Vec<f64>,
    /// Lower triangle of `Σ (x − μ)(x − μ)ᵀ`; the upper triangle is not maintained. Empty
    /// (`0 × 0`) until the first row arrives, so empty per-batch states cost nothing.
    scatter: Matrix,
    /// While fewer than `dim` rows have been seen: the rows themselves, row-major (`mean` and
    /// `scatter` unused). Smaller than a `dim × dim` state, and what lets a Gram of rank below
    /// its width be decomposed on its kernel side (`docs/math.md` §3.5). `None` once the rows
    /// reach `dim` (and in states written before this field existed).
    #[serde(default)]
    rows: Option<Vec<f64>>,
}

/// Finished moments: sample count, mean and population covariance (`scatter / count`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    /// Number of rows seen.
    pub count: u64,
    /// `E[x]`.
    pub mean: Vec<f64>,
    /// `E[(x − μ)(x − μ)ᵀ]` (divided by the count, not count − 1).
    pub covariance: Matrix,
    /// The rows themselves (`count × dim`), when fewer than `dim` were seen: the Gram's kernel
    /// side, which the bases decompose instead of the `dim × dim` matrix.
    pub rows: Option<Matrix>,
}

impl GramAccumulator {
    /// An empty accumulator for rows of width `dim`.
    pub fn new(dim: usize) -> Self {
        GramAccumulator { count: 0, mean: vec![0.0; dim], scatter: Matrix::default(), rows: Some(Vec::new()) }
    }

    /// Leaves the rows mode: the rows kept so far become mean and scatter.
    fn leave_rows_mode(&mut self) -> Result<()> {
        let Some(rows) = self.rows.take() else { return Ok(()) };
        let n = self.count as usize;
        self.count = 0;
        if n > 0 {
            self.update(MatrixView::new(n, self.dim(), &rows)?)?;
        }
        Ok(())
    }

    /// The same state in its `dim × dim` form: rows kept while fewer than the width had been
    /// seen are folded into mean and scatter. The bases then decompose the `d × d` Gram instead
    /// of its `n × n` kernel side (`docs/math.md` §3.5) — how the two paths are checked against
    /// each other — and the state's size no longer depends on the rows seen.
    pub fn to_dense(&self) -> Result<GramAccumulator> {
        let mut dense = self.clone();
        dense.leave_rows_mode()?;
        Ok(dense)
    }

    /// Row width.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Rows seen so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Adds a batch of rows.
    pub fn update(&mut self, batch: MatrixView<'_>) -> Result<()> {
        let d = self.dim();
        if batch.ncols() != d {
            return Err(Error::shape("GramAccumulator::update", &[batch.nrows(), d], &[batch.nrows(), batch.ncols()]));
        }
        let n = batch.nrows();
        if n == 0 {
            return Ok(());
        }
        if let Some(rows) = &mut self.rows {
            if self.count as usize + n < d {
                rows.extend_from_slice(batch.as_slice());
                self.count += n as u64;
                return Ok(());
            }
            self.leave_rows_mode()?;
        }
        if n > PARALLEL_CHUNK && d < PARALLEL_MAX_DIM && rayon::current_thread_index().is_none() {
            // A large batch of narrow rows: 256-row chunks in parallel, each centred while it
            // is in cache, merged in row order (the same result for any thread count).
            use rayon::prelude::*;
            let starts: Vec<usize> = (0..n).step_by(PARALLEL_CHUNK).collect();
            let parts: Vec<GramAccumulator> = starts
                .par_iter()
                .map(|&s| {
                    let mut part = GramAccumulator::new(d);
                    part.update(batch.rows(s..(s + PARALLEL_CHUNK).min(n))).map(|_| part)
                })
                .collect::<Result<_>>()?;
            return parts.iter().try_for_each(|part| self.merge(part));
        }
        let mean = row_mean(batch);
        let mut centred = ScratchMatrix::take();
        centred.resize(n, d);
        for i in 0..n {
            for ((v, &x), &m) in centred.row_mut(i).iter_mut().zip(batch.row(i)).zip(&mean) {
                *v = x - m;
            }
        }
        if self.count == 0 {
            // The first batch's scatter is the state itself.
            self.scatter.resize(d, d);
            self.scatter.fill(0.0);
            linalg::gram_lower_add(&mut self.scatter, centred.view(), 1.0);
            self.mean = mean;
            self.count = n as u64;
            return Ok(());
        }
        let mut scatter = ScratchMatrix::take();
        scatter.resize(d, d);
        scatter.fill(0.0);
        linalg::gram_lower_add(&mut scatter, centred.view(), 1.0);
        self.combine(n as u64, &mean, &scatter);
        Ok(())
    }

    /// Adds another accumulator's rows (as if its batches had been fed to `self`).
    pub fn merge(&mut self, other: &GramAccumulator) -> Result<()> {
        if other.dim() != self.dim() {
            return Err(Error::shape("GramAccumulator::merge", &[self.dim()], &[other.dim()]));
        }
        if other.count == 0 {
            return Ok(());
        }
        let d = self.dim();
        if let (Some(rows), Some(theirs)) = (&mut self.rows, &other.rows)
            && ((self.count + other.count) as usize) < d
        {
            rows.extend_from_slice(theirs);
            self.count += other.count;
            return Ok(());
        }
        self.leave_rows_mode()?;
        match &other.rows {
            Some(theirs) => self.update(MatrixView::new(other.count as usize, other.dim(), theirs)?),
            None => {
                self.combine(other.count, &other.mean, &other.scatter);
                Ok(())
            }
        }
    }

    /// Chan et al.: `M₂ = M₂ᵃ + M₂ᵇ + δδᵀ nₐ n_b / n`, `μ = μₐ + δ n_b / n`.
    fn combine(&mut self, nb: u64, mean_b: &[f64], scatter_b: &Matrix) {
        if self.count == 0 {
            self.count = nb;
            self.mean.copy_from_slice(mean_b);
            self.scatter.clone_from(scatter_b);
            return;
        }
        let (na, n) = (self.count as f64, (self.count + nb) as f64);
        let delta: Vec<f64> = mean_b.iter().zip(&self.mean).map(|(b, a)| b - a).collect();
        let f = na * nb as f64 / n;
        for (i, &di) in delta.iter().enumerate() {
            let (row, row_b) = (&mut self.scatter.row_mut(i)[..=i], &scatter_b.row(i)[..=i]);
            for ((s, &sb), &dj) in row.iter_mut().zip(row_b).zip(&delta) {
                *s += sb + f * di * dj;
            }
        }
        for (m, dl) in self.mean.iter_mut().zip(&delta) {
            *m += dl * nb as f64 / n;
        }
        self.count += nb;
    }

    /// As [`finish`](Self::finish), but while the rows are kept the `d × d` covariance is not
    /// formed (it is left `0 × 0`): a node seen on fewer rows than its width is decomposed on its
    /// kernel side (`docs/math.md` §3.5), from the rows and the mean alone. The mean is the one
    /// `finish` gives; [`Moments::with_covariance`] forms the covariance where it is needed.
    pub(crate) fn finish_rows(&self) -> Result<Moments> {
        match &self.rows {
            Some(rows) if self.count > 0 => {
                let rows = Matrix::from_vec(self.count as usize, self.dim(), rows.clone())?;
                let mean = row_mean(rows.view());
                Ok(Moments { count: self.count, mean, covariance: Matrix::default(), rows: Some(rows) })
            }
            _ => self.finish(),
        }
    }

    /// The moments; errors if no rows were seen.
    pub fn finish(&self) -> Result<Moments> {
        if self.count == 0 {
            return Err(Error::Empty { what: "GramAccumulator::finish: no rows".into() });
        }
        if let Some(rows) = &self.rows {
            let rows = Matrix::from_vec(self.count as usize, self.dim(), rows.clone())?;
            return Ok(Moments { rows: Some(rows), ..self.folded()?.finish()? });
        }
        let mut covariance = self.scatter.clone();
        linalg::symmetrize_from_lower(&mut covariance);
        covariance.as_mut_slice().iter_mut().for_each(|v| *v /= self.count as f64);
        Ok(Moments { count: self.count, mean: self.mean.clone(), covariance, rows: None })
    }
}

impl GramAccumulator {
    /// This state with kept rows folded into its mean and scatter (itself if none are kept).
    pub(crate) fn folded(&self) -> Result<std::borrow::Cow<'_, GramAccumulator>> {
        match &self.rows {
            Some(rows) if self.count > 0 => {
                Ok(std::borrow::Cow::Owned(fold_rows(MatrixView::new(self.count as usize, self.dim(), rows)?)?))
            }
            _ => Ok(std::borrow::Cow::Borrowed(self)),
        }
    }

    /// `E[x]` of a folded state (see [`Self::folded`]).
    pub(crate) fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// `q ⊙ E[xxᵀ]` on the lower triangle of `q`'s leading `dim × dim` block, `E[xxᵀ]` read
    /// entry by entry from the scatter (`scatter / count + μμᵀ`, the values of
    /// [`Moments::second_moment`]) without forming a `dim × dim` matrix. Errors if no rows were
    /// seen or `q` is smaller than `dim × dim`.
    pub(crate) fn scale_by_second_moment_lower(&self, q: &mut Matrix) -> Result<()> {
        let state = self.folded()?;
        let d = state.dim();
        if state.count == 0 {
            return Err(Error::Empty { what: "GramAccumulator: second moment of no rows".into() });
        }
        if q.nrows() < d || q.ncols() < d {
            return Err(Error::shape(
                "GramAccumulator::scale_by_second_moment_lower",
                &[d, d],
                &[q.nrows(), q.ncols()],
            ));
        }
        let count = state.count as f64;
        for i in 0..d {
            let (scatter, mu_i) = (&state.scatter.row(i)[..=i], state.mean[i]);
            for ((v, &c), &mu_j) in q.row_mut(i)[..=i].iter_mut().zip(scatter).zip(&state.mean) {
                *v *= c / count + mu_i * mu_j;
            }
        }
        Ok(())
    }
}

/// An accumulator of `rows` with its mean and scatter formed (no rows kept, whatever their
/// number): what a state that kept its rows finishes from.
fn fold_rows(rows: MatrixView<'_>) -> Result<GramAccumulator> {
    let mut full = GramAccumulator { rows: None, ..GramAccumulator::new(rows.ncols()) };
    full.update(rows)?;
    Ok(full)
}

/// The column means of a batch, summed in row order.
fn row_mean(batch: MatrixView<'_>) -> Vec<f64> {
    let mut mean = vec![0.0; batch.ncols()];
    for i in 0..batch.nrows() {
        for (m, &v) in mean.iter_mut().zip(batch.row(i)) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= batch.nrows() as f64);
    mean
}

impl Moments {
    /// These moments with their covariance formed: itself, unless it comes from
    /// [`GramAccumulator::finish_rows`] (kept rows, covariance `0 × 0`).
    pub(crate) fn with_covariance(&self) -> Result<std::borrow::Cow<'_, Moments>> {
        match &self.rows {
            Some(rows) if self.covariance.nrows() != self.mean.len() => {
                Ok(std::borrow::Cow::Owned(Moments { rows: Some(rows.clone()), ..fold_rows(rows.view())?.finish()? }))
            }
            _ => Ok(std::borrow::Cow::Borrowed(self)),
        }
    }

    /// The uncentred second moment `E[x xᵀ] = Cov + μμᵀ`.
    pub fn second_moment(&self) -> Matrix {
        let mu = &self.mean;
        let mut m = self.covariance.clone();
        for i in 0..mu.len() {
            for j in 0..mu.len() {
                m[(i, j)] += mu[i] * mu[j];
            }
        }
        m
    }

    /// The moments, if finite: a finite stream whose second moments overflow f64 (activations
    /// beyond ~1e154, e.g. weights scaled by 1e300) is an error naming `what` and the cause,
    /// before a decomposition meets an infinity.
    pub fn checked(self, what: &str) -> Result<Self> {
        let bad = self.covariance.as_slice().iter().chain(&self.mean).position(|v| !v.is_finite());
        // Without a formed covariance (kept rows), its diagonal (the kernel's trace) bounds
        // every entry of the Gram and of its kernel.
        let bad = bad.or_else(|| {
            let rows = self.rows.as_ref().filter(|_| self.covariance.nrows() != self.mean.len())?;
            let d = self.mean.len();
            let n = rows.nrows() as f64;
            let diagonal = (0..d).map(|j| (0..rows.nrows()).map(|i| (rows[(i, j)] - self.mean[j]).powi(2) / n).sum());
            diagonal.enumerate().find(|(_, v): &(usize, f64)| !v.is_finite()).map(|(j, _)| j * d + j)
        });
        match bad {
            None => Ok(self),
            Some(k) => {
                let d = self.mean.len().max(1);
                let (row, col) = if k < d * d { (k / d, k % d) } else { (0, k - d * d) };
                let largest = self.mean.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
                Err(Error::NonFinite {
                    what: format!(
                        "{what}: second moments overflow f64 (finite activations too large to square; largest mean |x| {largest:e})"
                    ),
                    row,
                    col,
                    value: f64::INFINITY,
                })
            }
        }
    }

    /// The moments of the first `dim − 1` coordinates: the units of a folded node, its constant
    /// coordinate (last, exactly 1 on the data: zero variance) left out.
    pub fn without_constant(&self) -> Moments {
        self.clone().into_without_constant()
    }

    /// [`without_constant`](Self::without_constant) in place: the rows and the covariance
    /// lose their last column without a copy (a wide node's rows are its largest state).
    pub(crate) fn into_without_constant(mut self) -> Moments {
        let d = self.mean.len().saturating_sub(1);
        self.mean.truncate(d);
        if self.covariance.nrows() == d + 1 {
            let mut data = drop_last_column(std::mem::take(&mut self.covariance)).into_vec();
            data.truncate(d * d);
            self.covariance = Matrix::from_vec(d, d, data).expect("d · d entries");
        }
        self.rows = self.rows.map(drop_last_column);
        self
    }
}

/// `m` without its last column, compacted in its own buffer.
fn drop_last_column(m: Matrix) -> Matrix {
    let (n, w) = m.shape();
    if w == 0 {
        return m;
    }
    let mut data = m.into_vec();
    // Row i moves from i·w to i·(w − 1) ≤ i·w: front to back, nothing is overwritten unread.
    for i in 1..n {
        data.copy_within(i * w..i * w + w - 1, i * (w - 1));
    }
    data.truncate(n * (w - 1));
    Matrix::from_vec(n, w - 1, data).expect("n · (w − 1) entries")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two-pass mean and covariance, summed plainly: the reference.
    fn dense(x: &Matrix) -> (Vec<f64>, Matrix) {
        let (n, d) = x.shape();
        let mean: Vec<f64> = (0..d).map(|j| (0..n).map(|i| x[(i, j)]).sum::<f64>() / n as f64).collect();
        let cov = Matrix::from_fn(d, d, |a, b| {
            (0..n).map(|i| (x[(i, a)] - mean[a]) * (x[(i, b)] - mean[b])).sum::<f64>() / n as f64
        });
        (mean, cov)
    }

    #[test]
    fn one_large_batch_and_many_small_ones_equal_the_two_pass_moments() {
        // 1000 rows of width 7 take the chunked parallel path; width 300 the one-GEMM path.
        for (n, d) in [(1000, 7), (700, 300), (3, 5)] {
            let x = Matrix::from_fn(n, d, |i, j| ((i * 37 + j * 11) % 23) as f64 * 0.1 + 5.0 + j as f64);
            let (mean, cov) = dense(&x);
            let mut whole = GramAccumulator::new(d);
            whole.update(x.view()).unwrap();
            let mut pieces = GramAccumulator::new(d);
            for s in (0..n).step_by(97) {
                pieces.update(x.rows(s..(s + 97).min(n))).unwrap();
            }
            for acc in [&whole, &pieces] {
                let m = acc.finish().unwrap();
                assert_eq!(m.count, n as u64);
                // Fewer rows than the width: the rows are kept (the Gram's kernel side).
                assert_eq!(m.rows.as_ref().map(|r| r.shape()), (n < d).then_some((n, d)));
                let scale = cov.max_abs();
                for (a, b) in m.covariance.as_slice().iter().zip(cov.as_slice()) {
                    assert!((a - b).abs() <= 1e-12 * scale, "{n}×{d}: {a} vs {b}");
                }
                for (a, b) in m.mean.iter().zip(&mean) {
                    assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{n}×{d}: mean {a} vs {b}");
                }
            }
        }
        let mut acc = GramAccumulator::new(3);
        assert!(acc.update(Matrix::zeros(4, 2).view()).is_err());
        assert!(acc.finish().is_err());
        assert!(acc.finish_rows().is_err());
    }

    /// Kept rows without a formed covariance: the mean is `finish`'s to the bit, the covariance
    /// formed on demand is `finish`'s, and a Gram that overflows is caught from the rows.
    #[test]
    fn moments_from_kept_rows_match_finish_and_catch_overflow() {
        let x = Matrix::from_fn(5, 9, |i, j| ((i * 7 + j * 3) % 11) as f64 - 4.0 + j as f64);
        let mut acc = GramAccumulator::new(9);
        acc.update(x.view()).unwrap();
        let (lean, full) = (acc.finish_rows().unwrap(), acc.finish().unwrap());
        assert_eq!((lean.covariance.nrows(), &lean.mean, &lean.rows), (0, &full.mean, &full.rows));
        assert_eq!(*lean.with_covariance().unwrap(), full);
        let without = lean.clone().into_without_constant();
        assert_eq!(without.rows.as_ref().unwrap(), full.without_constant().rows.as_ref().unwrap());
        assert!(lean.checked("rows").is_ok());
        let huge = Matrix::from_fn(5, 9, |i, j| if (i + j) % 2 == 0 { 1e200 } else { -1e200 });
        let mut acc = GramAccumulator::new(9);
        acc.update(huge.view()).unwrap();
        let err = acc.finish_rows().unwrap().checked("huge rows").unwrap_err();
        assert!(matches!(err, Error::NonFinite { .. }), "{err}");
    }

    /// `q ⊙ E[xxᵀ]` from the scatter equals the product with a two-pass `Cov + μμᵀ`, with the
    /// rows kept (3 rows of 6) and folded (9 rows), on the leading block of a larger `q`.
    #[test]
    fn hadamard_with_the_second_moment_matches_a_two_pass_reference() {
        for n in [3, 9] {
            let x = Matrix::from_fn(n, 6, |i, j| ((i * 5 + j * 7) % 13) as f64 / 3.0 - 1.5 + 0.25 * j as f64);
            let mut acc = GramAccumulator::new(6);
            acc.update(x.view()).unwrap();
            let (mean, cov) = dense(&x);
            let q0 = Matrix::from_fn(7, 7, |i, j| 1.0 + (i * 7 + j) as f64 / 10.0);
            let mut q = q0.clone();
            acc.scale_by_second_moment_lower(&mut q).unwrap();
            for i in 0..7 {
                for j in 0..7 {
                    let expected =
                        if j <= i && i < 6 { q0[(i, j)] * (cov[(i, j)] + mean[i] * mean[j]) } else { q0[(i, j)] };
                    assert!((q[(i, j)] - expected).abs() <= 1e-12 * expected.abs().max(1.0), "n {n} ({i}, {j})");
                }
            }
            let mut small = Matrix::zeros(5, 5);
            assert!(matches!(acc.scale_by_second_moment_lower(&mut small), Err(Error::ShapeMismatch { .. })));
        }
        let mut q = Matrix::zeros(6, 6);
        assert!(matches!(GramAccumulator::new(6).scale_by_second_moment_lower(&mut q), Err(Error::Empty { .. })));
    }
}
