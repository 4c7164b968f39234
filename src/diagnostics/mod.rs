//! The three sources of degeneracy of [P1 §3] — activations spanning a low-dimensional
//! subspace, Jacobians spanning a low-dimensional subspace, ReLUs firing on the same samples —
//! measured on data, with the free parameter directions they imply.
//!
//! One streaming pass collects, per node layer, the moments of the activations, the Gram of the
//! output's Jacobian with respect to the node (every output coordinate back-propagated through
//! the sections' linearisations) and, where a section is affine + elementwise, the Gram of the
//! Jacobian with respect to its pre-activations and the firing partition of its ReLUs; the state
//! merges exactly across shards. Free directions are counted where the section after a node is
//! affine + elementwise; elsewhere the report says "not counted" (`None`). ReLU firing groups are
//! found wherever a section exposes its ReLUs: an affine + ReLU section, or the hidden layer of a
//! residual block (a transformer's MLP, [`crate::nn::ResidualLayer`]). The counting rules and
//! their derivations are in `docs/math.md` §5.

mod firing;

pub use firing::{FiringPartition, ReluGroups};

use crate::basis::{basis_cotangents, gram_spectrum};
use crate::data::{ActivationSampler, map_batches};
use crate::error::{Error, Result};
use crate::estimate::{GramAccumulator, Moments, check_node_rows, check_sampler};
use crate::linalg::symmetric_eigen;
use crate::matrix::{Matrix, MatrixView};
use crate::nn::{Activation, FoldedLinear, Network, Section, checked_section};
use crate::scratch::{ScratchMatrices, ScratchMatrix};
use serde::{Deserialize, Serialize};

/// Settings of a diagnosis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiagnosticsConfig {
    /// An eigenvalue counts toward a rank if it exceeds `rank_tol ·` the largest one.
    pub rank_tol: f64,
    /// Rows processed together.
    pub batch_size: usize,
}

impl Default for DiagnosticsConfig {
    fn default() -> Self {
        DiagnosticsConfig { rank_tol: 1e-10, batch_size: 1024 }
    }
}

impl DiagnosticsConfig {
    /// Checks the settings; errors name the offending field.
    pub fn validate(&self) -> Result<()> {
        check_rank_tol(self.rank_tol)?;
        crate::data::check_batch_size(self.batch_size)?;
        Ok(())
    }
}

fn check_rank_tol(rank_tol: f64) -> Result<()> {
    if (0.0..1.0).contains(&rank_tol) {
        Ok(())
    } else {
        Err(Error::invalid("rank_tol", rank_tol, "must lie in [0, 1)"))
    }
}

/// Mergeable one-pass statistics behind a diagnosis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DegeneracyStatistics {
    /// Moments of the folded activations at every node but the output.
    activations: Vec<GramAccumulator>,
    /// Per node whose next section has no affine + elementwise structure: rows `∂y/∂h` (units
    /// only), one per sample, output coordinate and position. Where it has one, the Jacobian Gram
    /// is `W_hᵀ K W_h` from the pre-activation Gram `K` (the rows `∂y/∂h` are `∂y/∂z · W_h`), so
    /// its rows are not accumulated twice.
    jacobians: Vec<Option<GramAccumulator>>,
    /// Per node whose next section is affine + elementwise, below the [`closed_top`] sections:
    /// rows `∂y/∂z` of its pre-activations.
    preactivation_jacobians: Vec<Option<GramAccumulator>>,
    /// Moments of `s = σ'(z)` of the second-to-last section when [`closed_top`] is 2 (its
    /// pre-activation Jacobian Gram in closed form).
    derivatives: Option<GramAccumulator>,
    /// Per node whose next section is affine + ReLU, or a residual block with a ReLU hidden
    /// layer: the firing partition of those units.
    firing: Vec<Option<FiringPartition>>,
}

/// The sections after every node but the output.
fn sections(net: &dyn Network) -> Result<Vec<Box<dyn Section + '_>>> {
    let n = net.node_layers().len();
    if n < 2 {
        return Err(Error::invalid("node layers", n, "a diagnosis needs an input and an output node layer"));
    }
    (0..n - 1).map(|k| checked_section(net, k, k + 1)).collect()
}

