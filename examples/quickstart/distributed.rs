//! Stage 6: the same LIB and edges computed by several processes: two ranks (threads standing
//! in for `mpirun -n 2`, the same code path) and three shard files merged afterwards.

use crate::StageResult;
use crate::graph::Graph;
use crate::report::Report;
use degeneracy::basis::{LibConfig, NodeBasis, fit_bases};
use degeneracy::distributed::{
    Fingerprint, LocalCommunicator, Shard, ShardHeader, compute_edges_by_outputs, merge_shard_files, write_shard_file,
};
use degeneracy::estimate::NodeStatistics;
use degeneracy::graph::{EdgeConfig, Edges};
use degeneracy::{Dataset, Matrix, Mlp};
use serde_json::json;
use std::time::Instant;

/// Largest `|a − b| / max |b|` over the Λ of every node layer and over every edge matrix.
fn max_relative_difference(bases: &[NodeBasis], edges: &[Edges], lib: &[NodeBasis], lib_edges: &[Edges]) -> f64 {
    let rel = |a: &[f64], b: &[f64]| {
        let scale = b.iter().fold(0.0_f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
        a.iter().zip(b).fold(0.0_f64, |m, (x, y)| m.max((x - y).abs() / scale))
    };
    let lambdas = bases.iter().zip(lib).filter_map(|(a, b)| Some(rel(a.lambda.as_ref()?, b.lambda.as_ref()?)));
    let edges = edges.iter().zip(lib_edges).map(|(a, b)| rel(a.e_hat.as_slice(), b.e_hat.as_slice()));
    lambdas.chain(edges).fold(0.0, f64::max)
}

/// Runs the split computations and prints how far they are from the single-process LIB.
pub fn run(mlp: &Mlp, data: &Dataset, lib: &[NodeBasis], graph: &Graph, report: &mut Report) -> StageResult<()> {
    let t = Instant::now();
    let (config, edge_config) = (LibConfig::default(), EdgeConfig::default());
    let inputs: &Matrix = data.inputs();

    // Two ranks: LIB over each rank's rows (merged in every pass), edges over output directions.
    let (config_ref, edge_config_ref) = (&config, &edge_config);
    let ranks: Vec<degeneracy::Result<f64>> = std::thread::scope(|s| {
        let handles: Vec<_> = LocalCommunicator::group(2)
            .into_iter()
            .map(|comm| {
                s.spawn(move || -> degeneracy::Result<f64> {
                    let rows = Shard::of_rank(inputs, &comm)?;
                    let bases = fit_bases(mlp, &rows, config_ref)?;
                    let edges = compute_edges_by_outputs(&comm, mlp, inputs, &bases, edge_config_ref)?;
                    Ok(max_relative_difference(&bases, &edges, lib, &graph.lib_edges))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("rank thread")).collect()
    });
    let mut by_ranks = 0.0_f64;
    for r in ranks {
        by_ranks = by_ranks.max(r?);
    }

    // Three shard files of node statistics, merged, then the bases from the merged statistics.
    // The fingerprint ties the files to this configuration: files of another run are refused.
    let dir = tempfile::tempdir()?;
    let fingerprint = Fingerprint::new("quickstart/statistics").json("lib", &config)?.finish();
    let nodes = config.node_indices(mlp)?;
    let q = config.statistics_quadrature();
    let mut files = Vec::new();
    for i in 0..3 {
        let shard = Shard::new(inputs, i, 3)?;
        let stats = NodeStatistics::collect(mlp, &shard, &nodes, q, config.batch_size)?;
        let header = ShardHeader::new("statistics", &fingerprint, i, 3, shard.rows(), inputs.nrows());
        let path = dir.path().join(format!("statistics_{i}_of_3.shard"));
        write_shard_file(&path, &header, &stats)?;
        files.push(path);
    }
    let (merged, _) = merge_shard_files::<NodeStatistics>(&files, "statistics", &fingerprint, |a, b| a.merge(&b))?;
    let bases = degeneracy::basis::build_bases(mlp, inputs, &merged, &config)?;
    let by_files = max_relative_difference(&bases, &[], lib, &[]);

    println!("\n== beyond one machine ({:.2} s)", t.elapsed().as_secs_f64());
    println!("   2 ranks (rows for the LIB, output directions for the edges): max relative difference {by_ranks:.1e}");
    println!("   3 shard files merged: Λ max relative difference {by_files:.1e}");
    report.section(
        "distributed",
        json!({"settings": {"ranks": 2, "edge_split": "outputs", "shard_files": 3, "lib": config, "edges": edge_config},
               "ranks_max_relative_difference": by_ranks, "shard_files_max_relative_difference": by_files,
               "seconds": t.elapsed().as_secs_f64()}),
    );
    Ok(())
}
