//! The map between two node layers on **folded** coordinates, the object the basis and edge
//! estimators differentiate.
//!
//! A node's folded activation is `f = [h, c]` with a constant coordinate `c` (1 on the data)
//! that multiplies the bias. Scaling `f` by α (integrated gradients) scales the bias too, as
//! in rib.

use super::activation::Activation;
use super::layer::{Layer, check_backward_shapes, check_cols};
use crate::error::Result;
use crate::linalg;
use crate::matrix::{Matrix, MatrixView};

/// One folded layer `[h, c] ↦ [σ(h Wᵀ + c b), κ(c)]`. The constant coordinate `κ(c)` is
/// carried to the next hidden node (not to the output), with `κ(c) = σ(c·r)` where `σ(r) = 1`
/// (rib's `root_one`; `κ(c) = c` for ReLU and identity on c ≥ 0), and `κ(c) = c` for
/// activations that never reach 1 (tanh, sigmoid).
#[derive(Clone, Debug, PartialEq)]
pub struct FoldedLinear {
    /// `[W, b]`, shape `[out, in + 1]`.
    weight: Matrix,
    activation: Activation,
    carries_constant: bool,
    root_one: Option<f64>,
}

impl FoldedLinear {
    pub(crate) fn new(weight: Matrix, activation: Activation, carries_constant: bool) -> Self {
        FoldedLinear { weight, activation, carries_constant, root_one: activation.root_of_one() }
    }

    /// The folded weight `[W, b]`, shape `[out, in + 1]`.
    pub fn folded_weight(&self) -> &Matrix {
        &self.weight
    }

    /// The activation after the linear map.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// Whether the output has a constant coordinate (every layer but the network's last).
    pub fn carries_constant(&self) -> bool {
        self.carries_constant
    }

    /// κ(c) and κ'(c) for the constant coordinate.
    pub fn constant_carrier(&self, c: f64) -> (f64, f64) {
        match self.root_one {
            Some(r) => (self.activation.value(c * r), r * self.activation.derivative(c * r)),
            None => (c, 1.0),
        }
    }

    fn in_dim(&self) -> usize {
        self.weight.ncols()
    }

    fn out_dim(&self) -> usize {
        self.weight.nrows() + usize::from(self.carries_constant)
    }

    /// Pre-activations `z = [h, c] · [W, b]ᵀ` of a folded batch.
    fn preactivations(&self, x: MatrixView<'_>, z: &mut Matrix) {
        z.resize(x.nrows(), self.weight.nrows());
        linalg::gemm(z.as_mut_slice(), x, false, self.weight.view(), true, 1.0, false);
    }

    /// `y ← [σ(x W_fᵀ), κ(c)]` with the pre-activations left in `z` (buffers reused).
    pub(crate) fn forward(&self, x: MatrixView<'_>, z: &mut Matrix, y: &mut Matrix) {
        self.preactivations(x, z);
        let (d, c_col) = (self.weight.nrows(), self.in_dim() - 1);
        y.resize(x.nrows(), self.out_dim());
        for i in 0..x.nrows() {
            let row = y.row_mut(i);
            for (o, &zi) in row[..d].iter_mut().zip(z.row(i)) {
                *o = self.activation.value(zi);
            }
            if self.carries_constant {
                row[d] = self.constant_carrier(x[(i, c_col)]).0;
            }
        }
    }

    /// Backward given the pre-activations `z` of `x` (overwritten with `grad_z`).
    fn backward(&self, x: MatrixView<'_>, z: &mut Matrix, grad_y: MatrixView<'_>, grad_x: &mut Matrix) {
        let (d, c_col) = (self.weight.nrows(), self.in_dim() - 1);
        for i in 0..x.nrows() {
            for (zi, &gy) in z.row_mut(i).iter_mut().zip(&grad_y.row(i)[..d]) {
                *zi = gy * self.activation.derivative(*zi);
            }
        }
        grad_x.resize(x.nrows(), self.in_dim());
        linalg::gemm(grad_x.as_mut_slice(), z.view(), false, self.weight.view(), false, 1.0, false);
        if self.carries_constant {
            for i in 0..x.nrows() {
                grad_x[(i, c_col)] += grad_y[(i, d)] * self.constant_carrier(x[(i, c_col)]).1;
            }
        }
    }
}

/// A chain of [`FoldedLinear`] layers between two node layers; a frozen snapshot of the
/// parameters (it has no trainable parameters of its own).
#[derive(Clone, Debug, PartialEq)]
pub struct Section {
    layers: Vec<FoldedLinear>,
}

impl Section {
    pub(crate) fn new(layers: Vec<FoldedLinear>) -> Self {
        debug_assert!(!layers.is_empty());
        Section { layers }
    }

    /// The folded layers, input side first.
    pub fn layers(&self) -> &[FoldedLinear] {
        &self.layers
    }

    /// The layer, if the section spans exactly one (adjacent node layers): the case with
    /// closed-form Jacobian Grams.
    pub fn single(&self) -> Option<&FoldedLinear> {
        match self.layers.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

impl Layer for Section {
    fn in_dim(&self) -> usize {
        self.layers[0].in_dim()
    }

    fn out_dim(&self) -> usize {
        self.layers.last().expect("non-empty").out_dim()
    }

    fn forward(&self, x: MatrixView<'_>, y: &mut Matrix) -> Result<()> {
        check_cols("Section::forward", x, self.in_dim())?;
        let (mut z, mut input) = (Matrix::default(), x.to_owned());
        for layer in &self.layers {
            layer.forward(input.view(), &mut z, y);
            std::mem::swap(&mut input, y);
        }
        std::mem::swap(&mut input, y);
        Ok(())
    }

    fn backward(
        &self,
        x: MatrixView<'_>,
        grad_y: MatrixView<'_>,
        grad_x: &mut Matrix,
        grad_params: &mut [f64],
    ) -> Result<()> {
        check_backward_shapes("Section::backward", self, x, grad_y, grad_params)?;
        // Forward, keeping each layer's input and pre-activations.
        let n = self.layers.len();
        let (mut inputs, mut preacts) = (vec![x.to_owned()], vec![Matrix::default(); n]);
        for (k, layer) in self.layers.iter().enumerate().take(n - 1) {
            let mut y = Matrix::default();
            layer.forward(inputs[k].view(), &mut preacts[k], &mut y);
            inputs.push(y);
        }
        self.layers[n - 1].preactivations(inputs[n - 1].view(), &mut preacts[n - 1]);
        let mut grad = grad_y.to_owned();
        for k in (0..n).rev() {
            self.layers[k].backward(inputs[k].view(), &mut preacts[k], grad.view(), grad_x);
            std::mem::swap(&mut grad, grad_x);
        }
        std::mem::swap(&mut grad, grad_x);
        Ok(())
    }
}
