//! The [`Network`] trait: what every estimator of the crate consumes.

use super::section::{NodeShape, Section};
use crate::error::{Error, Result};
use crate::matrix::{Matrix, MatrixView};

/// A node layer: a place in a network where activations are read and a basis is built.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeLayer {
    /// Its name (`layers.1`, `ln2.0`, `output`, …).
    pub name: String,
    /// Coordinates per position: the folded width, the constant coordinate included.
    pub width: usize,
    /// Whether the last coordinate is the constant `c` (1 on the data; the bias input).
    pub constant: bool,
    /// Rows per sample (sequence positions kept at this node; 1 for an MLP).
    pub positions: usize,
    /// Leading coordinates each kept as a basis direction of its own (default 0).
    ///
    /// The basis then neither mixes them with the other coordinates in the Gram
    /// eigendecomposition nor rotates them in the interaction step: a LayerNorm's variance
    /// input stays one readable direction (rib's `isolate_ln_var`, `docs/math.md` §3.3).
    pub isolated: usize,
}

impl NodeLayer {
    /// A node of `width` coordinates (constant included) per position.
    pub fn new(name: impl Into<String>, width: usize, constant: bool, positions: usize) -> Self {
        NodeLayer { name: name.into(), width, constant, positions, isolated: 0 }
    }

    /// The same node with its first `isolated` coordinates kept as basis directions of their own
    /// (see [`NodeLayer::isolated`]).
    ///
    /// ```
    /// use degeneracy::nn::NodeLayer;
    /// // [variance, residual (4), constant]: the variance stays its own direction.
    /// let node = NodeLayer::new("ln2_out.0", 6, true, 3).with_isolated(1);
    /// assert_eq!((node.isolated, node.units()), (1, 5));
    /// ```
    pub fn with_isolated(mut self, isolated: usize) -> Self {
        self.isolated = isolated;
        self
    }

    /// One sample's shape.
    pub fn shape(&self) -> NodeShape {
        NodeShape { positions: self.positions, width: self.width }
    }

    /// Coordinates before the constant (the units).
    pub fn units(&self) -> usize {
        self.width - usize::from(self.constant)
    }
}

/// A network cut into sections at named node layers: MLPs ([`crate::Mlp`]), sequences of boxed
/// layers ([`crate::nn::Sequential`]), transformers and users' own models.
///
/// The estimators read activations at node layers ([`Network::forward_nodes`], one forward pass
/// per batch) and differentiate the map between two node layers ([`Network::section`]). The
/// last node layer is the network's output.
///
/// Implementing it for a model of your own (here a fixed linear map, one node in, one out):
/// ```
/// use degeneracy::nn::{FoldedLinear, Network, NodeLayer, Section};
/// use degeneracy::{Activation, Linear, Matrix, MatrixView, Result};
///
/// struct Probe { linear: Linear, nodes: Vec<NodeLayer> }
/// impl Network for Probe {
///     fn node_layers(&self) -> &[NodeLayer] { &self.nodes }
///     fn input_dim(&self) -> usize { self.linear.weight().ncols() }
///     fn forward_nodes(&self, x: MatrixView<'_>, nodes: &[usize], acts: &mut [Matrix]) -> Result<()> {
///         let f = degeneracy::basis::fold(x); // [x, 1]: node 0 carries the constant
///         for (&k, a) in nodes.iter().zip(acts.iter_mut()) {
///             if k == 0 { *a = f.clone() } else { self.section(0, 1)?.forward(f.view(), a)? }
///         }
///         Ok(())
///     }
///     fn section(&self, from: usize, to: usize) -> Result<Box<dyn Section + '_>> {
///         assert_eq!((from, to), (0, 1));
///         Ok(Box::new(FoldedLinear::new(&self.linear, Activation::Identity, false)))
///     }
/// }
/// let linear = Linear::new(Matrix::from_rows(&[[1.0, 2.0]])?, Some(vec![0.5]))?;
/// let nodes = vec![NodeLayer::new("in", 3, true, 1), NodeLayer::new("output", 1, false, 1)];
/// let probe = Probe { linear, nodes };
/// let mut acts = vec![Matrix::default(); 2];
/// probe.forward_nodes(Matrix::from_rows(&[[1.0, 1.0]])?.view(), &[0, 1], &mut acts)?;
/// assert_eq!(acts[1].as_slice(), &[3.5]);
/// # Ok::<(), degeneracy::Error>(())
/// ```
pub trait Network: Sync {
    /// The node layers, input side first; the last one is the output.
    fn node_layers(&self) -> &[NodeLayer];

    /// Width of one input row (a sample: features, or token ids).
    fn input_dim(&self) -> usize;

    /// One forward pass of a batch of inputs (rows = samples): `acts[i] ←` the folded activations
    /// of node `nodes[i]` (`n · positions` rows of `width`). `nodes` is increasing; the buffers
    /// are resized and reused.
    fn forward_nodes(&self, inputs: MatrixView<'_>, nodes: &[usize], acts: &mut [Matrix]) -> Result<()>;

    /// The map from node `from` to node `to > from` on folded coordinates.
    fn section(&self, from: usize, to: usize) -> Result<Box<dyn Section + '_>>;

    /// The index of the node layer called `name`.
    fn node_index(&self, name: &str) -> Result<usize> {
        self.node_layers()
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| Error::UnknownNode { name: name.to_string(), available: self.node_names() })
    }

    /// All node-layer names, in order.
    fn node_names(&self) -> Vec<String> {
        self.node_layers().iter().map(|n| n.name.clone()).collect()
    }
}

/// Errors unless `nodes` are increasing indices of node layers of `net`.
pub(crate) fn check_nodes(net: &(impl Network + ?Sized), nodes: &[usize], what: &str) -> Result<()> {
    let n = net.node_layers().len();
    if nodes.is_empty() || nodes.windows(2).any(|w| w[0] >= w[1]) || nodes[nodes.len() - 1] >= n {
        return Err(Error::invalid(what, format!("{nodes:?}"), format!("need increasing node indices in 0..{n}")));
    }
    Ok(())
}

/// Errors unless `net`'s section from `from` to `to` has the node layers' shapes (a check on
/// users' implementations, where a mismatch would otherwise show up as a confusing error later).
pub(crate) fn checked_section<'a, N: Network + ?Sized>(
    net: &'a N,
    from: usize,
    to: usize,
) -> Result<Box<dyn Section + 'a>> {
    let nodes = net.node_layers();
    if from >= to || to >= nodes.len() {
        return Err(Error::invalid(
            "section",
            format!("{from} → {to}"),
            format!("need node indices 0 ≤ from < to < {}", nodes.len()),
        ));
    }
    let section = net.section(from, to)?;
    let (i, o) = (section.input(), section.output());
    if i != nodes[from].shape() || o != nodes[to].shape() {
        return Err(Error::shape(
            "Network::section shapes vs node layers [positions, width] in, out",
            &[nodes[from].positions, nodes[from].width, nodes[to].positions, nodes[to].width],
            &[i.positions, i.width, o.positions, o.width],
        ));
    }
    Ok(section)
}
