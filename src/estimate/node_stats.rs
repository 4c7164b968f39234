//! One streaming pass over a dataset that collects, for chosen node layers of a network, the
//! moments of the activations and, where the section to the next chosen node is affine +
//! elementwise, of the quadrature-weighted activation derivatives.
//!
//! The derivative moments make the Jacobian Gram of such a section a closed form (see
//! `docs/math.md` §3.1), so the whole interaction basis of an MLP needs this one pass instead of
//! one pass per node layer.

use super::gram::GramAccumulator;
use super::quadrature::Quadrature;
use crate::data::{ActivationSampler, map_batches};
use crate::error::{Error, Result};
use crate::matrix::{Matrix, MatrixView};
use crate::nn::{Activation, FoldedLinear, Network, Section, check_nodes};
use crate::scratch::{ScratchMatrices, ScratchMatrix};
use serde::{Deserialize, Serialize};

/// Mergeable per-node statistics of one network over (part of) a dataset.
///
/// The state is plain data (serde), so shards computed on other threads, processes or
/// machines combine with [`NodeStatistics::merge`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatistics {
    /// Node indices, increasing.
    nodes: Vec<usize>,
    /// The rule behind the derivative moments, if collected.
    quadrature: Option<Quadrature>,
    /// Moments of the folded activations (rows = samples × positions) at each node.
    activations: Vec<GramAccumulator>,
    /// For each node whose section to the next selected node is a [`FoldedLinear`] or a
    /// residual block around one: moments of `s(x) = Σ_α w_α σ'(α z(x))`, `z` its pre-activations.
    derivatives: Vec<Option<GramAccumulator>>,
}

/// `±1` with the sign of each pre-activation `z` of a ReLU layer, from its outputs
/// `h = [relu(z), …]` (the first `units` columns): `z > 0 ⇔ h > 0`, and `z ≤ 0` gives
/// `σ'(αz) = σ'(−α) = 0` for every `α ≥ 0` as `σ'(0) = 0`.
fn relu_signs(h: &Matrix, units: usize, z: &mut Matrix) {
    z.resize(h.nrows(), units);
    for x in 0..h.nrows() {
        for (v, &y) in z.row_mut(x).iter_mut().zip(h.row(x)) {
            *v = if y > 0.0 { 1.0 } else { -1.0 };
        }
    }
}

/// The sections whose derivative moments are collected, one per selected node.
type Structured<'a> = Vec<Option<Box<dyn Section + 'a>>>;

impl NodeStatistics {
    /// Empty statistics for `nodes` of `net`; derivative moments only if `quadrature` is given.
    pub fn new(net: &dyn Network, nodes: &[usize], quadrature: Option<Quadrature>) -> Result<Self> {
        Ok(Self::with_sections(net, nodes, quadrature)?.0)
    }

