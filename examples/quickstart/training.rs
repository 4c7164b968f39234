//! Stage 1: train the network the later stages analyse.

use crate::{HIDDEN, P, SEED, StageResult};
use degeneracy::nn::{Optimizer, TrainConfig, train};
use degeneracy::{Activation, Dataset, Loss, Mlp};
use std::time::Instant;

/// Trains the 46→64→64→23 ReLU MLP (full-batch Adam) to 100 % accuracy and a small loss.
pub fn run(data: &Dataset) -> StageResult<Mlp> {
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
