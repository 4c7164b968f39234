//! Datasets, batching, and the samplers the estimators stream over.

mod dataset;
mod sampler;
mod synthetic;

pub use dataset::{Batch, Dataset, Targets};
pub(crate) use sampler::map_batches;
pub use sampler::{ActivationSampler, NpySampler};
pub use synthetic::modular_addition;

/// The determinism grid: every pass cuts the rows into work units of at most this many
/// consecutive rows (fewer when the batch size is smaller), computes the units in parallel and
/// merges their states in row order. Results therefore depend on the unit boundaries only, not
/// on the number of threads; shards of a distributed run split rows on this grid, so with a
/// batch size of at least 256 (or a divisor of it) they process exactly a single process's units.
pub const ROW_GRID: usize = 256;

/// The largest batch size a config may ask for (16 Mi rows): passes work in units of at most
/// [`ROW_GRID`] rows whatever the batch size, so a larger one only hides a typo.
pub const MAX_BATCH_SIZE: usize = 1 << 24;

/// Errors unless `1 ≤ batch_size ≤` [`MAX_BATCH_SIZE`], naming the key.
pub(crate) fn check_batch_size(batch_size: usize) -> crate::Result<()> {
    if (1..=MAX_BATCH_SIZE).contains(&batch_size) {
        Ok(())
    } else {
        Err(crate::Error::invalid("batch_size", batch_size, format!("must lie in 1..={MAX_BATCH_SIZE}")))
    }
}
