//! Stage: any network, not only `Mlp`. The trained MLP rebuilt as a `Sequential` of boxed layers
//! gets the same LIB; a network with a residual block written as a user's `Layer` (the crate's
//! tests' own, `tests/common/user_layers.rs`) is trained and analysed by the same functions.

#[path = "../../tests/common/user_layers.rs"]
mod user_layers;

use crate::bases::Bases;
use crate::report::Report;
use crate::{HIDDEN, P, SEED, StageResult};
use degeneracy::basis::{Basis, LibConfig, fit_bases};
use degeneracy::graph::{EdgeConfig, EdgeNorm, InteractionGraph, LeidenConfig, compute_edges, find_modules};
use degeneracy::nn::{Optimizer, TrainConfig, train};
use degeneracy::{Activation, Dataset, Elementwise, Layer, Linear, Loss, Mlp, Network, Sequential};
use serde_json::json;
use std::time::Instant;
use user_layers::Residual;

/// The MLP's layers, boxed: affine layers and activations as separate `Layer`s.
fn as_sequential(mlp: &Mlp) -> StageResult<Sequential> {
    let mut layers: Vec<Box<dyn Layer>> = Vec::new();
    for (lin, &act) in mlp.linears().iter().zip(mlp.activations()) {
        layers.push(Box::new(lin.clone()));
        if act != Activation::Identity {
            layers.push(Box::new(Elementwise::new(act, lin.weight().nrows())));
        }
    }
    Ok(Sequential::new(layers)?)
}

/// `max |a − b| / max |b|` over the Λ of every node.
fn lambda_difference(a: &Bases, b: &[degeneracy::basis::NodeBasis]) -> f64 {
    let mut worst = 0.0_f64;
    for (p, q) in a.lib.iter().zip(b) {
        let (lp, lq) = (p.lambda.as_deref().unwrap_or(&[]), q.lambda.as_deref().unwrap_or(&[]));
        if lp.len() != lq.len() {
            return f64::INFINITY;
        }
        let top = lp.iter().fold(f64::MIN_POSITIVE, |m, v| m.max(*v));
        worst = lp.iter().zip(lq).fold(worst, |m, (x, y)| m.max((x - y).abs() / top));
    }
    worst
}

/// Rebuilds the MLP as boxed layers and compares its LIB; trains and analyses a residual network.
pub fn run(mlp: &Mlp, data: &Dataset, bases: &Bases, report: &mut Report) -> StageResult<()> {
    let t = Instant::now();
    let seq = as_sequential(mlp)?;
    let seq_bases = fit_bases(&seq, data, &LibConfig::default())?;
    let same = lambda_difference(bases, &seq_bases);

    // 46 → 64, a residual ReLU block (hidden 64, its biases folded into the constant), → 23.
    let linear = |out: usize, inp: usize, seed: u64| -> StageResult<Linear> {
        let bound = 1.0 / (inp as f64).sqrt();
        Ok(Linear::new(user_layers::pseudo_random(out, inp, seed, bound), Some(vec![0.0; out]))?)
    };
    let mut residual = Sequential::new(vec![
        Box::new(linear(HIDDEN, 2 * P, SEED + 1)?),
        Box::new(Residual::new(HIDDEN, HIDDEN, SEED + 2)),
        Box::new(linear(P, HIDDEN, SEED + 3)?),
    ])?;
    let config = TrainConfig {
        optimizer: Optimizer::adam(3e-3),
        loss: Loss::CrossEntropy,
        epochs: 600,
        stop_at_accuracy: Some(1.0),
        ..TrainConfig::default()
    };
    let trained = train(&mut residual, data, &config)?;
    let res_bases = fit_bases(&residual, data, &LibConfig::default())?;
    let edges = compute_edges(&residual, data, &res_bases, &EdgeConfig::default())?;
    let graph = InteractionGraph::build(&res_bases, &edges, &EdgeNorm::Sqrt, false)?;
    let modules = find_modules(&graph, &LeidenConfig::default())?;
    let dims: Vec<usize> = res_bases.iter().map(|b| b.dim()).collect();
    let widths: Vec<usize> = residual.node_layers().iter().map(|n| n.width).collect();

    println!("\n== any network: boxed layers and a user's residual block ({:.2} s)", t.elapsed().as_secs_f64());
    println!("   the MLP as a Sequential of boxed layers: LIB Λ within {same:.1e} of the Mlp's (max relative)");
    println!(
        "   residual network {:?} (the block is a user's Layer): {} epochs, accuracy {:.1} %",
        residual.node_names(),
        trained.epoch_losses.len(),
        100.0 * trained.final_accuracy.unwrap_or(0.0)
    );
    println!(
        "   folded widths {widths:?} → LIB dims {dims:?}, {} modules ({} with ≥ 2 directions)",
        modules.n_modules, modules.n_nonsingleton
    );
    report.section(
        "network",
        json!({
            "sequential_lambda_max_rel_diff_vs_mlp": same,
            "residual": {
                "nodes": residual.node_names(),
                "folded_widths": widths,
                "lib_dims": dims,
                "n_params": residual.n_params(),
                "epochs": trained.epoch_losses.len(),
                "final_accuracy": trained.final_accuracy,
                "n_modules": modules.n_modules,
                "n_nonsingleton_modules": modules.n_nonsingleton,
            },
            "seconds": t.elapsed().as_secs_f64(),
        }),
    );
    Ok(())
}
