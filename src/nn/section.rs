//! The map between two node layers on node coordinates: the object the basis, edge, ablation and
//! diagnostics estimators differentiate.
//!
//! A node's coordinates are its **folded** activations `f = [h, c]` when it carries the constant
//! coordinate `c` (1 on the data, the input of every bias), `h` otherwise. A sample is a block of
//! `positions` rows (one for an MLP, one per sequence position for a transformer), so a batch of
//! `n` samples is `n · positions` rows. Integrated gradients evaluate a section at `α f`: every
//! coordinate, the constant included, is scaled (rib's convention, `docs/math.md` §3.2).

use super::activation::Activation;
use super::layer::Layer as _;
use super::layer::{Linearized, blocks};
use super::linear::Linear;
use crate::error::{Error, Result};
use crate::linalg;
use crate::matrix::{Matrix, MatrixView};
use crate::scratch::ScratchMatrix;

/// The shape of one sample at a node layer: `positions` rows of `width` coordinates (folded
/// width: the constant coordinate included when the node carries it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeShape {
    /// Rows per sample (sequence positions; 1 for an MLP).
    pub positions: usize,
    /// Coordinates per row.
    pub width: usize,
}

/// A differentiable map from one node layer's coordinates to the next one's, applied to each
/// sample independently (rows of different samples never mix; positions of one sample may).
///
/// The estimators need the output and the vector–Jacobian products of many cotangents per batch
/// ([`Section::linearize`]). A section that is one affine map followed by an elementwise
/// activation says so in [`Section::structure`]: the Jacobian Gram, the squared edges and the
/// ablations then use closed forms ([`FoldedLinear`]); the linearisation stays the definition
/// and the reference in tests.
pub trait Section: Send + Sync {
    /// One input sample's shape.
    fn input(&self) -> NodeShape;

    /// One output sample's shape.
    fn output(&self) -> NodeShape;

    /// `y ←` the section at `x` (`n · input().positions` rows).
    fn forward(&self, x: MatrixView<'_>, y: &mut Matrix) -> Result<()> {
        let lin = self.linearize(x)?;
        let out = lin.output();
        y.resize(out.nrows(), out.ncols());
        y.as_mut_slice().copy_from_slice(out.as_slice());
        Ok(())
    }

    /// Linearises the section at `x`.
    fn linearize<'a>(&'a self, x: MatrixView<'_>) -> Result<Box<dyn Linearized + 'a>>;

    /// The affine + elementwise structure, if the section is a single [`FoldedLinear`].
    fn structure(&self) -> Option<&FoldedLinear> {
        None
    }

    /// The section as a residual block `f ↦ f + σ(f W_fᵀ) R` with one folded hidden layer, if it
    /// is one (a transformer's MLP block without normalisation): the Jacobian Gram and the
    /// squared edges then have closed forms too (`docs/math.md` §3.1, §4.1).
    fn residual(&self) -> Option<ResidualLayer<'_>> {
        None
    }

    /// The section as `rest ∘ first` with an affine + elementwise `first`, if it starts that way
    /// (`rest` is `None` when `first` is all of it): what is linear in the input (ablation running
    /// sums) can then work on the first layer's pre-activations.
    fn split_first(&self) -> Option<(&FoldedLinear, Option<Box<dyn Section + '_>>)> {
        self.structure().map(|first| (first, None))
    }
}

impl<S: Section + ?Sized> Section for &S {
    fn input(&self) -> NodeShape {
        (**self).input()
    }
    fn output(&self) -> NodeShape {
        (**self).output()
    }
    fn forward(&self, x: MatrixView<'_>, y: &mut Matrix) -> Result<()> {
        (**self).forward(x, y)
    }
    fn linearize<'a>(&'a self, x: MatrixView<'_>) -> Result<Box<dyn Linearized + 'a>> {
        (**self).linearize(x)
    }
    fn structure(&self) -> Option<&FoldedLinear> {
        (**self).structure()
    }
    fn residual(&self) -> Option<ResidualLayer<'_>> {
        (**self).residual()
    }
    fn split_first(&self) -> Option<(&FoldedLinear, Option<Box<dyn Section + '_>>)> {
        (**self).split_first()
    }
}

