//! Stage 2: the Local Interaction Basis of every node layer, next to PCA and the neurons.

use crate::StageResult;
use degeneracy::basis::{Basis, BasisFormula, LibConfig, NodeBasis, fit_bases};
use degeneracy::{Dataset, Mlp};
use std::time::Instant;

/// The bases of one network in the three coordinate systems.
pub struct Bases {
    pub lib: Vec<NodeBasis>,
    pub pca: Vec<NodeBasis>,
    pub neuron: Vec<NodeBasis>,
}

/// Fits LIB (jacobian, centred), PCA (centred) and the neuron basis; prints dimensions and Λ.
pub fn run(mlp: &Mlp, data: &Dataset) -> StageResult<Bases> {
    let t = Instant::now();
    let lib_config = LibConfig::default();
    let lib = fit_bases(mlp, data, &lib_config)?;
    let pca = fit_bases(mlp, data, &LibConfig { basis_formula: BasisFormula::Svd, ..lib_config.clone() })?;
    let neuron = fit_bases(mlp, data, &LibConfig { basis_formula: BasisFormula::Neuron, center: false, ..lib_config })?;
    println!(
        "\n== bases: LIB (jacobian, centred, threshold 1e-10) vs PCA vs neurons ({:.2} s)",
        t.elapsed().as_secs_f64()
    );
    println!("   {:<10} {:>6} {:>10} {:>8}   largest Λ (LIB)", "node", "orig", "gram rank", "LIB dim");
    for (b, p) in lib.iter().zip(&pca).filter(|(b, _)| b.is_rotated()) {
        let top: Vec<String> = b.lambda.iter().flatten().take(4).map(|l| format!("{l:.3e}")).collect();
        println!("   {:<10} {:>6} {:>10} {:>8}   {}", b.node, b.orig_dim(), p.dim(), b.dim(), top.join(" "));
    }
    Ok(Bases { lib, pca, neuron })
}
