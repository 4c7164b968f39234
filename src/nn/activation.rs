//! Elementwise activations. Each is also a parameter-free [`Layer`].

use super::layer::{Layer, LayerKind, Linearized, blocks, check_backward_shapes, check_cols};
use crate::error::{Error, Result};
use crate::matrix::{Matrix, MatrixView};
use serde::{Deserialize, Serialize};
use std::f64::consts::{FRAC_1_SQRT_2, FRAC_2_SQRT_PI};

/// An elementwise nonlinearity σ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// σ(z) = z.
    Identity,
    /// σ(z) = max(z, 0), with σ'(0) = 0 (PyTorch's convention).
    Relu,
    /// σ(z) = z Φ(z), with the exact normal CDF (PyTorch `gelu`).
    Gelu,
    /// The tanh approximation of GELU (PyTorch `gelu(approximate="tanh")`, `gelu_new`).
    GeluTanh,
    /// σ(z) = tanh z.
    Tanh,
    /// σ(z) = 1 / (1 + e^{−z}).
    Sigmoid,
}

impl Activation {
    /// Parses the names used in configs: `identity`/`linear`/`none`, `relu`, `gelu`,
    /// `gelu_tanh`/`gelu_new`, `tanh`, `sigmoid`.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "identity" | "linear" | "none" => Activation::Identity,
            "relu" => Activation::Relu,
            "gelu" => Activation::Gelu,
            "gelu_tanh" | "gelu_new" => Activation::GeluTanh,
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            _ => {
                return Err(Error::invalid(
                    "activation",
                    name,
                    "expected identity, relu, gelu, gelu_tanh, tanh or sigmoid",
                ));
            }
        })
    }

    /// The canonical config name.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_tanh",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
        }
    }

    /// σ(z).
    #[inline]
    pub fn value(self, z: f64) -> f64 {
        match self {
            Activation::Identity => z,
            Activation::Relu => z.max(0.0),
            Activation::Gelu => 0.5 * z * (1.0 + libm::erf(z * FRAC_1_SQRT_2)),
            Activation::GeluTanh => 0.5 * z * (1.0 + gelu_tanh_inner(z).tanh()),
            Activation::Tanh => z.tanh(),
            Activation::Sigmoid => sigmoid(z),
        }
    }

    /// σ'(z).
    #[inline]
    pub fn derivative(self, z: f64) -> f64 {
        match self {
            Activation::Identity => 1.0,
            Activation::Relu => {
                if z > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::Gelu => {
                let cdf = 0.5 * (1.0 + libm::erf(z * FRAC_1_SQRT_2));
                let pdf = (-0.5 * z * z).exp() * (0.5 * FRAC_2_SQRT_PI * FRAC_1_SQRT_2);
                cdf + z * pdf
            }
            Activation::GeluTanh => {
                let t = gelu_tanh_inner(z).tanh();
                let dinner = GELU_TANH_C * (1.0 + 3.0 * GELU_TANH_A * z * z);
                0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * dinner
            }
            Activation::Tanh => 1.0 - z.tanh().powi(2),
            Activation::Sigmoid => {
                let s = sigmoid(z);
                s * (1.0 - s)
            }
        }
    }

    /// Whether σ(αz) = ασ(z) for α > 0, which makes integrated gradients of a folded
    /// `Linear → σ` section equal to the plain gradient.
    pub fn is_positively_homogeneous(self) -> bool {
        matches!(self, Activation::Identity | Activation::Relu)
    }

    /// The input r with σ(r) = 1, used to carry a folded bias's constant 1 through σ
    /// (rib's `root_one`); `None` where σ never reaches 1 (tanh, sigmoid).
    pub fn root_of_one(self) -> Option<f64> {
        match self {
            Activation::Identity | Activation::Relu => Some(1.0),
            Activation::Tanh | Activation::Sigmoid => None,
            Activation::Gelu | Activation::GeluTanh => {
                // Newton from 1: σ is convex-increasing there, so this converges monotonically.
                let mut r = 1.0_f64;
                for _ in 0..60 {
                    let step = (self.value(r) - 1.0) / self.derivative(r);
                    r -= step;
                    if step.abs() < 1e-17 {
                        break;
                    }
                }
                Some(r)
            }
        }
    }
}

const GELU_TANH_C: f64 = 0.797_884_560_802_865_4; // sqrt(2/π)
const GELU_TANH_A: f64 = 0.044715;

#[inline]
fn gelu_tanh_inner(z: f64) -> f64 {
    GELU_TANH_C * (z + GELU_TANH_A * z * z * z)
}

