//! Datasets, batching, and the samplers the estimators stream over.

mod dataset;
mod sampler;
mod synthetic;

pub use dataset::{Batch, Dataset, Targets};
pub(crate) use sampler::map_batches;
pub use sampler::{ActivationSampler, NpySampler};
pub use synthetic::modular_addition;
