//! In-memory datasets: inputs (rows = samples) with optional targets or labels.

use crate::error::{Error, Result};
use crate::matrix::{Matrix, MatrixView};
use crate::nn::TargetsView;

/// What a dataset's samples are labelled with.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Targets {
    /// Inputs only (enough for Grams, bases, edges and the behavioural loss).
    #[default]
    None,
    /// Real-valued targets, one row per sample.
    Values(Matrix),
    /// Class indices, one per sample.
    Labels(Vec<usize>),
}

/// Inputs and their targets, validated once: non-empty, finite, equal sample counts.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    inputs: Matrix,
    targets: Targets,
}

/// A reusable buffer for a gathered minibatch.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    inputs: Matrix,
    values: Matrix,
    labels: Vec<usize>,
    kind: TargetKind,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
enum TargetKind {
    #[default]
    None,
    Values,
    Labels,
}

impl Dataset {
    /// A dataset; errors on empty or non-finite inputs/targets and on mismatched sample counts.
    pub fn new(inputs: Matrix, targets: Targets) -> Result<Self> {
        if inputs.nrows() == 0 || inputs.ncols() == 0 {
            return Err(Error::Empty { what: format!("dataset inputs of shape {:?}", inputs.shape()) });
        }
        inputs.check_finite("dataset inputs")?;
        let n = inputs.nrows();
        match &targets {
            Targets::None => {}
            Targets::Values(t) => {
                if t.nrows() != n {
                    return Err(Error::shape(
                        "dataset targets (rows = samples)",
                        &[n, t.ncols()],
                        &[t.nrows(), t.ncols()],
                    ));
                }
                t.check_finite("dataset targets")?;
            }
            Targets::Labels(l) => {
                if l.len() != n {
                    return Err(Error::shape("dataset labels (one per sample)", &[n], &[l.len()]));
                }
            }
        }
        Ok(Dataset { inputs, targets })
    }

    /// Inputs without targets.
    pub fn unlabelled(inputs: Matrix) -> Result<Self> {
        Self::new(inputs, Targets::None)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.inputs.nrows()
    }

    /// Always `false`: construction rejects empty datasets.
    pub fn is_empty(&self) -> bool {
        self.inputs.nrows() == 0
    }

    /// Width of an input row.
    pub fn input_dim(&self) -> usize {
        self.inputs.ncols()
    }

    /// The inputs.
    pub fn inputs(&self) -> &Matrix {
        &self.inputs
    }

    /// The targets.
    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// The labels, if the dataset has class labels.
    pub fn labels(&self) -> Option<&[usize]> {
        match &self.targets {
            Targets::Labels(l) => Some(l),
            _ => None,
        }
    }

    /// Rows `range` as views (no copy); targets `None` if the dataset has none.
    pub fn slice(&self, range: std::ops::Range<usize>) -> (MatrixView<'_>, Option<TargetsView<'_>>) {
        let t = match &self.targets {
            Targets::None => None,
            Targets::Values(v) => Some(TargetsView::Values(v.rows(range.clone()))),
            Targets::Labels(l) => Some(TargetsView::Labels(&l[range.clone()])),
        };
        (self.inputs.rows(range), t)
    }

    /// Copies the samples `indices` into `batch` (reusing its buffers).
    pub fn gather(&self, indices: &[usize], batch: &mut Batch) -> Result<()> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::invalid("sample index", bad, format!("dataset has {} samples", self.len())));
        }
        gather_rows(&self.inputs, indices, &mut batch.inputs);
        batch.labels.clear();
        batch.kind = match &self.targets {
            Targets::None => TargetKind::None,
            Targets::Values(v) => {
                gather_rows(v, indices, &mut batch.values);
                TargetKind::Values
            }
            Targets::Labels(l) => {
                batch.labels.extend(indices.iter().map(|&i| l[i]));
                TargetKind::Labels
            }
        };
        Ok(())
    }
}

fn gather_rows(src: &Matrix, indices: &[usize], dst: &mut Matrix) {
    dst.resize(indices.len(), src.ncols());
    for (k, &i) in indices.iter().enumerate() {
        dst.row_mut(k).copy_from_slice(src.row(i));
    }
}

impl Batch {
    /// The gathered inputs.
    pub fn inputs(&self) -> MatrixView<'_> {
        self.inputs.view()
    }

    /// The gathered targets, if the dataset has any.
    pub fn targets(&self) -> Option<TargetsView<'_>> {
        match self.kind {
            TargetKind::None => None,
            TargetKind::Values => Some(TargetsView::Values(self.values.view())),
            TargetKind::Labels => Some(TargetsView::Labels(&self.labels)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_and_gather() {
        let x = Matrix::from_fn(4, 2, |i, j| (i * 2 + j) as f64);
        assert!(matches!(Dataset::new(x.clone(), Targets::Labels(vec![0, 1])), Err(Error::ShapeMismatch { .. })));
        assert!(matches!(Dataset::unlabelled(Matrix::zeros(0, 3)), Err(Error::Empty { .. })));
        let mut bad = x.clone();
        bad[(3, 1)] = f64::INFINITY;
        assert!(matches!(Dataset::unlabelled(bad), Err(Error::NonFinite { row: 3, col: 1, .. })));

        let d = Dataset::new(x, Targets::Labels(vec![0, 1, 2, 3])).unwrap();
        let mut b = Batch::default();
        d.gather(&[3, 1], &mut b).unwrap();
        assert_eq!(b.inputs().as_slice(), &[6.0, 7.0, 2.0, 3.0]);
        assert!(matches!(b.targets(), Some(TargetsView::Labels(&[3, 1]))));
        assert!(d.gather(&[4], &mut b).is_err());
    }
}
