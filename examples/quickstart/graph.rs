//! Stage 3: interaction edges in each basis, the modules of the LIB graph, and how sparse the
//! interactions are in LIB vs PCA vs neuron coordinates.

use crate::StageResult;
use crate::bases::Bases;
use degeneracy::graph::{
    EdgeConfig, EdgeNorm, Edges, InteractionGraph, LeidenConfig, Modules, Sparsity, compute_edges, find_modules,
};
use degeneracy::{Dataset, Mlp};
use std::time::Instant;

/// Edges of the three bases, and the LIB graph with its modules.
#[expect(dead_code, reason = "read by the ablation and report stages")]
pub struct Graph {
    pub lib_edges: Vec<Edges>,
    pub graph: InteractionGraph,
    pub modules: Modules,
    /// Per basis name, the sparsity of every edge matrix.
    pub sparsity: Vec<(&'static str, Vec<Sparsity>)>,
    /// Per basis name (LIB, PCA, neuron), the edges of every layer pair.
    pub edges_by_basis: Vec<(&'static str, Vec<Edges>)>,
}

pub fn run(mlp: &Mlp, data: &Dataset, bases: &Bases) -> StageResult<Graph> {
    let t = Instant::now();
    let config = EdgeConfig::default();
    let mut sparsity = Vec::new();
    let mut lib_edges = Vec::new();
    let mut edges_by_basis = Vec::new();
    for (name, b) in [("LIB", &bases.lib), ("PCA", &bases.pca), ("neuron", &bases.neuron)] {
        let edges = compute_edges(mlp, data, b, &config)?;
        sparsity.push((
            name,
            edges.iter().zip(b.windows(2)).map(|(e, p)| Sparsity::between(e, &p[0], &p[1])).collect::<Vec<_>>(),
        ));
        if name == "LIB" {
            lib_edges = edges.clone();
        }
        edges_by_basis.push((name, edges));
    }
    let graph = InteractionGraph::build(&bases.lib, &lib_edges, &EdgeNorm::Sqrt, false)?;
    let modules = find_modules(&graph, &LeidenConfig::default())?;
    println!(
        "\n== interaction graph and modules: squared edges, √E weights, Leiden γ = 1 ({:.2} s)",
        t.elapsed().as_secs_f64()
    );
    println!(
        "   {} directions, {} edges; {} modules with > 1 direction (sizes {:?}); Q = {:.3}; within-module edge weight {:.1} %",
        graph.nodes.len(),
        graph.edges.len(),
        modules.n_nonsingleton,
        &modules.sizes[..modules.n_nonsingleton],
        modules.modularity,
        100.0 * modules.within_module_fraction_total
    );
    println!("   sparsity of |E| (constant direction excluded): Gini / effective edges / edges for 90 % of the mass");
    print!("   {:<20}", "layer pair");
    for (name, _) in &sparsity {
        print!(" {name:>24}");
    }
    println!();
    for (k, e) in lib_edges.iter().enumerate() {
        print!("   {:<20}", format!("{} → {}", e.in_node, e.out_node));
        for (_, s) in &sparsity {
            let s = &s[k];
            print!(" {:>24}", format!("{:.3} / {:.0} / {}", s.gini, s.effective_edges, s.edges_for_90_percent));
        }
        println!();
    }
    Ok(Graph { lib_edges, graph, modules, sparsity, edges_by_basis })
}
