//! Edge ablation between two consecutive node layers: keep the strongest edges, run the section
//! so that each output direction only sees the input directions it keeps, and bisect for the
//! fewest edges that keep the score within δ.

use super::downstream::Downstream;
use super::eval::{Eval, ScoreSum, check_data, evaluate, score_rows, total};
use super::mask::EdgeMask;
use super::schedule::{Midpoint, bisect_smallest};
use super::{node_activations, par_units};
use crate::basis::{Basis, NodeBasis};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::graph::{EdgeNorm, Edges};
use crate::linalg::gemm;
use crate::matrix::Matrix;
use crate::nn::{Network, Section, checked_section};
use crate::scratch::ScratchMatrix;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Stacked rows per evaluation of the section (bounds memory per unit of rows).
const STACK_ROWS: usize = 16384;

/// One layer pair prepared for edge ablations on a dataset: the input coordinates of every
/// sample are computed once, each evaluation then runs only the section between the two node
/// layers (once per group of output directions that keep the same inputs) and the network after
/// it.
pub struct EdgeAblation<'a> {
    data: &'a Dataset,
    input: &'a NodeBasis,
    output: &'a NodeBasis,
    edges: &'a Edges,
    eval: Eval,
    base: f64,
    pair: Downstream<'a>,
    tail: Option<Box<dyn Section + 'a>>,
    /// `u = f C_in` of every row (sample × input position).
    coords: Matrix,
    /// Input positions per sample.
    positions: usize,
}

impl<'a> EdgeAblation<'a> {
    /// Prepares the ablation of `edges` between the bases `input` and `output` (consecutive
    /// selected node layers of `net`), scored by `eval` on `data`.
    pub fn new(
        net: &'a dyn Network,
        data: &'a Dataset,
        input: &'a NodeBasis,
        output: &'a NodeBasis,
        edges: &'a Edges,
        eval: Eval,
    ) -> Result<Self> {
        check_data(net, data, eval)?;
        let (k, l) = (net.node_index(&input.node)?, net.node_index(&output.node)?);
        if k >= l {
            return Err(Error::invalid(
                "edge ablation layers",
                format!("{} → {}", input.node, output.node),
                "need an input node layer before the output node layer",
            ));
        }
        if edges.in_node != input.node || edges.out_node != output.node {
            return Err(Error::invalid(
                "edge ablation edges",
                format!("{} → {}", edges.in_node, edges.out_node),
                format!("the bases are {} → {}", input.node, output.node),
            ));
        }
        if edges.e_hat.shape() != (output.dim(), input.dim()) {
            return Err(Error::shape(
                "edge ablation: E_hat [dim out, dim in]",
                &[output.dim(), input.dim()],
                &[edges.e_hat.nrows(), edges.e_hat.ncols()],
            ));
        }
        let layers = net.node_layers();
        for (b, node) in [(input, k), (output, l)] {
            let orig = layers[node].width;
            if b.orig_dim() != orig {
                return Err(Error::shape(
                    "edge ablation: basis C [orig, dim] at the node",
                    &[orig, b.dim()],
                    &[b.orig_dim(), b.dim()],
                ));
            }
        }
        let last = layers.len() - 1;
        let pair = Downstream::new(input.c_pinv(), Some(checked_section(net, k, l)?))?;
        let tail = if l < last { Some(checked_section(net, l, last)?) } else { None };
        let blocks = par_units(data.len(), |rows| {
            node_activations(net, data.slice(rows.clone()).0, k, rows.start)?.matmul(input.c())
        })?;
        let positions = layers[k].positions.max(1);
        let mut coords = Vec::with_capacity(data.len() * positions * input.dim());
        for b in blocks {
            coords.extend_from_slice(b.as_slice());
        }
        let coords = Matrix::from_vec(data.len() * positions, input.dim(), coords)?;
        let base = evaluate(net, data, eval)?;
        Ok(EdgeAblation { data, input, output, edges, eval, base, pair, tail, coords, positions })
    }

    /// The unablated score.
    pub fn base_score(&self) -> f64 {
        self.base
    }

    /// The number of edges a bisection runs over, `orig_in × orig_out` (the sizes before
    /// truncation, as the reference, so that bases share one scale).
    pub fn total(&self) -> usize {
        self.input.orig_dim() * self.output.orig_dim()
    }

