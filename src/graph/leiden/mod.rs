//! Leiden community detection (Traag, Waltman & van Eck 2019, "From Louvain to Leiden: guaranteeing
//! well-connected communities"), seeded and bitwise deterministic.
//!
//! Interpretability graphs (attribution graphs, co-activation graphs, weight graphs between layers)
//! are clustered to find circuits; Louvain can return communities that are internally disconnected,
//! which then read as spurious "circuits". Leiden's refinement phase guarantees that every
//! community is well connected, so it is the algorithm implemented here.
//!
//! # Algorithm
//!
//! One *outer iteration* runs the multilevel loop to convergence, like igraph's
//! `community_leiden(n_iterations = 1)`:
//!
//! 1. **fast local moving**: nodes are visited from a queue (initial order shuffled by the seeded
//!    RNG); each is moved to the neighbouring (or an empty) community with the largest strictly
//!    positive quality gain, and its neighbours outside that community are re-queued;
//! 2. **refinement**: inside each community, starting from singletons, every node that is still a
//!    singleton and well connected to its community is merged into a well-connected sub-community,
//!    chosen at random among the merges with non-negative gain with probability
//!    `∝ exp(gain / θ)` (staying alone has gain 0), as in the paper and its reference
//!    implementation;
//! 3. **aggregation** of the *refined* partition, with the non-refined partition as the initial
//!    partition of the aggregate graph. If the refinement merged nothing at a level, that level is
//!    aggregated by the non-refined partition instead (as igraph does), so every level shrinks the
//!    graph and the loop terminates.
//!
//! The loop stops when local moving leaves every aggregate node alone. Outer iterations restart
//! from the previous partition on the original graph, up to `max_iterations`, and stop early as
//! soon as an iteration leaves the partition unchanged.
//!
//! # Quality functions, in one form
//!
//! Both quality functions are optimised as `H = Σ_C [W_in(C) − r·M_C²/2]` with node masses `m_v`
//! (`M_C = Σ_{v∈C} m_v`), in units of edge weight:
//! * modularity: `m_v = k_v / (2W)` (normalised degree) and `r = 2Wγ`, so `H = W·Q_γ`;
//! * CPM: `m_v = 1` and `r = γ`, so `H = CPM − γ·n/2` (a constant shift).
//!
//! Gains (and hence the refinement temperature `θ`) are therefore in units of edge weight for both
//! quality functions, as in the reference implementation.
//!
//! # Determinism
//!
//! The code is single-threaded, uses one `ChaCha8Rng` seeded from `LeidenConfig::seed`, and every
//! floating-point sum runs in a fixed order, so the same graph and config give bitwise identical
//! results on every run and for any thread count of the caller.

use rand::rngs::ChaCha8Rng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod aggregation;
mod csr;
mod labels;
mod local_moving;
mod refinement;
#[cfg(test)]
mod tests;
mod workspace;

use aggregation::aggregate;
use csr::Csr;
use labels::{canonical, compact_any, compact_dense};
use local_moving::fast_local_moving;
use refinement::refine;
use workspace::Workspace;

/// Undirected weighted graph on nodes `0..n`, stored in CSR form so that clustering 10⁵-edge
/// graphs stays fast and allocation-free in the inner loops.
///
/// Parallel edges (in either orientation) are summed into one edge, zero-weight edges are dropped.
/// A self-loop of weight `w` counts once in [`total_weight`](Self::total_weight) and `2w` in the
/// weighted degree of its node (the usual convention, so that `Σ_v degree(v) = 2W`), and lies
/// inside whatever community holds its node.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightedGraph {
    adj: Csr,
    self_loops: Vec<f64>,
    degrees: Vec<f64>,
    total_weight: f64,
    n_edges: usize,
}

