//! A user's own layers, as a downstream crate would write them against the public API: a
//! residual block (homogeneous, with its own fast linearisation) and a LayerNorm without affine
//! parameters (forward and backward only). Shared by `tests/network_tests.rs` and
//! `benches/network.rs`.
#![allow(dead_code)]

use degeneracy::nn::{LayerKind, Linearized};
use degeneracy::{Error, Layer, Matrix, MatrixView, Result};

/// Deterministic entries uniform in `[−scale, scale]`.
pub fn pseudo_random(rows: usize, cols: usize, seed: u64, scale: f64) -> Matrix {
    Matrix::from_fn(rows, cols, |i, j| {
        let h = (i as u64 * 6_364_136_223_846_793_005 + j as u64 * 1_442_695_040_888_963_407 + seed * 7919 + 1)
            .wrapping_mul(2_862_933_555_777_941_757);
        scale * (2.0 * ((h >> 11) as f64 / (1u64 << 53) as f64) - 1.0)
    })
}

/// `y = x + W₂ relu(W₁ x + b₁) + b₂`, homogeneous once its biases scale with the constant.
#[derive(Clone, Debug)]
pub struct Residual {
    pub w1: Matrix, // [hidden, d]
    pub b1: Vec<f64>,
    pub w2: Matrix, // [d, hidden]
    pub b2: Vec<f64>,
}

impl Residual {
    pub fn new(d: usize, hidden: usize, seed: u64) -> Self {
        Residual {
            w1: pseudo_random(hidden, d, seed, 0.6),
            b1: pseudo_random(1, hidden, seed + 1, 0.3).into_vec(),
            w2: pseudo_random(d, hidden, seed + 2, 0.6),
            b2: pseudo_random(1, d, seed + 3, 0.3).into_vec(),
        }
    }

    /// `z = x W₁ᵀ + b₁`.
    fn hidden(&self, x: MatrixView<'_>) -> Matrix {
        let mut z = x.matmul(self.w1.transpose().view()).unwrap();
        for i in 0..z.nrows() {
            z.row_mut(i).iter_mut().zip(&self.b1).for_each(|(v, b)| *v += b);
        }
        z
    }
}

fn relu(z: &Matrix) -> Matrix {
    Matrix::from_fn(z.nrows(), z.ncols(), |i, j| z[(i, j)].max(0.0))
}

fn step(z: &Matrix) -> Matrix {
    Matrix::from_fn(z.nrows(), z.ncols(), |i, j| f64::from(u8::from(z[(i, j)] > 0.0)))
}

fn hadamard(a: &Matrix, b: &Matrix) -> Matrix {
    Matrix::from_fn(a.nrows(), a.ncols(), |i, j| a[(i, j)] * b[(i % b.nrows(), j)])
}

