//! A small seeded trainer (SGD with momentum, Adam), enough to make the models the estimators
//! analyse. Not a training framework.

use super::layer::Layer;
use super::loss::{Loss, TargetsView, accuracy};
use crate::data::{Batch, Dataset};
use crate::error::{Error, Result};
use crate::matrix::Matrix;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// A first-order optimiser.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    /// `v ← μ v + g; w ← w − lr v` (PyTorch's SGD; μ = 0 is plain SGD).
    Sgd {
        /// Learning rate.
        lr: f64,
        /// Momentum μ.
        momentum: f64,
    },
    /// Adam (Kingma & Ba) with bias correction, as PyTorch's `Adam`.
    Adam {
        /// Learning rate.
        lr: f64,
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Denominator offset.
        eps: f64,
    },
    /// Adam with decoupled weight decay, as PyTorch's `AdamW`: each step first shrinks the
    /// parameters, `w ← w (1 − lr · weight_decay)`, then takes the Adam step. The decay is what
    /// makes small transformers generalise on modular addition (rib trains its paper model with
    /// `weight_decay = 1`, β = (0.9, 0.98)).
    AdamW {
        /// Learning rate.
        lr: f64,
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Denominator offset.
        eps: f64,
        /// Decoupled weight decay (≥ 0).
        weight_decay: f64,
    },
}

impl Optimizer {
    /// Adam with PyTorch's defaults (β = (0.9, 0.999), ε = 1e-8).
    pub fn adam(lr: f64) -> Self {
        Optimizer::Adam { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }

    /// AdamW with PyTorch's defaults (β = (0.9, 0.999), ε = 1e-8) and `weight_decay`.
    pub fn adamw(lr: f64, weight_decay: f64) -> Self {
        Optimizer::AdamW { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay }
    }

    /// Plain SGD.
    pub fn sgd(lr: f64) -> Self {
        Optimizer::Sgd { lr, momentum: 0.0 }
    }

    fn validate(&self) -> Result<()> {
        let positive = |name: &str, v: f64| {
            if v > 0.0 && v.is_finite() { Ok(()) } else { Err(Error::invalid(name, v, "must be positive and finite")) }
        };
        let unit = |name: &str, v: f64| {
            if (0.0..1.0).contains(&v) { Ok(()) } else { Err(Error::invalid(name, v, "must lie in [0, 1)")) }
        };
        match *self {
            Optimizer::Sgd { lr, momentum } => {
                positive("lr", lr)?;
                unit("momentum", momentum)
            }
            Optimizer::Adam { lr, beta1, beta2, eps } => {
                positive("lr", lr)?;
                unit("beta1", beta1)?;
                unit("beta2", beta2)?;
                positive("eps", eps)
            }
            Optimizer::AdamW { lr, beta1, beta2, eps, weight_decay } => {
                Optimizer::Adam { lr, beta1, beta2, eps }.validate()?;
                if weight_decay >= 0.0 && weight_decay.is_finite() {
                    Ok(())
                } else {
                    Err(Error::invalid("weight_decay", weight_decay, "must be finite and ≥ 0"))
                }
            }
        }
    }
}

/// Training settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The optimiser.
    pub optimizer: Optimizer,
    /// The loss minimised.
    pub loss: Loss,
    /// Maximum number of passes over the data.
    pub epochs: usize,
    /// Minibatch size; `None` = full batch.
    pub batch_size: Option<usize>,
    /// Seed of the shuffling stream.
    pub seed: u64,
    /// Stop after the first epoch whose full-data accuracy reaches this value (labels only).
    pub stop_at_accuracy: Option<f64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            optimizer: Optimizer::adam(1e-3),
            loss: Loss::CrossEntropy,
            epochs: 100,
            batch_size: None,
            seed: 0,
            stop_at_accuracy: None,
        }
    }
}

impl TrainConfig {
    /// The largest `epochs` accepted (a bound that keeps a typo from running for days).
    pub const MAX_EPOCHS: usize = 10_000_000;

    /// Checks the settings; errors name the offending field.
    pub fn validate(&self) -> Result<()> {
        self.optimizer.validate()?;
        if self.epochs == 0 || self.epochs > Self::MAX_EPOCHS {
            return Err(Error::invalid("epochs", self.epochs, format!("must lie in 1..={}", Self::MAX_EPOCHS)));
        }
        if let Some(b) = self.batch_size {
            crate::data::check_batch_size(b)?;
        }
        if let Some(a) = self.stop_at_accuracy
            && !(0.0..=1.0).contains(&a)
        {
            return Err(Error::invalid("stop_at_accuracy", a, "must lie in [0, 1]"));
        }
        Ok(())
    }
}

/// What training did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Mean minibatch loss of every epoch run.
    pub epoch_losses: Vec<f64>,
    /// Full-data loss after training.
    pub final_loss: f64,
    /// Full-data accuracy after training (labelled data only).
    pub final_accuracy: Option<f64>,
}

