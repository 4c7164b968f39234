//! The interaction graph: one node per basis direction, weighted edges between adjacent node
//! layers, built as the reference builds it for clustering (`../shared/notes/modularity.md`).

use super::edges::Edges;
use crate::basis::{Basis, NodeBasis};
use crate::error::{Error, Result};
use crate::matrix::Matrix;
use crate::nn::OUTPUT_NODE;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// How raw edge strengths become graph weights, one edge matrix at a time (on `|E|`, so signed
/// functional edges are clustered by magnitude).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeNorm {
    /// `|E|`.
    Identity,
    /// `√|E|`: squared edges back in activation units.
    Sqrt,
    /// `|E| / max |E|` per edge matrix.
    Max,
    /// `max(0, log10(|E| / ε))` with one global ε.
    Log {
        /// The threshold ε (> 0).
        eps: f64,
    },
    /// `max(0, log10(|E| / ε_l))` with ε per edge matrix, keyed by the input node layer (the
    /// reference's recommended norm, ε from a bisect edge ablation).
    ByLayerLog {
        /// `(input node layer, ε)` pairs.
        eps: Vec<(String, f64)>,
    },
}

impl EdgeNorm {
    /// Applies the norm to one edge matrix whose input node layer is `in_node`.
    pub fn apply(&self, e: &Matrix, in_node: &str) -> Result<Matrix> {
        let abs = |i: usize, j: usize| e[(i, j)].abs();
        let log = |eps: f64| -> Result<Matrix> {
            if !(eps > 0.0 && eps.is_finite()) {
                return Err(Error::invalid("edge norm eps", eps, "must be positive and finite"));
            }
            Ok(Matrix::from_fn(e.nrows(), e.ncols(), |i, j| (abs(i, j) / eps).log10().max(0.0)))
        };
        match self {
            EdgeNorm::Identity => Ok(Matrix::from_fn(e.nrows(), e.ncols(), abs)),
            EdgeNorm::Sqrt => Ok(Matrix::from_fn(e.nrows(), e.ncols(), |i, j| abs(i, j).sqrt())),
            EdgeNorm::Max => {
                let max = e.max_abs();
                Ok(Matrix::from_fn(e.nrows(), e.ncols(), |i, j| if max > 0.0 { abs(i, j) / max } else { 0.0 }))
            }
            EdgeNorm::Log { eps } => log(*eps),
            EdgeNorm::ByLayerLog { eps } => {
                let eps =
                    eps.iter().find(|(n, _)| n == in_node).map(|(_, e)| *e).ok_or_else(|| {
                        Error::invalid("ByLayerLog eps", in_node, "no ε given for this input node layer")
                    })?;
                log(eps)
            }
        }
    }
}

/// A basis direction of a node layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphNode {
    /// Index of the node layer in [`InteractionGraph::layers`].
    pub layer: usize,
    /// Direction index within the layer's basis.
    pub direction: usize,
    /// Λ of the direction, if the basis has one.
    pub lambda: Option<f64>,
    /// Whether this is the constant (bias) direction; constant nodes get no edges.
    pub is_constant: bool,
}

/// A weighted, undirected edge between directions of adjacent layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphEdge {
    /// Node id (index into [`InteractionGraph::nodes`]) on the input side.
    pub from: usize,
    /// Node id on the output side.
    pub to: usize,
    /// The normalised weight (non-zero).
    pub weight: f64,
    /// The raw edge strength `E_hat[to, from]`.
    pub strength: f64,
}

/// Nodes (directions, layer by layer) and weighted edges between adjacent layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InteractionGraph {
    /// Node layer names, in order.
    pub layers: Vec<String>,
    /// Every basis direction of every layer, layer by layer.
    pub nodes: Vec<GraphNode>,
    /// The edges with non-zero normalised weight.
    pub edges: Vec<GraphEdge>,
}

