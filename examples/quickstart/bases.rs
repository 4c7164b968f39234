//! Stage 2: the Local Interaction Basis of every node layer, next to PCA and the neurons.

use crate::StageResult;
use crate::report::Report;
use degeneracy::basis::{Basis, BasisFormula, LibConfig, NodeBasis, fit_bases};
use degeneracy::plot::{Scale, Series, line_chart};
use degeneracy::{Dataset, Mlp};
use serde_json::json;
use std::time::Instant;

/// The bases of one network in the three coordinate systems.
pub struct Bases {
    pub lib: Vec<NodeBasis>,
    pub pca: Vec<NodeBasis>,
    pub neuron: Vec<NodeBasis>,
}

/// Fits LIB (jacobian, centred), PCA (centred) and the neuron basis; prints dimensions and Λ.
pub fn run(mlp: &Mlp, data: &Dataset, report: &mut Report) -> StageResult<Bases> {
    let t = Instant::now();
    let lib_config = LibConfig::default();
    let pca_config = LibConfig { basis_formula: BasisFormula::Svd, ..lib_config.clone() };
    let neuron_config = LibConfig { basis_formula: BasisFormula::Neuron, center: false, ..lib_config.clone() };
    let lib = fit_bases(mlp, data, &lib_config)?;
    let pca = fit_bases(mlp, data, &pca_config)?;
    let neuron = fit_bases(mlp, data, &neuron_config)?;
    println!(
        "\n== bases: LIB (jacobian, centred, threshold 1e-10) vs PCA vs neurons ({:.2} s)",
        t.elapsed().as_secs_f64()
    );
    println!("   {:<10} {:>6} {:>10} {:>8}   largest Λ (LIB)", "node", "orig", "gram rank", "LIB dim");
    for (b, p) in lib.iter().zip(&pca).filter(|(b, _)| b.is_rotated()) {
        let top: Vec<String> = b.lambda.iter().flatten().take(4).map(|l| format!("{l:.3e}")).collect();
        println!("   {:<10} {:>6} {:>10} {:>8}   {}", b.node, b.orig_dim(), p.dim(), b.dim(), top.join(" "));
    }
    let series: Vec<Series> = lib
        .iter()
        .filter_map(|b| {
            let points = b.lambda.as_ref()?.iter().enumerate().map(|(i, &l)| (i as f64, l)).collect();
            Some(Series { name: format!("Λ at {}", b.node), points })
        })
        .collect();
    line_chart(
        &report.picture("lambda_spectra.svg"),
        "LIB: Λ per direction (column order: constant first, then descending)",
        "direction index",
        "Λ (log scale)",
        Scale::Log,
        &series,
    )?;
    let node = |b: &NodeBasis| {
        json!({"node": b.node, "orig_dim": b.orig_dim(), "dim": b.dim(), "rotated": b.is_rotated(),
               "lambda": b.lambda, "gram_eigenvalues": b.gram_eigenvalues})
    };
    report.section(
        "bases",
        json!({
            "settings": {"lib": lib_config, "pca": pca_config, "neuron": neuron_config},
            "lib": lib.iter().map(node).collect::<Vec<_>>(),
            "pca_dims": pca.iter().map(|b| b.dim()).collect::<Vec<_>>(),
            "neuron_dims": neuron.iter().map(|b| b.dim()).collect::<Vec<_>>(),
            "seconds": t.elapsed().as_secs_f64(),
        }),
    );
    Ok(Bases { lib, pca, neuron })
}