    fn with_sections<'a>(
        net: &'a dyn Network,
        nodes: &[usize],
        quadrature: Option<Quadrature>,
    ) -> Result<(Self, Structured<'a>)> {
        check_nodes(net, nodes, "node layers")?;
        let layers = net.node_layers();
        let activations = nodes.iter().map(|&k| GramAccumulator::new(layers[k].width)).collect();
        let mut sections = Vec::with_capacity(nodes.len());
        for (slot, &k) in nodes.iter().enumerate() {
            let section = match (quadrature, nodes.get(slot + 1)) {
                (Some(_), Some(&next)) => Some(crate::nn::checked_section(net, k, next)?),
                _ => None,
            };
            sections.push(section.filter(|s| derivative_layer(&**s).is_some()));
        }
        let derivatives = sections
            .iter()
            .map(|s| s.as_ref().and_then(|s| derivative_layer(&**s)).map(|f| GramAccumulator::new(f.units())))
            .collect();
        Ok((NodeStatistics { nodes: nodes.to_vec(), quadrature, activations, derivatives }, sections))
    }

    /// Streams `sampler` (network inputs) in batches of `batch_size`, in parallel over batches.
    pub fn collect(
        net: &dyn Network,
        sampler: &dyn ActivationSampler,
        nodes: &[usize],
        quadrature: Option<Quadrature>,
        batch_size: usize,
    ) -> Result<Self> {
        let (empty, sections) = Self::with_sections(net, nodes, quadrature)?;
        check_sampler(net, sampler)?;
        map_batches(
            sampler,
            batch_size,
            || empty.clone(),
            |s, first, x| s.update_with(net, &sections, x, first),
            |a, b| a.merge(&b),
        )
    }

    /// Adds a batch of network inputs whose first row is sample `first_row` of the dataset.
    pub fn update(&mut self, net: &dyn Network, inputs: MatrixView<'_>, first_row: usize) -> Result<()> {
        let (_, sections) = Self::with_sections(net, &self.nodes, self.quadrature)?;
        self.update_with(net, &sections, inputs, first_row)
    }

    fn update_with(
        &mut self,
        net: &dyn Network,
        sections: &Structured<'_>,
        inputs: MatrixView<'_>,
        first_row: usize,
    ) -> Result<()> {
        let mut acts = ScratchMatrices::take(self.nodes.len());
        net.forward_nodes(inputs, &self.nodes, &mut acts)?;
        let points = self.quadrature.map(Quadrature::points).unwrap_or_default();
        let (mut z, mut s) = (ScratchMatrix::take(), ScratchMatrix::take());
        for (slot, &k) in self.nodes.iter().enumerate() {
            let f = &acts[slot];
            check_node_rows(net, k, f, first_row)?;
            self.activations[slot].update(f.view())?;
            if let (Some(acc), Some(section)) = (&mut self.derivatives[slot], sections[slot].as_ref())
                && let Some(layer) = derivative_layer(&**section)
            {
                match (section.structure(), acts.get(slot + 1)) {
                    // ReLU: σ'(αz) depends on the sign of z alone, which the next node's
                    // activations σ(z) already carry (no second `f W_fᵀ`).
                    (Some(_), Some(next)) if layer.activation() == Activation::Relu => {
                        relu_signs(next, layer.units(), &mut z)
                    }
                    _ => layer.preactivations(f.view(), &mut z),
                }
                layer.derivative_vectors(&z, &points, &mut s);
                acc.update(s.view())?;
            }
        }
        Ok(())
    }

    /// Adds another shard's statistics; both must describe the same nodes and rule.
    pub fn merge(&mut self, other: &NodeStatistics) -> Result<()> {
        if other.nodes != self.nodes || other.quadrature != self.quadrature {
            return Err(Error::invalid(
                "NodeStatistics::merge",
                format!("nodes {:?}, {:?}", other.nodes, other.quadrature),
                format!("expected nodes {:?}, {:?}", self.nodes, self.quadrature),
            ));
        }
        for (a, b) in self.activations.iter_mut().zip(&other.activations) {
            a.merge(b)?;
        }
        for (a, b) in self.derivatives.iter_mut().zip(&other.derivatives) {
            if let (Some(a), Some(b)) = (a, b) {
                a.merge(b)?;
            }
        }
        Ok(())
    }

    /// The same statistics with every accumulator in its `d × d` form
    /// ([`GramAccumulator::to_dense`]): bases built from them decompose the `d × d` Grams even
    /// where fewer rows than the width were seen.
    pub fn to_dense(&self) -> Result<Self> {
        let mut dense = self.clone();
        for acc in &mut dense.activations {
            *acc = acc.to_dense()?;
        }
        for acc in dense.derivatives.iter_mut().flatten() {
            *acc = acc.to_dense()?;
        }
        Ok(dense)
    }

    /// The node indices.
    pub fn nodes(&self) -> &[usize] {
        &self.nodes
    }

    /// Moments of node `node`'s folded activations (a node index), if collected.
    pub fn activations(&self, node: usize) -> Option<&GramAccumulator> {
        self.slot(node).map(|s| &self.activations[s])
    }

    /// Derivative-vector moments of the affine + elementwise section after `node`, if collected.
    pub fn derivatives(&self, node: usize) -> Option<&GramAccumulator> {
        self.slot(node).and_then(|s| self.derivatives[s].as_ref())
    }

    /// The quadrature of the derivative moments.
    pub fn quadrature(&self) -> Option<Quadrature> {
        self.quadrature
    }

    fn slot(&self, node: usize) -> Option<usize> {
        self.nodes.iter().position(|&k| k == node)
    }
}