impl InteractionGraph {
    /// Builds the graph from bases (node order) and the edges between consecutive bases.
    /// With `include_output = false` a final `output` layer is left out (as the reference's
    /// modularity script does). Constant directions are isolated.
    pub fn build(bases: &[NodeBasis], edges: &[Edges], norm: &EdgeNorm, include_output: bool) -> Result<Self> {
        if edges.len() + 1 != bases.len() {
            return Err(Error::shape(
                "InteractionGraph::build: bases (one more than edge matrices)",
                &[edges.len() + 1],
                &[bases.len()],
            ));
        }
        let n_layers = if !include_output && bases.last().is_some_and(|b| b.node == OUTPUT_NODE) {
            bases.len() - 1
        } else {
            bases.len()
        };
        let mut nodes = Vec::new();
        let mut offsets = Vec::with_capacity(n_layers);
        for (layer, b) in bases.iter().take(n_layers).enumerate() {
            offsets.push(nodes.len());
            for direction in 0..b.dim() {
                nodes.push(GraphNode {
                    layer,
                    direction,
                    lambda: b.lambda.as_ref().map(|l| l[direction]),
                    is_constant: b.has_constant_direction && direction == 0,
                });
            }
        }
        let mut graph_edges = Vec::new();
        for (l, e) in edges.iter().enumerate().take(n_layers.saturating_sub(1)) {
            let (input, output) = (&bases[l], &bases[l + 1]);
            if e.e_hat.shape() != (output.dim(), input.dim()) || e.in_node != input.node {
                return Err(Error::shape(
                    "InteractionGraph::build: edge matrix vs bases",
                    &[output.dim(), input.dim()],
                    &[e.e_hat.nrows(), e.e_hat.ncols()],
                ));
            }
            let w = norm.apply(&e.e_hat, &e.in_node)?;
            let (skip_in, skip_out) =
                (usize::from(input.has_constant_direction), usize::from(output.has_constant_direction));
            for i in skip_out..output.dim() {
                for j in skip_in..input.dim() {
                    if w[(i, j)] != 0.0 {
                        graph_edges.push(GraphEdge {
                            from: offsets[l] + j,
                            to: offsets[l + 1] + i,
                            weight: w[(i, j)],
                            strength: e.e_hat[(i, j)],
                        });
                    }
                }
            }
        }
        let layers = bases.iter().take(n_layers).map(|b| b.node.clone()).collect();
        Ok(InteractionGraph { layers, nodes, edges: graph_edges })
    }

    /// GraphViz DOT: one cluster per node layer, edge `penwidth` ∝ weight, nodes filled by
    /// module when a membership (one id per node) is given.
    pub fn to_dot(&self, membership: Option<&[usize]>) -> String {
        let mut s =
            String::from("graph interaction {\n  rankdir=LR;\n  node [shape=circle, style=filled, label=\"\"];\n");
        for (l, name) in self.layers.iter().enumerate() {
            let _ = writeln!(s, "  subgraph cluster_{l} {{\n    label=\"{name}\";");
            for (id, n) in self.nodes.iter().enumerate().filter(|(_, n)| n.layer == l) {
                let colour = membership.map_or("lightgrey".to_string(), |m| palette_hex(m[id]));
                let _ = writeln!(s, "    n{id} [tooltip=\"{name}[{}]\", fillcolor=\"{colour}\"];", n.direction);
            }
            s.push_str("  }\n");
        }
        let max = self.edges.iter().fold(0.0_f64, |m, e| m.max(e.weight));
        for e in &self.edges {
            let _ = writeln!(
                s,
                "  n{} -- n{} [penwidth={:.3}];",
                e.from,
                e.to,
                0.2 + 4.0 * e.weight / max.max(f64::MIN_POSITIVE)
            );
        }
        s.push_str("}\n");
        s
    }
}

/// A categorical colour for module `k` (Tableau 10, cycling).
pub(crate) fn palette(k: usize) -> (u8, u8, u8) {
    const COLOURS: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    COLOURS[k % COLOURS.len()]
}

fn palette_hex(k: usize) -> String {
    let (r, g, b) = palette(k);
    format!("#{r:02x}{g:02x}{b:02x}")
}