impl Layer for Residual {
    fn in_dim(&self) -> usize {
        self.w1.ncols()
    }
    fn out_dim(&self) -> usize {
        self.w1.ncols()
    }
    fn forward(&self, x: MatrixView<'_>, y: &mut Matrix) -> Result<()> {
        if x.ncols() != self.in_dim() {
            return Err(Error::shape("Residual::forward", &[x.nrows(), self.in_dim()], &[x.nrows(), x.ncols()]));
        }
        let a = relu(&self.hidden(x));
        let mut out = a.matmul(&self.w2.transpose())?;
        for i in 0..out.nrows() {
            for (j, v) in out.row_mut(i).iter_mut().enumerate() {
                *v += x[(i, j)] + self.b2[j];
            }
        }
        *y = out;
        Ok(())
    }
    fn backward(&self, x: MatrixView<'_>, gy: MatrixView<'_>, gx: &mut Matrix, gp: &mut [f64]) -> Result<()> {
        let z = self.hidden(x);
        let a = relu(&z);
        let gz = hadamard(&gy.matmul(self.w2.view())?, &step(&z));
        let mut g = gz.matmul(&self.w1)?;
        g.as_mut_slice().iter_mut().zip(gy.as_slice()).for_each(|(v, t)| *v += t);
        *gx = g;
        let (h, d) = self.w1.shape();
        let gw1 = gz.transpose().matmul(&x.to_owned())?;
        let gw2 = gy.to_owned().transpose().matmul(&a)?;
        let (p_w1, rest) = gp.split_at_mut(h * d);
        let (p_b1, rest) = rest.split_at_mut(h);
        let (p_w2, p_b2) = rest.split_at_mut(d * h);
        p_w1.iter_mut().zip(gw1.as_slice()).for_each(|(p, v)| *p += v);
        p_w2.iter_mut().zip(gw2.as_slice()).for_each(|(p, v)| *p += v);
        for i in 0..x.nrows() {
            p_b1.iter_mut().zip(gz.row(i)).for_each(|(p, v)| *p += v);
            p_b2.iter_mut().zip(gy.row(i)).for_each(|(p, v)| *p += v);
        }
        Ok(())
    }
    fn n_params(&self) -> usize {
        2 * self.w1.nrows() * self.w1.ncols() + self.b1.len() + self.b2.len()
    }
    fn copy_params(&self, out: &mut [f64]) -> Result<()> {
        let all: Vec<f64> = [self.w1.as_slice(), &self.b1, self.w2.as_slice(), &self.b2].concat();
        out.copy_from_slice(&all);
        Ok(())
    }
    fn set_params(&mut self, p: &[f64]) -> Result<()> {
        let (h, d) = self.w1.shape();
        self.w1.as_mut_slice().copy_from_slice(&p[..h * d]);
        self.b1.copy_from_slice(&p[h * d..h * d + h]);
        self.w2.as_mut_slice().copy_from_slice(&p[h * d + h..2 * h * d + h]);
        self.b2.copy_from_slice(&p[2 * h * d + h..]);
        Ok(())
    }
    /// One forward pass keeps relu'(z); every cotangent then costs two small products.
    fn linearize<'a>(&'a self, x: MatrixView<'_>) -> Result<Box<dyn Linearized + 'a>> {
        let mut y = Matrix::default();
        self.forward(x, &mut y)?;
        Ok(Box::new(ResidualAt { layer: self, mask: step(&self.hidden(x)), y }))
    }
    fn kind(&self) -> LayerKind<'_> {
        LayerKind::Homogeneous
    }
}

struct ResidualAt<'a> {
    layer: &'a Residual,
    mask: Matrix,
    y: Matrix,
}

impl Linearized for ResidualAt<'_> {
    fn output(&self) -> MatrixView<'_> {
        self.y.view()
    }
    fn vjp(&self, cot: MatrixView<'_>, gx: &mut Matrix) -> Result<()> {
        let gz = hadamard(&cot.matmul(self.layer.w2.view())?, &self.mask);
        let mut g = gz.matmul(&self.layer.w1)?;
        g.as_mut_slice().iter_mut().zip(cot.as_slice()).for_each(|(v, t)| *v += t);
        *gx = g;
        Ok(())
    }
}

/// LayerNorm without affine parameters: `(x − mean x) / √(var x + ε)` per row. Only `forward`
/// and `backward`: the estimators use the default linearisation.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub width: usize,
    pub eps: f64,
}

impl LayerNorm {
    fn row_stats(&self, row: &[f64]) -> (f64, f64) {
        let n = row.len() as f64;
        let mean = row.iter().sum::<f64>() / n;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        (mean, (var + self.eps).sqrt())
    }
}

impl Layer for LayerNorm {
    fn in_dim(&self) -> usize {
        self.width
    }
    fn out_dim(&self) -> usize {
        self.width
    }
    fn forward(&self, x: MatrixView<'_>, y: &mut Matrix) -> Result<()> {
        *y = Matrix::from_fn(x.nrows(), self.width, |i, j| {
            let (m, s) = self.row_stats(x.row(i));
            (x[(i, j)] - m) / s
        });
        Ok(())
    }
    fn backward(&self, x: MatrixView<'_>, gy: MatrixView<'_>, gx: &mut Matrix, _: &mut [f64]) -> Result<()> {
        let d = self.width as f64;
        *gx = Matrix::zeros(x.nrows(), self.width);
        for i in 0..x.nrows() {
            let (m, s) = self.row_stats(x.row(i));
            let y: Vec<f64> = x.row(i).iter().map(|v| (v - m) / s).collect();
            let g = gy.row(i);
            let mean_g = g.iter().sum::<f64>() / d;
            let mean_gy = g.iter().zip(&y).map(|(a, b)| a * b).sum::<f64>() / d;
            for j in 0..self.width {
                gx[(i, j)] = (g[j] - mean_g - y[j] * mean_gy) / s;
            }
        }
        Ok(())
    }
}
