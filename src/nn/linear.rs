//! Affine layer in PyTorch's `nn.Linear` layout.

use super::layer::{Layer, LayerKind, Linearized, blocks, check_backward_shapes, check_cols, check_len};
use crate::error::{Error, Result};
use crate::linalg;
use crate::matrix::{Matrix, MatrixView};
use rand::RngExt;

/// `y = x Wᵀ + b` with `weight` stored `[out, in]` (PyTorch `nn.Linear`), bias optional.
///
/// Flat parameter order: the weight row-major, then the bias, as `Module.parameters()`.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    weight: Matrix,
    bias: Option<Vec<f64>>,
}

impl Linear {
    /// A layer from its weight `[out, in]` and optional bias `[out]`; both must be finite.
    pub fn new(weight: Matrix, bias: Option<Vec<f64>>) -> Result<Self> {
        weight.check_finite("Linear weight")?;
        if let Some(b) = &bias {
            check_len("Linear bias", weight.nrows(), b.len())?;
            if let Some(k) = b.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite { what: "Linear bias".into(), row: 0, col: k, value: b[k] });
            }
        }
        Ok(Linear { weight, bias })
    }

    /// PyTorch's default initialisation: every entry `U(−1/√in, 1/√in)`.
    pub fn init_uniform(in_dim: usize, out_dim: usize, bias: bool, rng: &mut impl rand::Rng) -> Self {
        let bound = 1.0 / (in_dim.max(1) as f64).sqrt();
        let mut draw = || rng.random_range(-bound..bound);
        let weight = Matrix::from_fn(out_dim, in_dim, |_, _| draw());
        let bias = bias.then(|| (0..out_dim).map(|_| draw()).collect());
        Linear { weight, bias }
    }

    /// The weight, `[out, in]`.
    pub fn weight(&self) -> &Matrix {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&[f64]> {
        self.bias.as_deref()
    }

    /// `Wᵀ`, shape `[in, out]`, as rib stores it.
    pub fn weight_t(&self) -> Matrix {
        self.weight.transpose()
    }

    /// Pre-activations `z = x Wᵀ + c·b` for a batch whose constant coordinate is `c` per row
    /// (`None` means `c = 1`): the folded-bias form the node-layer maps need.
    pub(crate) fn affine(&self, x: MatrixView<'_>, scale_bias: Option<&[f64]>, z: &mut Matrix) {
        z.resize(x.nrows(), self.weight.nrows());
        linalg::gemm(z.as_mut_slice(), x, false, self.weight.view(), true, 1.0, false);
        if let Some(b) = &self.bias {
            for i in 0..x.nrows() {
                let c = scale_bias.map_or(1.0, |s| s[i]);
                for (zij, bj) in z.row_mut(i).iter_mut().zip(b) {
                    *zij += c * bj;
                }
            }
        }
    }

    /// The shared backward: `grad_x ← grad_z W` and, when `grad_params` is given,
    /// `∂W += grad_zᵀ x`, `∂b += Σ_rows c·grad_z`.
    pub(crate) fn affine_backward(
        &self,
        x: MatrixView<'_>,
        scale_bias: Option<&[f64]>,
        grad_z: MatrixView<'_>,
        grad_x: &mut Matrix,
        grad_params: Option<&mut [f64]>,
    ) {
        grad_x.resize(x.nrows(), self.weight.ncols());
        linalg::gemm(grad_x.as_mut_slice(), grad_z, false, self.weight.view(), false, 1.0, false);
        let Some(gp) = grad_params else { return };
        let (gw, gb) = gp.split_at_mut(self.weight.nrows() * self.weight.ncols());
        linalg::gemm(gw, grad_z, true, x, false, 1.0, true);
        if self.bias.is_some() {
            for i in 0..grad_z.nrows() {
                let c = scale_bias.map_or(1.0, |s| s[i]);
                for (g, &v) in gb.iter_mut().zip(grad_z.row(i)) {
                    *g += c * v;
                }
            }
        }
    }
}

impl Layer for Linear {
    fn in_dim(&self) -> usize {
        self.weight.ncols()
    }

    fn out_dim(&self) -> usize {
        self.weight.nrows()
    }

    fn forward(&self, x: MatrixView<'_>, y: &mut Matrix) -> Result<()> {
        check_cols("Linear::forward", x, self.in_dim())?;
        self.affine(x, None, y);
        Ok(())
    }

    fn backward(
        &self,
        x: MatrixView<'_>,
        grad_y: MatrixView<'_>,
        grad_x: &mut Matrix,
        grad_params: &mut [f64],
    ) -> Result<()> {
        check_backward_shapes("Linear::backward", self, x, grad_y, grad_params)?;
        self.affine_backward(x, None, grad_y, grad_x, Some(grad_params));
        Ok(())
    }

    fn n_params(&self) -> usize {
        self.weight.nrows() * self.weight.ncols() + self.bias.as_ref().map_or(0, Vec::len)
    }

    fn linearize<'a>(&'a self, x: MatrixView<'_>) -> Result<Box<dyn Linearized + 'a>> {
        let mut y = Matrix::default();
        self.forward(x, &mut y)?;
        Ok(Box::new(LinearAt { weight: &self.weight, y }))
    }

    fn kind(&self) -> LayerKind<'_> {
        LayerKind::Affine(self)
    }

    fn copy_params(&self, out: &mut [f64]) -> Result<()> {
        check_len("Linear::copy_params", self.n_params(), out.len())?;
        let (w, b) = out.split_at_mut(self.weight.as_slice().len());
        w.copy_from_slice(self.weight.as_slice());
        if let Some(bias) = &self.bias {
            b.copy_from_slice(bias);
        }
        Ok(())
    }

    fn set_params(&mut self, params: &[f64]) -> Result<()> {
        check_len("Linear::set_params", self.n_params(), params.len())?;
        let (w, b) = params.split_at(self.weight.as_slice().len());
        self.weight.as_mut_slice().copy_from_slice(w);
        if let Some(bias) = &mut self.bias {
            bias.copy_from_slice(b);
        }
        Ok(())
    }
}

/// A linear map's Jacobian is its weight, wherever it is linearised.
struct LinearAt<'a> {
    weight: &'a Matrix,
    y: Matrix,
}

impl Linearized for LinearAt<'_> {
    fn output(&self) -> MatrixView<'_> {
        self.y.view()
    }

    fn vjp(&self, cotangents: MatrixView<'_>, grad_x: &mut Matrix) -> Result<()> {
        blocks("Linear vjp", cotangents, self.y.view())?;
        grad_x.resize(cotangents.nrows(), self.weight.ncols());
        linalg::gemm(grad_x.as_mut_slice(), cotangents, false, self.weight.view(), false, 1.0, false);
        Ok(())
    }
}