impl WeightedGraph {
    /// Validates and normalises an edge list once, so the clustering code can trust its input.
    ///
    /// Errors with [`Error::InvalidParameter`] on an endpoint outside `0..n_nodes`, a negative,
    /// NaN or infinite weight, or a total weight so large that degrees would overflow.
    pub fn new(n_nodes: usize, edges: &[(usize, usize, f64)]) -> Result<Self> {
        let mut list: Vec<(usize, usize, f64)> = Vec::with_capacity(edges.len());
        for (i, &(u, v, w)) in edges.iter().enumerate() {
            if u >= n_nodes {
                return Err(Error::invalid(format!("edges[{i}].0"), u, format!("node index outside 0..{n_nodes}")));
            }
            if v >= n_nodes {
                return Err(Error::invalid(format!("edges[{i}].1"), v, format!("node index outside 0..{n_nodes}")));
            }
            if !w.is_finite() || w < 0.0 {
                return Err(Error::invalid(format!("edges[{i}].2"), w, "edge weight must be finite and >= 0"));
            }
            if w == 0.0 {
                continue;
            }
            list.push(if u <= v { (u, v, w) } else { (v, u, w) });
        }
        // Stable sort: parallel edges are summed in input order, so results do not depend on
        // anything but the edge list.
        list.sort_by_key(|&(a, b, _)| (a, b));
        let mut merged: Vec<(usize, usize, f64)> = Vec::with_capacity(list.len());
        for (a, b, w) in list {
            match merged.last_mut() {
                Some(last) if last.0 == a && last.1 == b => last.2 += w,
                _ => merged.push((a, b, w)),
            }
        }
        let n_edges = merged.len();
        let mut total_weight = 0.0;
        let mut self_loops = vec![0.0; n_nodes];
        let mut pairs = Vec::with_capacity(merged.len());
        for &(a, b, w) in &merged {
            total_weight += w;
            if a == b {
                self_loops[a] = w;
            } else {
                pairs.push((a, b, w));
            }
        }
        // Degrees reach 2W and the quality code forms 2W; keep both finite (this also catches a sum
        // that overflowed to infinity).
        if total_weight > f64::MAX / 8.0 {
            return Err(Error::invalid("edges", total_weight, "total edge weight too large (degrees would overflow)"));
        }
        let adj = Csr::from_sorted_pairs(n_nodes, &pairs);
        let degrees = (0..n_nodes)
            .map(|v| {
                let (_, ws) = adj.neighbours(v);
                ws.iter().sum::<f64>() + 2.0 * self_loops[v]
            })
            .collect();
        Ok(WeightedGraph { adj, self_loops, degrees, total_weight, n_edges })
    }

    /// Number of nodes, including isolated ones, so memberships can be checked against it.
    pub fn n_nodes(&self) -> usize {
        self.self_loops.len()
    }

    /// Number of distinct edges with positive weight (self-loops included), after merging
    /// parallel edges; useful to check what the constructor kept.
    pub fn n_edges(&self) -> usize {
        self.n_edges
    }

    /// Total edge weight `W` (each edge, self-loops included, counted once): the normaliser of
    /// modularity.
    pub fn total_weight(&self) -> f64 {
        self.total_weight
    }

    /// Weighted degree (self-loops count twice): the node's share of the modularity null model.
    ///
    /// # Panics
    /// If `v >= n_nodes()`, like slice indexing.
    pub fn degree(&self, v: usize) -> f64 {
        self.degrees[v]
    }
}

/// Which objective the clustering maximises; the resolution trades community size for density.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Quality {
    /// Newman modularity with resolution γ (see [`modularity`]): the standard choice when
    /// community sizes should adapt to node degrees.
    Modularity {
        /// γ ≥ 0; larger values give more, smaller communities.
        resolution: f64,
    },
    /// Constant Potts model (see [`cpm`]): free of modularity's resolution limit, γ is a density
    /// threshold (communities are denser than γ inside, sparser than γ between).
    Cpm {
        /// γ ≥ 0, in units of edge weight per node pair.
        resolution: f64,
    },
}

impl Quality {
    fn resolution(&self) -> f64 {
        match *self {
            Quality::Modularity { resolution } | Quality::Cpm { resolution } => resolution,
        }
    }
}

/// Everything that determines a Leiden run, so a run is reproducible from its config alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeidenConfig {
    /// The objective to maximise.
    pub quality: Quality,
    /// Upper bound on outer iterations (each runs the multilevel loop to convergence); the run
    /// stops earlier once an iteration leaves the partition unchanged. Must be ≥ 1.
    pub max_iterations: usize,
    /// Refinement temperature θ > 0, in units of edge weight: merges are drawn with probability
    /// `∝ exp(gain / θ)`; small θ is nearly greedy, large θ explores more.
    pub randomness: f64,
    /// Seed of the `ChaCha8Rng` that drives visit orders and refinement choices.
    pub seed: u64,
}

