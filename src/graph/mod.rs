//! The interaction graph: edges between basis directions of adjacent node layers, and the
//! modules found in it.

mod edges;

pub use edges::{EdgeAccumulator, EdgeConfig, EdgeFormula, Edges, compute_edge, compute_edges};
