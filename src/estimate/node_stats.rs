//! One streaming pass over a dataset that collects, for chosen node layers of an MLP, the
//! moments of the activations and of the quadrature-weighted activation derivatives.
//!
//! The derivative moments make the Jacobian Gram of a `Linear → σ` section a closed form
//! (see `docs/math.md`, "Jacobian Gram of a single layer"), so the whole interaction basis of
//! an MLP needs this one pass instead of one pass per node layer.

use super::gram::GramAccumulator;
use super::quadrature::{Quadrature, QuadraturePoint};
use crate::data::{ActivationSampler, map_batches};
use crate::error::{Error, Result};
use crate::matrix::{Matrix, MatrixView};
use crate::nn::{ForwardTrace, Mlp};
use crate::scratch::ScratchMatrix;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;

thread_local! {
    /// The forward pass's buffers, kept warm across batches (see `crate::scratch`).
    static TRACE: RefCell<ForwardTrace> = RefCell::new(ForwardTrace::default());
}

/// Mergeable per-node statistics of one model over (part of) a dataset.
///
/// The state is plain data (serde), so shards computed on other threads, processes or
/// machines combine with [`NodeStatistics::merge`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatistics {
    /// Node indices (`0..=n_layers`), increasing.
    nodes: Vec<usize>,
    /// The rule behind the derivative moments, if collected.
    quadrature: Option<Quadrature>,
    /// Moments of the (unfolded) activations at each node.
    activations: Vec<GramAccumulator>,
    /// For each node `k` followed by a selected node `k + 1`: moments of
    /// `s(x) = Σ_α w_α σ'(α z(x))`, `z` the pre-activations of linear layer `k`.
    derivatives: Vec<Option<GramAccumulator>>,
}

impl NodeStatistics {
    /// Empty statistics for `nodes` of `mlp`; derivative moments only if `quadrature` is given.
    pub fn new(mlp: &Mlp, nodes: &[usize], quadrature: Option<Quadrature>) -> Result<Self> {
        if nodes.is_empty() || nodes.windows(2).any(|w| w[0] >= w[1]) || nodes[nodes.len() - 1] > mlp.n_layers() {
            return Err(Error::invalid(
                "node layers",
                format!("{nodes:?}"),
                format!("need increasing node indices in 0..={}", mlp.n_layers()),
            ));
        }
        let widths = mlp.widths();
        let activations = nodes.iter().map(|&k| GramAccumulator::new(widths[k])).collect();
        let derivatives = nodes
            .iter()
            .map(|&k| {
                let adjacent = nodes.contains(&(k + 1));
                (quadrature.is_some() && adjacent).then(|| GramAccumulator::new(widths[k + 1]))
            })
            .collect();
        Ok(NodeStatistics { nodes: nodes.to_vec(), quadrature, activations, derivatives })
    }

    /// Streams `sampler` (model inputs) in batches of `batch_size`, in parallel over batches.
    pub fn collect(
        mlp: &Mlp,
        sampler: &dyn ActivationSampler,
        nodes: &[usize],
        quadrature: Option<Quadrature>,
        batch_size: usize,
    ) -> Result<Self> {
        let empty = Self::new(mlp, nodes, quadrature)?;
        if sampler.dim() != mlp.widths()[0] {
            return Err(Error::shape("sampler rows vs model input", &[mlp.widths()[0]], &[sampler.dim()]));
        }
        map_batches(sampler, batch_size, || empty.clone(), |s, first, x| s.update(mlp, x, first), |a, b| a.merge(&b))
    }

    /// Adds a batch of model inputs whose first row is sample `first_row` of the dataset.
    pub fn update(&mut self, mlp: &Mlp, inputs: MatrixView<'_>, first_row: usize) -> Result<()> {
        TRACE.with(|trace| self.update_with(mlp, inputs, first_row, &mut trace.borrow_mut()))
    }

    fn update_with(
        &mut self,
        mlp: &Mlp,
        inputs: MatrixView<'_>,
        first_row: usize,
        trace: &mut ForwardTrace,
    ) -> Result<()> {
        mlp.trace(inputs, trace)?;
        let points = self.quadrature.map(Quadrature::points).unwrap_or_default();
        let mut s = ScratchMatrix::take();
        for (slot, &k) in self.nodes.iter().enumerate() {
            let h = trace.node(k);
            check_finite_rows(h, first_row, &mlp.node_name(k))?;
            self.activations[slot].update(h.view())?;
            if let Some(acc) = &mut self.derivatives[slot] {
                derivative_vectors(trace.preactivation(k), mlp.activations()[k], &points, &mut s);
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

    /// The node indices.
    pub fn nodes(&self) -> &[usize] {
        &self.nodes
    }

    /// Activation moments of node `node` (a model node index), if collected.
    pub fn activations(&self, node: usize) -> Option<&GramAccumulator> {
        self.slot(node).map(|s| &self.activations[s])
    }

    /// Derivative-vector moments of the layer after `node`, if collected.
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

/// `s = Σ_α w_α σ'(α z)` row by row.
fn derivative_vectors(z: &Matrix, act: crate::nn::Activation, points: &[QuadraturePoint], s: &mut Matrix) {
    s.resize(z.nrows(), z.ncols());
    for (o, &v) in s.as_mut_slice().iter_mut().zip(z.as_slice()) {
        *o = points.iter().map(|p| p.weight * act.derivative(p.alpha * v)).sum();
    }
}

/// Errors with the dataset-wide row of the first NaN or infinity in a node's activations.
pub(crate) fn check_finite_rows(m: &Matrix, first_row: usize, node: &str) -> Result<()> {
    m.check_finite(&format!("activations at node {node}")).map_err(|e| match e {
        Error::NonFinite { what, row, col, value } => Error::NonFinite { what, row: row + first_row, col, value },
        other => other,
    })
}