/// A section `f ↦ f + σ(f W_fᵀ) R` on folded rows, position by position: the identity plus one
/// folded hidden layer read back by `R` (see [`Section::residual`]).
///
/// The hidden layer does not carry the constant coordinate; a bias of `R` enters as a hidden unit
/// fed by the constant (rib's `root_one` unit), and `R`'s column of the constant coordinate is
/// zero, so the constant passes unchanged.
#[derive(Clone, Copy, Debug)]
pub struct ResidualLayer<'a> {
    /// `f ↦ σ(f W_fᵀ)`, `[units, width]` folded weight, without the constant carrier.
    pub hidden: &'a FoldedLinear,
    /// `R`, `[units, width]`.
    pub readout: &'a Matrix,
}

/// Errors unless `x` is a batch of whole samples of `shape`; returns the number of samples.
pub(crate) fn check_input(op: &'static str, shape: NodeShape, x: MatrixView<'_>) -> Result<usize> {
    if x.ncols() != shape.width || x.nrows() % shape.positions.max(1) != 0 {
        return Err(Error::shape(op, &[shape.positions, shape.width], &[x.nrows(), x.ncols()]));
    }
    Ok(x.nrows() / shape.positions.max(1))
}

/// One folded layer `[h, c] ↦ [σ(h Wᵀ + c b), κ(c)]` applied to every row (position). The constant
/// coordinate `κ(c)` is carried to the next node unless the next node is the network output,
/// with `κ(c) = σ(c·r)` where `σ(r) = 1` (rib's `root_one`; `κ(c) = c` for ReLU and identity on
/// c ≥ 0), and `κ(c) = c` for activations that never reach 1 (tanh, sigmoid).
#[derive(Clone, Debug, PartialEq)]
pub struct FoldedLinear {
    /// `[W, b]`, shape `[out, in + 1]` (`b = 0` without a bias).
    weight: Matrix,
    has_bias: bool,
    activation: Activation,
    carries_constant: bool,
    root_one: Option<f64>,
    positions: usize,
}

impl FoldedLinear {
    /// `linear` followed by `activation`, on folded rows; `carries_constant` says whether the
    /// output has the constant coordinate (every layer but a network's last).
    pub fn new(linear: &Linear, activation: Activation, carries_constant: bool) -> Self {
        let (out, inp) = linear.weight().shape();
        let weight = Matrix::from_fn(out, inp + 1, |i, j| {
            if j < inp { linear.weight()[(i, j)] } else { linear.bias().map_or(0.0, |b| b[i]) }
        });
        FoldedLinear {
            weight,
            has_bias: linear.bias().is_some(),
            activation,
            carries_constant,
            root_one: activation.root_of_one(),
            positions: 1,
        }
    }

    /// Overwrites the weight and bias from `linear` (same shape; used when parameters move).
    pub(crate) fn set_linear(&mut self, linear: &Linear) {
        let inp = linear.in_dim();
        for i in 0..self.weight.nrows() {
            let row = self.weight.row_mut(i);
            row[..inp].copy_from_slice(linear.weight().row(i));
            row[inp] = linear.bias().map_or(0.0, |b| b[i]);
        }
    }

    /// The same map applied to each of `positions` rows per sample (a position-wise layer).
    pub fn with_positions(mut self, positions: usize) -> Self {
        self.positions = positions.max(1);
        self
    }

    /// The folded weight `[W, b]`, shape `[out, in + 1]`.
    pub fn folded_weight(&self) -> &Matrix {
        &self.weight
    }

    /// Whether the layer has a bias (else the last column of the folded weight is zero).
    pub fn has_bias(&self) -> bool {
        self.has_bias
    }

    /// The activation after the linear map.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// Whether the output has a constant coordinate.
    pub fn carries_constant(&self) -> bool {
        self.carries_constant
    }

