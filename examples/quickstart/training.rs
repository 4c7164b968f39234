//! Stage 1: train the network the later stages analyse.

use crate::report::{Report, progress};
use crate::{HIDDEN, P, SEED, StageResult};
use degeneracy::nn::{Optimizer, TrainConfig, train_observed};
use degeneracy::plot::{Scale, Series, line_chart};
use degeneracy::{Activation, Dataset, Loss, Mlp};
use serde_json::json;
use std::time::Instant;

/// Epochs after which the parameters are kept as checkpoints (0: the initialisation), for λ̂
/// over training in the LLC stage: dense where the loss moves fastest.
pub const CHECKPOINT_EPOCHS: [usize; 8] = [0, 10, 25, 50, 100, 200, 400, 800];

/// The trained network and what its training run left behind.
pub struct Trained {
    /// The network after the last epoch.
    pub mlp: Mlp,
    /// `(epoch, parameters after that epoch)` at [`CHECKPOINT_EPOCHS`].
    pub checkpoints: Vec<(usize, Vec<f64>)>,
    /// Mean loss of every epoch.
    pub epoch_losses: Vec<f64>,
}

/// Trains the 46→64→64→23 ReLU MLP (full-batch Adam) to 100 % accuracy and a small loss,
/// keeping checkpoints along the way.
pub fn run(data: &Dataset, report: &mut Report) -> StageResult<Trained> {
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
    let bar = progress(config.epochs as u64, "training");
    let mut checkpoints = vec![(0, mlp.params())];
    let trained = train_observed(&mut mlp, data, &config, &mut |epoch, _, w| {
        bar.inc(1);
        if CHECKPOINT_EPOCHS.contains(&(epoch + 1)) {
            checkpoints.push((epoch + 1, w.to_vec()));
        }
    })?;
    bar.finish_and_clear();
    println!("== training: modular addition p = {P}, {} samples, MLP {:?}", data.len(), mlp.widths());
    println!(
        "   epochs {:>5}   loss {:.3e}   accuracy {:.2} %   ({:.2} s)",
        trained.epoch_losses.len(),
        trained.final_loss,
        100.0 * trained.final_accuracy.unwrap_or(0.0),
        t.elapsed().as_secs_f64()
    );
    if trained.final_accuracy != Some(1.0) {
        return Err("training did not reach 100 % accuracy".into());
    }
    let curve = trained.epoch_losses.iter().enumerate().map(|(e, &l)| (e as f64 + 1.0, l)).collect();
    line_chart(
        &report.picture("training_loss.svg"),
        "Training: modular addition (p = 23), full-batch Adam",
        "epoch",
        "cross-entropy (log scale)",
        Scale::Log,
        &[Series { name: "training loss".into(), points: curve }],
    )?;
    report.section(
        "training",
        json!({
            "task": {"name": "modular addition", "p": P, "samples": data.len(), "input": "one_hot(a) ⊕ one_hot(b)"},
            "model": {"widths": mlp.widths(), "activation": "relu", "n_params": degeneracy::Layer::n_params(&mlp)},
            "settings": config,
            "final_loss": trained.final_loss,
            "final_accuracy": trained.final_accuracy,
            "epoch_losses": trained.epoch_losses,
            "checkpoint_epochs": checkpoints.iter().map(|c| c.0).collect::<Vec<_>>(),
            "seconds": t.elapsed().as_secs_f64(),
        }),
    );
    Ok(Trained { mlp, checkpoints, epoch_losses: trained.epoch_losses })
}
