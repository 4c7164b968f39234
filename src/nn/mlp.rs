//! Multi-layer perceptrons with named node layers, and the sections between them.
//!
//! Node-layer names follow rib: node `layers.k` is the input of linear layer `k`, `output` is
//! the network output. An activation follows every linear layer but the last.

use super::activation::Activation;
use super::layer::{Layer, check_backward_shapes, check_cols, check_len};
use super::linear::Linear;
use super::section::{FoldedLinear, Section};
use crate::error::{Error, Result};
use crate::linalg;
use crate::matrix::{Matrix, MatrixView};
use rand::SeedableRng;

/// The name of the output node layer.
pub const OUTPUT_NODE: &str = "output";

/// A chain `Linear → σ → Linear → σ → … → Linear`.
#[derive(Clone, Debug, PartialEq)]
pub struct Mlp {
    linears: Vec<Linear>,
    /// `activations[k]` follows `linears[k]`; the last one is always `Identity`.
    activations: Vec<Activation>,
}

/// Everything a forward pass computed, kept for the backward pass and for reading node
/// activations; reuse one trace across batches to avoid allocation.
#[derive(Clone, Debug, Default)]
pub struct ForwardTrace {
    /// `nodes[k]` = input of linear layer `k`; the last entry is the output.
    nodes: Vec<Matrix>,
    /// `preacts[k]` = output of linear layer `k` before its activation.
    preacts: Vec<Matrix>,
    grad: Matrix,
    grad_next: Matrix,
}

impl ForwardTrace {
    /// Activations at node `k` (unfolded: no constant coordinate).
    pub fn node(&self, k: usize) -> &Matrix {
        &self.nodes[k]
    }

    /// Pre-activations of linear layer `k` (the input of its activation).
    pub fn preactivation(&self, k: usize) -> &Matrix {
        &self.preacts[k]
    }

    /// The network output.
    pub fn output(&self) -> &Matrix {
        self.nodes.last().expect("a trace of a forward pass has an output")
    }
}

impl Mlp {
    /// An MLP with `hidden` after every linear layer but the last.
    pub fn new(linears: Vec<Linear>, hidden: Activation) -> Result<Self> {
        let n = linears.len();
        let activations = (0..n).map(|k| if k + 1 < n { hidden } else { Activation::Identity }).collect();
        Self::with_activations(linears, activations)
    }

    /// An MLP with one activation per hidden layer (`activations.len() == linears.len() − 1`).
    pub fn with_activations(linears: Vec<Linear>, mut activations: Vec<Activation>) -> Result<Self> {
        if linears.is_empty() {
            return Err(Error::Empty { what: "Mlp: no linear layers".into() });
        }
        if activations.len() == linears.len() - 1 {
            activations.push(Activation::Identity);
        }
        check_len("Mlp activations", linears.len(), activations.len())?;
        if *activations.last().expect("non-empty") != Activation::Identity {
            return Err(Error::invalid("Mlp activations", "last", "the output layer has no activation"));
        }
        for (k, pair) in linears.windows(2).enumerate() {
            if pair[0].out_dim() != pair[1].in_dim() {
                return Err(Error::ShapeMismatch {
                    op: if k == 0 { "Mlp: layers.0 → layers.1" } else { "Mlp: consecutive layers" },
                    expected: vec![pair[1].out_dim(), pair[0].out_dim()],
                    found: vec![pair[1].out_dim(), pair[1].in_dim()],
                });
            }
        }
        Ok(Mlp { linears, activations })
    }

    /// A freshly initialised MLP with node widths `sizes` (input, hidden…, output), PyTorch's
    /// default uniform init, seeded.
    pub fn init(sizes: &[usize], hidden: Activation, bias: bool, seed: u64) -> Result<Self> {
        if sizes.len() < 2 || sizes.contains(&0) {
            return Err(Error::invalid("Mlp sizes", format!("{sizes:?}"), "need ≥ 2 positive widths"));
        }
        let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(seed);
        let linears = sizes.windows(2).map(|w| Linear::init_uniform(w[0], w[1], bias, &mut rng)).collect();
        Self::new(linears, hidden)
    }

    /// The linear layers.
    pub fn linears(&self) -> &[Linear] {
        &self.linears
    }

    /// The activation after each linear layer (the last is `Identity`).
    pub fn activations(&self) -> &[Activation] {
        &self.activations
    }