    /// Number of units (output coordinates before the constant).
    pub fn units(&self) -> usize {
        self.weight.nrows()
    }

    /// κ(c) and κ'(c) for the constant coordinate.
    pub fn constant_carrier(&self, c: f64) -> (f64, f64) {
        match self.root_one {
            // σ(r) = 1 defines r: exactly 1 on the data, whatever σ(r) rounds to.
            Some(r) if c == 1.0 => (1.0, r * self.activation.derivative(r)),
            Some(r) => (self.activation.value(c * r), r * self.activation.derivative(c * r)),
            None => (c, 1.0),
        }
    }

    fn in_width(&self) -> usize {
        self.weight.ncols()
    }

    fn out_width(&self) -> usize {
        self.weight.nrows() + usize::from(self.carries_constant)
    }

    /// Pre-activations `z = [h, c] · [W, b]ᵀ` of a folded batch.
    pub(crate) fn preactivations(&self, x: MatrixView<'_>, z: &mut Matrix) {
        z.resize(x.nrows(), self.weight.nrows());
        linalg::gemm(z.as_mut_slice(), x, false, self.weight.view(), true, 1.0, false);
    }

    /// `y ← [σ(z), κ(c)]` for pre-activations `z` of the folded batch `x` (the forward pass's
    /// second half, shared with the ablations' running sums).
    pub(crate) fn activate(&self, z: MatrixView<'_>, constant: Option<&[f64]>, y: &mut Matrix) {
        let d = self.weight.nrows();
        y.resize(z.nrows(), self.out_width());
        for i in 0..z.nrows() {
            let row = y.row_mut(i);
            for (o, &zi) in row[..d].iter_mut().zip(z.row(i)) {
                *o = self.activation.value(zi);
            }
            if self.carries_constant {
                row[d] = self.constant_carrier(constant.map_or(1.0, |c| c[i])).0;
            }
        }
    }

    /// `p ← [σ(z), κ(c)]` in place for rows `p = [z, c]` (`[z]` when the layer does not carry the
    /// constant): the second half of the forward pass on pre-activations computed elsewhere.
    pub(crate) fn activate_in_place(&self, p: &mut Matrix) {
        let d = self.weight.nrows();
        for i in 0..p.nrows() {
            let row = p.row_mut(i);
            for v in &mut row[..d] {
                *v = self.activation.value(*v);
            }
            if self.carries_constant {
                row[d] = self.constant_carrier(row[d]).0;
            }
        }
    }

    /// `s = Σ_α w_α σ'(α z)` row by row, for the pre-activations `z` of the unscaled rows (the
    /// derivative vectors behind the closed-form Jacobian Gram, `docs/math.md` §3.1).
    pub(crate) fn derivative_vectors(&self, z: &Matrix, points: &[crate::estimate::QuadraturePoint], s: &mut Matrix) {
        let act = self.activation;
        s.resize(z.nrows(), z.ncols());
        for (o, &v) in s.as_mut_slice().iter_mut().zip(z.as_slice()) {
            *o = points.iter().map(|p| p.weight * act.derivative(p.alpha * v)).sum();
        }
    }
}

impl Section for FoldedLinear {
    fn input(&self) -> NodeShape {
        NodeShape { positions: self.positions, width: self.in_width() }
    }

    fn output(&self) -> NodeShape {
        NodeShape { positions: self.positions, width: self.out_width() }
    }

    fn forward(&self, x: MatrixView<'_>, y: &mut Matrix) -> Result<()> {
        check_input("FoldedLinear::forward", self.input(), x)?;
        let mut z = ScratchMatrix::take();
        self.preactivations(x, &mut z);
        let c = self.in_width() - 1;
        let constant: Vec<f64> = (0..x.nrows()).map(|i| x[(i, c)]).collect();
        self.activate(z.view(), Some(&constant), y);
        Ok(())
    }

