//! Building the bases of all selected node layers, from the output backwards.

use super::frame::{Frame, frame, gram_spectrum, sorted_abs_eigen};
use super::jacobian_gram::{self, JacobianGram, JacobianGramAccumulator};
use super::{BasisFormula, LibConfig, NodeBasis};
use crate::data::{ActivationSampler, map_batches};
use crate::error::{Error, Result};
use crate::estimate::{Moments, NodeStatistics, Quadrature, check_node_rows, check_sampler};
use crate::matrix::Matrix;
use crate::nn::{Network, Section, checked_section};
use crate::scratch::ScratchMatrices;

/// Fits the bases of the configured node layers of `net` on the inputs streamed by `sampler`:
/// one pass for the moments ([`NodeStatistics::collect`]), then [`build_bases`].
///
/// ```
/// use degeneracy::basis::{Basis, LibConfig, fit_bases};
/// use degeneracy::{Activation, Mlp, data::modular_addition};
/// let data = modular_addition(5)?;
/// let mlp = Mlp::init(&[10, 8, 5], Activation::Relu, true, 0)?;
/// let bases = fit_bases(&mlp, &data, &LibConfig::default())?;
/// assert_eq!(bases.len(), 3); // layers.0, layers.1, output
/// assert!(bases[1].dim() <= 9); // at most the 8 units + the constant
/// # Ok::<(), degeneracy::Error>(())
/// ```
pub fn fit_bases(net: &dyn Network, sampler: &dyn ActivationSampler, config: &LibConfig) -> Result<Vec<NodeBasis>> {
    config.validate()?;
    let nodes = config.node_indices(net)?;
    let stats = NodeStatistics::collect(net, sampler, &nodes, config.statistics_quadrature(), config.batch_size)?;
    build_bases(net, sampler, &stats, config)
}

/// Builds the bases from collected statistics; `sampler` is streamed again only where `M'`
/// has no closed form (the `(1-alpha)^2` formula, sections that are not one affine +
/// elementwise layer, `JacobianPath::Generic`). Returned in node order.
pub fn build_bases(
    net: &dyn Network,
    sampler: &dyn ActivationSampler,
    stats: &NodeStatistics,
    config: &LibConfig,
) -> Result<Vec<NodeBasis>> {
    config.validate()?;
    let nodes = config.node_indices(net)?;
    if stats.nodes() != nodes {
        return Err(Error::invalid(
            "statistics nodes",
            format!("{:?}", stats.nodes()),
            format!("the config selects {nodes:?}"),
        ));
    }
    let points = config.quadrature.points();
    // Steps 1–3 of every node depend on its own moments only: they run for all nodes at once,
    // the large products of each using the threads the others leave idle (the same result for
    // any thread count). Errors are reported in the order of the sequential build (from the
    // output backwards).
    let mut prepared: Vec<Option<Result<Prepared>>> = {
        use rayon::prelude::*;
        let _span = crate::profile::span("bases/frames");
        let last = nodes.len() - 1;
        nodes
            .par_iter()
            .enumerate()
            .map(|(slot, &k)| {
                Some(crate::linalg::with_nested_products(|| prepare(net, stats, k, slot == last, config)))
            })
            .collect()
    };
    let mut take = |slot: usize| prepared[slot].take().expect("each node is taken once");
    let mut bases: Vec<NodeBasis> = Vec::with_capacity(nodes.len());
    let mut slot = nodes.len() - 1;
    bases.push(take(slot)?.into_basis());
    for pair in nodes.windows(2).rev() {
        slot -= 1;
        let (k, next) = (pair[0], pair[1]);
        let (f, mean) = match take(slot)? {
            Prepared::Frame { frame, mean } => (frame, mean),
            done => {
                bases.push(done.into_basis());
                continue;
            }
        };
        let formula = config.basis_formula;
        let c_next = &bases.last().expect("pushed above").c;
        let section = checked_section(net, k, next)?;
        let closed = stats.derivatives(k).filter(|_| formula == BasisFormula::Jacobian);
        let span = crate::profile::span("bases/m_dash");
        let (m_dash, lambda_dash) = match (closed, section.structure(), section.residual()) {
            (Some(s), Some(layer), _) => (jacobian_gram::closed_form(layer, s, c_next, &points)?, None),
            (Some(s), None, Some(block)) => {
                (jacobian_gram::closed_form_residual(block, &s.finish()?, c_next, &points)?, None)
            }
            _ => {
                let (m, l) = generic_m_dash(net, sampler, k, &*section, c_next, config, formula)?;
                (JacobianGram::Dense(m), l)
            }
        };
        drop(span);
        bases.push(interaction_basis(net, k, f, mean, &m_dash, lambda_dash.as_ref(), config)?);
    }
    bases.reverse();
    Ok(bases)
}

