//! Sources of samples that the estimators stream over, any number of times.

use super::Dataset;
use crate::distributed::{Communicator, all_merge};
use crate::error::{Error, Result};
use crate::io::NpyRowReader;
use crate::matrix::{Matrix, MatrixView};
use rayon::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Rows (samples) that can be visited in order, repeatedly: a model's inputs, or activations
/// captured at a node by other software.
///
/// Building a basis needs several passes (the basis at node `k` needs the one at `k + 1`), so
/// a sampler must be re-runnable; it never needs to hold all rows at once.
pub trait ActivationSampler: Sync {
    /// Number of rows.
    fn n_samples(&self) -> usize;

    /// Width of a row.
    fn dim(&self) -> usize;

    /// Calls `visit(first_row, chunk)` for consecutive blocks of rows covering every sample
    /// once, in order. Chunks may have any size.
    fn for_each_chunk(&self, visit: &mut dyn FnMut(usize, MatrixView<'_>) -> Result<()>) -> Result<()>;

    /// Like [`ActivationSampler::for_each_chunk`], for the rows `rows` only (row indices as in
    /// the full pass). The default runs the full pass and hands on the overlap; samplers that
    /// can seek override it.
    fn for_each_chunk_in(
        &self,
        rows: Range<usize>,
        visit: &mut dyn FnMut(usize, MatrixView<'_>) -> Result<()>,
    ) -> Result<()> {
        check_rows(&rows, self.n_samples())?;
        if rows.is_empty() {
            return Ok(());
        }
        self.for_each_chunk(&mut |first, chunk| {
            let (a, b) = (rows.start.max(first), rows.end.min(first + chunk.nrows()));
            if a < b { visit(a, chunk.rows(a - first..b - first)) } else { Ok(()) }
        })
    }

    /// Rows of the whole dataset this sampler is a part of (see [`crate::distributed::Shard`]);
    /// [`ActivationSampler::n_samples`] for a whole dataset.
    fn total_samples(&self) -> usize {
        self.n_samples()
    }

    /// The group of processes that share the dataset, if this sampler holds one process's
    /// share: every pass then merges the processes' states (see [`crate::distributed`]).
    fn communicator(&self) -> Option<&dyn Communicator> {
        None
    }
}

fn check_rows(rows: &Range<usize>, n: usize) -> Result<()> {
    if rows.start > rows.end || rows.end > n {
        return Err(Error::invalid("rows", format!("{rows:?}"), format!("the sampler has {n} rows")));
    }
    Ok(())
}

impl ActivationSampler for Matrix {
    fn n_samples(&self) -> usize {
        self.nrows()
    }

    fn dim(&self) -> usize {
        self.ncols()
    }

    fn for_each_chunk(&self, visit: &mut dyn FnMut(usize, MatrixView<'_>) -> Result<()>) -> Result<()> {
        visit(0, self.view())
    }

    fn for_each_chunk_in(
        &self,
        rows: Range<usize>,
        visit: &mut dyn FnMut(usize, MatrixView<'_>) -> Result<()>,
    ) -> Result<()> {
        check_rows(&rows, self.nrows())?;
        if rows.is_empty() { Ok(()) } else { visit(rows.start, self.rows(rows)) }
    }
}

impl ActivationSampler for Dataset {
    fn n_samples(&self) -> usize {
        self.len()
    }

    fn dim(&self) -> usize {
        self.input_dim()
    }

    fn for_each_chunk(&self, visit: &mut dyn FnMut(usize, MatrixView<'_>) -> Result<()>) -> Result<()> {
        visit(0, self.inputs().view())
    }

    fn for_each_chunk_in(
        &self,
        rows: Range<usize>,
        visit: &mut dyn FnMut(usize, MatrixView<'_>) -> Result<()>,
    ) -> Result<()> {
        self.inputs().for_each_chunk_in(rows, visit)
    }
}

/// Streams a 2-D float `.npy` file in chunks, re-reading it on every pass, except that a file
/// of at most one chunk is read once, on the first pass, and kept: the memory of the one chunk
/// a pass holds anyway, without a read (and fresh pages) per pass.
#[derive(Clone, Debug)]
pub struct NpySampler {
    path: PathBuf,
    chunk_rows: usize,
    rows: usize,
    cols: usize,
    /// The whole file, once read, when it is a single chunk.
    single_chunk: std::sync::OnceLock<Matrix>,
}

impl NpySampler {
    /// Opens `path` (reading only its header) for passes in chunks of `chunk_rows` rows.
    pub fn open(path: impl AsRef<Path>, chunk_rows: usize) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let reader = NpyRowReader::open(&path, chunk_rows)?;
        if reader.n_rows() == 0 || reader.n_cols() == 0 {
            return Err(Error::Empty { what: format!("{}: no rows or zero-width rows", path.display()) });
        }
        Ok(NpySampler {
            rows: reader.n_rows(),
            cols: reader.n_cols(),
            path,
            chunk_rows,
            single_chunk: std::sync::OnceLock::new(),
        })
    }
}

impl ActivationSampler for NpySampler {
    fn n_samples(&self) -> usize {
        self.rows
    }

    fn dim(&self) -> usize {
        self.cols
    }

    fn for_each_chunk(&self, visit: &mut dyn FnMut(usize, MatrixView<'_>) -> Result<()>) -> Result<()> {
        self.for_each_chunk_in(0..self.rows, visit)
    }

    /// Seeks to `rows.start` and reads only `rows`, in chunks on the same grid as the full pass
    /// (multiples of `chunk_rows` from row 0), so a shard's work units match a single process's.
    fn for_each_chunk_in(
        &self,
        rows: Range<usize>,
        visit: &mut dyn FnMut(usize, MatrixView<'_>) -> Result<()>,
    ) -> Result<()> {
        check_rows(&rows, self.rows)?;
        if rows.is_empty() {
            return Ok(());
        }
        if self.rows <= self.chunk_rows {
            let whole = match self.single_chunk.get() {
                Some(m) => m,
                None => {
                    let mut m = Matrix::default();
                    NpyRowReader::open(&self.path, self.chunk_rows)?.read_rows(self.rows, &mut m)?;
                    // Concurrent first passes may both read; either copy is the file.
                    self.single_chunk.get_or_init(|| m)
                }
            };
            return visit(rows.start, whole.rows(rows));
        }
        let mut reader = NpyRowReader::open(&self.path, self.chunk_rows)?;
        reader.seek_row(rows.start)?;
        let mut chunk = Matrix::default();
        let mut first = rows.start;
        while first < rows.end {
            let boundary = (first / self.chunk_rows + 1) * self.chunk_rows;
            let take = boundary.min(rows.end) - first;
            reader.read_rows(take, &mut chunk)?;
            visit(first, chunk.view())?;
            first += take;
        }
        Ok(())
    }
}

/// Rows per unit of parallel work: small enough that a 1024-row batch keeps two cores busy,
/// large enough for efficient GEMMs.
const WORK_UNIT_ROWS: usize = super::ROW_GRID;

/// Maps every unit of at most `min(batch_size, 256)` consecutive rows to a state with
/// `map(state, first_row, rows)` and merges the states **in row order**, so the result does not
/// depend on the thread count (only on the unit boundaries, which are fixed). Units of a chunk
/// run in parallel; a lone unit runs on the caller's thread.
///
/// If the sampler holds one process's share of the rows (a [`crate::distributed::Shard`] of a
/// group), the processes' states are then merged in rank order and every process returns the
/// total ([`all_merge`]); a process that failed makes every process fail instead of hang.
pub(crate) fn map_batches<S: Send + Serialize + DeserializeOwned>(
    sampler: &dyn ActivationSampler,
    batch_size: usize,
    new_state: impl Fn() -> S + Sync,
    map: impl Fn(&mut S, usize, MatrixView<'_>) -> Result<()> + Sync,
    mut merge: impl FnMut(&mut S, S) -> Result<()>,
) -> Result<S> {
    super::check_batch_size(batch_size)?;
    if sampler.total_samples() == 0 {
        return Err(Error::Empty { what: "sampler: no samples".into() });
    }
    let local = local_pass(sampler, batch_size, new_state, map, &mut merge);
    match sampler.communicator() {
        Some(comm) => all_merge(comm, local, merge),
        None => local,
    }
}

fn local_pass<S: Send>(
    sampler: &dyn ActivationSampler,
    batch_size: usize,
    new_state: impl Fn() -> S + Sync,
    map: impl Fn(&mut S, usize, MatrixView<'_>) -> Result<()> + Sync,
    merge: &mut impl FnMut(&mut S, S) -> Result<()>,
) -> Result<S> {
    let batch_size = batch_size.min(WORK_UNIT_ROWS);
    // Units run in waves of a few per thread and are folded into the total in row order after
    // each wave: at most `wave` states are alive, whatever the number of rows, and the merge
    // order (hence every bit of the result) does not depend on the thread count.
    let wave = 2 * rayon::current_num_threads().max(1);
    let mut total = new_state();
    sampler.for_each_chunk(&mut |first, chunk| {
        let starts: Vec<usize> = (0..chunk.nrows()).step_by(batch_size).collect();
        let run = |&s: &usize| {
            let mut state = new_state();
            map(&mut state, first + s, chunk.rows(s..(s + batch_size).min(chunk.nrows())))?;
            Ok(state)
        };
        for group in starts.chunks(wave) {
            let states: Vec<Result<S>> =
                if group.len() == 1 { vec![run(&group[0])] } else { group.par_iter().map(run).collect() };
            for state in states {
                merge(&mut total, state?)?;
            }
        }
        Ok(())
    })?;
    Ok(total)
}