    fn linearize<'a>(&'a self, x: MatrixView<'_>) -> Result<Box<dyn Linearized + 'a>> {
        check_input("FoldedLinear::linearize", self.input(), x)?;
        let mut derivatives = Matrix::default();
        self.preactivations(x, &mut derivatives);
        let c = self.in_width() - 1;
        let constant: Vec<f64> = (0..x.nrows()).map(|i| x[(i, c)]).collect();
        let mut y = Matrix::default();
        self.activate(derivatives.view(), Some(&constant), &mut y);
        let act = self.activation;
        derivatives.as_mut_slice().iter_mut().for_each(|z| *z = act.derivative(*z));
        let carrier = if self.carries_constant {
            constant.iter().map(|&c| self.constant_carrier(c).1).collect()
        } else {
            Vec::new()
        };
        Ok(Box::new(FoldedLinearized { layer: self, derivatives, carrier, y }))
    }

    fn structure(&self) -> Option<&FoldedLinear> {
        Some(self)
    }
}

/// A [`FoldedLinear`] at a batch: `σ'(z)` and `κ'(c)` per row.
struct FoldedLinearized<'a> {
    layer: &'a FoldedLinear,
    derivatives: Matrix,
    carrier: Vec<f64>,
    y: Matrix,
}

impl Linearized for FoldedLinearized<'_> {
    fn output(&self) -> MatrixView<'_> {
        self.y.view()
    }

    fn vjp(&self, cotangents: MatrixView<'_>, grad_x: &mut Matrix) -> Result<()> {
        let k = blocks("FoldedLinear vjp", cotangents, self.y.view())?;
        let (n, d) = self.derivatives.shape();
        let mut grad_z = ScratchMatrix::take();
        grad_z.resize(k * n, d);
        for r in 0..k * n {
            let (dst, cot, der) = (grad_z.row_mut(r), cotangents.row(r), self.derivatives.row(r % n));
            for ((g, &t), &s) in dst.iter_mut().zip(&cot[..d]).zip(der) {
                *g = t * s;
            }
        }
        let w = self.layer.folded_weight();
        grad_x.resize(k * n, w.ncols());
        linalg::gemm(grad_x.as_mut_slice(), grad_z.view(), false, w.view(), false, 1.0, false);
        if self.layer.carries_constant {
            let c = w.ncols() - 1;
            for r in 0..k * n {
                grad_x[(r, c)] += cotangents[(r, d)] * self.carrier[r % n];
            }
        }
        Ok(())
    }
}

/// Sections applied one after the other: itself a section.
pub struct Chain<'a> {
    steps: Vec<Box<dyn Section + 'a>>,
}

impl<'a> Chain<'a> {
    /// The composition `steps[k−1] ∘ … ∘ steps[0]`; each step's output shape must be the next
    /// one's input shape.
    pub fn new(steps: Vec<Box<dyn Section + 'a>>) -> Result<Self> {
        if steps.is_empty() {
            return Err(Error::Empty { what: "Chain: no sections".into() });
        }
        for pair in steps.windows(2) {
            let (out, inp) = (pair[0].output(), pair[1].input());
            if out != inp {
                return Err(Error::shape(
                    "Chain: consecutive sections",
                    &[inp.positions, inp.width],
                    &[out.positions, out.width],
                ));
            }
        }
        Ok(Chain { steps })
    }

    /// The steps, input side first.
    pub fn steps(&self) -> &[Box<dyn Section + 'a>] {
        &self.steps
    }
}

