//! The [`LossModel`] trait (parameters ↦ minibatch loss and gradient) and its implementation
//! for any [`Layer`] with a [`Loss`] on a [`Dataset`].

use crate::data::{Batch, Dataset};
use crate::error::{Error, Result};
use crate::matrix::Matrix;
use crate::nn::{Layer, Loss, Mlp};
use std::sync::Arc;

/// A differentiable empirical loss `L(w) = mean_{i ∈ batch} ℓ(x_i, y_i; w)` over a fixed data
/// set of [`LossModel::n_samples`] samples: all an LLC estimate needs.
///
/// **Why `Clone + Send` at the use site.** Chains run in parallel and each needs its own mutable
/// scratch state (forward traces, gathered batches), while the data are read-only. The estimator
/// therefore takes a model `M: LossModel + Clone` and clones it once per chain; an
/// implementation keeps its data behind an [`Arc`] (or a shared reference) so the clone copies
/// only parameters and scratch buffers. This keeps the trait itself minimal (no factory type,
/// no interior locking) and lets a single-threaded user call it without cloning at all.
///
/// Implementing it for your own model (any autodiff framework works, as long as the gradient is
/// the gradient of the returned mean):
/// ```
/// use degeneracy::llc::LossModel;
/// /// L(w) = mean_i ½ (w − x_i)², a one-parameter model.
/// #[derive(Clone)]
/// struct Mean(Vec<f64>);
/// impl LossModel for Mean {
///     fn n_params(&self) -> usize { 1 }
///     fn n_samples(&self) -> usize { self.0.len() }
///     fn loss_and_grad(&mut self, w: &[f64], batch: &[usize], grad: &mut [f64]) -> degeneracy::Result<f64> {
///         let m = batch.len() as f64;
///         grad[0] = batch.iter().map(|&i| w[0] - self.0[i]).sum::<f64>() / m;
///         Ok(batch.iter().map(|&i| 0.5 * (w[0] - self.0[i]).powi(2)).sum::<f64>() / m)
///     }
/// }
/// let mut model = Mean(vec![1.0, 3.0]);
/// let mut g = [0.0];
/// assert_eq!(model.loss_and_grad(&[2.0], &[0, 1], &mut g)?, 0.5);
/// assert_eq!(g[0], 0.0);
/// # Ok::<(), degeneracy::Error>(())
/// ```
pub trait LossModel: Send {
    /// Number of parameters `d` (the length of `w` and `grad`).
    fn n_params(&self) -> usize;

    /// Number of samples `n` of the data set the loss is defined on (batch indices lie in
    /// `0..n`; the default nβ is `n / ln n`).
    fn n_samples(&self) -> usize;

    /// The mean loss over the samples `batch_indices` at parameters `w`, and its gradient,
    /// written (not accumulated) into `grad` (length [`LossModel::n_params`]).
    ///
    /// A non-finite loss is not an error here: the sampler flags the chain as diverged.
    fn loss_and_grad(&mut self, w: &[f64], batch_indices: &[usize], grad: &mut [f64]) -> Result<f64>;

    /// The mean loss without its gradient (used for `init_loss`, not in the sampling loop).
    /// The default calls [`LossModel::loss_and_grad`] with a scratch gradient.
    fn loss(&mut self, w: &[f64], batch_indices: &[usize]) -> Result<f64> {
        let mut grad = vec![0.0; self.n_params()];
        self.loss_and_grad(w, batch_indices, &mut grad)
    }
}

/// A model (any [`Layer`] with parameters: an [`Mlp`], a [`crate::nn::Sequential`], a user's
/// block) with a [`Loss`] on a [`Dataset`]: the training loss as a [`LossModel`].
///
/// The data sit behind an [`Arc`], so cloning one per chain copies the model and scratch
/// buffers only. For an [`Mlp`], [`LossModel::loss_and_grad`] does not allocate after the first
/// call with a given batch size (it runs [`Layer::value_and_grad`] on kept buffers).
///
/// ```
/// use degeneracy::llc::{LossModel, MlpLoss};
/// use degeneracy::{Activation, Loss, Mlp, data::modular_addition};
/// let data = modular_addition(5)?;
/// let mlp = Mlp::init(&[10, 8, 5], Activation::Relu, true, 0)?;
/// let mut model = MlpLoss::new(&mlp, Loss::CrossEntropy, data)?;
/// let w = model.params();
/// let mut grad = vec![0.0; model.n_params()];
/// let loss = model.loss_and_grad(&w, &[0, 3, 7], &mut grad)?;
/// assert!(loss > 0.0 && grad.iter().any(|&g| g != 0.0));
/// # Ok::<(), degeneracy::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LayerLoss<L> {
    model: L,
    loss: Loss,
    data: Arc<Dataset>,
    batch: Batch,
    outputs: Matrix,
}

