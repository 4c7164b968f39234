//! Sources of samples that the estimators stream over, any number of times.

use super::Dataset;
use crate::error::{Error, Result};
use crate::io::NpyRowReader;
use crate::matrix::{Matrix, MatrixView};
use rayon::prelude::*;
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
}

/// Streams a 2-D float `.npy` file in chunks, re-reading it on every pass.
#[derive(Clone, Debug)]
pub struct NpySampler {
    path: PathBuf,
    chunk_rows: usize,
    rows: usize,
    cols: usize,
}

impl NpySampler {
    /// Opens `path` (reading only its header) for passes in chunks of `chunk_rows` rows.
    pub fn open(path: impl AsRef<Path>, chunk_rows: usize) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let reader = NpyRowReader::open(&path, chunk_rows)?;
        if reader.n_rows() == 0 || reader.n_cols() == 0 {
            return Err(Error::Empty { what: format!("{}: no rows or zero-width rows", path.display()) });
        }
        Ok(NpySampler { rows: reader.n_rows(), cols: reader.n_cols(), path, chunk_rows })
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
        let mut reader = NpyRowReader::open(&self.path, self.chunk_rows)?;
        let (mut chunk, mut first) = (Matrix::default(), 0);
        while reader.next_chunk(&mut chunk)? {
            visit(first, chunk.view())?;
            first += chunk.nrows();
        }
        Ok(())
    }
}

/// Rows per unit of parallel work: small enough that a 1024-row batch keeps two cores busy,
/// large enough for efficient GEMMs.
const WORK_UNIT_ROWS: usize = 256;

/// Maps every unit of at most `min(batch_size, 256)` consecutive rows to a state with
/// `map(state, first_row, rows)` and merges the states **in row order**, so the result does not
/// depend on the thread count (only on the unit boundaries, which are fixed). Units of a chunk
/// run in parallel; a lone unit runs on the caller's thread.
pub(crate) fn map_batches<S: Send>(
    sampler: &dyn ActivationSampler,
    batch_size: usize,
    new_state: impl Fn() -> S + Sync,
    map: impl Fn(&mut S, usize, MatrixView<'_>) -> Result<()> + Sync,
    mut merge: impl FnMut(&mut S, S) -> Result<()>,
) -> Result<S> {
    if batch_size == 0 {
        return Err(Error::invalid("batch_size", 0, "must be at least 1"));
    }
    if sampler.n_samples() == 0 {
        return Err(Error::Empty { what: "sampler: no samples".into() });
    }
    let batch_size = batch_size.min(WORK_UNIT_ROWS);
    let mut total = new_state();
    sampler.for_each_chunk(&mut |first, chunk| {
        let starts: Vec<usize> = (0..chunk.nrows()).step_by(batch_size).collect();
        let run = |&s: &usize| {
            let mut state = new_state();
            map(&mut state, first + s, chunk.rows(s..(s + batch_size).min(chunk.nrows())))?;
            Ok(state)
        };
        let states: Vec<Result<S>> =
            if starts.len() == 1 { vec![run(&starts[0])] } else { starts.par_iter().map(run).collect() };
        for state in states {
            merge(&mut total, state?)?;
        }
        Ok(())
    })?;
    Ok(total)
}
