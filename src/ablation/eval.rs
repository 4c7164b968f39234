//! What an ablation is scored with, and the unablated score.

use super::par_units;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::matrix::MatrixView;
use crate::nn::{Network, TargetsView, argmax};
use serde::{Deserialize, Serialize};

/// The score of a (possibly ablated) network on a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Eval {
    /// Fraction of samples whose largest output is at the label (ties go to the first maximum,
    /// as `argmax` does). Higher is better; needs labels.
    Accuracy,
    /// Mean cross-entropy of softmax(outputs) against the labels. Lower is better.
    CrossEntropy,
    /// Mean over samples **and** outputs of `(y − t)²` (PyTorch's `mse_loss`). Lower is better;
    /// needs real-valued targets with one column per output.
    Mse,
}

impl Eval {
    /// Parses `accuracy`, `cross_entropy` (also rib's `ce_loss`) or `mse`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "accuracy" => Ok(Eval::Accuracy),
            "cross_entropy" | "ce_loss" => Ok(Eval::CrossEntropy),
            "mse" => Ok(Eval::Mse),
            _ => Err(Error::invalid("eval", name, "expected accuracy, cross_entropy or mse")),
        }
    }

    /// The canonical name.
    pub fn name(self) -> &'static str {
        match self {
            Eval::Accuracy => "accuracy",
            Eval::CrossEntropy => "cross_entropy",
            Eval::Mse => "mse",
        }
    }

    /// Whether a larger score is better (accuracy) or worse (the losses).
    pub fn higher_is_better(self) -> bool {
        self == Eval::Accuracy
    }

    /// Whether `score` stays within `delta` of the unablated `base`: `score ≥ base − δ` for
    /// accuracy, `score ≤ base + δ` for the losses (the reference's rule).
    pub fn within(self, score: f64, base: f64, delta: f64) -> bool {
        if self.higher_is_better() { score >= base - delta } else { score <= base + delta }
    }

    /// Checks that `data` has the targets this score needs for a model with `n_outputs` outputs.
    pub(crate) fn check(self, data: &Dataset, n_outputs: usize) -> Result<()> {
        let (_, targets) = data.slice(0..data.len());
        match (self, targets) {
            (Eval::Accuracy | Eval::CrossEntropy, Some(TargetsView::Labels(labels))) => {
                match labels.iter().enumerate().find(|&(_, &l)| l >= n_outputs) {
                    Some((index, &l)) => Err(Error::LabelOutOfRange { index, label: l as i64, n_classes: n_outputs }),
                    None => Ok(()),
                }
            }
            (Eval::Mse, Some(TargetsView::Values(t))) => {
                if t.ncols() == n_outputs {
                    Ok(())
                } else {
                    Err(Error::shape(
                        "mse targets (one column per output)",
                        &[t.nrows(), n_outputs],
                        &[t.nrows(), t.ncols()],
                    ))
                }
            }
            (Eval::Mse, _) => Err(Error::invalid("eval", "mse", "needs real-valued targets")),
            (_, _) => Err(Error::invalid("eval", self.name(), "needs integer class labels")),
        }
    }
}

/// Partial sums of a score over some rows, merged in row order.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct ScoreSum {
    sum: f64,
    count: f64,
}

impl ScoreSum {
    /// Adds another block's sums.
    pub(crate) fn add(&mut self, other: ScoreSum) {
        self.sum += other.sum;
        self.count += other.count;
    }

    /// The mean.
    pub(crate) fn value(self) -> f64 {
        self.sum / self.count
    }
}

/// The score's sums over rows `first..first + y.nrows()` of `data` whose outputs are `y`.
pub(crate) fn score_rows(eval: Eval, y: MatrixView<'_>, data: &Dataset, first: usize) -> Result<ScoreSum> {
    let (n, d) = y.shape();
    let (_, targets) = data.slice(first..first + n);
    let mut sum = 0.0;
    match (eval, targets) {
        (Eval::Accuracy, Some(TargetsView::Labels(labels))) => {
            for (i, &l) in labels.iter().enumerate() {
                sum += f64::from(u8::from(argmax(y.row(i)) == l));
            }
        }
        (Eval::CrossEntropy, Some(TargetsView::Labels(labels))) => {
            for (i, &l) in labels.iter().enumerate() {
                let row = y.row(i);
                let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
                let z: f64 = row.iter().map(|&v| (v - max).exp()).sum();
                sum += max + z.ln() - row[l];
            }
        }
        (Eval::Mse, Some(TargetsView::Values(t))) => {
            for (&a, &b) in y.as_slice().iter().zip(t.as_slice()) {
                sum += (a - b) * (a - b);
            }
            return Ok(ScoreSum { sum, count: (n * d) as f64 });
        }
        _ => return Err(Error::invalid("eval", eval.name(), "the dataset lacks the targets this score needs")),
    }
    Ok(ScoreSum { sum, count: n as f64 })
}

/// The unablated score of `net` on `data` (the reference's `no_ablation_result`).
pub fn evaluate(net: &dyn Network, data: &Dataset, eval: Eval) -> Result<f64> {
    check_data(net, data, eval)?;
    let last = net.node_layers().len() - 1;
    let parts = par_units(data.len(), |rows| {
        let (x, _) = data.slice(rows.clone());
        let y = super::node_activations(net, x, last, rows.start)?;
        score_rows(eval, y.view(), data, rows.start)
    })?;
    Ok(total(parts))
}

/// Checks the data's width and targets against the network and score: one output row per
/// sample (the output node keeps one position).
pub(crate) fn check_data(net: &dyn Network, data: &Dataset, eval: Eval) -> Result<()> {
    if data.input_dim() != net.input_dim() {
        return Err(Error::shape(
            "ablation dataset inputs",
            &[data.len(), net.input_dim()],
            &[data.len(), data.input_dim()],
        ));
    }
    let Some(output) = net.node_layers().last() else {
        return Err(Error::Empty { what: "network: no node layers".into() });
    };
    if output.positions != 1 || output.constant {
        return Err(Error::invalid(
            format!("output node layer {}", output.name),
            format!("{} positions, constant {}", output.positions, output.constant),
            "scores need one output row per sample without a constant coordinate",
        ));
    }
    eval.check(data, output.width)
}

/// Sums the blocks' sums in order and returns the mean.
pub(crate) fn total(parts: impl IntoIterator<Item = ScoreSum>) -> f64 {
    let mut acc = ScoreSum::default();
    for p in parts {
        acc.add(p);
    }
    acc.value()
}
