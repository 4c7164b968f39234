//! The [`Layer`] trait: a differentiable map on batches, and [`Linearized`], a map linearised at a
//! batch that applies many vector–Jacobian products after one forward pass.

use super::activation::Activation;
use super::linear::Linear;
use crate::error::{Error, Result};
use crate::matrix::{Matrix, MatrixView};

/// A map linearised at a batch: its output there, and the vector–Jacobian product of any number
/// of cotangents without running the forward pass again.
///
/// The Jacobian Gram of a node layer needs one cotangent per output direction and sample, the
/// edges one per output direction and quadrature point: a linearisation turns those into one
/// forward pass and a few large products.
pub trait Linearized {
    /// The map's output at the linearisation point (rows as the map's output rows).
    fn output(&self) -> MatrixView<'_>;

    /// `grad_x ← [c₁ J; c₂ J; …]`: `cotangents` stacks `k ≥ 1` blocks shaped like
    /// [`Linearized::output`] (block `b` holds cotangent `b` of every output row); `grad_x` is
    /// resized to `k` blocks shaped like the input.
    fn vjp(&self, cotangents: MatrixView<'_>, grad_x: &mut Matrix) -> Result<()>;

    /// `out ← [c₁ J; c₂ J; …] · map`: the VJP followed by a linear map of the input coordinates
    /// (`map` is `[input width, m]`; the edges read gradients in basis coordinates this way).
    ///
    /// The default runs [`Linearized::vjp`] and one product; a map whose VJP is a combination of
    /// a few vectors per sample (attention) maps those vectors instead.
    fn vjp_mapped(&self, cotangents: MatrixView<'_>, map: &Matrix, out: &mut Matrix) -> Result<()> {
        let mut grad = crate::scratch::ScratchMatrix::take();
        self.vjp(cotangents, &mut grad)?;
        if grad.ncols() != map.nrows() {
            return Err(Error::shape("Linearized::vjp_mapped map [input width, m]", &[grad.ncols()], &[map.nrows()]));
        }
        out.resize(grad.nrows(), map.ncols());
        crate::linalg::gemm(out.as_mut_slice(), grad.view(), false, map.view(), false, 1.0, false);
        Ok(())
    }
}

/// What the estimators may exploit about a [`Layer`] beyond its forward pass and VJP, and how a
/// node's constant coordinate `c` (`1` on the data, scaled with the activations by integrated
/// gradients) passes it inside a section (`docs/math.md` §3.2).
#[derive(Clone, Copy, Debug)]
pub enum LayerKind<'a> {
    /// `y = x Wᵀ + b`: the bias folds into the constant, `[x, c] ↦ [x Wᵀ + c b, c]`.
    Affine(&'a Linear),
    /// `y = σ(x)` elementwise; the constant is carried as `κ(c) = σ(c r)` with `σ(r) = 1`.
    Elementwise(Activation),
    /// Opaque; the constant passes the layer untouched: `[x, c] ↦ [F(x), c]`. Right for layers
    /// without offsets (normalisation without affine parameters), and the safe default.
    PassThrough,
    /// Opaque, and positively homogeneous of degree 1 once its offsets scale with the constant:
    /// `[x, c] ↦ [c F(x / c), c]`. This is bias folding for any piecewise-linear layer (ReLU
    /// blocks, residual blocks with biases), so `F(αf)` scales every bias with α as for an MLP.
    Homogeneous,
}

/// A differentiable map applied row-wise to a batch (`n × in_dim` → `n × out_dim`).
///
/// Downstream crates implement this for their own blocks: `forward` and the vector–Jacobian
/// product `backward` are required; [`Layer::linearize`] and [`Layer::value_and_grad`] have
/// defaults built on them that a fast implementation overrides. Parameters are one flat vector
/// because the LLC sampler moves all of them together. Layers are `Clone` (through
/// [`dyn_clone`], so `Box<dyn Layer>` is too): every LLC chain owns a copy of the model.
pub trait Layer: dyn_clone::DynClone + Send + Sync {
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

    /// Linearises the layer at `x` (input-side VJPs only).
    ///
    /// The default keeps a copy of `x` and answers [`Linearized::vjp`] with one
    /// [`Layer::backward`] on `x` stacked once per cotangent, so it re-runs the forward pass (and
    /// the parameter gradient) for every cotangent: override it when the layer can keep what its
    /// backward pass needs.
    fn linearize<'a>(&'a self, x: MatrixView<'_>) -> Result<Box<dyn Linearized + 'a>> {
        check_cols("Layer::linearize", x, self.in_dim())?;
        let mut y = Matrix::default();
        self.forward(x, &mut y)?;
        Ok(Box::new(ByBackward { layer: self, x: x.to_owned(), y }))
    }

    /// What the estimators may exploit, and how the constant coordinate passes the layer.
    fn kind(&self) -> LayerKind<'_> {
        LayerKind::PassThrough
    }

    /// One step of training: `y = layer(x)`, `(ℓ, ∂ℓ/∂y) = loss(y)`, `grad_params += ∂ℓ/∂θ`;
    /// returns `ℓ`. The default runs [`Layer::forward`] then [`Layer::backward`] (two forward
    /// passes); layers that keep their forward state override it.
    fn value_and_grad(
        &self,
        x: MatrixView<'_>,
        loss: &mut dyn FnMut(MatrixView<'_>, &mut Matrix) -> Result<f64>,
        grad_params: &mut [f64],
    ) -> Result<f64> {
        let (mut y, mut grad_y, mut grad_x) = (Matrix::default(), Matrix::default(), Matrix::default());
        self.forward(x, &mut y)?;
        let value = loss(y.view(), &mut grad_y)?;
        self.backward(x, grad_y.view(), &mut grad_x, grad_params)?;
        Ok(value)
    }
}

dyn_clone::clone_trait_object!(Layer);

/// The default linearisation: `backward` on the input stacked once per cotangent.
struct ByBackward<'a, L: ?Sized> {
    layer: &'a L,
    x: Matrix,
    y: Matrix,
}

impl<L: Layer + ?Sized> Linearized for ByBackward<'_, L> {
    fn output(&self) -> MatrixView<'_> {
        self.y.view()
    }

    fn vjp(&self, cotangents: MatrixView<'_>, grad_x: &mut Matrix) -> Result<()> {
        let k = blocks("Layer::linearize vjp", cotangents, self.y.view())?;
        let mut params = vec![0.0; self.layer.n_params()];
        if k == 1 {
            return self.layer.backward(self.x.view(), cotangents, grad_x, &mut params);
        }
        let mut stacked = Vec::with_capacity(k * self.x.as_slice().len());
        for _ in 0..k {
            stacked.extend_from_slice(self.x.as_slice());
        }
        let stacked = Matrix::from_vec(k * self.x.nrows(), self.x.ncols(), stacked)?;
        self.layer.backward(stacked.view(), cotangents, grad_x, &mut params)
    }
}

/// The number of cotangent blocks in `cotangents` for an output shaped like `output`; errors
/// unless the rows are a positive multiple and the widths agree.
pub(crate) fn blocks(op: &'static str, cotangents: MatrixView<'_>, output: MatrixView<'_>) -> Result<usize> {
    let (rows, width) = output.shape();
    if cotangents.ncols() != width || rows == 0 || cotangents.nrows() % rows != 0 || cotangents.nrows() == 0 {
        return Err(Error::shape(op, &[rows, width], &[cotangents.nrows(), cotangents.ncols()]));
    }
    Ok(cotangents.nrows() / rows)
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
