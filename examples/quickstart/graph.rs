//! Stage 3: interaction edges in each basis, the modules of the LIB graph, and how sparse the
//! interactions are in LIB vs PCA vs neuron coordinates.

use crate::StageResult;
use crate::bases::Bases;
use crate::report::Report;
use degeneracy::basis::NodeBasis;
use degeneracy::graph::{
    EdgeConfig, EdgeNorm, Edges, InteractionGraph, LeidenConfig, Modules, Sparsity, compute_edges, find_modules,
};
use degeneracy::plot::{Scale, Series, draw_graph, line_chart};
use degeneracy::{Dataset, Mlp};
use serde_json::json;
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

pub fn run(mlp: &Mlp, data: &Dataset, bases: &Bases, report: &mut Report) -> StageResult<Graph> {
    let t = Instant::now();
    let config = EdgeConfig::default();
    let named: [(&'static str, &Vec<NodeBasis>); 3] =
        [("LIB", &bases.lib), ("PCA", &bases.pca), ("neuron", &bases.neuron)];
    let mut all_edges = Vec::new();
    let mut sparsity = Vec::new();
    for (name, b) in named {
        let edges = compute_edges(mlp, data, b, &config)?;
        sparsity.push((
            name,
            edges.iter().zip(b.windows(2)).map(|(e, p)| Sparsity::between(e, &p[0], &p[1])).collect::<Vec<_>>(),
        ));
        all_edges.push(edges);
    }
    let lib_edges = all_edges[0].clone();
    let graph = InteractionGraph::build(&bases.lib, &lib_edges, &EdgeNorm::Sqrt, false)?;
    let leiden = LeidenConfig::default();
    let modules = find_modules(&graph, &leiden)?;
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

    draw_graph(
        &report.picture("interaction_graph.svg"),
        &graph,
        Some(&modules),
        "LIB interaction graph (√E), coloured by Leiden module",
    )?;
    let series: Vec<Series> = named
        .iter()
        .zip(&all_edges)
        .map(|((name, b), edges)| Series {
            name: format!("{name}: {} → {}", edges[0].in_node, edges[0].out_node),
            points: mass_curve(&edges[0], &b[0], &b[1]),
        })
        .collect();
    line_chart(
        &report.picture("edge_sparsity.svg"),
        "How many edges carry the interaction mass (first layer pair)",
        "number of strongest edges",
        "fraction of total |E|",
        Scale::Linear,
        &series,
    )?;
    report.section(
        "graph",
        json!({
            "settings": {"edges": config, "edge_norm": "sqrt", "leiden": leiden, "include_output": false},
            "n_directions": graph.nodes.len(),
            "n_edges": graph.edges.len(),
            "modules": modules,
            "sparsity": sparsity.iter().map(|(n, s)| json!({"basis": n, "layers": s})).collect::<Vec<_>>(),
            "seconds": t.elapsed().as_secs_f64(),
        }),
    );
    let edges_by_basis = named.iter().map(|(n, _)| *n).zip(all_edges).collect();
    Ok(Graph { lib_edges, graph, modules, sparsity, edges_by_basis })
}

/// Cumulative share of `|E|` carried by the k strongest edges (constant direction excluded).
fn mass_curve(e: &Edges, input: &NodeBasis, output: &NodeBasis) -> Vec<(f64, f64)> {
    let (skip_in, skip_out) = (usize::from(input.has_constant_direction), usize::from(output.has_constant_direction));
    let mut values: Vec<f64> = (skip_out..e.e_hat.nrows())
        .flat_map(|i| (skip_in..e.e_hat.ncols()).map(move |j| (i, j)))
        .map(|(i, j)| e.e_hat[(i, j)].abs())
        .collect();
    values.sort_by(|a, b| b.total_cmp(a));
    let total: f64 = values.iter().sum();
    let mut acc = 0.0;
    values
        .iter()
        .enumerate()
        .map(|(k, v)| {
            acc += v;
            ((k + 1) as f64, acc / total)
        })
        .collect()
}