/// How many of the top sections have their pre-activation Jacobian Gram `K = E_x Σ_o (∂y_o/∂z)ᵀ
/// (∂y_o/∂z)` in closed form, so that no rows are accumulated for them (`docs/math.md` §5): the
/// last when it is affine with the identity (`K = I`), and then the one before when it is affine
/// + elementwise (`K = (W_hᵀ W_h) ⊙ E[s sᵀ]`, `W_h` the last layer's weight on the units, `s =
/// σ'(z)`). Networks with positions have none.
fn closed_top(net: &dyn Network, sections: &[Box<dyn Section + '_>]) -> usize {
    let last = sections.len();
    let top = sections.last().and_then(|s| s.structure());
    if net.node_layers().iter().any(|l| l.positions != 1) || top.is_none_or(|t| t.activation() != Activation::Identity)
    {
        return 0;
    }
    if last >= 2 && sections[last - 2].structure().is_some() { 2 } else { 1 }
}

impl DegeneracyStatistics {
    /// Empty statistics for `net`.
    pub fn new(net: &dyn Network) -> Result<Self> {
        Ok(Self::for_sections(net, &sections(net)?))
    }

    fn for_sections(net: &dyn Network, sections: &[Box<dyn Section + '_>]) -> Self {
        let layers = net.node_layers();
        let structured = |k: usize| sections[k].structure();
        let (last, closed) = (sections.len(), closed_top(net, sections));
        DegeneracyStatistics {
            activations: sections.iter().enumerate().map(|(k, _)| GramAccumulator::new(layers[k].width)).collect(),
            jacobians: (0..sections.len())
                .map(|k| structured(k).is_none().then(|| GramAccumulator::new(layers[k].units())))
                .collect(),
            preactivation_jacobians: (0..sections.len())
                .map(|k| structured(k).filter(|_| k + closed < last).map(|f| GramAccumulator::new(f.units())))
                .collect(),
            derivatives: (closed == 2).then(|| structured(last - 2).map(|f| GramAccumulator::new(f.units()))).flatten(),
            firing: (0..sections.len())
                .map(|k| relu_layer(&*sections[k]).map(|f| FiringPartition::new(f.units())))
                .collect(),
        }
    }

    /// Streams `sampler` (network inputs) once.
    pub fn collect(net: &dyn Network, sampler: &dyn ActivationSampler, batch_size: usize) -> Result<Self> {
        check_sampler(net, sampler)?;
        let sections = sections(net)?;
        let empty = Self::for_sections(net, &sections);
        map_batches(
            sampler,
            batch_size,
            || empty.clone(),
            |s, first, x| s.update_with(net, &sections, x, first),
            |a, b| a.merge(&b),
        )
    }

    /// Adds a batch of network inputs whose first row is sample `first_row`.
    pub fn update(&mut self, net: &dyn Network, inputs: MatrixView<'_>, first_row: usize) -> Result<()> {
        let sections = sections(net)?;
        if sections.len() != self.activations.len() {
            return Err(Error::shape(
                "DegeneracyStatistics::update nodes",
                &[self.activations.len()],
                &[sections.len()],
            ));
        }
        self.update_with(net, &sections, inputs, first_row)
    }

    fn update_with(
        &mut self,
        net: &dyn Network,
        sections: &[Box<dyn Section + '_>],
        inputs: MatrixView<'_>,
        first_row: usize,
    ) -> Result<()> {
        let layers = net.node_layers();
        let last = sections.len();
        let nodes: Vec<usize> = (0..=last).collect();
        let mut acts = ScratchMatrices::take(nodes.len());
        net.forward_nodes(inputs, &nodes, &mut acts)?;
        let n = inputs.nrows();
        let mut lins = Vec::with_capacity(last);
        let mut derivatives: Vec<Option<Matrix>> = Vec::with_capacity(last);
        for k in 0..last {
            check_node_rows(net, k, &acts[k], first_row)?;
            self.activations[k].update(acts[k].view())?;
            lins.push(sections[k].linearize(acts[k].view())?);
            derivatives.push(match sections[k].structure() {
                Some(layer) => {
                    let mut z = Matrix::default();
                    layer.preactivations(acts[k].view(), &mut z);
                    if let Some(f) = &mut self.firing[k] {
                        f.update(&z)?;
                    }
                    let act = layer.activation();
                    z.as_mut_slice().iter_mut().for_each(|v| *v = act.derivative(*v));
                    Some(z)
                }
                None => {
                    // A residual block's ReLUs: only their firing sets are collected.
                    if let (Some(f), Some(layer)) = (&mut self.firing[k], relu_layer(&*sections[k])) {
                        let mut z = ScratchMatrix::take();
                        layer.preactivations(acts[k].view(), &mut z);
                        f.update(&z)?;
                    }
                    None
                }
            });
        }
        check_node_rows(net, last, &acts[last], first_row)?;
        if let (Some(acc), Some(Some(s))) = (&mut self.derivatives, last.checked_sub(2).map(|k| &derivatives[k])) {
            acc.update(s.view())?;
        }
        // The lowest node whose Grams need rows; none: no backward pass at all.
        let needs_rows = |k: usize| self.preactivation_jacobians[k].is_some() || self.jacobians[k].is_some();
        let Some(deepest) = (0..last).find(|&k| needs_rows(k)) else { return Ok(()) };
        // Every output coordinate (and position) as a cotangent, back through the sections, in
        // groups that keep the products near the crate's VJP chunk size.
        let out = &layers[last];
        let identity = Matrix::identity(out.width);
        let widest = layers.iter().map(|l| l.positions * l.width).max().unwrap_or(1);
        let n_pairs = out.positions * out.width;
        let group = crate::basis::cotangent_group(n, widest, n, widest);
        let (mut cot, mut grad, mut units) = (ScratchMatrix::take(), ScratchMatrix::take(), ScratchMatrix::take());
        for start in (0..n_pairs).step_by(group) {
            let pairs = start..(start + group).min(n_pairs);
            basis_cotangents(&identity, out.positions, n, pairs.clone(), &mut cot);
            for k in (deepest..last).rev() {
                if let (Some(acc), Some(s), Some(layer)) =
                    (&mut self.preactivation_jacobians[k], &derivatives[k], sections[k].structure())
                {
                    preactivation_rows(layer, &cot, s, &mut units);
                    acc.update(units.view())?;
                }
                if k == deepest && self.jacobians[k].is_none() {
                    // Nothing below needs the cotangents at this node.
                    break;
                }
                lins[k].vjp(cot.view(), &mut grad)?;
                if let Some(acc) = &mut self.jacobians[k] {
                    let d = layers[k].units();
                    units.resize(grad.nrows(), d);
                    for r in 0..grad.nrows() {
                        units.row_mut(r).copy_from_slice(&grad.row(r)[..d]);
                    }
                    acc.update(units.view())?;
                }
                std::mem::swap(&mut *cot, &mut *grad);
            }
        }
        Ok(())
    }

    /// Adds another shard's statistics (exact up to rounding; firing partitions exactly).
    pub fn merge(&mut self, other: &DegeneracyStatistics) -> Result<()> {
        if other.activations.len() != self.activations.len() {
            return Err(Error::shape(
                "DegeneracyStatistics::merge",
                &[self.activations.len()],
                &[other.activations.len()],
            ));
        }
        for (a, b) in self.activations.iter_mut().zip(&other.activations) {
            a.merge(b)?;
        }
        for (a, b) in self.jacobians.iter_mut().zip(&other.jacobians) {
            match (a, b) {
                (Some(a), Some(b)) => a.merge(b)?,
                (None, None) => {}
                _ => return Err(Error::invalid("DegeneracyStatistics::merge", "Jacobian rows", "of other sections")),
            }
        }
        match (&mut self.derivatives, &other.derivatives) {
            (Some(a), Some(b)) => a.merge(b)?,
            (None, None) => {}
            _ => return Err(Error::invalid("DegeneracyStatistics::merge", "derivative moments", "of another network")),
        }
        for (a, b) in self.preactivation_jacobians.iter_mut().zip(&other.preactivation_jacobians) {
            if let (Some(a), Some(b)) = (a, b) {
                a.merge(b)?;
            }
        }
        for (a, b) in self.firing.iter_mut().zip(&other.firing) {
            if let (Some(a), Some(b)) = (a, b) {
                a.merge(b)?;
            }
        }
        Ok(())
    }
}

/// The ReLU layer a section exposes: itself if it is affine + ReLU, else the hidden layer of a
/// residual block with ReLUs.
fn relu_layer<'a>(section: &'a (dyn Section + 'a)) -> Option<&'a FoldedLinear> {
    let layer = section.structure().or_else(|| section.residual().map(|r| r.hidden))?;
    (layer.activation() == Activation::Relu).then_some(layer)
}

/// Rows `∂y/∂z = cot[:, :units] ⊙ σ'(z)` (the cotangent at the section's output units, tiled
/// over the cotangent blocks).
fn preactivation_rows(layer: &FoldedLinear, cot: &Matrix, derivatives: &Matrix, out: &mut Matrix) {
    let (n, d) = derivatives.shape();
    out.resize(cot.nrows(), d);
    for r in 0..cot.nrows() {
        for ((o, &c), &s) in out.row_mut(r).iter_mut().zip(&cot.row(r)[..layer.units()]).zip(derivatives.row(r % n)) {
            *o = c * s;
        }
    }
}

/// A numerical rank with the spectrum it was read from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rank {
    /// Number of eigenvalues above `rank_tol ·` the largest.
    pub rank: usize,
    /// Eigenvalues, absolute, descending.
    pub spectrum: Vec<f64>,
    /// Smallest eigenvalue counted.
    pub smallest_kept: Option<f64>,
    /// Largest eigenvalue not counted.
    pub largest_dropped: Option<f64>,
}

impl Rank {
    /// The rank of the second moment `scale · E[x xᵀ]` of `m`: its spectrum from the `n × n`
    /// kernel when the moments hold fewer rows than their width (`docs/math.md` §3.5).
    fn of(m: &Moments, scale: f64, rank_tol: f64) -> Result<Self> {
        let spectrum: Vec<f64> = gram_spectrum(m, false)?.into_iter().map(|v| v * scale).collect();
        Ok(Self::cut(spectrum, rank_tol))
    }

    /// The rank of a symmetric matrix (a Gram formed in full).
    fn of_matrix(m: &Matrix, rank_tol: f64) -> Result<Self> {
        let (values, _) = symmetric_eigen(m)?;
        let mut spectrum: Vec<f64> = values.iter().map(|v| v.abs()).collect();
        spectrum.sort_by(|a, b| b.total_cmp(a));
        Ok(Self::cut(spectrum, rank_tol))
    }

    /// The rank of a descending, non-negative `spectrum`: the eigenvalues above `rank_tol ·` the
    /// largest (and above 0).
    fn cut(spectrum: Vec<f64>, rank_tol: f64) -> Self {
        let cut = rank_tol * spectrum.first().copied().unwrap_or(0.0);
        let rank = spectrum.iter().filter(|&&v| v > cut && v > 0.0).count();
        Rank {
            rank,
            smallest_kept: rank.checked_sub(1).map(|i| spectrum[i]),
            largest_dropped: spectrum.get(rank).copied(),
            spectrum,
        }
    }

    /// `smallest kept / largest dropped`: how clean the cut is (∞ if nothing was dropped or the
    /// dropped eigenvalue is exactly 0).
    pub fn gap(&self) -> f64 {
        match (self.smallest_kept, self.largest_dropped) {
            (Some(k), Some(d)) if d > 0.0 => k / d,
            _ => f64::INFINITY,
        }
    }
}

/// Free parameter directions implied at one node layer, for the weight matrix `W_k` that reads
/// it (`in_k` inputs counting the bias, `out_k` outputs) and the ReLU layer that writes it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FreeDirections {
    /// (a) `out_k · (in_k − rank of the activations)`: exactly free.
    pub activation: usize,
    /// (b) `in_k · (out_k − rank of the pre-activation Jacobian Gram)`: free to first order.
    pub jacobian: usize,
    /// (a) and (b) together, without double counting: `in_k · out_k − r_a · r_b`.
    pub activation_and_jacobian: usize,
    /// (c) `Σ k(k − 1)` over groups of `k` ReLUs (feeding this node) with identical firing sets,
    /// the always-on units counted as one group: exactly free beyond per-unit rescaling.
    pub synchronised: usize,
}

impl FreeDirections {
    /// What the node contributes to the total: `activation_and_jacobian + synchronised`.
    pub fn total(&self) -> usize {
        self.activation_and_jacobian + self.synchronised
    }
}

/// The diagnosis of one node layer (all but the output).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeDiagnostics {
    /// The node layer's name.
    pub name: String,
    /// Number of units (the constant coordinate not counted).
    pub dim: usize,
    /// Rank of the uncentred Gram of the folded activations `E[f fᵀ]`, `f = [h, 1]`.
    pub activation: Rank,
    /// Rank of `E_x[J(x)ᵀ J(x)]`, `J = ∂(network output)/∂h` (units only, positions pooled).
    pub jacobian: Rank,
    /// Rank of `E_x[Σ_o (∂y_o/∂z)ᵀ(∂y_o/∂z)]` for the pre-activations `z` of the affine layer
    /// after the node; `None` where that section is not affine + elementwise.
    pub preactivation_jacobian: Option<Rank>,
    /// Dead, always-on and synchronised units of the ReLUs in the section before this node: an
    /// affine + ReLU layer that writes it, or the hidden layer of a residual block (a
    /// transformer's MLP: `d_mlp` units, then its bias unit, always on). `None` where that
    /// section exposes no ReLUs ("not counted").
    pub relu: Option<ReluGroups>,
    /// The free directions of the affine layer after the node; `None` ("not counted") where the
    /// section after it is not affine + elementwise.
    pub free_directions: Option<FreeDirections>,
}

/// The diagnosis of a network on a dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Diagnostics {
    /// Every node layer but the output.
    pub nodes: Vec<NodeDiagnostics>,
    /// Parameters of the affine layers between node layers; `None` if a section is not affine +
    /// elementwise (its parameters are not known here).
    pub n_params: Option<usize>,
    /// Σ over nodes of [`FreeDirections::total`], if every node's were counted.
    pub free_directions_total: Option<usize>,
    /// `n_params − free_directions_total` (negative when the counts overlap more than the
    /// parameters, see `docs/math.md` §5), if both are known.
    pub effective_params_bound: Option<i64>,
    /// The relative tolerance of the ranks.
    pub rank_tol: f64,
}