impl Default for LeidenConfig {
    /// Modularity with γ = 1, 10 iterations, θ = 0.01 (the paper's value), seed 0.
    fn default() -> Self {
        LeidenConfig { quality: Quality::Modularity { resolution: 1.0 }, max_iterations: 10, randomness: 0.01, seed: 0 }
    }
}

impl LeidenConfig {
    /// Rejects configs that would make the optimisation meaningless or non-terminating, before
    /// any work is done.
    ///
    /// Errors with [`Error::InvalidParameter`] unless the resolution is finite and ≥ 0, the
    /// randomness finite and > 0, and `max_iterations ≥ 1`.
    pub fn validate(&self) -> Result<()> {
        check_resolution(self.quality.resolution())?;
        if !(self.randomness.is_finite() && self.randomness > 0.0) {
            return Err(Error::invalid("randomness", self.randomness, "must be finite and > 0"));
        }
        if self.max_iterations == 0 {
            return Err(Error::invalid("max_iterations", self.max_iterations, "must be >= 1"));
        }
        Ok(())
    }
}

/// A clustering in canonical form, so equal partitions compare equal whatever the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Partition {
    /// Community id of each node; ids `0..n_communities` are ordered by decreasing community
    /// size, ties broken by the smallest node index in the community.
    pub membership: Vec<usize>,
    /// Number of communities `k` (every id in `0..k` is used).
    pub n_communities: usize,
    /// Value of the configured quality function ([`modularity`] or [`cpm`]) for `membership`.
    pub quality: f64,
}

