//! A sequence of boxed layers with named node layers: users' own blocks as a [`Network`].

use super::activation::Activation;
use super::layer::{Layer, LayerKind, Linearized, blocks, check_backward_shapes, check_cols, check_len};
use super::linear::Linear;
use super::mlp::OUTPUT_NODE;
use super::network::{Network, NodeLayer, check_nodes};
use super::section::{AppendConstant, Chain, FoldedLinear, NodeShape, Section, check_input};
use crate::error::{Error, Result};
use crate::matrix::{Matrix, MatrixView};

/// Where a node layer of a [`Sequential`] sits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    /// Its name.
    pub name: String,
    /// The index of the layer it feeds (`layers.len()` for the output).
    pub at: usize,
    /// Whether it carries the constant coordinate.
    pub constant: bool,
}

impl NodeSpec {
    /// A node at the input of layer `at`.
    pub fn new(name: impl Into<String>, at: usize, constant: bool) -> Self {
        NodeSpec { name: name.into(), at, constant }
    }
}

/// Layers applied one after the other, cut into sections at named node layers.
///
/// Between two node layers the section is built from the layers' [`Layer::kind`]: an affine
/// layer and the activation after it become one [`FoldedLinear`] (the closed forms apply, as for
/// an [`crate::Mlp`]); any other layer enters through its linearisation, the constant coordinate
/// passing it untouched or, for [`LayerKind::Homogeneous`] layers, scaling its offsets.
///
/// ```
/// use degeneracy::nn::{Network, Sequential};
/// use degeneracy::{Activation, Elementwise, Layer, Linear, Matrix};
/// let layers: Vec<Box<dyn Layer>> = vec![
///     Box::new(Linear::new(Matrix::from_rows(&[[1.0, -1.0], [0.5, 2.0]])?, Some(vec![0.1, -0.2]))?),
///     Box::new(Elementwise::new(Activation::Relu, 2)),
///     Box::new(Linear::new(Matrix::from_rows(&[[1.0, 1.0]])?, None)?),
/// ];
/// let net = Sequential::new(layers)?;
/// assert_eq!(net.node_names(), ["layers.0", "layers.1", "output"]); // as an Mlp
/// # Ok::<(), degeneracy::Error>(())
/// ```
#[derive(Clone)]
pub struct Sequential {
    layers: Vec<Box<dyn Layer>>,
    specs: Vec<NodeSpec>,
    nodes: Vec<NodeLayer>,
}

impl std::fmt::Debug for Sequential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequential").field("layers", &self.layers.len()).field("nodes", &self.nodes).finish()
    }
}

impl Sequential {
    /// Node layers as an [`crate::Mlp`] names them: `layers.{k}` at the input of the network and
    /// after every layer that is not followed by an elementwise activation (the activations join
    /// the section before them), `output` at the end; all but the output carry the constant.
    pub fn new(layers: Vec<Box<dyn Layer>>) -> Result<Self> {
        let mut specs = Vec::new();
        for (at, layer) in layers.iter().enumerate() {
            if !matches!(layer.kind(), LayerKind::Elementwise(_)) {
                specs.push(NodeSpec::new(format!("layers.{}", specs.len()), at, true));
            }
        }
        specs.push(NodeSpec::new(OUTPUT_NODE, layers.len(), false));
        Self::with_nodes(layers, specs)
    }

    /// Node layers where `specs` put them (increasing positions; the last one at the output).
    pub fn with_nodes(layers: Vec<Box<dyn Layer>>, specs: Vec<NodeSpec>) -> Result<Self> {
        if layers.is_empty() {
            return Err(Error::Empty { what: "Sequential: no layers".into() });
        }
        for (k, pair) in layers.windows(2).enumerate() {
            if pair[0].out_dim() != pair[1].in_dim() {
                return Err(Error::invalid(
                    "Sequential layers",
                    format!("{k} → {}", k + 1),
                    format!(
                        "layer {k} gives {} columns, layer {} takes {}",
                        pair[0].out_dim(),
                        k + 1,
                        pair[1].in_dim()
                    ),
                ));
            }
        }
        let n = layers.len();
        if specs.len() < 2 || specs.windows(2).any(|w| w[0].at >= w[1].at) || specs.last().is_some_and(|s| s.at != n) {
            let at: Vec<usize> = specs.iter().map(|s| s.at).collect();
            return Err(Error::invalid(
                "Sequential node positions",
                format!("{at:?}"),
                format!("need ≥ 2 strictly increasing layer indices ending at the output ({n})"),
            ));
        }
        let width = |at: usize| if at == n { layers[n - 1].out_dim() } else { layers[at].in_dim() };
        let nodes = specs
            .iter()
            .map(|s| NodeLayer::new(s.name.clone(), width(s.at) + usize::from(s.constant), s.constant, 1))
            .collect();
        Ok(Sequential { layers, specs, nodes })
    }

    /// The layers.
    pub fn layers(&self) -> &[Box<dyn Layer>] {
        &self.layers
    }

    /// Where the node layers sit.
    pub fn node_specs(&self) -> &[NodeSpec] {
        &self.specs
    }
}

