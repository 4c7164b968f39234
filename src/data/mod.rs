//! Datasets and batching.

mod dataset;
mod synthetic;

pub use dataset::{Batch, Dataset, Targets};
pub use synthetic::modular_addition;