/// Clusters `graph` with the Leiden algorithm, giving well-connected communities reproducibly
/// from `config.seed`.
///
/// Errors with [`Error::InvalidParameter`] if the config is invalid. An empty graph gives an
/// empty partition; an edgeless graph gives singletons (modularity 0).
pub fn leiden(graph: &WeightedGraph, config: &LeidenConfig) -> Result<Partition> {
    config.validate()?;
    let n = graph.n_nodes();
    let (mass, r) = match config.quality {
        Quality::Modularity { resolution } => {
            let two_w = 2.0 * graph.total_weight;
            if two_w == 0.0 {
                // No edges: every partition has modularity 0; singletons are the canonical answer.
                return Ok(Partition { membership: (0..n).collect(), n_communities: n, quality: 0.0 });
            }
            (graph.degrees.iter().map(|&k| k / two_w).collect::<Vec<f64>>(), resolution * two_w)
        }
        Quality::Cpm { resolution } => (vec![1.0; n], resolution),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut ws = Workspace::new(n);
    let mut membership: Vec<usize> = (0..n).collect();
    for _ in 0..config.max_iterations {
        let next = one_iteration(&graph.adj, &mass, r, config.randomness, &membership, &mut rng, &mut ws);
        let (next, _) = canonical(&next);
        let changed = next != membership;
        membership = next;
        if !changed {
            break;
        }
    }
    let (membership, n_communities) = canonical(&membership);
    let quality = match config.quality {
        Quality::Modularity { resolution } => modularity(graph, &membership, resolution)?,
        Quality::Cpm { resolution } => cpm(graph, &membership, resolution)?,
    };
    Ok(Partition { membership, n_communities, quality })
}

/// Newman modularity with resolution γ, the standard score of a graph partition:
/// `Q_γ = Σ_C [ W_in(C)/W − γ (vol(C)/(2W))² ]`, with `W` the total edge weight, `W_in(C)` the
/// weight of edges with both ends in `C` (self-loops included) and `vol(C)` the sum of weighted
/// degrees. Isolated nodes contribute 0; an edgeless graph has `Q = 0`.
///
/// Community ids in `membership` may be any `usize` values. Errors with
/// [`Error::ShapeMismatch`] if `membership.len() != n_nodes`, and [`Error::InvalidParameter`] if
/// `resolution` is not finite and ≥ 0.
pub fn modularity(graph: &WeightedGraph, membership: &[usize], resolution: f64) -> Result<f64> {
    check_membership(graph, membership, "modularity")?;
    check_resolution(resolution)?;
    let w = graph.total_weight;
    if w == 0.0 {
        return Ok(0.0);
    }
    let (labels, k) = compact_any(membership);
    let (w_in, _) = internal_weights(graph, &labels, k);
    let mut vol = vec![0.0; k];
    for (v, &c) in labels.iter().enumerate() {
        vol[c] += graph.degrees[v];
    }
    let two_w = 2.0 * w;
    let mut q = 0.0;
    for c in 0..k {
        let a = vol[c] / two_w;
        q += w_in[c] / w - resolution * a * a;
    }
    Ok(q)
}

/// Constant Potts model, a resolution-limit-free score: `Σ_C [ W_in(C) − γ·n_C(n_C − 1)/2 ]`,
/// with `W_in(C)` as in [`modularity`] and `n_C` the number of nodes of `C`.
///
/// Normalisation: none, i.e. the value is in units of edge weight and the penalty counts the
/// `n_C(n_C − 1)/2` node pairs of `C` (no self pairs), as igraph/leidenalg do without self-loop
/// correction; singletons score 0 (plus their self-loops).
///
/// Errors as [`modularity`].
pub fn cpm(graph: &WeightedGraph, membership: &[usize], resolution: f64) -> Result<f64> {
    check_membership(graph, membership, "cpm")?;
    check_resolution(resolution)?;
    let (labels, k) = compact_any(membership);
    let (w_in, sizes) = internal_weights(graph, &labels, k);
    let mut h = 0.0;
    for c in 0..k {
        let s = sizes[c] as f64;
        h += w_in[c] - resolution * (s * (s - 1.0) / 2.0);
    }
    Ok(h)
}

fn check_membership(graph: &WeightedGraph, membership: &[usize], op: &'static str) -> Result<()> {
    if membership.len() != graph.n_nodes() {
        return Err(Error::shape(op, &[graph.n_nodes()], &[membership.len()]));
    }
    Ok(())
}

fn check_resolution(resolution: f64) -> Result<()> {
    if !(resolution.is_finite() && resolution >= 0.0) {
        return Err(Error::invalid("resolution", resolution, "must be finite and >= 0"));
    }
    Ok(())
}

/// Internal weight and node count per community (labels in `0..k`), summed in node order.
fn internal_weights(graph: &WeightedGraph, labels: &[usize], k: usize) -> (Vec<f64>, Vec<usize>) {
    let mut w_in = vec![0.0; k];
    let mut sizes = vec![0usize; k];
    for (u, &c) in labels.iter().enumerate() {
        sizes[c] += 1;
        w_in[c] += graph.self_loops[u];
        let (ts, ws) = graph.adj.neighbours(u);
        for (&v, &w) in ts.iter().zip(ws) {
            if v > u && labels[v] == c {
                w_in[c] += w;
            }
        }
    }
    (w_in, sizes)
}

/// `r · (m · M)` without `∞ · 0 = NaN` when the mass product is zero.
#[inline]
pub(super) fn penalty(r: f64, mass_product: f64) -> f64 {
    if mass_product == 0.0 { 0.0 } else { r * mass_product }
}

/// One outer iteration: the multilevel loop (move, refine, aggregate) run to convergence from
/// `start` (labels `< n`). Returns the new membership of the original nodes.
fn one_iteration(
    base: &Csr,
    base_mass: &[f64],
    r: f64,
    theta: f64,
    start: &[usize],
    rng: &mut ChaCha8Rng,
    ws: &mut Workspace,
) -> Vec<usize> {
    let mut node_to_agg: Vec<usize> = (0..base.n()).collect();
    let mut clustering = start.to_vec();
    let mut level: Option<(Csr, Vec<f64>)> = None;
    loop {
        let (adj, mass) = match &level {
            Some((a, m)) => (a, m.as_slice()),
            None => (base, base_mass),
        };
        let n = adj.n();
        fast_local_moving(adj, mass, r, &mut clustering, rng, ws);
        let k = compact_dense(&mut clustering, &mut ws.map);
        if k == n {
            break;
        }
        let mut refined = refine(adj, mass, r, theta, &clustering, k, rng, ws);
        let mut n_refined = compact_dense(&mut refined, &mut ws.map);
        if n_refined == n {
            // The refinement merged nothing: aggregate by the non-refined partition so the
            // level still shrinks (igraph does the same).
            refined.copy_from_slice(&clustering);
            n_refined = k;
        }
        let aggregate = aggregate(adj, mass, &refined, n_refined, ws);
        let mut next = vec![0usize; n_refined];
        for (v, &a) in refined.iter().enumerate() {
            next[a] = clustering[v];
        }
        node_to_agg.iter_mut().for_each(|a| *a = refined[*a]);
        clustering = next;
        level = Some(aggregate);
    }
    node_to_agg.iter().map(|&a| clustering[a]).collect()
}
