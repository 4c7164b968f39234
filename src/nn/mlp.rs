//! Multi-layer perceptrons with named node layers.
//!
//! Node-layer names follow rib: node `layers.k` is the input of linear layer `k`, `output` is
//! the network output. An activation follows every linear layer but the last. Every forward
//! pass, the training one included, runs on folded rows `[h, 1]` through [`FoldedLinear`], the
//! same kernel the sections use.

use super::activation::Activation;
use super::layer::{Layer, check_backward_shapes, check_cols, check_len};
use super::linear::Linear;
use super::network::{Network, NodeLayer};
use super::section::{Chain, FoldedLinear, Section};
use crate::error::{Error, Result};
use crate::linalg;
use crate::matrix::{Matrix, MatrixView};
use crate::scratch::ScratchMatrix;
use rand::SeedableRng;
use std::cell::RefCell;

/// The name of the output node layer.
pub const OUTPUT_NODE: &str = "output";

/// A chain `Linear → σ → Linear → σ → … → Linear`.
#[derive(Clone, Debug, PartialEq)]
pub struct Mlp {
    linears: Vec<Linear>,
    /// `activations[k]` follows `linears[k]`; the last one is always `Identity`.
    activations: Vec<Activation>,
    /// The same layers on folded rows (kept in sync with `linears`).
    folded: Vec<FoldedLinear>,
    nodes: Vec<NodeLayer>,
}

/// Everything a forward pass computed, kept for the backward pass and for reading node
/// activations; reuse one trace across batches to avoid allocation.
#[derive(Clone, Debug, Default)]
pub struct ForwardTrace {
    /// `nodes[k]` = folded input `[h, 1]` of linear layer `k`; the last entry is the output.
    nodes: Vec<Matrix>,
    /// `preacts[k]` = output of linear layer `k` before its activation.
    preacts: Vec<Matrix>,
    grad: Matrix,
    grad_next: Matrix,
    grad_params: Matrix,
}