#[inline]
fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// An activation as a parameter-free [`Layer`] of a fixed width.
///
/// ```
/// use degeneracy::{Activation, Elementwise, Layer, Matrix};
/// let relu = Elementwise::new(Activation::Relu, 2);
/// let mut y = Matrix::default();
/// relu.forward(Matrix::from_rows(&[[-1.0, 2.0]])?.view(), &mut y)?;
/// assert_eq!(y.as_slice(), &[0.0, 2.0]);
/// # Ok::<(), degeneracy::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Elementwise {
    /// The nonlinearity.
    pub activation: Activation,
    /// Input (= output) width.
    pub width: usize,
}

impl Elementwise {
    /// σ applied to rows of `width` entries.
    pub fn new(activation: Activation, width: usize) -> Self {
        Elementwise { activation, width }
    }
}

impl Layer for Elementwise {
    fn in_dim(&self) -> usize {
        self.width
    }

    fn out_dim(&self) -> usize {
        self.width
    }

    fn forward(&self, x: MatrixView<'_>, y: &mut Matrix) -> Result<()> {
        check_cols("Elementwise::forward", x, self.width)?;
        y.resize(x.nrows(), x.ncols());
        for (o, &z) in y.as_mut_slice().iter_mut().zip(x.as_slice()) {
            *o = self.activation.value(z);
        }
        Ok(())
    }

    fn backward(
        &self,
        x: MatrixView<'_>,
        grad_y: MatrixView<'_>,
        grad_x: &mut Matrix,
        grad_params: &mut [f64],
    ) -> Result<()> {
        check_backward_shapes("Elementwise::backward", self, x, grad_y, grad_params)?;
        grad_x.resize(x.nrows(), x.ncols());
        let act = self.activation;
        for ((g, &z), &gy) in grad_x.as_mut_slice().iter_mut().zip(x.as_slice()).zip(grad_y.as_slice()) {
            *g = gy * act.derivative(z);
        }
        Ok(())
    }

    fn linearize<'a>(&'a self, x: MatrixView<'_>) -> Result<Box<dyn Linearized + 'a>> {
        let mut y = Matrix::default();
        self.forward(x, &mut y)?;
        let act = self.activation;
        let derivatives =
            Matrix::from_vec(x.nrows(), x.ncols(), x.as_slice().iter().map(|&z| act.derivative(z)).collect())?;
        Ok(Box::new(ElementwiseAt { derivatives, y }))
    }

    fn kind(&self) -> LayerKind<'_> {
        LayerKind::Elementwise(self.activation)
    }
}

/// σ'(x) kept from the forward pass.
struct ElementwiseAt {
    derivatives: Matrix,
    y: Matrix,
}

impl Linearized for ElementwiseAt {
    fn output(&self) -> MatrixView<'_> {
        self.y.view()
    }

    fn vjp(&self, cotangents: MatrixView<'_>, grad_x: &mut Matrix) -> Result<()> {
        blocks("Elementwise vjp", cotangents, self.y.view())?;
        let per_block = self.derivatives.as_slice().len();
        grad_x.resize(cotangents.nrows(), cotangents.ncols());
        for (k, (g, &c)) in grad_x.as_mut_slice().iter_mut().zip(cotangents.as_slice()).enumerate() {
            *g = c * self.derivatives.as_slice()[k % per_block];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Activation; 6] = [
        Activation::Identity,
        Activation::Relu,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Tanh,
        Activation::Sigmoid,
    ];

    #[test]
    fn derivatives_match_central_differences() {
        for act in ALL {
            for &z in &[-3.1, -0.7, 0.3, 1.9, 4.2] {
                let h = 1e-6;
                let fd = (act.value(z + h) - act.value(z - h)) / (2.0 * h);
                assert!((fd - act.derivative(z)).abs() < 1e-8, "{act:?} at {z}");
            }
        }
    }

    #[test]
    fn relu_derivative_at_zero_is_zero() {
        assert_eq!(Activation::Relu.derivative(0.0), 0.0);
    }

    #[test]
    fn known_values() {
        // PyTorch: gelu(1.0) = 0.8413447460685429, gelu_tanh(1.0) = 0.8411919906082768
        assert!((Activation::Gelu.value(1.0) - 0.841_344_746_068_542_9).abs() < 1e-15);
        assert!((Activation::GeluTanh.value(1.0) - 0.841_191_990_608_276_8).abs() < 1e-15);
        assert!((Activation::Sigmoid.value(-800.0)).abs() < 1e-300);
        for act in [Activation::Gelu, Activation::GeluTanh] {
            let r = act.root_of_one().unwrap();
            assert!((act.value(r) - 1.0).abs() < 1e-15);
        }
    }

    #[test]
    fn names_round_trip() {
        for act in ALL {
            assert_eq!(Activation::from_name(act.name()).unwrap(), act);
        }
        assert!(Activation::from_name("swish").is_err());
    }
}
