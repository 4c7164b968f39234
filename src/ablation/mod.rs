//! Ablation curves: how much of a network's behaviour survives when it is restricted to the
//! first directions of a basis (node ablation), or to the strongest interaction edges between
//! two node layers (edge ablation). This is the reference's evidence that a basis is a good
//! coordinate system: fewer directions and fewer edges for the same accuracy.
//!
//! - **Node ablation** at node layer `k` keeps the first `n` directions of a basis,
//!   `f ↦ f C_n C⁺_n` (the other columns of `C` zeroed), and evaluates the rest of the network.
//!   A whole curve (many `n`) costs about one evaluation of the downstream network per point,
//!   without re-running the layers before `k`: the first downstream layer's pre-activations are a
//!   running sum over the kept coordinates, and the points are evaluated stacked.
//! - **Edge ablation** between two consecutive node layers keeps the `k` largest edges and runs
//!   the section so that each output direction only sees its kept input directions; a bisection
//!   finds the fewest edges that keep the score within δ of the unablated one.
//!
//! The formulas are in `docs/math.md` §6. Everything is deterministic: rows are processed in
//! fixed units in parallel and merged in row order, so scores do not depend on the thread count.

mod directions;
mod downstream;
mod edge;
mod eval;
mod mask;
mod node;
mod schedule;

pub use directions::{Directions, rotation_matrix};
pub use edge::{EdgeAblation, EdgeBisect, by_layer_log_norm};
pub use eval::{Eval, evaluate};
pub use mask::EdgeMask;
pub use node::{NodeCurve, node_ablation_curve};
pub use schedule::{Midpoint, Schedule, bisect_smallest};

use crate::error::Result;
use crate::matrix::{Matrix, MatrixView};
use crate::nn::Network;
use rayon::prelude::*;
use std::ops::Range;

/// Maps every unit of at most [`crate::data::ROW_GRID`] consecutive rows of `0..n` with `f`, in
/// parallel, returning the results in row order (fixed units: results do not depend on the
/// thread count).
fn par_units<S: Send>(n: usize, f: impl Fn(Range<usize>) -> Result<S> + Sync) -> Result<Vec<S>> {
    let unit = crate::data::ROW_GRID;
    let starts: Vec<usize> = (0..n).step_by(unit).collect();
    starts.par_iter().map(|&s| f(s..(s + unit).min(n))).collect()
}

/// The folded activations at node `k` of a batch of inputs whose first row is sample `first`.
fn node_activations(net: &dyn Network, x: MatrixView<'_>, k: usize, first: usize) -> Result<Matrix> {
    let mut acts = vec![Matrix::default()];
    net.forward_nodes(x, &[k], &mut acts)?;
    crate::estimate::check_node_rows(net, k, &acts[0], first)?;
    Ok(acts.pop().expect("one node"))
}
