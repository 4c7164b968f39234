//! The three sources of degeneracy of [P1 §3] — activations spanning a low-dimensional
//! subspace, Jacobians spanning a low-dimensional subspace, ReLUs firing on the same samples —
//! measured on data, with the free parameter directions they imply.
//!
//! One streaming pass collects, per node layer, the moments of the activations, the Gram of the
//! output's Jacobian with respect to each layer's pre-activations, and the firing partition of
//! each ReLU layer; the state merges exactly across shards. The counting rules and their
//! derivations are in `docs/math.md` §5.

mod firing;

pub use firing::{FiringPartition, ReluGroups};

use crate::data::{ActivationSampler, map_batches};
use crate::error::{Error, Result};
use crate::estimate::{GramAccumulator, check_finite_rows};
use crate::linalg::symmetric_eigen;
use crate::matrix::{Matrix, MatrixView};
use crate::nn::{Activation, ForwardTrace, Layer, Mlp};
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

/// Mergeable one-pass statistics behind a diagnosis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DegeneracyStatistics {
    /// Moments of the activations at nodes `0..n_layers` (the inputs of the linear layers).
    activations: Vec<GramAccumulator>,
    /// Per linear layer `k ≤ n − 3`: rows `∂y_o/∂z_k` (one row per sample and output `o`). The
    /// last two layers have closed forms (`docs/math.md` §5) and need no rows.
    preactivation_jacobians: Vec<Option<GramAccumulator>>,
    /// Moments of `s = σ'(z)` of layer `n − 2` (the closed form of its Jacobian Gram).
    derivatives: Option<GramAccumulator>,
    /// Per linear layer `k` followed by ReLU: the firing partition of its units.
    firing: Vec<Option<FiringPartition>>,
}

impl DegeneracyStatistics {
    /// Empty statistics for `mlp`.
    pub fn new(mlp: &Mlp) -> Self {
        let widths = mlp.widths();
        let n = mlp.n_layers();
        DegeneracyStatistics {
            activations: (0..n).map(|k| GramAccumulator::new(widths[k])).collect(),
            preactivation_jacobians: (0..n).map(|k| (k + 2 < n).then(|| GramAccumulator::new(widths[k + 1]))).collect(),
            derivatives: (n >= 2).then(|| GramAccumulator::new(widths[n - 1])),
            firing: (0..n)
                .map(|k| (mlp.activations()[k] == Activation::Relu).then(|| FiringPartition::new(widths[k + 1])))
                .collect(),
        }
    }

    /// Streams `sampler` (model inputs) once.
    pub fn collect(mlp: &Mlp, sampler: &dyn ActivationSampler, batch_size: usize) -> Result<Self> {
        if sampler.dim() != mlp.in_dim() {
            return Err(Error::shape("sampler rows vs model input", &[mlp.in_dim()], &[sampler.dim()]));
        }
        let empty = Self::new(mlp);
        map_batches(sampler, batch_size, || empty.clone(), |s, first, x| s.update(mlp, x, first), |a, b| a.merge(&b))
    }

