//! The main job on an embedded default: modular addition (p = 23), a 46→64→64→23 ReLU MLP
//! trained to 100 % accuracy, then every analysis stage of the crate on it.
//!
//! `cargo run --release --example quickstart`

use degeneracy::data::modular_addition;
use degeneracy::nn::{Optimizer, TrainConfig, train};
use degeneracy::{Activation, Dataset, Loss, Mlp};
use std::time::Instant;

const P: usize = 23;
const HIDDEN: usize = 64;
const SEED: u64 = 0;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let data = modular_addition(P)?;
    let mlp = train_stage(&data)?;
    println!("\ntotal {:.2} s", start.elapsed().as_secs_f64());
    drop(mlp);
    Ok(())
}

/// Stage 1: train the network the later stages analyse.
fn train_stage(data: &Dataset) -> Result<Mlp, Box<dyn std::error::Error>> {
    let t = Instant::now();
    let mut mlp = Mlp::init(&[2 * P, HIDDEN, HIDDEN, P], Activation::Relu, true, SEED)?;
    let config = TrainConfig {
        optimizer: Optimizer::adam(3e-3),
        loss: Loss::CrossEntropy,
        epochs: 800,
        batch_size: None,
        seed: SEED,
        stop_at_accuracy: None,
    };
    let report = train(&mut mlp, data, &config)?;
    println!("== training: modular addition p = {P}, {} samples, MLP {:?}", data.len(), mlp.widths());
    println!(
        "   epochs {:>5}   loss {:.3e}   accuracy {:.2} %   ({:.2} s)",
        report.epoch_losses.len(),
        report.final_loss,
        100.0 * report.final_accuracy.unwrap_or(0.0),
        t.elapsed().as_secs_f64()
    );
    if report.final_accuracy != Some(1.0) {
        return Err("training did not reach 100 % accuracy".into());
    }
    Ok(mlp)
}