impl Layer for Sequential {
    fn in_dim(&self) -> usize {
        self.layers[0].in_dim()
    }

    fn out_dim(&self) -> usize {
        self.layers[self.layers.len() - 1].out_dim()
    }

    fn forward(&self, x: MatrixView<'_>, y: &mut Matrix) -> Result<()> {
        check_cols("Sequential::forward", x, self.in_dim())?;
        let mut input = Matrix::default();
        for (k, layer) in self.layers.iter().enumerate() {
            if k == 0 {
                layer.forward(x, y)?;
            } else {
                std::mem::swap(&mut input, y);
                layer.forward(input.view(), y)?;
            }
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
        check_backward_shapes("Sequential::backward", self, x, grad_y, grad_params)?;
        // Forward, keeping every layer's input.
        let mut inputs = vec![x.to_owned()];
        for layer in &self.layers[..self.layers.len() - 1] {
            let mut y = Matrix::default();
            layer.forward(inputs[inputs.len() - 1].view(), &mut y)?;
            inputs.push(y);
        }
        let mut grad = grad_y.to_owned();
        let mut end = grad_params.len();
        for (layer, input) in self.layers.iter().zip(&inputs).rev() {
            let start = end - layer.n_params();
            layer.backward(input.view(), grad.view(), grad_x, &mut grad_params[start..end])?;
            std::mem::swap(&mut grad, grad_x);
            end = start;
        }
        std::mem::swap(&mut grad, grad_x);
        Ok(())
    }

    fn n_params(&self) -> usize {
        self.layers.iter().map(|l| l.n_params()).sum()
    }

    fn copy_params(&self, out: &mut [f64]) -> Result<()> {
        check_len("Sequential::copy_params", self.n_params(), out.len())?;
        let mut rest = out;
        for layer in &self.layers {
            let (head, tail) = rest.split_at_mut(layer.n_params());
            layer.copy_params(head)?;
            rest = tail;
        }
        Ok(())
    }

    fn set_params(&mut self, params: &[f64]) -> Result<()> {
        check_len("Sequential::set_params", self.n_params(), params.len())?;
        let mut rest = params;
        for layer in &mut self.layers {
            let (head, tail) = rest.split_at(layer.n_params());
            layer.set_params(head)?;
            rest = tail;
        }
        Ok(())
    }
}

impl Network for Sequential {
    fn node_layers(&self) -> &[NodeLayer] {
        &self.nodes
    }

    fn input_dim(&self) -> usize {
        self.layers[0].in_dim()
    }

    fn forward_nodes(&self, inputs: MatrixView<'_>, nodes: &[usize], acts: &mut [Matrix]) -> Result<()> {
        check_nodes(self, nodes, "Sequential::forward_nodes nodes")?;
        check_len("Sequential::forward_nodes buffers", nodes.len(), acts.len())?;
        check_cols("Sequential::forward_nodes", inputs, self.input_dim())?;
        let last = self.specs[nodes[nodes.len() - 1]].at;
        let (mut current, mut next) = (inputs.to_owned(), Matrix::default());
        for at in 0..=last {
            for (slot, &k) in nodes.iter().enumerate() {
                if self.specs[k].at == at {
                    acts[slot] =
                        if self.specs[k].constant { crate::basis::fold(current.view()) } else { current.clone() };
                }
            }
            if at < last {
                self.layers[at].forward(current.view(), &mut next)?;
                std::mem::swap(&mut current, &mut next);
            }
        }
        Ok(())
    }

    fn section(&self, from: usize, to: usize) -> Result<Box<dyn Section + '_>> {
        if from >= to || to >= self.specs.len() {
            return Err(Error::invalid(
                "section",
                format!("{from} → {to}"),
                format!("need node indices 0 ≤ from < to < {}", self.specs.len()),
            ));
        }
        let (start, end) = (self.specs[from].at, self.specs[to].at);
        let mut steps: Vec<Box<dyn Section + '_>> = Vec::new();
        if !self.specs[from].constant {
            steps.push(Box::new(AppendConstant {
                shape: NodeShape { positions: 1, width: self.layers[start].in_dim() },
            }));
        }
        let mut at = start;
        while at < end {
            let (step, used) = self.step(at, end);
            at += used;
            steps.push(step(at < end || self.specs[to].constant));
        }
        if steps.len() == 1 {
            return Ok(steps.pop().expect("one step"));
        }
        Ok(Box::new(Chain::new(steps)?))
    }
}

/// A step of a section, given whether its output carries the constant coordinate.
type Step<'a> = Box<dyn FnOnce(bool) -> Box<dyn Section + 'a> + 'a>;

