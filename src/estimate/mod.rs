//! Streaming estimators: moments (Gram matrices) of activations and derivative vectors, and
//! the quadrature rules of integrated gradients.

mod gram;
mod node_stats;
mod quadrature;
mod sources;

pub use gram::{GramAccumulator, Moments};
pub use node_stats::NodeStatistics;
pub(crate) use node_stats::{check_node_rows, check_sampler};
pub use quadrature::{Quadrature, QuadraturePoint};
pub use sources::StochasticSources;