/// A node's basis as far as it depends on the node alone.
enum Prepared {
    /// Complete (neuron, PCA, an unrotated final node).
    Done(NodeBasis),
    /// Steps 1–3 of an interaction basis, and the activations' mean.
    Frame { frame: Frame, mean: Vec<f64> },
}

impl Prepared {
    fn into_basis(self) -> NodeBasis {
        match self {
            Prepared::Done(b) => b,
            Prepared::Frame { .. } => unreachable!("the last node's basis needs no interaction step"),
        }
    }
}

/// Everything of node `k`'s basis that does not need the next node's basis.
fn prepare(net: &dyn Network, stats: &NodeStatistics, k: usize, last: bool, config: &LibConfig) -> Result<Prepared> {
    if last {
        return final_basis(net, stats, k, config).map(Prepared::Done);
    }
    match config.basis_formula {
        BasisFormula::Neuron => neuron_basis(net, stats, k, config).map(Prepared::Done),
        BasisFormula::Svd => pca_basis(net, stats, k, config).map(Prepared::Done),
        _ => {
            let moments = activation_moments(net, stats, k)?;
            let mean = moments.mean.clone();
            let frame = moments_frame(net, moments, k, config)?;
            Ok(Prepared::Frame { frame, mean })
        }
    }
}

fn activation_moments(net: &dyn Network, stats: &NodeStatistics, k: usize) -> Result<Moments> {
    stats
        .activations(k)
        .ok_or_else(|| Error::UnknownNode { name: node_name(net, k), available: net.node_names() })?
        .finish_rows()?
        .checked(&format!("Gram of node layer {}", node_name(net, k)))
}

fn node_name(net: &dyn Network, k: usize) -> String {
    net.node_layers().get(k).map_or_else(|| format!("node {k}"), |n| n.name.clone())
}

fn moments_frame(net: &dyn Network, moments: Moments, k: usize, config: &LibConfig) -> Result<Frame> {
    let node = &net.node_layers()[k];
    frame(moments, node.constant, config.center, node.isolated, config.truncation_threshold, &node.name)
}

/// The basis of node `k` built here: the public constructor's checks (shapes, finite entries)
/// and the formula recorded.
fn node_basis(
    net: &dyn Network,
    k: usize,
    formula: Option<BasisFormula>,
    c: Matrix,
    c_pinv: Matrix,
) -> Result<NodeBasis> {
    Ok(NodeBasis { formula, ..NodeBasis::new(node_name(net, k), c, c_pinv)? })
}

/// The last node layer: PCA if `rotate_final_node_layer`, else the identity.
fn final_basis(net: &dyn Network, stats: &NodeStatistics, k: usize, config: &LibConfig) -> Result<NodeBasis> {
    if config.rotate_final_node_layer {
        return pca_basis(net, stats, k, config);
    }
    let orig = net.node_layers()[k].width;
    node_basis(net, k, None, Matrix::identity(orig), Matrix::identity(orig))
}

fn with_frame(mut b: NodeBasis, f: Frame, mean: Vec<f64>) -> NodeBasis {
    b.has_constant_direction = f.has_constant;
    b.w = Some((f.w, f.w_pinv));
    b.gram_eigenvalues = f.gram_eigenvalues;
    b.gram_kept = f.kept;
    b.mean = mean;
    b
}

fn pca_basis(net: &dyn Network, stats: &NodeStatistics, k: usize, config: &LibConfig) -> Result<NodeBasis> {
    let moments = activation_moments(net, stats, k)?;
    let mean = moments.mean.clone();
    let f = moments_frame(net, moments, k, config)?;
    let b = node_basis(net, k, Some(BasisFormula::Svd), f.w.clone(), f.w_pinv.clone())?;
    Ok(with_frame(b, f, mean))
}

fn neuron_basis(net: &dyn Network, stats: &NodeStatistics, k: usize, config: &LibConfig) -> Result<NodeBasis> {
    // C = I; the (uncentred) Gram spectrum is still reported.
    let moments = activation_moments(net, stats, k)?;
    let eigenvalues = gram_spectrum(&moments, false)?;
    let orig = moments.mean.len();
    let mut b = node_basis(net, k, Some(BasisFormula::Neuron), Matrix::identity(orig), Matrix::identity(orig))?;
    b.gram_kept = eigenvalues.iter().copied().filter(|&v| v > config.truncation_threshold).collect();
    b.gram_eigenvalues = eigenvalues;
    b.mean = moments.mean;
    Ok(b)
}

