//! Modules of the interaction graph: Leiden clustering and what the reference reports about it
//! (Q at γ = 1, sizes, spans, within-module edge mass).

use super::interaction::InteractionGraph;
use super::leiden::{LeidenConfig, WeightedGraph, leiden, modularity};
use crate::error::Result;
use serde::{Deserialize, Serialize};

/// The modules found in an interaction graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Modules {
    /// Node layer names, in order.
    pub layers: Vec<String>,
    /// Per layer, the module id of each basis direction (ids by decreasing module size).
    pub membership: Vec<Vec<usize>>,
    /// Number of modules (singletons included; constant directions are always singletons).
    pub n_modules: usize,
    /// Modules with more than one direction.
    pub n_nonsingleton: usize,
    /// Directions per module id.
    pub sizes: Vec<usize>,
    /// Distinct node layers per module id.
    pub spans: Vec<usize>,
    /// Value of the configured quality function (modularity at γ, or CPM).
    pub quality: f64,
    /// Newman modularity at γ = 1 of the partition, on the normalised weights (the reference's Q).
    pub modularity: f64,
    /// Per adjacent layer pair: the fraction of edge weight inside modules.
    pub within_module_fraction: Vec<f64>,
    /// The same over all edges.
    pub within_module_fraction_total: f64,
}

impl Modules {
    /// The module of every graph node, in graph node order.
    pub fn flat(&self) -> Vec<usize> {
        self.membership.iter().flatten().copied().collect()
    }
}

/// Clusters the graph with Leiden (seeded, thread-count independent) and summarises the result.
pub fn find_modules(graph: &InteractionGraph, config: &LeidenConfig) -> Result<Modules> {
    let edges: Vec<(usize, usize, f64)> = graph.edges.iter().map(|e| (e.from, e.to, e.weight)).collect();
    let wg = WeightedGraph::new(graph.nodes.len(), &edges)?;
    let partition = leiden(&wg, config)?;
    let ids = &partition.membership;
    let q = modularity(&wg, ids, 1.0)?;

    let n_layers = graph.layers.len();
    let mut membership = vec![Vec::new(); n_layers];
    for (node, &id) in graph.nodes.iter().zip(ids) {
        membership[node.layer].push(id);
    }
    let mut sizes = vec![0; partition.n_communities];
    let mut layer_sets = vec![vec![false; n_layers]; partition.n_communities];
    for (node, &id) in graph.nodes.iter().zip(ids) {
        sizes[id] += 1;
        layer_sets[id][node.layer] = true;
    }
    let spans = layer_sets.iter().map(|s| s.iter().filter(|&&b| b).count()).collect();
    let (mut inside, mut total) = (vec![0.0; n_layers.saturating_sub(1)], vec![0.0; n_layers.saturating_sub(1)]);
    for e in &graph.edges {
        let l = graph.nodes[e.from].layer;
        total[l] += e.weight;
        if ids[e.from] == ids[e.to] {
            inside[l] += e.weight;
        }
    }
    let fraction = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    Ok(Modules {
        layers: graph.layers.clone(),
        membership,
        n_modules: partition.n_communities,
        n_nonsingleton: sizes.iter().filter(|&&s| s > 1).count(),
        sizes,
        spans,
        quality: partition.quality,
        modularity: q,
        within_module_fraction: inside.iter().zip(&total).map(|(a, b)| fraction(*a, *b)).collect(),
        within_module_fraction_total: fraction(inside.iter().sum(), total.iter().sum()),
    })
}