impl ForwardTrace {
    /// Folded activations `[h, 1]` at node `k` (the output has no constant coordinate).
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

thread_local! {
    /// The buffers of [`Layer::value_and_grad`], kept warm across calls (see `crate::scratch`).
    static TRACE: RefCell<ForwardTrace> = RefCell::new(ForwardTrace::default());
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
        let n = linears.len();
        let folded = linears
            .iter()
            .zip(&activations)
            .enumerate()
            .map(|(k, (l, &a))| FoldedLinear::new(l, a, k + 1 < n))
            .collect();
        let mut nodes: Vec<NodeLayer> = linears
            .iter()
            .enumerate()
            .map(|(k, l)| NodeLayer::new(format!("layers.{k}"), l.in_dim() + 1, true, 1))
            .collect();
        nodes.push(NodeLayer::new(OUTPUT_NODE, linears[n - 1].out_dim(), false, 1));
        Ok(Mlp { linears, activations, folded, nodes })
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

    /// Linear layer `k` with its activation on folded rows: the section from node `k` to `k + 1`.
    pub fn folded(&self, k: usize) -> &FoldedLinear {
        &self.folded[k]
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
        self.nodes.get(k).map_or_else(|| format!("node {k}"), |n| n.name.clone())
    }

    /// Forward pass of a batch keeping every node's folded activations and pre-activations.
    pub fn trace(&self, x: MatrixView<'_>, trace: &mut ForwardTrace) -> Result<()> {
        check_cols("Mlp::trace", x, self.linears[0].in_dim())?;
        let n = self.n_layers();
        trace.nodes.resize_with(n + 1, Matrix::default);
        trace.preacts.resize_with(n, Matrix::default);
        fold_into(x, &mut trace.nodes[0]);
        for k in 0..n {
            let (done, rest) = trace.nodes.split_at_mut(k + 1);
            let z = &mut trace.preacts[k];
            self.folded[k].preactivations(done[k].view(), z);
            self.folded[k].activate(z.view(), None, &mut rest[0]);
        }
        Ok(())
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
        let ForwardTrace { nodes, preacts, grad, grad_next, grad_params: g } = trace;
        grad.resize(grad_output.nrows(), grad_output.ncols());
        grad.as_mut_slice().copy_from_slice(grad_output.as_slice());
        let mut offset = grad_params.len();
        let want_input = grad_input.is_some();
        for k in (0..self.n_layers()).rev() {
            // `grad` holds ∂/∂(the layer's unit outputs); make it ∂/∂z.
            let act = self.activations[k];
            if act != Activation::Identity {
                for (gv, &z) in grad.as_mut_slice().iter_mut().zip(preacts[k].as_slice()) {
                    *gv *= act.derivative(z);
                }
            }
            // [∂W | ∂b] = grad_zᵀ [h, 1] in one product, then into the flat [W, b] order.
            let lin = &self.linears[k];
            let (out, inp) = lin.weight().shape();
            g.resize(out, inp + 1);
            linalg::gemm(g.as_mut_slice(), grad.view(), true, nodes[k].view(), false, 1.0, false);
            offset -= lin.n_params();
            let (gw, gb) = grad_params[offset..offset + lin.n_params()].split_at_mut(out * inp);
            for o in 0..out {
                let row = g.row(o);
                for (d, &v) in gw[o * inp..(o + 1) * inp].iter_mut().zip(&row[..inp]) {
                    *d += v;
                }
                if let Some(b) = gb.get_mut(o) {
                    *b += row[inp];
                }
            }
            if k == 0 && !want_input {
                break;
            }
            // ∂/∂h_k: the product with W (the bias column's gradient is not needed).
            grad_next.resize(grad.nrows(), inp);
            linalg::gemm(grad_next.as_mut_slice(), grad.view(), false, lin.weight().view(), false, 1.0, false);
            std::mem::swap(grad, grad_next);
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

/// `dst ← [x, 1]`.
fn fold_into(x: MatrixView<'_>, dst: &mut Matrix) {
    let d = x.ncols();
    dst.resize(x.nrows(), d + 1);
    for i in 0..x.nrows() {
        let row = dst.row_mut(i);
        row[..d].copy_from_slice(x.row(i));
        row[d] = 1.0;
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

    fn value_and_grad(
        &self,
        x: MatrixView<'_>,
        loss: &mut dyn FnMut(MatrixView<'_>, &mut Matrix) -> Result<f64>,
        grad_params: &mut [f64],
    ) -> Result<f64> {
        TRACE.with(|trace| {
            let trace = &mut *trace.borrow_mut();
            self.trace(x, trace)?;
            let mut grad_y = ScratchMatrix::take();
            let value = loss(trace.output().view(), &mut grad_y)?;
            self.backward_trace(trace, grad_y.view(), grad_params, None)?;
            Ok(value)
        })
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
        for (lin, folded) in self.linears.iter_mut().zip(&mut self.folded) {
            let (head, tail) = rest.split_at(lin.n_params());
            lin.set_params(head)?;
            folded.set_linear(lin);
            rest = tail;
        }
        Ok(())
    }
}

impl Network for Mlp {
    fn node_layers(&self) -> &[NodeLayer] {
        &self.nodes
    }

    fn input_dim(&self) -> usize {
        self.linears[0].in_dim()
    }

    fn forward_nodes(&self, inputs: MatrixView<'_>, nodes: &[usize], acts: &mut [Matrix]) -> Result<()> {
        super::network::check_nodes(self, nodes, "Mlp::forward_nodes nodes")?;
        check_len("Mlp::forward_nodes buffers", nodes.len(), acts.len())?;
        check_cols("Mlp::forward_nodes", inputs, self.input_dim())?;
        let (mut current, mut z) = (ScratchMatrix::take(), ScratchMatrix::take());
        fold_into(inputs, &mut current);
        let last = nodes[nodes.len() - 1];
        for k in 0..=last {
            if let Some(slot) = nodes.iter().position(|&n| n == k) {
                acts[slot].clone_from(&current);
            }
            if k < last {
                self.folded[k].preactivations(current.view(), &mut z);
                let mut next = ScratchMatrix::take();
                self.folded[k].activate(z.view(), None, &mut next);
                std::mem::swap(&mut *current, &mut *next);
            }
        }
        Ok(())
    }

    fn section(&self, from: usize, to: usize) -> Result<Box<dyn Section + '_>> {
        if from >= to || to > self.n_layers() {
            return Err(Error::invalid(
                "section",
                format!("{from} → {to}"),
                format!("need 0 ≤ from < to ≤ {} (node indices)", self.n_layers()),
            ));
        }
        if to == from + 1 {
            return Ok(Box::new(&self.folded[from]));
        }
        let steps = self.folded[from..to].iter().map(|f| Box::new(f) as Box<dyn Section + '_>).collect();
        Ok(Box::new(Chain::new(steps)?))
    }
}
