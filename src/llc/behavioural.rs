//! The behavioural loss L_B(w) = mean_x ‖f(x, w) − f(x, w*)‖².

use super::loss_model::{LayerLoss, LossModel};
use crate::data::{Dataset, Targets};
use crate::error::Result;
use crate::matrix::Matrix;
use crate::nn::{Layer, Loss, Mlp};

/// The behavioural loss of a model (any [`Layer`] with parameters; an [`Mlp`] by default)
/// around its current parameters w*:
/// L_B(w) = (1/n) Σ_x ‖f(x, w) − f(x, w*)‖², summed over outputs and averaged over samples
/// ([`Loss::SumSquaredError`] against the cached outputs f(x, w*), computed once at
/// construction).
///
/// L_B(w*) = 0 exactly, so w* is always a global minimum and λ̂ measures the degeneracy of the
/// *function* around w*, whatever the labels. For MSE training on noiseless targets produced by
/// w* itself, L_B = k·L_MSE with `k` the number of outputs (MSE also averages over outputs), so
/// a behavioural run with nβ/k samples the same posterior as a training-loss run with nβ.
///
/// Any other model gets a behavioural loss the same way: a [`LossModel`] whose targets are its
/// own cached outputs at w*.
///
/// ```
/// use degeneracy::llc::{BehaviouralLoss, LossModel};
/// use degeneracy::{Activation, Matrix, Mlp};
/// let mlp = Mlp::init(&[3, 5, 2], Activation::Tanh, true, 0)?;
/// let x = Matrix::from_fn(10, 3, |i, j| (i + j) as f64 / 10.0);
/// let mut model = BehaviouralLoss::new(&mlp, x)?;
/// let w_star = model.params();
/// let mut grad = vec![0.0; model.n_params()];
/// assert_eq!(model.loss_and_grad(&w_star, &[0, 1, 2], &mut grad)?, 0.0);
/// assert!(grad.iter().all(|&g| g == 0.0));
/// # Ok::<(), degeneracy::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct BehaviouralLoss<L = Mlp> {
    inner: LayerLoss<L>,
}

impl<L: Layer + Clone> BehaviouralLoss<L> {
    /// The behavioural loss of `model` (at its current parameters w*) on `inputs` (rows =
    /// samples).
    pub fn new(model: &L, inputs: Matrix) -> Result<Self> {
        let mut reference = Matrix::default();
        model.forward(inputs.view(), &mut reference)?;
        let data = Dataset::new(inputs, Targets::Values(reference))?;
        Ok(BehaviouralLoss { inner: LayerLoss::new(model, Loss::SumSquaredError, data)? })
    }

    /// The behavioural loss on the inputs of `data` (its targets are ignored).
    pub fn from_dataset(model: &L, data: &Dataset) -> Result<Self> {
        Self::new(model, data.inputs().clone())
    }

    /// w*, the parameters the reference outputs were computed at.
    pub fn params(&self) -> Vec<f64> {
        self.inner.params()
    }

    /// The cached reference outputs f(x, w*), one row per sample.
    pub fn reference_outputs(&self) -> &Matrix {
        match self.inner.data().targets() {
            Targets::Values(v) => v,
            _ => unreachable!("constructed with value targets"),
        }
    }

    /// L_B over the whole data set at `w`.
    pub fn full_loss(&mut self, w: &[f64]) -> Result<f64> {
        self.inner.full_loss(w)
    }
}

impl<L: Layer + Clone> LossModel for BehaviouralLoss<L> {
    fn n_params(&self) -> usize {
        self.inner.n_params()
    }

    fn n_samples(&self) -> usize {
        self.inner.n_samples()
    }

    fn loss_and_grad(&mut self, w: &[f64], batch_indices: &[usize], grad: &mut [f64]) -> Result<f64> {
        self.inner.loss_and_grad(w, batch_indices, grad)
    }

    fn loss(&mut self, w: &[f64], batch_indices: &[usize]) -> Result<f64> {
        self.inner.loss(w, batch_indices)
    }
}
