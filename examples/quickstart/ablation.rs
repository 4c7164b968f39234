//! Stage 4: how many directions and edges the network needs in LIB, PCA and neuron coordinates
//! to keep its accuracy (node ablation curves and bisect edge ablation, δ = 0.001).

use crate::StageResult;
use crate::bases::Bases;
use crate::graph::Graph;
use crate::report::Report;
use degeneracy::ablation::{Directions, EdgeAblation, Eval, Midpoint, NodeCurve, evaluate, node_ablation_curve};
use degeneracy::basis::{Basis, BasisFormula, NodeBasis};
use degeneracy::plot::{Scale, Series, line_chart};
use degeneracy::{Dataset, Mlp, Network};
use serde_json::json;
use std::time::Instant;

/// The accuracy tolerance of the papers' edge ablations.
const DELTA: f64 = 0.001;

/// Fewest directions kept at a node layer with accuracy within δ (the full curve 0..=dim is
/// evaluated in one pass). The neuron basis keeps the constant coordinate first, then the
/// neurons by decreasing mean square activation.
fn node_curve(mlp: &Mlp, data: &Dataset, b: &NodeBasis) -> StageResult<NodeCurve> {
    let points: Vec<usize> = (0..=b.dim()).collect();
    let node = mlp.node_index(&b.node)?;
    let curve = if b.formula == Some(BasisFormula::Neuron) {
        let d = Directions::neurons_by_power(mlp, data, node)?;
        node_ablation_curve(mlp, data, node, &d, &points, Eval::Accuracy)?
    } else {
        node_ablation_curve(mlp, data, node, b, &points, Eval::Accuracy)?
    };
    Ok(curve)
}

/// One basis at one node layer.
struct Row {
    dim: usize,
    directions: Option<usize>,
    edges: usize,
    total_edges: usize,
}

pub fn run(mlp: &Mlp, data: &Dataset, bases: &Bases, graph: &Graph, report: &mut Report) -> StageResult<()> {
    let t = Instant::now();
    let base = evaluate(mlp, data, Eval::Accuracy)?;
    let sets = [("LIB", &bases.lib), ("PCA", &bases.pca), ("neuron", &bases.neuron)];
    // Per basis, per node layer (the edges are those to the next node layer).
    let mut table: Vec<Vec<Row>> = Vec::new();
    let mut curves: Vec<(&str, NodeCurve)> = Vec::new();
    let mut bisects = Vec::new();
    for ((name, b), (_, edges)) in sets.iter().zip(&graph.edges_by_basis) {
        let mut rows = Vec::new();
        for (pair, e) in b.windows(2).zip(edges) {
            let curve = node_curve(mlp, data, &pair[0])?;
            let needed = curve.smallest_within(Eval::Accuracy, base, DELTA);
            curves.push((name, curve));
            let bisect =
                EdgeAblation::new(mlp, data, &pair[0], &pair[1], e, Eval::Accuracy)?.bisect(DELTA, Midpoint::Linear)?;
            rows.push(Row {
                dim: pair[0].dim(),
                directions: needed,
                edges: bisect.n_edges_required,
                total_edges: bisect.total,
            });
            bisects.push(json!({"basis": name, "in_node": bisect.in_node, "n_edges_required": bisect.n_edges_required,
                                "total": bisect.total, "score": bisect.score, "probes": bisect.probes}));
        }
        table.push(rows);
    }
    println!(
        "\n== ablation: fewest directions / edges with accuracy ≥ {:.4} − {DELTA} ({:.2} s)",
        base,
        t.elapsed().as_secs_f64()
    );
    println!(
        "   {:<10} {:>18}   {:>24}   {:>28}",
        "node", "dim LIB/PCA/neuron", "directions LIB/PCA/neuron", "edges to next LIB/PCA/neuron"
    );
    let names: Vec<&str> = bases.lib.iter().map(|b| b.node.as_str()).collect();
    for (k, name) in names.iter().take(table[0].len()).enumerate() {
        let cell = |f: &dyn Fn(&Row) -> String| table.iter().map(|rows| f(&rows[k])).collect::<Vec<_>>().join(" / ");
        let dims = cell(&|r| r.dim.to_string());
        let dirs = cell(&|r| r.directions.map_or("-".into(), |n| n.to_string()));
        let edges = cell(&|r| r.edges.to_string());
        println!("   {name:<10} {dims:>18}   {dirs:>24}   {edges:>28}   (of {} possible)", table[0][k].total_edges);
    }
    // Accuracy against directions kept at the middle hidden node layer, per basis.
    let middle = bases.lib[1].node.clone();
    let series: Vec<Series> = curves
        .iter()
        .filter(|(_, c)| c.node == middle)
        .map(|(name, c)| Series {
            name: format!("{name} ({} directions)", c.dim),
            points: c.scores.iter().map(|&(n, s)| (n as f64, s)).collect(),
        })
        .collect();
    line_chart(
        &report.picture("node_ablation.svg"),
        &format!("Node ablation at {middle}: keep the first n directions"),
        "directions kept",
        "accuracy",
        Scale::Linear,
        &series,
    )?;
    report.section(
        "ablation",
        json!({
            "settings": {"eval": "accuracy", "delta": DELTA, "edge_midpoint": "linear", "bases": ["LIB", "PCA", "neuron"],
                         "neuron_order": "constant first, then neurons by decreasing mean square activation"},
            "no_ablation_result": base,
            "node_curves": curves.iter().map(|(n, c)| json!({"basis": n, "node": c.node, "dim": c.dim, "scores": c.scores})).collect::<Vec<_>>(),
            "edge_bisects": bisects,
            "seconds": t.elapsed().as_secs_f64(),
        }),
    );
    Ok(())
}