/// Full-data loss and (for labelled data) accuracy of `model`.
pub fn evaluate(model: &(impl Layer + ?Sized), data: &Dataset, loss: Loss) -> Result<(f64, Option<f64>)> {
    let (x, t) = data.slice(0..data.len());
    let t = t.ok_or_else(|| Error::invalid("dataset", "unlabelled", "evaluation needs targets or labels"))?;
    let mut y = Matrix::default();
    model.forward(x, &mut y)?;
    let l = loss.value_and_grad(y.view(), t, None)?;
    let acc = match t {
        TargetsView::Labels(labels) => Some(accuracy(y.view(), labels)?),
        TargetsView::Values(_) => None,
    };
    Ok((l, acc))
}

/// Trains `model` (an [`crate::Mlp`], a [`crate::nn::Sequential`], any [`Layer`] with
/// parameters) in place. Deterministic for a given seed.
pub fn train(model: &mut (impl Layer + ?Sized), data: &Dataset, config: &TrainConfig) -> Result<TrainReport> {
    train_with(model, data, config, &mut |_, _| {})
}

/// [`train`], calling `on_epoch(epoch, mean minibatch loss)` after every epoch (progress bars,
/// logging).
pub fn train_with(
    model: &mut (impl Layer + ?Sized),
    data: &Dataset,
    config: &TrainConfig,
    on_epoch: &mut dyn FnMut(usize, f64),
) -> Result<TrainReport> {
    train_observed(model, data, config, &mut |epoch, loss, _| on_epoch(epoch, loss))
}

/// [`train`], calling `on_epoch(epoch, mean minibatch loss, parameters after the epoch)` after
/// every epoch: record checkpoints of the run (λ̂ over training, `llc::Checkpoint`) without
/// changing it.
pub fn train_observed(
    model: &mut (impl Layer + ?Sized),
    data: &Dataset,
    config: &TrainConfig,
    on_epoch: &mut dyn FnMut(usize, f64, &[f64]),
) -> Result<TrainReport> {
    config.validate()?;
    let batch_size = config.batch_size.unwrap_or(data.len());
    evaluate(model, data, config.loss)?; // checks targets, shapes and labels before any update

    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(config.seed);
    let np = model.n_params();
    let mut w = vec![0.0; np];
    model.copy_params(&mut w)?;
    let (mut grad, mut m, mut v) = (vec![0.0; np], vec![0.0; np], vec![0.0; np]);
    let mut batch = Batch::default();
    let mut order: Vec<usize> = (0..data.len()).collect();
    let mut step = 0_i32;
    let mut epoch_losses = Vec::new();
    for _ in 0..config.epochs {
        if batch_size < data.len() {
            order.shuffle(&mut rng);
        }
        let (mut total, mut count) = (0.0, 0);
        for chunk in order.chunks(batch_size) {
            data.gather(chunk, &mut batch)?;
            let targets = batch.targets().expect("checked by evaluate");
            grad.fill(0.0);
            let loss = config.loss;
            let l = model.value_and_grad(
                batch.inputs(),
                &mut |y, grad_y| loss.value_and_grad(y, targets, Some(grad_y)),
                &mut grad,
            )?;
            if !l.is_finite() {
                return Err(Error::NonFinite { what: "training loss".into(), row: step as usize, col: 0, value: l });
            }
            step += 1;
            apply_update(&config.optimizer, step, &mut w, &grad, &mut m, &mut v);
            model.set_params(&w)?;
            total += l;
            count += 1;
        }
        epoch_losses.push(total / count as f64);
        on_epoch(epoch_losses.len() - 1, total / count as f64, &w);
        if let Some(target) = config.stop_at_accuracy
            && evaluate(model, data, config.loss)?.1.is_some_and(|a| a >= target)
        {
            break;
        }
    }
    let (final_loss, final_accuracy) = evaluate(model, data, config.loss)?;
    Ok(TrainReport { epoch_losses, final_loss, final_accuracy })
}

fn apply_update(opt: &Optimizer, step: i32, w: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64]) {
    match *opt {
        Optimizer::Sgd { lr, momentum } => {
            for ((wi, &gi), mi) in w.iter_mut().zip(g).zip(m.iter_mut()) {
                *mi = if step == 1 { gi } else { momentum * *mi + gi };
                *wi -= lr * *mi;
            }
        }
        Optimizer::AdamW { lr, beta1, beta2, eps, weight_decay } => {
            let shrink = 1.0 - lr * weight_decay;
            w.iter_mut().for_each(|wi| *wi *= shrink);
            apply_update(&Optimizer::Adam { lr, beta1, beta2, eps }, step, w, g, m, v);
        }
        Optimizer::Adam { lr, beta1, beta2, eps } => {
            let (c1, c2) = (1.0 - beta1.powi(step), 1.0 - beta2.powi(step));
            for (((wi, &gi), mi), vi) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                *mi = beta1 * *mi + (1.0 - beta1) * gi;
                *vi = beta2 * *vi + (1.0 - beta2) * gi * gi;
                *wi -= lr * (*mi / c1) / ((*vi / c2).sqrt() + eps);
            }
        }
    }
}