    /// The mask keeping the `k` strongest edges ([`EdgeMask::top_k`]; column 0 is free when the
    /// input basis has a constant direction).
    pub fn mask(&self, k: usize) -> Result<EdgeMask> {
        EdgeMask::top_k(&self.edges.e_hat, k, self.input.has_constant_direction)
    }

    /// The score with the `k` strongest edges kept.
    pub fn score(&self, k: usize) -> Result<f64> {
        self.score_mask(&self.mask(k)?)
    }

    /// The score with the edges of `mask` kept. A mask that keeps every edge scores as the
    /// unablated network (as in the reference; with a truncated output basis the ablated
    /// forward pass would otherwise also drop what the truncation dropped).
    ///
    /// Each output direction `i` sees the input `(u ⊙ m_i) C_in⁺` (`u = f C_in`, `m_i` = row `i`
    /// of the mask) and keeps `y C_out[:, i]` of the section's output `y`; output directions with
    /// equal rows share one evaluation. The new output activations `ŷ C_out⁺` then run through
    /// the rest of the network.
    pub fn score_mask(&self, mask: &EdgeMask) -> Result<f64> {
        if mask.shape() != self.edges.e_hat.shape() {
            let ((a, b), (c, d)) = (self.edges.e_hat.shape(), mask.shape());
            return Err(Error::shape("edge ablation mask", &[a, b], &[c, d]));
        }
        if mask.keeps_all() {
            return Ok(self.base);
        }
        let groups = self.groups(mask);
        let parts = par_units(self.data.len(), |rows| self.unit_score(&groups, rows))?;
        Ok(total(parts))
    }

    /// Output directions grouped by equal mask rows, in order of first appearance, each with its
    /// kept input directions, the rows of the coordinate map for them, and its `C_out` columns.
    fn groups(&self, mask: &EdgeMask) -> Vec<Group> {
        let (rows, _) = mask.shape();
        let mut index: HashMap<&[bool], usize> = HashMap::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        for i in 0..rows {
            let next = members.len();
            let g = *index.entry(mask.row(i)).or_insert(next);
            if g == next {
                members.push(Vec::new());
            }
            members[g].push(i);
        }
        let (map, c_out) = (self.pair.coord_map(), self.output.c());
        members
            .into_iter()
            .map(|outputs| {
                let row = mask.row(outputs[0]);
                let kept: Vec<usize> = (0..row.len()).filter(|&j| row[j]).collect();
                let map_rows = Matrix::from_fn(kept.len(), map.ncols(), |t, c| map[(kept[t], c)]);
                Group { c_out: c_out.select_columns(&outputs), outputs, kept, map_rows }
            })
            .collect()
    }

    fn unit_score(&self, groups: &[Group], rows: std::ops::Range<usize>) -> Result<ScoreSum> {
        let first = rows.start;
        let u = self.coords.rows(rows.start * self.positions..rows.end * self.positions);
        let r = u.nrows();
        let w = self.pair.width();
        let mut out_hat = Matrix::default();
        let per_stack = (STACK_ROWS / r.max(1)).max(1);
        let (mut gathered, mut stack) = (ScratchMatrix::take(), ScratchMatrix::take());
        for chunk in groups.chunks(per_stack) {
            stack.resize(chunk.len() * r, w);
            for (s, g) in chunk.iter().enumerate() {
                if g.kept.is_empty() {
                    // Nothing reaches these outputs: the zero input.
                    stack.as_mut_slice()[s * r * w..(s + 1) * r * w].fill(0.0);
                    continue;
                }
                gathered.resize(r, g.kept.len());
                for x in 0..r {
                    let (dst, src) = (gathered.row_mut(x), u.row(x));
                    for (d, &j) in dst.iter_mut().zip(&g.kept) {
                        *d = src[j];
                    }
                }
                let block = &mut stack.as_mut_slice()[s * r * w..(s + 1) * r * w];
                gemm(block, gathered.view(), false, g.map_rows.view(), false, 1.0, false);
            }
            self.pair.finish(&mut stack)?;
            let r_out = stack.nrows() / chunk.len();
            if out_hat.nrows() == 0 {
                out_hat = Matrix::zeros(r_out, self.output.dim());
            }
            for (s, g) in chunk.iter().enumerate() {
                let part = stack.rows(s * r_out..(s + 1) * r_out).matmul(g.c_out.view())?;
                for x in 0..r_out {
                    let dst = out_hat.row_mut(x);
                    for (t, &i) in g.outputs.iter().enumerate() {
                        dst[i] = part[(x, t)];
                    }
                }
            }
        }
        let f_out = out_hat.matmul(self.output.c_pinv())?;
        match &self.tail {
            None => score_rows(self.eval, f_out.view(), self.data, first),
            Some(tail) => {
                let mut y = Matrix::default();
                tail.forward(f_out.view(), &mut y)?;
                score_rows(self.eval, y.view(), self.data, first)
            }
        }
    }