impl Section for Chain<'_> {
    fn input(&self) -> NodeShape {
        self.steps[0].input()
    }

    fn output(&self) -> NodeShape {
        self.steps[self.steps.len() - 1].output()
    }

    fn forward(&self, x: MatrixView<'_>, y: &mut Matrix) -> Result<()> {
        check_input("Chain::forward", self.input(), x)?;
        let mut input = ScratchMatrix::take();
        let mut current = x;
        for (k, step) in self.steps.iter().enumerate() {
            if k + 1 == self.steps.len() {
                return step.forward(current, y);
            }
            step.forward(current, y)?;
            std::mem::swap(&mut *input, y);
            current = input.view();
        }
        unreachable!("a chain has at least one step")
    }

    fn linearize<'b>(&'b self, x: MatrixView<'_>) -> Result<Box<dyn Linearized + 'b>> {
        check_input("Chain::linearize", self.input(), x)?;
        let mut parts: Vec<Box<dyn Linearized + 'b>> = Vec::with_capacity(self.steps.len());
        for step in &self.steps {
            let next = match parts.last() {
                None => step.linearize(x)?,
                Some(prev) => step.linearize(prev.output())?,
            };
            parts.push(next);
        }
        Ok(Box::new(ChainLinearized { parts }))
    }

    fn structure(&self) -> Option<&FoldedLinear> {
        match self.steps.as_slice() {
            [one] => one.structure(),
            _ => None,
        }
    }

    fn residual(&self) -> Option<ResidualLayer<'_>> {
        match self.steps.as_slice() {
            [one] => one.residual(),
            _ => None,
        }
    }

    fn split_first(&self) -> Option<(&FoldedLinear, Option<Box<dyn Section + '_>>)> {
        let first = self.steps[0].structure()?;
        if self.steps.len() == 1 {
            return Some((first, None));
        }
        let rest: Vec<Box<dyn Section + '_>> =
            self.steps[1..].iter().map(|s| Box::new(&**s) as Box<dyn Section + '_>).collect();
        Some((first, Some(Box::new(Chain { steps: rest }))))
    }
}

struct ChainLinearized<'a> {
    parts: Vec<Box<dyn Linearized + 'a>>,
}

impl Linearized for ChainLinearized<'_> {
    fn output(&self) -> MatrixView<'_> {
        self.parts[self.parts.len() - 1].output()
    }

    fn vjp(&self, cotangents: MatrixView<'_>, grad_x: &mut Matrix) -> Result<()> {
        let mut buffer = ScratchMatrix::take();
        let mut current = cotangents;
        for (k, part) in self.parts.iter().enumerate().rev() {
            if k == 0 {
                return part.vjp(current, grad_x);
            }
            part.vjp(current, grad_x)?;
            std::mem::swap(&mut *buffer, grad_x);
            current = buffer.view();
        }
        unreachable!("a chain has at least one part")
    }

    fn vjp_mapped(&self, cotangents: MatrixView<'_>, map: &Matrix, out: &mut Matrix) -> Result<()> {
        if self.parts.len() == 1 {
            return self.parts[0].vjp_mapped(cotangents, map, out);
        }
        let (mut buffer, mut grad) = (ScratchMatrix::take(), ScratchMatrix::take());
        let mut current = cotangents;
        for part in self.parts[1..].iter().rev() {
            part.vjp(current, &mut grad)?;
            std::mem::swap(&mut *buffer, &mut *grad);
            current = buffer.view();
        }
        self.parts[0].vjp_mapped(current, map, out)
    }
}

/// `[h] ↦ [h, 1]`: a node without the constant coordinate feeding layers that need one. The
/// constant is then fixed (not scaled by integrated gradients, no gradient).
pub(crate) struct AppendConstant {
    pub(crate) shape: NodeShape,
}

impl Section for AppendConstant {
    fn input(&self) -> NodeShape {
        self.shape
    }

    fn output(&self) -> NodeShape {
        NodeShape { width: self.shape.width + 1, ..self.shape }
    }

    fn linearize<'a>(&'a self, x: MatrixView<'_>) -> Result<Box<dyn Linearized + 'a>> {
        check_input("AppendConstant", self.input(), x)?;
        Ok(Box::new(Appended(crate::basis::fold(x))))
    }
}

struct Appended(Matrix);

impl Linearized for Appended {
    fn output(&self) -> MatrixView<'_> {
        self.0.view()
    }

    fn vjp(&self, cotangents: MatrixView<'_>, grad_x: &mut Matrix) -> Result<()> {
        blocks("AppendConstant vjp", cotangents, self.0.view())?;
        let d = self.0.ncols() - 1;
        *grad_x = Matrix::from_fn(cotangents.nrows(), d, |i, j| cotangents[(i, j)]);
        Ok(())
    }
}