impl Sequential {
    /// The section step starting at layer `at` (before `end`), and how many layers it uses.
    fn step(&self, at: usize, end: usize) -> (Step<'_>, usize) {
        let layer = &*self.layers[at];
        match layer.kind() {
            LayerKind::Affine(linear) => {
                let activation = match self.layers.get(at + 1).map(|l| l.kind()) {
                    Some(LayerKind::Elementwise(a)) if at + 1 < end => Some(a),
                    _ => None,
                };
                let used = 1 + usize::from(activation.is_some());
                let linear = linear.clone();
                let act = activation.unwrap_or(Activation::Identity);
                (Box::new(move |carries| Box::new(FoldedLinear::new(&linear, act, carries)) as Box<dyn Section>), used)
            }
            LayerKind::Elementwise(act) => {
                let identity = Linear::new(Matrix::identity(layer.in_dim()), None).expect("finite identity");
                (Box::new(move |carries| Box::new(FoldedLinear::new(&identity, act, carries)) as Box<dyn Section>), 1)
            }
            LayerKind::PassThrough => (
                Box::new(move |carries| Box::new(Lifted { layer, homogeneous: false, carries }) as Box<dyn Section>),
                1,
            ),
            LayerKind::Homogeneous => {
                (Box::new(move |carries| Box::new(Lifted { layer, homogeneous: true, carries }) as Box<dyn Section>), 1)
            }
        }
    }
}

/// Where a homogeneous layer's lift `c F(x / c)` is evaluated for `c = 0`: small enough that
/// offsets of order 1 vanish against `x / c` in f64, large enough that `x / c` stays finite for
/// `|x| < 10⁴⁵`.
const HOMOGENEOUS_ZERO: f64 = 1e-262;

/// An opaque layer on folded rows `[x, c]`: `[F(x), c]`, or `[c F(x / c), c]` when homogeneous
/// (`docs/math.md` §3.2); the constant is dropped from the output unless `carries`.
struct Lifted<'a> {
    layer: &'a dyn Layer,
    homogeneous: bool,
    carries: bool,
}

impl Section for Lifted<'_> {
    fn input(&self) -> NodeShape {
        NodeShape { positions: 1, width: self.layer.in_dim() + 1 }
    }

    fn output(&self) -> NodeShape {
        NodeShape { positions: 1, width: self.layer.out_dim() + usize::from(self.carries) }
    }

    fn linearize<'a>(&'a self, x: MatrixView<'_>) -> Result<Box<dyn Linearized + 'a>> {
        let n = check_input("layer in a section", self.input(), x)?;
        let d = self.layer.in_dim();
        let c: Vec<f64> = (0..n).map(|i| x[(i, d)]).collect();
        // c F(x / c) at c = 0 is its limit c → 0⁺: the layer with its offsets switched off (for a
        // piecewise-linear F), evaluated at a tiny c whose offsets round away.
        let c: Vec<f64> =
            c.into_iter().map(|c| if self.homogeneous && c == 0.0 { HOMOGENEOUS_ZERO } else { c }).collect();
        let mut inner_x = Matrix::from_fn(n, d, |i, j| x[(i, j)]);
        if self.homogeneous {
            for (i, &ci) in c.iter().enumerate() {
                if ci != 1.0 {
                    inner_x.row_mut(i).iter_mut().for_each(|v| *v /= ci);
                }
            }
        }
        let inner = self.layer.linearize(inner_x.view())?;
        let out = self.layer.out_dim();
        let f = inner.output();
        let y = Matrix::from_fn(n, out + usize::from(self.carries), |i, j| {
            let scale = if self.homogeneous { c[i] } else { 1.0 };
            if j < out { scale * f[(i, j)] } else { c[i] }
        });
        Ok(Box::new(LiftedAt { lifted: self, inner, inner_x, y }))
    }
}

struct LiftedAt<'a> {
    lifted: &'a Lifted<'a>,
    inner: Box<dyn Linearized + 'a>,
    /// `x / c` (homogeneous) or `x`.
    inner_x: Matrix,
    y: Matrix,
}

impl Linearized for LiftedAt<'_> {
    fn output(&self) -> MatrixView<'_> {
        self.y.view()
    }

    fn vjp(&self, cotangents: MatrixView<'_>, grad_x: &mut Matrix) -> Result<()> {
        let k = blocks("layer in a section: vjp", cotangents, self.y.view())?;
        let (n, d) = self.inner_x.shape();
        let out = self.lifted.layer.out_dim();
        let g_h = Matrix::from_fn(k * n, out, |r, j| cotangents[(r, j)]);
        let mut inner_grad = Matrix::default();
        self.inner.vjp(g_h.view(), &mut inner_grad)?;
        let f = self.inner.output();
        grad_x.resize(k * n, d + 1);
        for r in 0..k * n {
            let (i, row) = (r % n, inner_grad.row(r));
            let mut g_c = if self.lifted.carries { cotangents[(r, out)] } else { 0.0 };
            if self.lifted.homogeneous {
                let fx: f64 = g_h.row(r).iter().zip(f.row(i)).map(|(a, b)| a * b).sum();
                let jx: f64 = row.iter().zip(self.inner_x.row(i)).map(|(a, b)| a * b).sum();
                g_c += fx - jx;
            }
            let dst = grad_x.row_mut(r);
            dst[..d].copy_from_slice(row);
            dst[d] = g_c;
        }
        Ok(())
    }
}