/// The layer whose derivative moments make a section's Jacobian Gram a closed form: the section
/// itself when it is affine + elementwise, the hidden layer of a residual block.
pub(crate) fn derivative_layer<'s>(section: &'s (dyn Section + '_)) -> Option<&'s FoldedLinear> {
    section.structure().or_else(|| section.residual().map(|r| r.hidden))
}

/// Errors unless the sampler's rows are the network's inputs.
pub(crate) fn check_sampler(net: &dyn Network, sampler: &dyn ActivationSampler) -> Result<()> {
    if sampler.dim() != net.input_dim() {
        return Err(Error::shape("sampler rows vs network input", &[net.input_dim()], &[sampler.dim()]));
    }
    Ok(())
}

/// Checks a batch of node `k`'s folded activations from samples `first_sample..`: the node's
/// width, whole samples, finite values (errors name the dataset row) and, where the node carries
/// it, the constant coordinate exactly 1.
pub(crate) fn check_node_rows(net: &dyn Network, k: usize, f: &Matrix, first_sample: usize) -> Result<()> {
    let node = &net.node_layers()[k];
    let positions = node.positions.max(1);
    if f.ncols() != node.width || f.nrows() % positions != 0 {
        return Err(Error::shape(
            "Network::forward_nodes activations [rows, width]",
            &[positions, node.width],
            &[f.nrows(), f.ncols()],
        ));
    }
    f.check_finite(&format!("activations at node {}", node.name)).map_err(|e| match e {
        Error::NonFinite { what, row, col, value } => {
            Error::NonFinite { what, row: first_sample + row / positions, col, value }
        }
        other => other,
    })?;
    if node.constant {
        let c = node.width - 1;
        if let Some(i) = (0..f.nrows()).find(|&i| f[(i, c)] != 1.0) {
            return Err(Error::invalid(
                format!("constant coordinate of node {}", node.name),
                f[(i, c)],
                format!("must be exactly 1 on the data (sample {})", first_sample + i / positions),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Mlp;
    use crate::estimate::Quadrature;
    use crate::nn::checked_section;

    /// A ReLU layer's derivative moments read the signs off the next node's activations; they
    /// equal, bit for bit, the moments of `σ'` at the recomputed pre-activations `f W_fᵀ`, for a
    /// one-point and a five-point rule (rows without exact zeros, so no kink is ambiguous).
    #[test]
    fn relu_derivative_moments_from_the_next_node_equal_the_recomputed_ones() {
        let mlp = Mlp::init(&[12, 9, 7, 3], crate::Activation::Relu, true, 4).unwrap();
        let x = Matrix::from_fn(200, 12, |i, j| ((i * 13 + j * 7) % 17) as f64 * 0.21 - 1.6 + 0.013 * j as f64);
        for quadrature in [Quadrature::Gradient, Quadrature::from_name("gauss-legendre", 4).unwrap()] {
            let nodes = [0, 1, 2, 3];
            let mut stats = NodeStatistics::new(&mlp, &nodes, Some(quadrature)).unwrap();
            stats.update(&mlp, x.view(), 0).unwrap();
            let mut acts = vec![Matrix::default(); nodes.len()];
            mlp.forward_nodes(x.view(), &nodes, &mut acts).unwrap();
            let points = quadrature.points();
            for slot in 0..3 {
                let section = checked_section(&mlp, nodes[slot], nodes[slot + 1]).unwrap();
                let layer = section.structure().unwrap();
                let (mut z, mut s) = (Matrix::default(), Matrix::default());
                layer.preactivations(acts[slot].view(), &mut z);
                layer.derivative_vectors(&z, &points, &mut s);
                let mut reference = GramAccumulator::new(layer.units());
                reference.update(s.view()).unwrap();
                let got = stats.derivatives(nodes[slot]).unwrap();
                assert!(got.finish().unwrap() == reference.finish().unwrap(), "node {slot}, {quadrature:?}");
            }
        }
    }
}