    /// Adds a batch of model inputs whose first row is sample `first_row`.
    pub fn update(&mut self, mlp: &Mlp, inputs: MatrixView<'_>, first_row: usize) -> Result<()> {
        let mut trace = ForwardTrace::default();
        mlp.trace(inputs, &mut trace)?;
        let (n, d_out) = (inputs.nrows(), mlp.out_dim());
        for k in 0..mlp.n_layers() {
            check_finite_rows(trace.node(k), first_row, &mlp.node_name(k))?;
            self.activations[k].update(trace.node(k).view())?;
            if let Some(f) = &mut self.firing[k] {
                f.update(trace.preactivation(k))?;
            }
        }
        let n_layers = mlp.n_layers();
        if n_layers < 2 {
            return Ok(());
        }
        // Layer n − 2: ∂y_o/∂z = W_{n−1}[o, :] ⊙ σ'(z); its Gram needs only E[σ'σ'ᵀ].
        let (k2, act2) = (n_layers - 2, mlp.activations()[n_layers - 2]);
        let z2 = trace.preactivation(k2);
        let s = Matrix::from_fn(n, z2.ncols(), |i, j| act2.derivative(z2[(i, j)]));
        self.derivatives.as_mut().expect("present for ≥ 2 layers").update(s.view())?;
        if n_layers < 3 {
            return Ok(());
        }
        // Deeper layers: every sample and output as a row (x, o), back-propagated.
        let w_last = mlp.linears()[n_layers - 1].weight();
        let mut rows = Matrix::from_fn(n * d_out, s.ncols(), |r, j| w_last[(r % d_out, j)] * s[(r / d_out, j)]);
        for k in (0..k2).rev() {
            rows = rows.matmul(mlp.linears()[k + 1].weight())?;
            let act = mlp.activations()[k];
            let z = trace.preactivation(k);
            for r in 0..rows.nrows() {
                for (g, &zv) in rows.row_mut(r).iter_mut().zip(z.row(r / d_out)) {
                    *g *= act.derivative(zv);
                }
            }
            self.preactivation_jacobians[k].as_mut().expect("present below n − 2").update(rows.view())?;
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
        for (a, b) in self.preactivation_jacobians.iter_mut().zip(&other.preactivation_jacobians) {
            if let (Some(a), Some(b)) = (a, b) {
                a.merge(b)?;
            }
        }
        if let (Some(a), Some(b)) = (&mut self.derivatives, &other.derivatives) {
            a.merge(b)?;
        }
        for (a, b) in self.firing.iter_mut().zip(&other.firing) {
            if let (Some(a), Some(b)) = (a, b) {
                a.merge(b)?;
            }
        }
        Ok(())
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
    fn of(m: &Matrix, rank_tol: f64) -> Result<Self> {
        let (values, _) = symmetric_eigen(m)?;
        let mut spectrum: Vec<f64> = values.iter().map(|v| v.abs()).collect();
        spectrum.sort_by(|a, b| b.total_cmp(a));
        let cut = rank_tol * spectrum.first().copied().unwrap_or(0.0);
        let rank = spectrum.iter().filter(|&&v| v > cut && v > 0.0).count();
        Ok(Rank {
            rank,
            smallest_kept: rank.checked_sub(1).map(|i| spectrum[i]),
            largest_dropped: spectrum.get(rank).copied(),
            spectrum,
        })
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

/// The diagnosis of one node layer (the input of linear layer `k`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeDiagnostics {
    /// `layers.k`.
    pub name: String,
    /// Number of units.
    pub dim: usize,
    /// Rank of the uncentred Gram `E[f̃ f̃ᵀ]`, `f̃ = [h, 1]`.
    pub activation: Rank,
    /// Rank of `E_x[J(x)ᵀ J(x)]`, `J = ∂(network output)/∂h` (no constant).
    pub jacobian: Rank,
    /// Rank of `E_x[Σ_o (∂y_o/∂z)ᵀ(∂y_o/∂z)]` for the pre-activations `z` of linear layer `k`.
    pub preactivation_jacobian: Rank,
    /// Dead, always-on and synchronised units, if this node is written by a ReLU layer.
    pub relu: Option<ReluGroups>,
    /// The free directions this node implies.
    pub free_directions: FreeDirections,
}

/// The diagnosis of a network on a dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Diagnostics {
    /// Node layers `layers.0 … layers.{n−1}` (the inputs of the linear layers).
    pub nodes: Vec<NodeDiagnostics>,
    /// Trainable parameters.
    pub n_params: usize,
    /// Σ over nodes of [`FreeDirections::total`].
    pub free_directions_total: usize,
    /// `n_params − free_directions_total`, saturating at 0 (see `docs/math.md` §5 for what it
    /// bounds and when the counts overlap).
    pub effective_params_bound: usize,
    /// The relative tolerance of the ranks.
    pub rank_tol: f64,
}

impl Diagnostics {
    /// `(2λ̂, effective_params_bound − 2λ̂)`: the LLC's effective parameter count next to the bound.
    pub fn compare_llc(&self, llc: f64) -> (f64, f64) {
        (2.0 * llc, self.effective_params_bound as f64 - 2.0 * llc)
    }
}

/// Collects the statistics in one pass over `sampler` and diagnoses `mlp`.
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
pub fn diagnose(mlp: &Mlp, sampler: &dyn ActivationSampler, config: &DiagnosticsConfig) -> Result<Diagnostics> {
    if !(config.rank_tol >= 0.0 && config.rank_tol < 1.0) {
        return Err(Error::invalid("rank_tol", config.rank_tol, "must lie in [0, 1)"));
    }
    let stats = DegeneracyStatistics::collect(mlp, sampler, config.batch_size)?;
    diagnose_from(mlp, &stats, config.rank_tol)
}

/// Diagnoses `mlp` from collected (possibly merged) statistics.
pub fn diagnose_from(mlp: &Mlp, stats: &DegeneracyStatistics, rank_tol: f64) -> Result<Diagnostics> {
    let widths = mlp.widths();
    let d_out = mlp.out_dim() as f64;
    let mut nodes = Vec::with_capacity(mlp.n_layers());
    for k in 0..mlp.n_layers() {
        let moments = stats.activations[k].finish()?;
        let activation = Rank::of(&moments.folded_gram(false), rank_tol)?;
        let k_pre = preactivation_jacobian_gram(mlp, stats, k, d_out)?;
        let preactivation_jacobian = Rank::of(&k_pre, rank_tol)?;
        let w = mlp.linears()[k].weight();
        let jacobian = Rank::of(&w.transpose().matmul(&k_pre)?.matmul(w)?, rank_tol)?;
        let relu = (k > 0).then(|| stats.firing[k - 1].as_ref().map(FiringPartition::groups)).flatten();

        let has_bias = mlp.linears()[k].bias().is_some();
        let (in_k, out_k) = (widths[k] + usize::from(has_bias), widths[k + 1]);
        // Without a bias the constant coordinate is not a parameter's input: rank of E[hhᵀ].
        let r_a = if has_bias { activation.rank } else { Rank::of(&moments.second_moment(), rank_tol)?.rank };
        let r_b = preactivation_jacobian.rank;
        let synchronised = relu.as_ref().map_or(0, |g| {
            let always_on = g.always_on.len();
            g.sync_groups.iter().map(|s| s.len() * (s.len() - 1)).sum::<usize>()
                + always_on * always_on.saturating_sub(1)
        });
        let free_directions = FreeDirections {
            activation: out_k * (in_k - r_a.min(in_k)),
            jacobian: in_k * (out_k - r_b.min(out_k)),
            activation_and_jacobian: in_k * out_k - r_a.min(in_k) * r_b.min(out_k),
            synchronised,
        };
        nodes.push(NodeDiagnostics {
            name: mlp.node_name(k),
            dim: widths[k],
            activation,
            jacobian,
            preactivation_jacobian,
            relu,
            free_directions,
        });
    }
    let n_params = mlp.n_params();
    let free_directions_total = nodes.iter().map(|n| n.free_directions.total()).sum();
    Ok(Diagnostics {
        nodes,
        n_params,
        free_directions_total,
        effective_params_bound: n_params.saturating_sub(free_directions_total),
        rank_tol,
    })
}

/// `K_k = E_x Σ_o (∂y_o/∂z_k)ᵀ(∂y_o/∂z_k)`: the identity for the last layer, the closed form
/// `(W_{n−1}ᵀ W_{n−1}) ⊙ E[σ'σ'ᵀ]` for the one before, the row Gram (averaged over `N·d_out`
/// rows, hence `· d_out`) below.
fn preactivation_jacobian_gram(mlp: &Mlp, stats: &DegeneracyStatistics, k: usize, d_out: f64) -> Result<Matrix> {
    let n_layers = mlp.n_layers();
    if k + 1 == n_layers {
        return Ok(Matrix::identity(mlp.out_dim()));
    }
    if k + 2 == n_layers {
        let w = mlp.linears()[n_layers - 1].weight();
        let wtw = w.transpose().matmul(w)?;
        let ss = stats.derivatives.as_ref().expect("present for ≥ 2 layers").finish()?.second_moment();
        return Ok(Matrix::from_fn(wtw.nrows(), wtw.ncols(), |i, j| wtw[(i, j)] * ss[(i, j)]));
    }
    let m = stats.preactivation_jacobians[k].as_ref().expect("present below n − 2").finish()?.second_moment();
    Ok(Matrix::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)] * d_out))
}
