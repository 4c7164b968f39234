//! The [`Layer`] trait: a differentiable map on batches.

use crate::error::{Error, Result};
use crate::matrix::{Matrix, MatrixView};

/// A differentiable map applied row-wise to a batch (`n × in_dim` → `n × out_dim`).
///
/// Downstream crates implement this for their own blocks; the estimators only need `forward`
/// and the vector–Jacobian product `backward`. Parameters are exposed as one flat vector
/// because the LLC sampler moves all of them together.
pub trait Layer: Send + Sync {
    /// Width of an input row.
    fn in_dim(&self) -> usize;

    /// Width of an output row.
    fn out_dim(&self) -> usize;

    /// `y ← layer(x)`; `y` is resized to `n × out_dim` (its allocation is reused).
    fn forward(&self, x: MatrixView<'_>, y: &mut Matrix) -> Result<()>;

    /// Vector–Jacobian product at `x`: `grad_x ← grad_y · ∂y/∂x` row by row, and
    /// `grad_params += Σ_rows grad_y · ∂y/∂θ` (accumulated, not overwritten; length
    /// [`Layer::n_params`]).
    fn backward(
        &self,
        x: MatrixView<'_>,
        grad_y: MatrixView<'_>,
        grad_x: &mut Matrix,
        grad_params: &mut [f64],
    ) -> Result<()>;

    /// Number of trainable parameters.
    fn n_params(&self) -> usize {
        0
    }

    /// Copies the parameters into `out` (length [`Layer::n_params`]) in the layer's flat order.
    fn copy_params(&self, out: &mut [f64]) -> Result<()> {
        check_len("Layer::copy_params", self.n_params(), out.len())
    }

    /// Overwrites the parameters from `params` (length [`Layer::n_params`]).
    fn set_params(&mut self, params: &[f64]) -> Result<()> {
        check_len("Layer::set_params", self.n_params(), params.len())
    }
}

/// Errors unless a flat buffer has the expected length.
pub(crate) fn check_len(op: &'static str, expected: usize, found: usize) -> Result<()> {
    if expected == found { Ok(()) } else { Err(Error::shape(op, &[expected], &[found])) }
}

/// Errors unless a batch has `cols` columns.
pub(crate) fn check_cols(op: &'static str, x: MatrixView<'_>, cols: usize) -> Result<()> {
    if x.ncols() == cols { Ok(()) } else { Err(Error::shape(op, &[x.nrows(), cols], &[x.nrows(), x.ncols()])) }
}

/// Errors unless `grad_y` matches the layer output for the batch `x`.
pub(crate) fn check_backward_shapes(
    op: &'static str,
    layer: &(impl Layer + ?Sized),
    x: MatrixView<'_>,
    grad_y: MatrixView<'_>,
    grad_params: &[f64],
) -> Result<()> {
    check_cols(op, x, layer.in_dim())?;
    if grad_y.shape() != (x.nrows(), layer.out_dim()) {
        return Err(Error::shape(op, &[x.nrows(), layer.out_dim()], &[grad_y.nrows(), grad_y.ncols()]));
    }
    check_len(op, layer.n_params(), grad_params.len())
}