    /// Bisects for the fewest kept edges whose score stays within `delta` of the unablated one
    /// ([`Eval::within`]), over `0..=`[`EdgeAblation::total`] ([`bisect_smallest`]).
    ///
    /// Unlike the reference, the reported count is the smallest `k` found within δ (the reference
    /// reports one fewer) and the returned mask is the mask of that `k`.
    pub fn bisect(&self, delta: f64, midpoint: Midpoint) -> Result<EdgeBisect> {
        if !(delta >= 0.0 && delta.is_finite()) {
            return Err(Error::invalid("score_target_difference", delta, "must be finite and ≥ 0"));
        }
        let total = self.total();
        let mut probes = Vec::new();
        let k = bisect_smallest(total, midpoint, |k| {
            let s = self.score(k)?;
            probes.push((k, s));
            Ok(self.eval.within(s, self.base, delta))
        })?;
        let score = probes.iter().find(|p| p.0 == k).map_or(self.base, |p| p.1);
        let mask = self.mask(k)?;
        let eps = self.log_norm_eps(&mask);
        Ok(EdgeBisect {
            in_node: self.input.node.clone(),
            out_node: self.output.node.clone(),
            total,
            delta,
            no_ablation_result: self.base,
            n_edges_required: k,
            score,
            mask,
            eps,
            probes,
        })
    }

    /// The threshold ε of [`EdgeNorm::ByLayerLog`] for a mask (the reference's
    /// `from_bisect_results`): the smallest `|E|` among the kept edges, leaving out the constant
    /// column and row (when the bases have them) and zero edges. With no such edge, the largest
    /// `|E|` (so that no edge survives the norm).
    pub fn log_norm_eps(&self, mask: &EdgeMask) -> f64 {
        let e = &self.edges.e_hat;
        let (skip_out, skip_in) =
            (usize::from(self.output.has_constant_direction), usize::from(self.input.has_constant_direction));
        let entries = || (skip_out..e.nrows()).flat_map(move |i| (skip_in..e.ncols()).map(move |j| (i, j)));
        let kept_min = entries()
            .filter(|&(i, j)| mask.is_kept(i, j) && e[(i, j)] != 0.0)
            .map(|(i, j)| e[(i, j)].abs())
            .fold(f64::INFINITY, f64::min);
        if kept_min.is_finite() {
            kept_min
        } else {
            entries().map(|(i, j)| e[(i, j)].abs()).fold(f64::MIN_POSITIVE, f64::max)
        }
    }
}

/// Output directions sharing a mask row.
struct Group {
    outputs: Vec<usize>,
    kept: Vec<usize>,
    map_rows: Matrix,
    c_out: Matrix,
}

/// The result of a bisect edge ablation of one layer pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EdgeBisect {
    /// Input node layer (the key of the reference's `n_edges_required`).
    pub in_node: String,
    /// Output node layer.
    pub out_node: String,
    /// The bisection ran over `0..=total` kept edges (`orig_in × orig_out`).
    pub total: usize,
    /// The tolerance δ.
    pub delta: f64,
    /// The unablated score.
    pub no_ablation_result: f64,
    /// The fewest kept edges found within δ.
    pub n_edges_required: usize,
    /// The score with that many edges.
    pub score: f64,
    /// The mask of `n_edges_required` (it keeps exactly that many countable edges, more only on
    /// ties).
    pub mask: EdgeMask,
    /// ε for [`EdgeNorm::ByLayerLog`] (see [`EdgeAblation::log_norm_eps`]).
    pub eps: f64,
    /// Every evaluated `(kept edges, score)`, in the order evaluated.
    pub probes: Vec<(usize, f64)>,
}

/// The reference's recommended edge norm for module finding: `max(0, log10(|E|/ε_l))` with
/// `ε_l` from the bisect results, keyed by input node layer.
pub fn by_layer_log_norm(results: &[EdgeBisect]) -> EdgeNorm {
    EdgeNorm::ByLayerLog { eps: results.iter().map(|r| (r.in_node.clone(), r.eps)).collect() }
}
