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