impl Diagnostics {
    /// `(2λ̂, effective_params_bound − 2λ̂)`: the LLC's effective parameter count next to the
    /// bound (`None` where the bound is not counted).
    pub fn compare_llc(&self, llc: f64) -> (f64, Option<f64>) {
        (2.0 * llc, self.effective_params_bound.map(|b| b as f64 - 2.0 * llc))
    }
}

/// Collects the statistics in one pass over `sampler` and diagnoses `net`.
///
/// ```
/// use degeneracy::diagnostics::{DiagnosticsConfig, diagnose};
/// use degeneracy::{Activation, Mlp, data::modular_addition};
/// let data = modular_addition(5)?;
/// let mlp = Mlp::init(&[10, 8, 5], Activation::Relu, true, 0)?;
/// let d = diagnose(&mlp, &data, &DiagnosticsConfig::default())?;
/// // one-hot(a) ⊕ one-hot(b) with the constant: 2 linear dependencies among 11 coordinates.
/// assert_eq!(d.nodes[0].activation.rank, 9);
/// # Ok::<(), degeneracy::Error>(())
/// ```
pub fn diagnose(net: &dyn Network, sampler: &dyn ActivationSampler, config: &DiagnosticsConfig) -> Result<Diagnostics> {
    config.validate()?;
    let stats = DegeneracyStatistics::collect(net, sampler, config.batch_size)?;
    diagnose_from(net, &stats, config.rank_tol)
}