/// `M'` (and `Λ'` for `(1-alpha)^2`) through the section's vector–Jacobian products: one pass
/// over the data.
fn generic_m_dash(
    net: &dyn Network,
    sampler: &dyn ActivationSampler,
    k: usize,
    section: &dyn Section,
    c_next: &Matrix,
    config: &LibConfig,
    formula: BasisFormula,
) -> Result<(Matrix, Option<Matrix>)> {
    check_sampler(net, sampler)?;
    let sources = config.jacobian_path.sources().filter(|_| formula == BasisFormula::Jacobian);
    let empty = JacobianGramAccumulator::new(formula, section, c_next.ncols())?.with_sources(sources)?;
    let quadrature: Quadrature = config.quadrature;
    let acc = map_batches(
        sampler,
        config.batch_size,
        || empty.clone(),
        |acc, first, x| {
            let mut acts = ScratchMatrices::take(1);
            net.forward_nodes(x, &[k], &mut acts)?;
            check_node_rows(net, k, &acts[0], first)?;
            acc.update_at(section, acts[0].view(), first, c_next, quadrature)
        },
        |a, b| a.merge(&b),
    )?;
    acc.finish()
}

/// Steps 4–5: `M = R⁺ M' R⁺ᵀ`, its eigenvectors `V` (the constant direction held fixed),
/// Λ, truncation, and `C = R V L`, `C⁺ = L⁻¹ Vᵀ R⁺`.
///
/// `R = W D^{-1/2}` and `R⁺ = D^{1/2} W⁺` are never formed: `D^{∓1/2}` scales the small
/// factors (`V L`, `M`), and `W`, `W⁺` enter each product as they are.
fn interaction_basis(
    net: &dyn Network,
    k: usize,
    f: Frame,
    mean: Vec<f64>,
    m_dash: &JacobianGram,
    lambda_dash: Option<&Matrix>,
    config: &LibConfig,
) -> Result<NodeBasis> {
    let n = f.kept.len();
    let sqrt_d: Vec<f64> = f.kept.iter().map(|v| v.sqrt()).collect();
    // The constant direction and the isolated coordinates are not rotated (rib's `n_masked`).
    let masked = usize::from(f.has_constant) + f.isolated;
    let span = crate::profile::span("bases/whitened_eigen");
    let (masked_diagonal, sub_values, sub_vectors) =
        whitened_eigen(m_dash, &f, &sqrt_d, masked, config.truncation_threshold > 0.0)?;
    drop(span);
    let _span = crate::profile::span("bases/c");
    // Column `j` of V: a masked unit vector, or the eigenvector beside the masked block.
    let v_entry = |i: usize, j: usize| match (i < masked, j < masked) {
        (true, true) => f64::from(u8::from(i == j)),
        (false, false) if j - masked < sub_vectors.ncols() => sub_vectors[(i - masked, j - masked)],
        _ => 0.0,
    };
    let lambda_raw: Vec<f64> = match lambda_dash {
        None => masked_diagonal.into_iter().chain(sub_values).collect(),
        Some(ld) => {
            // Vᵀ R⁺ Λ' R V with R⁺ Λ' R = D^{1/2} (W⁺ Λ' W) D^{-1/2}.
            let inner = f.w_pinv.matmul(ld)?.matmul(&f.w)?;
            let whitened = Matrix::from_fn(n, n, |i, j| inner[(i, j)] * sqrt_d[i] / sqrt_d[j]);
            let v = Matrix::from_fn(n, n, v_entry);
            let t = v.transpose().matmul(&whitened)?.matmul(&v)?;
            (0..n).map(|i| t[(i, i)].abs()).collect()
        }
    };
    // Keep the masked directions first, sort the rest by Λ descending, then drop as many
    // directions from the end as there are Λ below the threshold (rib's rule).
    let mut order: Vec<usize> = (masked..n).collect();
    order.sort_by(|&a, &b| lambda_raw[b].total_cmp(&lambda_raw[a]));
    let order: Vec<usize> = (0..masked).chain(order).collect();
    let n_small = lambda_raw.iter().filter(|&&l| l < config.truncation_threshold).count();
    let kept = &order[..n - n_small];
    if kept.is_empty() {
        return Err(Error::RankZero {
            node: node_name(net, k),
            matrix: "interaction matrix (Λ)",
            threshold: config.truncation_threshold,
        });
    }
    // Only the kept columns of V enter: C = W (D^{-1/2} V L), C⁺ = (L⁻¹ Vᵀ D^{1/2}) W⁺.
    let lambda: Vec<f64> = kept.iter().map(|&i| lambda_raw[i]).collect();
    let right = Matrix::from_fn(n, kept.len(), |i, j| v_entry(i, kept[j]) / sqrt_d[i] * lambda[j].sqrt());
    let left = Matrix::from_fn(kept.len(), n, |j, i| v_entry(i, kept[j]) * sqrt_d[i] / lambda[j].sqrt());
    let c = f.w.matmul(&right)?;
    let c_pinv = left.matmul(&f.w_pinv)?;
    let mut b = node_basis(net, k, Some(config.basis_formula), c, c_pinv)?;
    b.lambda = Some(lambda);
    Ok(with_frame(b, f, mean))
}

