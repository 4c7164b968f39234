//! Losses on network outputs, with their gradients.

use crate::error::{Error, Result};
use crate::matrix::{Matrix, MatrixView};
use serde::{Deserialize, Serialize};

/// What a batch's outputs are compared with.
#[derive(Clone, Copy, Debug)]
pub enum TargetsView<'a> {
    /// Real-valued targets, one row per sample (regression, behavioural loss).
    Values(MatrixView<'a>),
    /// Class indices, one per sample.
    Labels(&'a [usize]),
}

/// A loss averaged over the samples of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// `torch.nn.functional.mse_loss`: mean over samples **and** outputs of `(y − t)²`.
    Mse,
    /// Mean over samples of `‖y − t‖²` (summed over outputs): the behavioural loss's form.
    SumSquaredError,
    /// Cross-entropy of softmax(logits) against integer labels, mean over samples.
    CrossEntropy,
}

impl Loss {
    /// Parses `mse`, `sum_squared_error` or `cross_entropy`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "mse" => Ok(Loss::Mse),
            "sum_squared_error" => Ok(Loss::SumSquaredError),
            "cross_entropy" => Ok(Loss::CrossEntropy),
            _ => Err(Error::invalid("loss", name, "expected mse, sum_squared_error or cross_entropy")),
        }
    }

    /// The mean loss of a batch and, if `grad` is given, its gradient with respect to the
    /// outputs (`grad` is resized to the outputs' shape).
    pub fn value_and_grad(
        self,
        outputs: MatrixView<'_>,
        targets: TargetsView<'_>,
        grad: Option<&mut Matrix>,
    ) -> Result<f64> {
        let (n, d) = outputs.shape();
        if n == 0 || d == 0 {
            return Err(Error::Empty { what: "Loss::value_and_grad outputs".into() });
        }
        match (self, targets) {
            (Loss::Mse | Loss::SumSquaredError, TargetsView::Values(t)) => {
                if t.shape() != outputs.shape() {
                    return Err(Error::shape("Loss targets", &[n, d], &[t.nrows(), t.ncols()]));
                }
                let denom = if self == Loss::Mse { (n * d) as f64 } else { n as f64 };
                let mut sum = 0.0;
                for (&y, &t) in outputs.as_slice().iter().zip(t.as_slice()) {
                    sum += (y - t) * (y - t);
                }
                if let Some(g) = grad {
                    g.resize(n, d);
                    let scale = 2.0 / denom; // one division, not one per entry
                    for ((g, &y), &t) in g.as_mut_slice().iter_mut().zip(outputs.as_slice()).zip(t.as_slice()) {
                        *g = scale * (y - t);
                    }
                }
                Ok(sum / denom)
            }
            (Loss::CrossEntropy, TargetsView::Labels(labels)) => {
                if labels.len() != n {
                    return Err(Error::shape("Loss labels", &[n], &[labels.len()]));
                }
                if let Some((i, &l)) = labels.iter().enumerate().find(|&(_, &l)| l >= d) {
                    return Err(Error::LabelOutOfRange { index: i, label: l as i64, n_classes: d });
                }
                let mut grad = grad;
                if let Some(g) = grad.as_deref_mut() {
                    g.resize(n, d);
                }
                let mut sum = 0.0;
                for (i, &label) in labels.iter().enumerate() {
                    let row = outputs.row(i);
                    let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
                    if let Some(g) = grad.as_deref_mut() {
                        // exp once per entry: e_j = exp(y_j − max), p_j = e_j / z.
                        let g = g.row_mut(i);
                        let mut z = 0.0;
                        for (gj, &v) in g.iter_mut().zip(row) {
                            *gj = (v - max).exp();
                            z += *gj;
                        }
                        sum += max + z.ln() - row[label];
                        let scale = 1.0 / (z * n as f64);
                        for gj in g.iter_mut() {
                            *gj *= scale;
                        }
                        g[label] -= 1.0 / n as f64;
                    } else {
                        let z: f64 = row.iter().map(|&v| (v - max).exp()).sum();
                        sum += max + z.ln() - row[label];
                    }
                }
                Ok(sum / n as f64)
            }
            (Loss::CrossEntropy, TargetsView::Values(_)) => {
                Err(Error::invalid("loss", "cross_entropy", "needs integer labels, got real-valued targets"))
            }
            (_, TargetsView::Labels(_)) => {
                Err(Error::invalid("loss", "mse", "needs real-valued targets, got integer labels"))
            }
        }
    }
}

/// Fraction of rows whose largest output is at the label (ties go to the first maximum, as
/// `argmax` does).
pub fn accuracy(outputs: MatrixView<'_>, labels: &[usize]) -> Result<f64> {
    if labels.len() != outputs.nrows() {
        return Err(Error::shape("accuracy labels", &[outputs.nrows()], &[labels.len()]));
    }
    if labels.is_empty() {
        return Err(Error::Empty { what: "accuracy".into() });
    }
    let hits = labels.iter().enumerate().filter(|&(i, &l)| argmax(outputs.row(i)) == l).count();
    Ok(hits as f64 / labels.len() as f64)
}

/// Index of the first maximum.
pub(crate) fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (j, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = j;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mse_matches_closed_form() {
        let y = Matrix::from_rows(&[[1.0, 2.0], [3.0, 5.0]]).unwrap();
        let t = Matrix::from_rows(&[[0.0, 2.0], [3.0, 3.0]]).unwrap();
        let mut g = Matrix::default();
        let l = Loss::Mse.value_and_grad(y.view(), TargetsView::Values(t.view()), Some(&mut g)).unwrap();
        assert_eq!(l, (1.0 + 4.0) / 4.0);
        assert_eq!(g.as_slice(), &[0.5, 0.0, 0.0, 1.0]);
        let s = Loss::SumSquaredError.value_and_grad(y.view(), TargetsView::Values(t.view()), None).unwrap();
        assert_eq!(s, 2.0 * l);
    }

    #[test]
    fn cross_entropy_matches_closed_form() {
        let y = Matrix::from_rows(&[[0.0, 0.0, 0.0], [1000.0, 0.0, -1000.0]]).unwrap();
        let mut g = Matrix::default();
        let l = Loss::CrossEntropy.value_and_grad(y.view(), TargetsView::Labels(&[2, 0]), Some(&mut g)).unwrap();
        // Row 0: ln 3; row 1: log-sum-exp = 1000 exactly (stable), loss 0.
        assert!((l - 3f64.ln() / 2.0).abs() < 1e-15);
        assert!((g[(0, 2)] - (1.0 / 3.0 - 1.0) / 2.0).abs() < 1e-15);
        assert!(g.as_slice().iter().all(|v| v.is_finite()));
    }

    #[test]
    fn bad_labels_are_typed_errors() {
        let y = Matrix::zeros(2, 3);
        assert!(matches!(
            Loss::CrossEntropy.value_and_grad(y.view(), TargetsView::Labels(&[0, 3]), None),
            Err(Error::LabelOutOfRange { index: 1, label: 3, n_classes: 3 })
        ));
        assert!(Loss::Mse.value_and_grad(y.view(), TargetsView::Labels(&[0, 1]), None).is_err());
    }
}