    /// Number of linear layers.
    pub fn n_layers(&self) -> usize {
        self.linears.len()
    }

    /// Widths of the node layers (unfolded): input, hidden…, output.
    pub fn widths(&self) -> Vec<usize> {
        std::iter::once(self.linears[0].in_dim()).chain(self.linears.iter().map(Linear::out_dim)).collect()
    }

    /// Number of node layers: `n_layers() + 1`.
    pub fn n_nodes(&self) -> usize {
        self.linears.len() + 1
    }

    /// The name of node `k`: `layers.k`, or `output` for the last.
    pub fn node_name(&self, k: usize) -> String {
        if k == self.n_layers() { OUTPUT_NODE.to_string() } else { format!("layers.{k}") }
    }

    /// All node names in order.
    pub fn node_names(&self) -> Vec<String> {
        (0..self.n_nodes()).map(|k| self.node_name(k)).collect()
    }

    /// The index of a node named `layers.k` or `output`.
    pub fn node_index(&self, name: &str) -> Result<usize> {
        let k = if name == OUTPUT_NODE {
            Some(self.n_layers())
        } else {
            name.strip_prefix("layers.").and_then(|s| s.parse::<usize>().ok()).filter(|&k| k < self.n_layers())
        };
        k.ok_or_else(|| Error::UnknownNode { name: name.to_string(), available: self.node_names() })
    }

    /// The map from node `k` to node `k + 1` on **folded** coordinates `[h, c]` (the constant
    /// coordinate `c` multiplies the bias), as the basis and edge estimators need it.
    pub fn section(&self, k: usize) -> Result<Section> {
        self.section_between(k, k + 1)
    }

    /// The map from node `from` to node `to > from` on folded coordinates: the chain of the
    /// single-layer sections between them.
    pub fn section_between(&self, from: usize, to: usize) -> Result<Section> {
        if from >= to || to > self.n_layers() {
            return Err(Error::invalid(
                "section",
                format!("{from} → {to}"),
                format!("need 0 ≤ from < to ≤ {} (node indices)", self.n_layers()),
            ));
        }
        let layers = (from..to)
            .map(|k| {
                let lin = &self.linears[k];
                let (out, inp) = lin.weight().shape();
                let bias = lin.bias();
                let weight = Matrix::from_fn(out, inp + 1, |i, j| {
                    if j < inp { lin.weight()[(i, j)] } else { bias.map_or(0.0, |b| b[i]) }
                });
                FoldedLinear::new(weight, self.activations[k], k + 1 < self.n_layers())
            })
            .collect();
        Ok(Section::new(layers))
    }

    /// Forward pass of a batch keeping every node's activations and pre-activations.
    pub fn trace(&self, x: MatrixView<'_>, trace: &mut ForwardTrace) -> Result<()> {
        check_cols("Mlp::trace", x, self.linears[0].in_dim())?;
        let n = self.n_layers();
        trace.nodes.resize_with(n + 1, Matrix::default);
        trace.preacts.resize_with(n, Matrix::default);
        let first = &mut trace.nodes[0];
        first.resize(x.nrows(), x.ncols());
        first.as_mut_slice().copy_from_slice(x.as_slice());
        for k in 0..n {
            let (done, rest) = trace.nodes.split_at_mut(k + 1);
            let z = &mut trace.preacts[k];
            self.linears[k].affine(done[k].view(), None, z);
            let h = &mut rest[0];
            h.resize(z.nrows(), z.ncols());
            let act = self.activations[k];
            for (o, &v) in h.as_mut_slice().iter_mut().zip(z.as_slice()) {
                *o = act.value(v);
            }
        }
        Ok(())
    }

    /// Activations at node `k` for a batch (unfolded).
    pub fn node_activations(&self, x: MatrixView<'_>, k: usize) -> Result<Matrix> {
        if k >= self.n_nodes() {
            return Err(Error::UnknownNode { name: format!("node {k}"), available: self.node_names() });
        }
        let mut trace = ForwardTrace::default();
        self.trace(x, &mut trace)?;
        Ok(std::mem::take(&mut trace.nodes[k]))
    }