/// Diagnoses `net` from collected (possibly merged) statistics.
pub fn diagnose_from(net: &dyn Network, stats: &DegeneracyStatistics, rank_tol: f64) -> Result<Diagnostics> {
    check_rank_tol(rank_tol)?;
    let sections = sections(net)?;
    if sections.len() != stats.activations.len() {
        return Err(Error::shape("diagnose_from: statistics nodes", &[sections.len()], &[stats.activations.len()]));
    }
    let layers = net.node_layers();
    let (last, closed) = (sections.len(), closed_top(net, &sections));
    // The rows were one per sample, output coordinate (and position): the Grams sum over the
    // output coordinates, E_x Σ_o.
    let outputs = layers.last().map_or(1, |o| o.positions * o.width) as f64;
    let gram = |acc: &GramAccumulator, what: String| -> Result<Matrix> {
        Ok(acc.finish()?.checked(&what)?.second_moment().scaled_by(outputs))
    };
    let mut nodes = Vec::with_capacity(sections.len());
    for (k, section) in sections.iter().enumerate() {
        let name = &layers[k].name;
        let moments = stats.activations[k].finish()?.checked(&format!("Gram of node layer {name}"))?;
        let activation = Rank::of(&moments, 1.0, rank_tol)?;
        let k_pre = match (&stats.preactivation_jacobians[k], section.structure()) {
            (Some(a), _) => Some(gram(a, format!("pre-activation Jacobian Gram after node layer {name}"))?),
            (None, Some(layer)) if k + 1 == last && closed >= 1 => Some(Matrix::identity(layer.units())),
            (None, Some(_)) if k + 2 == last && closed == 2 => {
                let w = sections[last - 1].structure().expect("closed_top").folded_weight();
                let w_h = Matrix::from_fn(w.nrows(), layers[last - 1].units(), |i, j| w[(i, j)]);
                let wtw = w_h.transpose().matmul(&w_h)?;
                let derivatives = stats.derivatives.as_ref().ok_or_else(|| {
                    Error::invalid("diagnose_from", name, "statistics of another network (no derivative moments)")
                })?;
                let ss = derivatives.finish()?.checked(&format!("σ' moments after node layer {name}"))?.second_moment();
                Some(Matrix::from_fn(wtw.nrows(), wtw.ncols(), |i, j| wtw[(i, j)] * ss[(i, j)]))
            }
            _ => None,
        };
        let jacobian_gram = match (&stats.jacobians[k], section.structure(), &k_pre) {
            (Some(rows), _, _) => gram(rows, format!("Jacobian Gram at node layer {name}"))?,
            (None, Some(layer), Some(k_pre)) => {
                let w = layer.folded_weight();
                let w_h = Matrix::from_fn(w.nrows(), layers[k].units(), |i, j| w[(i, j)]);
                w_h.transpose().matmul(&k_pre.matmul(&w_h)?)?
            }
            _ => return Err(Error::invalid("diagnose_from", name, "statistics of another network")),
        };
        let jacobian = Rank::of_matrix(&jacobian_gram, rank_tol)?;
        let preactivation_jacobian = k_pre.as_ref().map(|m| Rank::of_matrix(m, rank_tol)).transpose()?;
        let relu = k.checked_sub(1).and_then(|w| stats.firing[w].as_ref()).map(FiringPartition::groups);
        let free_directions = match (section.structure(), &preactivation_jacobian) {
            (Some(layer), Some(r_b)) => {
                let node = &layers[k];
                let (in_k, out_k) = (node.units() + usize::from(layer.has_bias() && node.constant), layer.units());
                // Without a bias the constant coordinate is not a parameter's input: rank of E[hhᵀ].
                let r_a = if in_k == node.width {
                    activation.rank
                } else {
                    Rank::of(&moments.without_constant(), 1.0, rank_tol)?.rank
                };
                let (r_a, r_b) = (r_a.min(in_k), r_b.rank.min(out_k));
                // (c) counts the ReLU layer that writes this node; a residual block's ReLUs
                // (reported in `relu` too) are parameters of that block, not counted here.
                let writes_node = k.checked_sub(1).is_some_and(|w| sections[w].structure().is_some());
                let synchronised = relu.as_ref().filter(|_| writes_node).map_or(0, |g| {
                    let always_on = g.always_on.len();
                    g.sync_groups.iter().map(|s| s.len() * (s.len() - 1)).sum::<usize>()
                        + always_on * always_on.saturating_sub(1)
                });
                Some(FreeDirections {
                    activation: out_k * (in_k - r_a),
                    jacobian: in_k * (out_k - r_b),
                    activation_and_jacobian: in_k * out_k - r_a * r_b,
                    synchronised,
                })
            }
            _ => None,
        };
        nodes.push(NodeDiagnostics {
            name: layers[k].name.clone(),
            dim: layers[k].units(),
            activation,
            jacobian,
            preactivation_jacobian,
            relu,
            free_directions,
        });
    }
    let n_params: Option<usize> = sections
        .iter()
        .map(|s| s.structure().map(|f| f.units() * (f.folded_weight().ncols() - usize::from(!f.has_bias()))))
        .sum();
    let free_directions_total: Option<usize> =
        nodes.iter().map(|n| n.free_directions.as_ref().map(FreeDirections::total)).sum();
    let effective_params_bound = n_params.zip(free_directions_total).map(|(p, f)| p as i64 - f as i64);
    Ok(Diagnostics { nodes, n_params, free_directions_total, effective_params_bound, rank_tol })
}
