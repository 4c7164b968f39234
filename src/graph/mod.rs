//! The interaction graph: edges between basis directions of adjacent node layers, the modules
//! found in it, and sparsity measures that compare bases.

mod edges;
mod interaction;
mod leiden;
mod modules;
mod sparsity;

pub use edges::{
    EdgeAccumulator, EdgeConfig, EdgeFormula, Edges, accumulate_edge, accumulate_edge_outputs, accumulate_edges,
    compute_edge, compute_edges,
};
pub(crate) use interaction::palette;
pub use interaction::{EdgeNorm, GraphEdge, GraphNode, InteractionGraph};
pub use leiden::{LeidenConfig, Partition, Quality, WeightedGraph, cpm, leiden, modularity};
pub use modules::{Modules, find_modules};
pub use sparsity::Sparsity;
