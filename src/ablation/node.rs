//! Node ablation: keep the first `n` directions of a basis at one node layer and score the
//! network, for many `n` in one pass.

use super::downstream::Downstream;
use super::eval::{Eval, ScoreSum, check_data, score_rows};
use super::{node_activations, par_units};
use crate::basis::Basis;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::matrix::Matrix;
use crate::nn::{Network, checked_section};
use crate::scratch::ScratchMatrix;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Stacked rows per downstream evaluation (bounds the GEMM size and memory per stack).
const STACK_ROWS: usize = 8192;
/// Values of pre-activation snapshots held at once per unit of rows.
const ROUND_VALUES: usize = 1 << 22;

/// A node-ablation curve: the score with the first `n` directions kept, for each point `n`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeCurve {
    /// The node layer.
    pub node: String,
    /// Number of directions of the basis (the largest possible `n`).
    pub dim: usize,
    /// `(n, score)`, `n` ascending.
    pub scores: Vec<(usize, f64)>,
}

impl NodeCurve {
    /// The smallest evaluated `n` whose score is within `delta` of `base` (see [`Eval::within`]).
    pub fn smallest_within(&self, eval: Eval, base: f64, delta: f64) -> Option<usize> {
        self.scores.iter().find(|&&(_, s)| eval.within(s, base, delta)).map(|&(n, _)| n)
    }
}

/// Scores `net` on `data` with node `node`'s folded activations `f` replaced by `f C_n C⁺_n`,
/// for every `n` in `n_kept` (see [`super::rotation_matrix`]: `n = dim` is the identity, `n = 0`
/// zeroes the activations, constant coordinate included, so the biases downstream are switched
/// off too, as in the reference).
///
/// One pass: the layers before the node run once per row; when the section after the node
/// starts with an affine + elementwise layer, that layer's pre-activations are a running sum over
/// the kept coordinates (`z_n = z_{n−1} + u_n (C⁺ W_fᵀ)[n]`, in the same order for every
/// schedule; otherwise the running sum is over the activations themselves), and the rest of the
/// network runs on all points' activations stacked. Rows are processed in parallel in fixed
/// units and merged in order, so the scores do not depend on the thread count.
///
/// ```
/// use degeneracy::ablation::{Eval, evaluate, node_ablation_curve};
/// use degeneracy::basis::{Basis, LibConfig, fit_bases};
/// use degeneracy::{Activation, Mlp, data::modular_addition};
/// let data = modular_addition(5)?;
/// let mlp = Mlp::init(&[10, 8, 5], Activation::Relu, true, 0)?;
/// let bases = fit_bases(&mlp, &data, &LibConfig::default())?;
/// let dim = bases[1].dim();
/// let curve = node_ablation_curve(&mlp, &data, 1, &bases[1], &[0, 1, dim], Eval::CrossEntropy)?;
/// let base = evaluate(&mlp, &data, Eval::CrossEntropy)?;
/// assert!((curve.scores[2].1 - base).abs() < 1e-12); // everything kept
/// # Ok::<(), degeneracy::Error>(())
/// ```
pub fn node_ablation_curve(
    net: &dyn Network,
    data: &Dataset,
    node: usize,
    directions: &dyn Basis,
    n_kept: &[usize],
    eval: Eval,
) -> Result<NodeCurve> {
    check_data(net, data, eval)?;
    let layers = net.node_layers();
    let Some(at) = layers.get(node) else {
        return Err(Error::UnknownNode { name: format!("node {node}"), available: net.node_names() });
    };
    let last = layers.len() - 1;
    let orig = at.width;
    if directions.orig_dim() != orig || directions.c_pinv().shape() != (directions.dim(), orig) {
        return Err(Error::shape(
            "node_ablation_curve: basis C [orig, dim] at the node",
            &[orig, directions.dim()],
            &[directions.orig_dim(), directions.dim()],
        ));
    }
    let dim = directions.dim();
    let mut points = n_kept.to_vec();
    points.sort_unstable();
    points.dedup();
    if let Some(&bad) = points.iter().find(|&&n| n > dim) {
        return Err(Error::invalid("kept directions", bad, format!("the basis has {dim} directions")));
    }
    if points.is_empty() {
        return Err(Error::invalid("kept directions", "[]", "no point to evaluate"));
    }
    let section = if node < last { Some(checked_section(net, node, last)?) } else { None };
    let down = Downstream::new(directions.c_pinv(), section)?;

    let c = directions.c();
    let parts = par_units(data.len(), |rows| {
        let first = rows.start;
        let (x, _) = data.slice(rows);
        let f = node_activations(net, x, node, first)?;
        let u = f.matmul(c)?;
        unit_scores(&down, &f, &u, &points, dim, |y| score_rows(eval, y, data, first))
    })?;
    let mut sums = vec![ScoreSum::default(); points.len()];
    for part in parts {
        for (s, p) in sums.iter_mut().zip(part) {
            s.add(p);
        }
    }
    let scores = points.iter().zip(&sums).map(|(&n, s)| (n, s.value())).collect();
    Ok(NodeCurve { node: at.name.clone(), dim, scores })
}

/// The score sums of every point on one unit of rows with activations `f` and coordinates `u`.
fn unit_scores(
    down: &Downstream,
    f: &Matrix,
    u: &Matrix,
    points: &[usize],
    dim: usize,
    score: impl Fn(crate::MatrixView<'_>) -> Result<ScoreSum> + Sync,
) -> Result<Vec<ScoreSum>> {
    let (r, w) = (f.nrows(), down.width());
    let per_stack = (STACK_ROWS / r.max(1)).max(1);
    let per_round = (ROUND_VALUES / (r * w).max(1)).max(per_stack);
    let map = down.coord_map();
    let mut running = ScratchMatrix::take();
    running.resize(r, w);
    running.fill(0.0);
    let mut added = 0;
    let mut out = Vec::with_capacity(points.len());
    for round in points.chunks(per_round) {
        // Snapshots of the running pre-activations, in order (cheap), ...
        let mut stacks = Vec::new();
        for chunk in round.chunks(per_stack) {
            let mut stack = ScratchMatrix::take();
            stack.resize(chunk.len() * r, w);
            for (s, &n) in chunk.iter().enumerate() {
                let block = &mut stack.as_mut_slice()[s * r * w..(s + 1) * r * w];
                if n == dim {
                    down.preactivations_of(f.view(), block);
                } else {
                    for x in 0..r {
                        let (p, ux) = (running.row_mut(x), u.row(x));
                        for (j, &uj) in ux.iter().enumerate().take(n).skip(added) {
                            for (pv, &m) in p.iter_mut().zip(map.row(j)) {
                                *pv += uj * m;
                            }
                        }
                    }
                    added = n;
                    block.copy_from_slice(running.as_slice());
                }
            }
            stacks.push((chunk.len(), stack));
        }
        // ... then the rest of the network on each stack, in parallel across points.
        let scored: Vec<Vec<ScoreSum>> = stacks
            .into_par_iter()
            .map(|(len, mut stack)| {
                down.finish(&mut stack)?;
                let r_out = stack.nrows() / len;
                (0..len).map(|s| score(stack.rows(s * r_out..(s + 1) * r_out))).collect()
            })
            .collect::<Result<_>>()?;
        out.extend(scored.into_iter().flatten());
    }
    Ok(out)
}