/// `M = R⁺ M' R⁺ᵀ`'s diagonal on the first `masked` (unrotated) directions, and the eigenpairs
/// of `M[masked.., masked..]`, |λ| descending, vectors as columns (those of exact zeros may be
/// left out: columns beyond the matrix are zero vectors); `R⁺ = D^{1/2} W⁺` from the
/// frame `f` and `sqrt_d = D^{1/2}`.
///
/// With `M' = Gᵀ Â G` of rank `r` below the width `m` of the block (the closed form of a wide
/// input, `docs/math.md` §3.5), `M[masked.., masked..] = Bᵀ B` with `B = Â^{1/2} G R⁺ᵀ` (`r × m`):
/// its non-zero eigenpairs come from the `r × r` matrix `B Bᵀ` (`v = Bᵀ w / √μ`), and the other
/// `m − r` eigenvalues are 0, so their directions are dropped by any positive threshold
/// (`zeros_drop`; with a zero threshold the dense path keeps them as rounding noise).
fn whitened_eigen(
    m_dash: &JacobianGram,
    f: &Frame,
    sqrt_d: &[f64],
    masked: usize,
    zeros_drop: bool,
) -> Result<(Vec<f64>, Vec<f64>, Matrix)> {
    let n = sqrt_d.len();
    let width = n - masked;
    if let JacobianGram::Factored { g, core } = m_dash
        && zeros_drop
        && g.nrows() < width
    {
        // G R⁺ᵀ = (G W⁺ᵀ) D^{1/2}.
        let mut p = g.times_transposed(&f.w_pinv);
        for t in 0..p.nrows() {
            p.row_mut(t).iter_mut().zip(sqrt_d).for_each(|(v, s)| *v *= s);
        }
        let (a_values, a_vectors) = crate::linalg::symmetric_eigen(core)?;
        // Â is a Gram (PSD): rounding-level negative eigenvalues are zero.
        let half =
            Matrix::from_fn(a_values.len(), a_values.len(), |i, j| a_vectors[(j, i)] * a_values[i].max(0.0).sqrt());
        let b_full = half.matmul(&p)?; // [r, n]
        let masked_diagonal =
            (0..masked).map(|i| (0..b_full.nrows()).map(|t| b_full[(t, i)] * b_full[(t, i)]).sum()).collect();
        let b = Matrix::from_fn(b_full.nrows(), width, |t, j| b_full[(t, j + masked)]);
        let mut bbt = Matrix::zeros(b.nrows(), b.nrows());
        crate::linalg::gemm(bbt.as_mut_slice(), b.view(), false, b.view(), true, 1.0, false);
        let (mu, w) = sorted_abs_eigen(&bbt)?;
        let mut btw = Matrix::zeros(width, w.ncols());
        crate::linalg::gemm(btw.as_mut_slice(), b.view(), true, w.view(), false, 1.0, false);
        // The vectors of the r values from `B Bᵀ` (zero where μ is); the other `width − r`
        // values are exact zeros, whose directions no positive threshold keeps: no columns.
        let mut values = vec![0.0; width];
        let scales: Vec<f64> = mu.iter().map(|&m| if m > 0.0 { 1.0 / m.sqrt() } else { 0.0 }).collect();
        for (v, &m) in values.iter_mut().zip(&mu).filter(|&(_, &m)| m > 0.0) {
            *v = m;
        }
        for row in 0..width {
            btw.row_mut(row).iter_mut().zip(&scales).for_each(|(v, s)| *v *= s);
        }
        return Ok((masked_diagonal, values, btw));
    }
    // R⁺ M' R⁺ᵀ = D^{1/2} (W⁺ M' W⁺ᵀ) D^{1/2}.
    let inner = m_dash.project(&f.w_pinv)?;
    let m = Matrix::from_fn(n, n, |i, j| inner[(i, j)] * sqrt_d[i] * sqrt_d[j]);
    let sub = Matrix::from_fn(width, width, |i, j| m[(i + masked, j + masked)]);
    let (values, vectors) = sorted_abs_eigen(&sub)?;
    Ok(((0..masked).map(|i| m[(i, i)]).collect(), values, vectors))
}
