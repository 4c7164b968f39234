//! Builds the bases of a model's node layers from a JSON config (rib's `rib_build` keys) and
//! writes them as `.npy` files, for benchmark harnesses and scripts.
//!
//! `cargo run --release --example lib_build -- CONFIG.json`
//!
//! For node layer `k` named `N` (`.` written `_`): `C_{k}_{N}.npy` `[orig, kept]`,
//! `C_pinv_{k}_{N}.npy`, `Lambda_{k}_{N}.npy` (LIB only, C-column order),
//! `gram_eigvals_{k}_{N}.npy` (full spectrum, descending); an unrotated final node layer gets
//! no files. With `edge_formula` set, also `E_hat_{k}_{N}__{N'}.npy` (`[dim out, dim in]`, `k` the
//! input node layer's index) and `modules.json` (per node layer the module id of each
//! direction, and Q). `report.json` holds the dimensions per node layer and seconds per phase.

mod common;

use common::{AnyResult, BuildKeys, NpyOut, Phases, file_node, read_config, write_json, write_npy_files};
use degeneracy::basis::{Basis, build_bases};
use degeneracy::estimate::NodeStatistics;
use degeneracy::graph::{
    EdgeConfig, EdgeFormula, EdgeNorm, InteractionGraph, LeidenConfig, compute_edges, find_modules,
};
use serde_json::json;

fn main() {
    common::exit_on_error(run());
}

fn run() -> AnyResult<()> {
    let mut phases = Phases::start();
    let (keys, dir): (BuildKeys, _) = read_config("lib_build CONFIG.json")?;
    let config = keys.lib_config()?;
    let edge_formula = keys.edge_formula.as_deref().map(EdgeFormula::from_name).transpose()?;
    let (mlp, inputs) = keys.load(&dir)?;
    let out = keys.out_dir(&dir)?;
    phases.lap("load");

    let nodes = config.node_indices(&mlp)?;
    let stats = NodeStatistics::collect(&mlp, &inputs, &nodes, config.statistics_quadrature(), config.batch_size)?;
    phases.lap("grams");
    let bases = build_bases(&mlp, &inputs, &stats, &config)?;
    phases.lap("bases");

    let mut files: Vec<(String, NpyOut)> = Vec::new();
    let mut report_nodes = Vec::new();
    for (k, b) in bases.iter().enumerate() {
        let name = format!("{k}_{}", file_node(&b.node));
        if b.is_rotated() {
            files.push((format!("C_{name}.npy"), NpyOut::Matrix(b.c().clone())));
            files.push((format!("C_pinv_{name}.npy"), NpyOut::Matrix(b.c_pinv().clone())));
            files.push((format!("gram_eigvals_{name}.npy"), NpyOut::Vector(b.gram_eigenvalues.clone())));
            if let Some(l) = &b.lambda {
                files.push((format!("Lambda_{name}.npy"), NpyOut::Vector(l.clone())));
            }
        }
        report_nodes.push(json!({
            "index": k,
            "node_layer": b.node,
            "orig_dim": b.orig_dim(),
            "gram_kept": b.gram_kept.len(),
            "dim": b.dim(),
            "rotated": b.is_rotated(),
        }));
    }
    let mut modules_json = serde_json::Value::Null;
    if let Some(formula) = edge_formula {
        let config = EdgeConfig {
            formula,
            quadrature: config.quadrature,
            batch_size: config.batch_size,
            ..EdgeConfig::default()
        };
        let edges = compute_edges(&mlp, &inputs, &bases, &config)?;
        phases.lap("edges");
        for (k, e) in edges.iter().enumerate() {
            let name = format!("E_hat_{k}_{}__{}.npy", file_node(&e.in_node), file_node(&e.out_node));
            files.push((name, NpyOut::Matrix(e.e_hat.clone())));
        }
        let graph = InteractionGraph::build(&bases, &edges, &EdgeNorm::Sqrt, true)?;
        let modules = find_modules(&graph, &LeidenConfig::default())?;
        phases.lap("modules");
        let per_node: serde_json::Map<String, serde_json::Value> =
            modules.layers.iter().zip(&modules.membership).map(|(n, m)| (n.clone(), json!(m))).collect();
        modules_json = json!({
            "nodes": per_node,
            "Q": modules.modularity,
            "quality": modules.quality,
            "n_modules": modules.n_modules,
            "n_nonsingleton": modules.n_nonsingleton,
            "sizes": modules.sizes,
            "spans": modules.spans,
            "within_module_fraction": modules.within_module_fraction,
            "settings": {"edge_norm": "sqrt", "resolution": 1.0, "seed": 0, "include_output": true},
        });
    }
    write_npy_files(&out, &files)?;
    if !modules_json.is_null() {
        write_json(&out.join("modules.json"), &modules_json)?;
    }
    phases.lap("write");
    let report = json!({
        "basis_formula": config.basis_formula.name(),
        "n_samples": inputs.nrows(),
        "nodes": report_nodes,
        "seconds": phases.to_json(),
    });
    write_json(&out.join("report.json"), &report)?;
    Ok(())
}
