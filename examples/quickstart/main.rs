//! The main job on an embedded default: modular addition (p = 23), a 46→64→64→23 ReLU MLP
//! trained to 100 % accuracy, then every analysis stage of the crate on it.
//!
//! `cargo run --release --example quickstart [-- --out DIR]` (default `out/quickstart`)
//!
//! Each analysis is one stage in its own file; `main` runs them in order. Every stage prints
//! a short summary, adds its section (numbers and the settings that produced them) to
//! `DIR/report.json` and draws its pictures as SVG files in `DIR`.
//!
//! The same analyses on the LIB paper's modular-addition *transformer* (LIB against PCA, edges
//! needed, modules labelled by Fourier frequency): `cargo run --release --example
//! modadd_transformer` (`examples/modadd_transformer.rs`); the report's `see_also` names it.

mod ablation;
mod bases;
mod diagnostics;
mod distributed;
mod files;
mod graph;
mod llc;
mod network;
mod report;
mod scale;
mod training;

use degeneracy::data::modular_addition;
use report::Report;
use std::time::Instant;

/// The quickstart's error type: any stage's error, printed by `main`.
pub type StageResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Modulus of the task.
pub const P: usize = 23;
/// Width of both hidden layers.
pub const HIDDEN: usize = 64;
/// Seed of everything random.
pub const SEED: u64 = 0;

fn main() -> StageResult<()> {
    let start = Instant::now();
    let mut report = Report::create(&report::out_dir_from_args()?)?;
    let data = modular_addition(P)?;
    let trained = training::run(&data, &mut report)?;
    let mlp = trained.mlp.clone();
    let bases = bases::run(&mlp, &data, &mut report)?;
    network::run(&mlp, &data, &bases, &mut report)?;
    let graph = graph::run(&mlp, &data, &bases, &mut report)?;
    let llc = llc::run(&trained, &data, &bases, &graph, &mut report)?;
    diagnostics::run(&mlp, &data, &llc, &mut report)?;
    ablation::run(&mlp, &data, &bases, &graph, &mut report)?;
    distributed::run(&mlp, &data, &bases.lib, &graph, &mut report)?;
    files::run(&mlp, &data, &mut report)?;
    scale::run(&mlp, &data, &mut report)?;
    report.finish(start.elapsed().as_secs_f64())?;
    Ok(())
}