/// The training loss of an [`Mlp`].
pub type MlpLoss = LayerLoss<Mlp>;

impl<L: Layer + Clone> LayerLoss<L> {
    /// The loss `loss` of `model` on `data`. Checks once, on the full data, that inputs match
    /// the model, that the targets suit the loss (values for MSE, labels for cross-entropy) and
    /// that every label is in range, so sampling cannot fail on a bad sample later.
    pub fn new(model: &L, loss: Loss, data: impl Into<Arc<Dataset>>) -> Result<Self> {
        let data = data.into();
        if data.input_dim() != model.in_dim() {
            return Err(Error::shape(
                "LayerLoss: dataset inputs vs model input",
                &[data.len(), model.in_dim()],
                &[data.len(), data.input_dim()],
            ));
        }
        let (x, t) = data.slice(0..data.len());
        let t =
            t.ok_or_else(|| Error::invalid("dataset", "unlabelled", "the training loss needs targets or labels"))?;
        let mut y = Matrix::default();
        model.forward(x, &mut y)?;
        loss.value_and_grad(y.view(), t, None)?;
        Ok(LayerLoss { model: model.clone(), loss, data, batch: Batch::default(), outputs: Matrix::default() })
    }

    /// The model's current parameters (the usual `w*`).
    pub fn params(&self) -> Vec<f64> {
        let mut p = vec![0.0; self.model.n_params()];
        self.model.copy_params(&mut p).expect("sized above");
        p
    }

    /// The model (with the parameters of the last evaluation).
    pub fn model(&self) -> &L {
        &self.model
    }

    /// The loss.
    pub fn loss_kind(&self) -> Loss {
        self.loss
    }

    /// The data set.
    pub fn data(&self) -> &Dataset {
        &self.data
    }

    /// The loss over the whole data set at `w` (forward only, one pass).
    pub fn full_loss(&mut self, w: &[f64]) -> Result<f64> {
        self.model.set_params(w)?;
        let (x, t) = self.data.slice(0..self.data.len());
        self.model.forward(x, &mut self.outputs)?;
        self.loss.value_and_grad(self.outputs.view(), t.expect("checked in new"), None)
    }

    fn gather(&mut self, w: &[f64], batch_indices: &[usize]) -> Result<()> {
        self.model.set_params(w)?;
        if batch_indices.is_empty() {
            return Err(Error::Empty { what: "LayerLoss batch".into() });
        }
        self.data.gather(batch_indices, &mut self.batch)
    }
}

impl MlpLoss {
    /// The network (with the parameters of the last evaluation).
    pub fn mlp(&self) -> &Mlp {
        &self.model
    }
}

impl<L: Layer + Clone> LossModel for LayerLoss<L> {
    fn n_params(&self) -> usize {
        self.model.n_params()
    }

    fn n_samples(&self) -> usize {
        self.data.len()
    }

    fn loss_and_grad(&mut self, w: &[f64], batch_indices: &[usize], grad: &mut [f64]) -> Result<f64> {
        if grad.len() != self.model.n_params() {
            return Err(Error::shape("LayerLoss::loss_and_grad grad", &[self.model.n_params()], &[grad.len()]));
        }
        self.gather(w, batch_indices)?;
        let targets = self.batch.targets().expect("checked in new");
        let loss = self.loss;
        grad.fill(0.0);
        self.model.value_and_grad(
            self.batch.inputs(),
            &mut |y, grad_y| loss.value_and_grad(y, targets, Some(grad_y)),
            grad,
        )
    }

    fn loss(&mut self, w: &[f64], batch_indices: &[usize]) -> Result<f64> {
        self.gather(w, batch_indices)?;
        self.model.forward(self.batch.inputs(), &mut self.outputs)?;
        self.loss.value_and_grad(self.outputs.view(), self.batch.targets().expect("checked in new"), None)
    }
}
