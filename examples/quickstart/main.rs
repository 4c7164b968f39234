//! The main job on an embedded default: modular addition (p = 23), a 46→64→64→23 ReLU MLP
//! trained to 100 % accuracy, then every analysis stage of the crate on it.
//!
//! `cargo run --release --example quickstart`
//!
//! Each analysis is one stage in its own file; `main` runs them in order.

mod llc;
mod training;

use degeneracy::data::modular_addition;
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
    let data = modular_addition(P)?;
    let mlp = training::run(&data)?;
    llc::run(&mlp, &data)?;
    println!("\ntotal {:.2} s", start.elapsed().as_secs_f64());
    Ok(())
}