    /// Backward pass through a trace: accumulates `∂(Σ grad_output · y)/∂θ` into
    /// `grad_params` and, if asked, writes the input gradient.
    pub fn backward_trace(
        &self,
        trace: &mut ForwardTrace,
        grad_output: MatrixView<'_>,
        grad_params: &mut [f64],
        grad_input: Option<&mut Matrix>,
    ) -> Result<()> {
        let out = trace.output();
        if grad_output.shape() != out.shape() {
            return Err(Error::shape(
                "Mlp::backward_trace",
                &[out.nrows(), out.ncols()],
                &[grad_output.nrows(), grad_output.ncols()],
            ));
        }
        check_len("Mlp::backward_trace grad_params", self.n_params(), grad_params.len())?;
        let ForwardTrace { nodes, preacts, grad, grad_next } = trace;
        grad.resize(grad_output.nrows(), grad_output.ncols());
        grad.as_mut_slice().copy_from_slice(grad_output.as_slice());
        let mut offset = grad_params.len();
        let want_input = grad_input.is_some();
        for k in (0..self.n_layers()).rev() {
            let act = self.activations[k];
            if act != Activation::Identity {
                for (g, &z) in grad.as_mut_slice().iter_mut().zip(preacts[k].as_slice()) {
                    *g *= act.derivative(z);
                }
            }
            let np = self.linears[k].n_params();
            offset -= np;
            let gp = &mut grad_params[offset..offset + np];
            if k == 0 && !want_input {
                // The input gradient is not needed: skip its GEMM.
                accumulate_param_grads(&self.linears[k], nodes[k].view(), grad.view(), gp);
            } else {
                self.linears[k].affine_backward(nodes[k].view(), None, grad.view(), grad_next, Some(gp));
                std::mem::swap(grad, grad_next);
            }
        }
        if let Some(gi) = grad_input {
            gi.resize(grad.nrows(), grad.ncols());
            gi.as_mut_slice().copy_from_slice(grad.as_slice());
        }
        Ok(())
    }

    /// Flat parameters (all layers, in order).
    pub fn params(&self) -> Vec<f64> {
        let mut p = vec![0.0; self.n_params()];
        self.copy_params(&mut p).expect("sized above");
        p
    }
}

fn accumulate_param_grads(lin: &Linear, x: MatrixView<'_>, grad_z: MatrixView<'_>, gp: &mut [f64]) {
    let (gw, gb) = gp.split_at_mut(lin.weight().as_slice().len());
    linalg::gemm(gw, grad_z, true, x, false, 1.0, true);
    if lin.bias().is_some() {
        for i in 0..grad_z.nrows() {
            for (g, &v) in gb.iter_mut().zip(grad_z.row(i)) {
                *g += v;
            }
        }
    }
}

impl Layer for Mlp {
    fn in_dim(&self) -> usize {
        self.linears[0].in_dim()
    }

    fn out_dim(&self) -> usize {
        self.linears.last().expect("non-empty").out_dim()
    }

    fn forward(&self, x: MatrixView<'_>, y: &mut Matrix) -> Result<()> {
        let mut trace = ForwardTrace::default();
        self.trace(x, &mut trace)?;
        *y = std::mem::take(&mut trace.nodes[self.n_layers()]);
        Ok(())
    }

    fn backward(
        &self,
        x: MatrixView<'_>,
        grad_y: MatrixView<'_>,
        grad_x: &mut Matrix,
        grad_params: &mut [f64],
    ) -> Result<()> {
        check_backward_shapes("Mlp::backward", self, x, grad_y, grad_params)?;
        let mut trace = ForwardTrace::default();
        self.trace(x, &mut trace)?;
        self.backward_trace(&mut trace, grad_y, grad_params, Some(grad_x))
    }

    fn n_params(&self) -> usize {
        self.linears.iter().map(Layer::n_params).sum()
    }

    fn copy_params(&self, out: &mut [f64]) -> Result<()> {
        check_len("Mlp::copy_params", self.n_params(), out.len())?;
        let mut rest = out;
        for lin in &self.linears {
            let (head, tail) = rest.split_at_mut(lin.n_params());
            lin.copy_params(head)?;
            rest = tail;
        }
        Ok(())
    }

    fn set_params(&mut self, params: &[f64]) -> Result<()> {
        check_len("Mlp::set_params", self.n_params(), params.len())?;
        if let Some(k) = params.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite { what: "Mlp::set_params".into(), row: 0, col: k, value: params[k] });
        }
        let mut rest = params;
        for lin in &mut self.linears {
            let (head, tail) = rest.split_at(lin.n_params());
            lin.set_params(head)?;
            rest = tail;
        }
        Ok(())
    }
}
