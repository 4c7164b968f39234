//! Builds the bases of a model's node layers from a JSON config (rib's `rib_build` keys) and
//! writes them as `.npy` files, for benchmark harnesses and scripts.
//!
//! `cargo run --release --example lib_build -- CONFIG.json`
//!
//! For node layer `k` named `N` (`.` written `_`): `C_{k}_{N}.npy` `[orig, kept]`,
//! `C_pinv_{k}_{N}.npy`, `Lambda_{k}_{N}.npy` (LIB only, C-column order),
//! `gram_eigvals_{k}_{N}.npy` (full spectrum, descending); an unrotated final node layer gets
//! no files. `report.json` holds the dimensions per node layer and seconds per phase.

mod common;

use common::{AnyResult, BuildKeys, NpyOut, Phases, file_node, read_config, write_json, write_npy_files};
use degeneracy::basis::{Basis, build_bases};
use degeneracy::estimate::NodeStatistics;
use serde_json::json;

fn main() {
    common::exit_on_error(run());
}

fn run() -> AnyResult<()> {
    let mut phases = Phases::start();
    let (keys, dir): (BuildKeys, _) = read_config("lib_build CONFIG.json")?;
    let config = keys.lib_config()?;
    if let Some(e) = &keys.edge_formula {
        return Err(format!("edge_formula = {e:?}: edges are not implemented yet (use null)").into());
    }
    let (mlp, inputs) = keys.load(&dir)?;
    let out = keys.out_dir(&dir)?;
    phases.lap("load");

    let nodes = config.node_indices(&mlp)?;
    let closed = config.basis_formula == degeneracy::basis::BasisFormula::Jacobian;
    let stats = NodeStatistics::collect(&mlp, &inputs, &nodes, closed.then_some(config.quadrature), config.batch_size)?;
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
    write_npy_files(&out, &files)?;
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
