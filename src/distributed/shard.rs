//! One process's share of the rows: the sampler every pass of a distributed run streams.

use super::communicator::Communicator;
use crate::data::ActivationSampler;
use crate::error::{Error, Result};
use crate::matrix::MatrixView;
use std::ops::Range;

pub use crate::data::ROW_GRID;

/// The items (rows, chains) of shard `index` of `count`: contiguous, in order, the shards'
/// sizes differing by at most one `grid` block (`grid` = [`ROW_GRID`] for rows, 1 for chains).
/// The shards `0..count` cover `0..total` exactly once; some are empty if `total` has fewer than
/// `count` blocks.
///
/// ```
/// use degeneracy::distributed::shard_range;
/// assert_eq!(shard_range(1000, 0, 3, 256)?, 0..256);
/// assert_eq!(shard_range(1000, 2, 3, 256)?, 512..1000);
/// assert_eq!(shard_range(5, 1, 2, 1)?, 2..5);
/// # Ok::<(), degeneracy::Error>(())
/// ```
pub fn shard_range(total: usize, index: usize, count: usize, grid: usize) -> Result<Range<usize>> {
    if count == 0 || index >= count {
        return Err(Error::invalid("shard", format!("{index}/{count}"), "need shard index < shard count (0-based)"));
    }
    if grid == 0 {
        return Err(Error::invalid("shard grid", 0, "must be at least 1"));
    }
    let blocks = total.div_ceil(grid) as u128;
    let edge = |i: usize| (((i as u128 * blocks) / count as u128) as usize * grid).min(total);
    Ok(edge(index)..edge(index + 1))
}

/// The rows of one shard of a sampler: a contiguous range with the dataset's row indices kept
/// (errors name the dataset-wide row).
///
/// * [`Shard::of_rank`]: this rank's share in a group of processes. Every pass over it (the
///   statistics, `M'`, edges, diagnostics) merges the ranks' states before returning, so each
///   rank gets the result over **all** rows: the usual functions (`fit_bases`, `compute_edges`,
///   `diagnose`…) run distributed without changing a line.
/// * [`Shard::new`]: shard `index` of `count`, for one worker of a file-based run. Passes return
///   the state of this shard's rows only, to be written with
///   [`crate::distributed::write_shard_file`] and combined by
///   [`crate::distributed::merge_shard_files`].
///
/// ```
/// use degeneracy::data::ActivationSampler;
/// use degeneracy::distributed::Shard;
/// use degeneracy::estimate::GramAccumulator;
/// use degeneracy::Matrix;
/// let x = Matrix::from_fn(600, 2, |i, j| (i * (j + 1)) as f64);
/// let mut total = GramAccumulator::new(2);
/// for i in 0..3 {
///     let shard = Shard::new(&x, i, 3)?;
///     shard.for_each_chunk(&mut |_, rows| total.update(rows))?;
/// }
/// assert_eq!(total.count(), 600);
/// # Ok::<(), degeneracy::Error>(())
/// ```
#[derive(Clone, Copy)]
pub struct Shard<'a> {
    sampler: &'a dyn ActivationSampler,
    rows: (usize, usize),
    index: usize,
    count: usize,
    communicator: Option<&'a dyn Communicator>,
}

impl std::fmt::Debug for Shard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("rows", &(self.rows.0..self.rows.1))
            .field("index", &self.index)
            .field("count", &self.count)
            .field("distributed", &self.communicator.is_some())
            .finish()
    }
}

impl<'a> Shard<'a> {
    /// Shard `index` of `count` (rows [`shard_range`] on the [`ROW_GRID`]), for a file-based run.
    pub fn new(sampler: &'a dyn ActivationSampler, index: usize, count: usize) -> Result<Self> {
        let r = shard_range(sampler.n_samples(), index, count, ROW_GRID)?;
        Ok(Shard { sampler, rows: (r.start, r.end), index, count, communicator: None })
    }

    /// This rank's shard in `comm`'s group; passes over it merge across the ranks.
    pub fn of_rank(sampler: &'a dyn ActivationSampler, comm: &'a dyn Communicator) -> Result<Self> {
        if sampler.n_samples() == 0 {
            return Err(Error::Empty { what: "sampler: no samples to distribute".into() });
        }
        let mut shard = Self::new(sampler, comm.rank(), comm.size())?;
        shard.communicator = Some(comm);
        Ok(shard)
    }

    /// The dataset rows of this shard.
    pub fn rows(&self) -> Range<usize> {
        self.rows.0..self.rows.1
    }

    /// Shard index (the rank for [`Shard::of_rank`]).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Number of shards (the group size for [`Shard::of_rank`]).
    pub fn count(&self) -> usize {
        self.count
    }
}

impl ActivationSampler for Shard<'_> {
    fn n_samples(&self) -> usize {
        self.rows.1 - self.rows.0
    }

    fn dim(&self) -> usize {
        self.sampler.dim()
    }

    fn for_each_chunk(&self, visit: &mut dyn FnMut(usize, MatrixView<'_>) -> Result<()>) -> Result<()> {
        self.sampler.for_each_chunk_in(self.rows(), visit)
    }

    fn for_each_chunk_in(
        &self,
        rows: Range<usize>,
        visit: &mut dyn FnMut(usize, MatrixView<'_>) -> Result<()>,
    ) -> Result<()> {
        let (a, b) = (rows.start.max(self.rows.0), rows.end.min(self.rows.1));
        if a >= b {
            return Ok(());
        }
        self.sampler.for_each_chunk_in(a..b, visit)
    }

    fn total_samples(&self) -> usize {
        self.sampler.total_samples()
    }

    fn communicator(&self) -> Option<&dyn Communicator> {
        self.communicator
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Matrix;

    #[test]
    fn ranges_cover_everything_once_on_the_grid() {
        for total in [0, 1, 255, 256, 257, 1024, 10_000] {
            for count in 1..=6 {
                let mut next = 0;
                for i in 0..count {
                    let r = shard_range(total, i, count, ROW_GRID).unwrap();
                    assert_eq!(r.start, next);
                    assert!(r.start % ROW_GRID == 0 || r.is_empty());
                    next = r.end;
                }
                assert_eq!(next, total);
            }
        }
        assert!(shard_range(10, 2, 2, 1).is_err());
        assert!(shard_range(10, 0, 0, 1).is_err());
    }

    #[test]
    fn a_shard_yields_its_rows_with_dataset_indices() {
        let x = Matrix::from_fn(700, 1, |i, _| i as f64);
        let s = Shard::new(&x, 1, 2).unwrap();
        assert_eq!(s.rows(), 256..700);
        let mut seen = Vec::new();
        s.for_each_chunk(&mut |first, rows| {
            seen.push((first, rows.nrows(), rows[(0, 0)]));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [(256, 444, 256.0)]);
        assert!(s.communicator().is_none());
    }
}
