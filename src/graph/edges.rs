//! Interaction strengths (edges) between the basis directions of adjacent node layers.
//!
//! With `f̂ = f C_in` and `F̂(u) = F(u C_in⁺) C_out` (the input rebuilt from the coordinates, as
//! the reference does), and `J_ij(x, α) = ∂F̂_i/∂u_j (α f̂(x))`:
//!
//! - `squared`:    `E_ij = (1/N) Σ_x (Σ_α w_α J_ij(x, α) f̂_j(x))²`
//! - `functional`: `E_ij = (2/N) Σ_x Σ_α w_α (F̂_i(f̂) − F̂_i(α f̂)) J_ij(x, α) f̂_j(x)`
//!
//! A single `Linear → σ` section has a product form of `J` that needs no per-sample
//! vector–Jacobian products (`docs/math.md` §4); the generic path through the section's VJPs
//! works for any section and is the reference in tests.

use crate::basis::{Basis, JacobianPath, NodeBasis, basis_cotangents, cotangent_group};
use crate::data::{ActivationSampler, map_batches};
use crate::error::{Error, Result};
use crate::estimate::{Quadrature, QuadraturePoint, StochasticSources, check_node_rows, check_sampler};
use crate::matrix::{Matrix, MatrixView};
use crate::nn::{Activation, FoldedLinear, Linearized, Network, ResidualLayer, Section, checked_section};
use crate::scratch::{ScratchMatrices, ScratchMatrix};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// How an interaction strength is measured (rib's `edge_formula`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeFormula {
    /// Mean squared integrated-gradient attribution (rib's current edges; non-negative).
    Squared,
    /// rib's older signed edges, paired with the `(1-alpha)^2` basis.
    Functional,
}

impl EdgeFormula {
    /// Parses `squared` or `functional`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "squared" => Ok(EdgeFormula::Squared),
            "functional" => Ok(EdgeFormula::Functional),
            _ => Err(Error::invalid("edge_formula", name, "expected squared or functional")),
        }
    }

    /// rib's name.
    pub fn name(self) -> &'static str {
        match self {
            EdgeFormula::Squared => "squared",
            EdgeFormula::Functional => "functional",
        }
    }
}

/// The edges from the basis directions of one node layer to those of the next.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Edges {
    /// Input node layer name.
    pub in_node: String,
    /// Output node layer name.
    pub out_node: String,
    /// `E_hat[i, j]`: from input direction `j` to output direction `i`, shape `[dim out, dim in]`.
    pub e_hat: Matrix,
}

impl Edges {
    /// The edges between consecutive bases (node order) from their (merged) sums, one per pair:
    /// how shards computed elsewhere ([`accumulate_edges`]) become edges.
    pub fn from_sums(bases: &[NodeBasis], sums: &[EdgeAccumulator]) -> Result<Vec<Edges>> {
        if sums.len() + 1 != bases.len() {
            return Err(Error::shape(
                "Edges::from_sums: bases (one more than edge sums)",
                &[sums.len() + 1],
                &[bases.len()],
            ));
        }
        sums.iter()
            .zip(bases.windows(2))
            .map(|(sum, pair)| {
                let (rows, cols) = sum.sum.shape();
                if (rows, cols) != (pair[1].dim(), pair[0].dim()) {
                    return Err(Error::shape(
                        "Edges::from_sums: sums [dim out, dim in]",
                        &[pair[1].dim(), pair[0].dim()],
                        &[rows, cols],
                    ));
                }
                Ok(Edges { in_node: pair[0].node.clone(), out_node: pair[1].node.clone(), e_hat: sum.finish()? })
            })
            .collect()
    }
}

/// Mergeable partial sums of one edge matrix over part of a dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EdgeAccumulator {
    sum: Matrix,
    count: u64,
}

impl EdgeAccumulator {
    /// Empty sums for `dim_out × dim_in` edges.
    pub fn new(dim_out: usize, dim_in: usize) -> Self {
        EdgeAccumulator { sum: Matrix::zeros(dim_out, dim_in), count: 0 }
    }

    /// Adds another shard's sums.
    pub fn merge(&mut self, other: &EdgeAccumulator) -> Result<()> {
        if other.sum.shape() != self.sum.shape() {
            let (a, b) = (self.sum.shape(), other.sum.shape());
            return Err(Error::shape("EdgeAccumulator::merge", &[a.0, a.1], &[b.0, b.1]));
        }
        for (s, o) in self.sum.as_mut_slice().iter_mut().zip(other.sum.as_slice()) {
            *s += o;
        }
        self.count += other.count;
        Ok(())
    }

    /// Samples summed so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// `E_hat = sum / N` (with the formula's factor already applied per sample).
    pub fn finish(&self) -> Result<Matrix> {
        if self.count == 0 {
            return Err(Error::Empty { what: "EdgeAccumulator::finish: no samples".into() });
        }
        let n = self.count as f64;
        Ok(Matrix::from_fn(self.sum.nrows(), self.sum.ncols(), |i, j| self.sum[(i, j)] / n))
    }
}

/// Settings of an edge computation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EdgeConfig {
    /// The formula.
    pub formula: EdgeFormula,
    /// Integrated-gradient rule.
    pub quadrature: Quadrature,
    /// Rows processed together.
    pub batch_size: usize,
    /// Product forms for single-layer sections and residual blocks, or vector–Jacobian products
    /// everywhere; [`JacobianPath::Stochastic`] replaces the sum over output positions of the
    /// squared edges' vector–Jacobian path by random sources (its `hidden` count does not apply:
    /// every output direction has its row; functional edges stay exact).
    pub path: JacobianPath,
}

impl EdgeConfig {
    /// Checks the settings; errors name the offending field.
    pub fn validate(&self) -> Result<()> {
        crate::data::check_batch_size(self.batch_size)?;
        if let Some(sources) = self.path.sources() {
            sources.validate()?;
        }
        self.quadrature.validate()
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            formula: EdgeFormula::Squared,
            quadrature: Quadrature::Gradient,
            batch_size: 1024,
            path: JacobianPath::Auto,
        }
    }
}

/// The edges between every pair of consecutive bases (`bases` in node order, as
/// `fit_bases` returns them).
pub fn compute_edges(
    net: &dyn Network,
    sampler: &dyn ActivationSampler,
    bases: &[NodeBasis],
    config: &EdgeConfig,
) -> Result<Vec<Edges>> {
    Edges::from_sums(bases, &accumulate_edges(net, sampler, bases, config)?)
}

/// The edges from `input`'s directions to `output`'s (node layers in this order in `net`).
pub fn compute_edge(
    net: &dyn Network,
    sampler: &dyn ActivationSampler,
    input: &NodeBasis,
    output: &NodeBasis,
    config: &EdgeConfig,
) -> Result<Edges> {
    let acc = accumulate_edge(net, sampler, input, output, config)?;
    Ok(Edges { in_node: input.node.clone(), out_node: output.node.clone(), e_hat: acc.finish()? })
}

/// The mergeable sums behind [`compute_edges`], one per pair of consecutive bases: what a
/// worker of a file-based run writes for its shard of the rows.
///
/// One pass over the rows for all pairs: each work unit runs the network forward once to every
/// input node and updates every pair's sums, in row order (the same sums, bit for bit, as one
/// pass per pair).
pub fn accumulate_edges(
    net: &dyn Network,
    sampler: &dyn ActivationSampler,
    bases: &[NodeBasis],
    config: &EdgeConfig,
) -> Result<Vec<EdgeAccumulator>> {
    config.validate()?;
    check_sampler(net, sampler)?;
    if bases.len() < 2 {
        return Ok(Vec::new());
    }
    let sections = bases
        .windows(2)
        .map(|pair| edge_section(net, &pair[0], &pair[1]))
        .collect::<Result<Vec<(usize, Box<dyn Section + '_>)>>>()?;
    let plans: Vec<EdgePlan<'_>> = sections
        .iter()
        .zip(bases.windows(2))
        .map(|((_, section), pair)| EdgePlan::new(&**section, &pair[0], &pair[1], 0..pair[1].dim(), config))
        .collect();
    let nodes: Vec<usize> = sections.iter().map(|(k, _)| *k).collect();
    accumulate_plans(net, sampler, &nodes, &plans, config)
}

/// The sums of `plans` (plan `i` from input node `nodes[i]`, nodes increasing) in one pass over
/// the rows: each work unit runs the network forward once to every input node and updates every
/// plan's sums; units merge in row order.
fn accumulate_plans(
    net: &dyn Network,
    sampler: &dyn ActivationSampler,
    nodes: &[usize],
    plans: &[EdgePlan<'_>],
    config: &EdgeConfig,
) -> Result<Vec<EdgeAccumulator>> {
    let points = config.quadrature.points();
    map_batches(
        sampler,
        config.batch_size,
        || plans.iter().map(|p| EdgeAccumulator::new(p.c_out.ncols(), p.c_in.ncols())).collect::<Vec<_>>(),
        |accs, first, x| {
            let mut acts = ScratchMatrices::take(nodes.len());
            net.forward_nodes(x, nodes, &mut acts)?;
            for (((&k, plan), acc), f) in nodes.iter().zip(plans).zip(accs.iter_mut()).zip(acts.iter()) {
                check_node_rows(net, k, f, first)?;
                plan.update(acc, f.view(), first, &points)?;
            }
            Ok(())
        },
        |a, b| a.iter_mut().zip(&b).try_for_each(|(a, b)| a.merge(b)),
    )
}

/// The section from `input`'s node layer to `output`'s, checked against the bases' widths,
/// with the input's node index.
fn edge_section<'a>(
    net: &'a dyn Network,
    input: &NodeBasis,
    output: &NodeBasis,
) -> Result<(usize, Box<dyn Section + 'a>)> {
    let (k, l) = (net.node_index(&input.node)?, net.node_index(&output.node)?);
    let section = checked_section(net, k, l)?;
    if section.input().width != input.orig_dim() || section.output().width != output.orig_dim() {
        return Err(Error::shape(
            "compute_edge: bases C [width, dim] vs the node layers' widths (in, out)",
            &[section.input().width, section.output().width],
            &[input.orig_dim(), output.orig_dim()],
        ));
    }
    Ok((k, section))
}

/// The mergeable sums behind [`compute_edge`] over the rows of `sampler`;
/// [`EdgeAccumulator::finish`] turns (merged) sums into `E_hat`.
pub fn accumulate_edge(
    net: &dyn Network,
    sampler: &dyn ActivationSampler,
    input: &NodeBasis,
    output: &NodeBasis,
    config: &EdgeConfig,
) -> Result<EdgeAccumulator> {
    accumulate_edge_outputs(net, sampler, input, output, 0..output.dim(), config)
}

/// Rows `outputs` of [`accumulate_edge`]'s sums: the edges into output directions `outputs`
/// only. Every output direction's edges depend on its column of `C_out` alone, so the rows come
/// out as in the full matrix, at `outputs.len() / dim` of the cost of the Jacobian work (the
/// forward pass is not split): how [`crate::distributed::compute_edges_by_outputs`] splits the
/// edges of wide layers over ranks.
pub fn accumulate_edge_outputs(
    net: &dyn Network,
    sampler: &dyn ActivationSampler,
    input: &NodeBasis,
    output: &NodeBasis,
    outputs: Range<usize>,
    config: &EdgeConfig,
) -> Result<EdgeAccumulator> {
    config.validate()?;
    if outputs.start > outputs.end || outputs.end > output.dim() {
        return Err(Error::invalid(
            "outputs",
            format!("{outputs:?}"),
            format!("need a range within the {} directions of {}", output.dim(), output.node),
        ));
    }
    check_sampler(net, sampler)?;
    let (k, section) = edge_section(net, input, output)?;
    let plan = EdgePlan::new(&*section, input, output, outputs, config);
    let mut sums = accumulate_plans(net, sampler, &[k], std::slice::from_ref(&plan), config)?;
    Ok(sums.pop().expect("one plan, one sum"))
}

/// What a batch update needs, prepared once per edge matrix.
struct EdgePlan<'a> {
    section: &'a dyn Section,
    formula: EdgeFormula,
    c_in: &'a Matrix,
    c_in_pinv: &'a Matrix,
    /// `C_in⁺ᵀ`: maps input gradients to basis coordinates.
    c_in_pinv_t: Matrix,
    /// The columns of `C_out` of the output directions computed.
    c_out: Matrix,
    /// Product form of a single layer: `B = W_f C_in⁺ᵀ` (`[d_out, dim_in]`), and below it the
    /// row `C_in⁺[:, c]` if the layer carries the constant (the constant as one more unit).
    product: Option<(&'a FoldedLinear, Matrix)>,
    /// Product form of a residual block (squared edges): see [`ResidualPlan`].
    residual: Option<ResidualPlan<'a>>,
    /// Position sources of the squared edges' generic path (rib's `n_stochastic_sources_edges`).
    sources: Option<StochasticSources>,
}

/// A residual block `f ↦ f + σ(f W_fᵀ) R`: `J_ij = K T[i, j] + Σ_o RC[o, i] s_o(x) B[o, j]` with
/// `B = W_f C_in⁺ᵀ` (`[units, dim_in]`), `RC = R C_out` (`[units, dim_out]`), the skip
/// `T = C_outᵀ C_in⁺ᵀ` (`[dim_out, dim_in]`) and `K = Σ_α w_α`.
struct ResidualPlan<'a> {
    block: ResidualLayer<'a>,
    b: Matrix,
    rc_t: Matrix,
    t: Matrix,
}

impl<'a> EdgePlan<'a> {
    fn new(
        section: &'a dyn Section,
        input: &'a NodeBasis,
        output: &NodeBasis,
        outputs: Range<usize>,
        config: &EdgeConfig,
    ) -> Self {
        let product = section.structure().filter(|_| config.path.closed_forms()).map(|layer| {
            let c_pinv = input.c_pinv();
            let b = layer.folded_weight().matmul(&c_pinv.transpose()).expect("shapes checked");
            if !layer.carries_constant() {
                return (layer, b);
            }
            let (rows, c) = (b.nrows() + 1, c_pinv.ncols() - 1);
            let mut data = b.into_vec();
            data.extend((0..c_pinv.nrows()).map(|j| c_pinv[(j, c)]));
            (layer, Matrix::from_vec(rows, c_pinv.nrows(), data).expect("one row more"))
        });
        EdgePlan {
            section,
            formula: config.formula,
            c_in: input.c(),
            c_in_pinv: input.c_pinv(),
            c_in_pinv_t: input.c_pinv().transpose(),
            c_out: output.c().select_columns(&outputs.collect::<Vec<_>>()),
            residual: None,
            sources: config
                .path
                .sources()
                .filter(|s| s.positions.is_some())
                .map(|s| StochasticSources { hidden: None, ..s }),
            product,
        }
        .with_residual(section, input, config)
    }

    /// Adds the residual block's product form when the section is one (squared edges only).
    fn with_residual(mut self, section: &'a dyn Section, input: &'a NodeBasis, config: &EdgeConfig) -> Self {
        if self.product.is_some() || !config.path.closed_forms() || config.formula != EdgeFormula::Squared {
            return self;
        }
        self.residual = section.residual().and_then(|block| {
            let c_pinv_t = input.c_pinv().transpose();
            let b = block.hidden.folded_weight().matmul(&c_pinv_t).ok()?;
            let rc_t = block.readout.matmul(&self.c_out).ok()?.transpose();
            let t = self.c_out.transpose().matmul(&c_pinv_t).ok()?;
            Some(ResidualPlan { block, b, rc_t, t })
        });
        self
    }

    fn update(
        &self,
        acc: &mut EdgeAccumulator,
        f: MatrixView<'_>,
        first_sample: usize,
        points: &[QuadraturePoint],
    ) -> Result<()> {
        let f_hat = f.matmul(self.c_in.view())?;
        let rebuilt = f_hat.matmul(self.c_in_pinv)?;
        match (&self.product, self.formula) {
            (Some((layer, b)), EdgeFormula::Squared) => self.squared_product(acc, layer, b, &f_hat, &rebuilt, points),
            (Some((layer, b)), EdgeFormula::Functional) => {
                self.functional_product(acc, layer, b, &f_hat, &rebuilt, points)?
            }
            (None, EdgeFormula::Squared) => match &self.residual {
                Some(plan) => self.squared_residual(acc, plan, &f_hat, &rebuilt, points),
                None => self.squared_generic(acc, &f_hat, &rebuilt, first_sample, points)?,
            },
            (None, EdgeFormula::Functional) => self.functional_generic(acc, &f_hat, &rebuilt, points)?,
        }
        acc.count += f.nrows() as u64;
        Ok(())
    }

    /// `Σ_α w_α (∂F̂/∂u)(α û)` for a group of cotangents `(t, i)` (output position, output
    /// direction), each weighted per sample and α by `weight(α index, block, row)` when given:
    /// `[group · rows_in, dim_in]`, block by block as the cotangents.
    ///
    /// With `sources` (position sources, `first_sample` the batch's first dataset row), block
    /// `(r, i)` holds `Σ_t φ_r(x, t) e_t ⊗ C_out[:, i]` instead.
    #[allow(clippy::too_many_arguments)]
    fn coordinate_gradients(
        &self,
        lins: &[Box<dyn Linearized + '_>],
        points: &[QuadraturePoint],
        (n, p_out): (usize, usize),
        pairs: Range<usize>,
        weight: Option<&dyn Fn(usize, usize, usize) -> f64>,
        sources: Option<(StochasticSources, usize)>,
    ) -> Result<Matrix> {
        let mut cot = ScratchMatrix::take();
        match sources {
            Some((s, first)) => s.cotangents(&self.c_out, p_out, n, first, pairs.clone(), &mut cot),
            None => basis_cotangents(&self.c_out, p_out, n, pairs.clone(), &mut cot),
        }
        let rows_out = n * p_out;
        let mut sum = Matrix::default();
        for (q, (p, lin)) in points.iter().zip(lins).enumerate() {
            if let Some(w) = weight {
                for b in 0..pairs.len() {
                    for r in 0..rows_out {
                        let factor = w(q, pairs.start + b, r);
                        cot.row_mut(b * rows_out + r).iter_mut().for_each(|v| *v *= factor);
                    }
                }
            }
            let mut coords = Matrix::default();
            lin.vjp_mapped(cot.view(), &self.c_in_pinv_t, &mut coords)?;
            if sum.nrows() == 0 {
                sum = if p.weight == 1.0 { coords } else { coords.scaled_by(p.weight) };
            } else {
                sum.add_scaled(p.weight, &coords);
            }
            if weight.is_some() {
                basis_cotangents(&self.c_out, p_out, n, pairs.clone(), &mut cot);
            }
        }
        Ok(sum)
    }

    /// The linearisations at `α · rebuilt` for every quadrature point.
    fn linearize_all<'b>(
        &'b self,
        rebuilt: &Matrix,
        points: &[QuadraturePoint],
    ) -> Result<Vec<Box<dyn Linearized + 'b>>> {
        points.iter().map(|p| self.section.linearize(rebuilt.view().scaled(p.alpha).view())).collect()
    }

    /// `J_hat[x, t, i, j] = Σ_s a[(t,i), x, s, j] f̂[x, s, j]` per sample and output position,
    /// then `g(J_hat)` summed into row `i` of the sums.
    fn add_position_sums(
        &self,
        acc: &mut EdgeAccumulator,
        a: &Matrix,
        f_hat: &Matrix,
        (n, p_in): (usize, usize),
        pairs: Range<usize>,
        g: impl Fn(f64) -> f64,
    ) {
        let dims = self.c_out.ncols();
        let rows_in = n * p_in;
        let mut j_hat = vec![0.0; f_hat.ncols()];
        for (b, pair) in pairs.enumerate() {
            // Output positions are summed outside the square: only the direction picks the row.
            let i = pair % dims;
            for x in 0..n {
                j_hat.fill(0.0);
                for s in 0..p_in {
                    let (row, f) = (a.row(b * rows_in + x * p_in + s), f_hat.row(x * p_in + s));
                    for ((h, &v), &fv) in j_hat.iter_mut().zip(row).zip(f) {
                        *h += v * fv;
                    }
                }
                for (e, &h) in acc.sum.row_mut(i).iter_mut().zip(&j_hat) {
                    *e += g(h);
                }
            }
        }
    }

    fn squared_generic(
        &self,
        acc: &mut EdgeAccumulator,
        f_hat: &Matrix,
        rebuilt: &Matrix,
        first_sample: usize,
        points: &[QuadraturePoint],
    ) -> Result<()> {
        let (p_in, p_out) = (self.section.input().positions.max(1), self.section.output().positions.max(1));
        let n = f_hat.nrows() / p_in;
        let lins = self.linearize_all(rebuilt, points)?;
        // Position sources replace the sum over output positions outside the square.
        let sources = self.sources.map(|s| (s, first_sample));
        let n_pairs = self.sources.map_or(p_out, |s| s.positions.unwrap_or(p_out)) * self.c_out.ncols();
        let group = cotangent_group(n * p_in, self.section.input().width, n * p_out, self.c_out.nrows());
        for start in (0..n_pairs).step_by(group) {
            let pairs = start..(start + group).min(n_pairs);
            let a = self.coordinate_gradients(&lins, points, (n, p_out), pairs.clone(), None, sources)?;
            self.add_position_sums(acc, &a, f_hat, (n, p_in), pairs, |v| v * v);
        }
        Ok(())
    }

    fn functional_generic(
        &self,
        acc: &mut EdgeAccumulator,
        f_hat: &Matrix,
        rebuilt: &Matrix,
        points: &[QuadraturePoint],
    ) -> Result<()> {
        let (p_in, p_out) = (self.section.input().positions.max(1), self.section.output().positions.max(1));
        let n = f_hat.nrows() / p_in;
        let mut y = Matrix::default();
        self.section.forward(rebuilt.view(), &mut y)?;
        let full = y.matmul(&self.c_out)?;
        let lins = self.linearize_all(rebuilt, points)?;
        // ΔF̂_{t,i}(x, α) = F̂_i(f̂) − F̂_i(α f̂) at output row (x, t), per quadrature point.
        let diffs: Vec<Matrix> = lins
            .iter()
            .map(|lin| {
                let at = lin.output().matmul(self.c_out.view())?;
                Ok(Matrix::from_fn(at.nrows(), at.ncols(), |r, i| full[(r, i)] - at[(r, i)]))
            })
            .collect::<Result<_>>()?;
        let dims = self.c_out.ncols();
        let weight = |q: usize, pair: usize, r: usize| {
            let (t, i) = (pair / dims, pair % dims);
            if r % p_out == t { 2.0 * diffs[q][(r, i)] } else { 0.0 }
        };
        let n_pairs = p_out * dims;
        let group = cotangent_group(n * p_in, self.section.input().width, n * p_out, self.c_out.nrows());
        for start in (0..n_pairs).step_by(group) {
            let pairs = start..(start + group).min(n_pairs);
            let a = self.coordinate_gradients(&lins, points, (n, p_out), pairs.clone(), Some(&weight), None)?;
            self.add_position_sums(acc, &a, f_hat, (n, p_in), pairs, |v| v);
        }
        Ok(())
    }

    /// For a single layer `[σ(p), κ(c)]` at `α·rebuilt`:
    /// `J_ij = Σ_o C_h[o,i] σ'(αp_o) B[o,j] + C_c[i] κ'(αc) C⁺[j,c]`, `B = W_f C⁺ᵀ`.
    fn squared_product(
        &self,
        acc: &mut EdgeAccumulator,
        layer: &FoldedLinear,
        b: &Matrix,
        f_hat: &Matrix,
        rebuilt: &Matrix,
        points: &[QuadraturePoint],
    ) {
        let (n, d_out) = (rebuilt.nrows(), layer.folded_weight().nrows());
        let act = layer.activation();
        if act == Activation::Identity {
            // A linear layer: J is the same for every sample, `E_ij = J_ij² · Σ_x f̂_j(x)² / N`.
            return self.squared_linear(acc, layer, b, f_hat, points);
        }
        let p = rebuilt.matmul(&layer.folded_weight().transpose()).expect("shapes checked");
        let s = Matrix::from_fn(n, d_out, |x, o| {
            points.iter().map(|q| q.weight * act.derivative(q.alpha * p[(x, o)])).sum()
        });
        let constant = self.constant_terms(layer, rebuilt, points);
        let (c_t, dim_out, dim_in) = (self.c_out.transpose(), self.c_out.ncols(), b.ncols());
        // The constant carrier's term `C_c[i] K(x) C⁺[j, c]` is one more hidden unit: column
        // `d_out` of L holds `K(x) C_c[i]`, row `d_out` of B holds `C⁺[:, c]`.
        let width = b.nrows();
        // One GEMM for all output directions of a chunk of rows: row (x, i) of L is
        // `s(x) ⊙ C_h[:, i]`. Chunks keep L and the product in cache (~512 KiB each).
        let chunk = (EDGE_CHUNK_VALUES / (dim_out * dim_in.max(width)).max(1)).clamp(1, n.max(1));
        let (mut l, mut a) = (ScratchMatrix::take(), ScratchMatrix::take());
        for first in (0..n).step_by(chunk) {
            let rows = first..(first + chunk).min(n);
            l.resize(rows.len() * dim_out, width);
            for (r, x) in rows.clone().enumerate() {
                for i in 0..dim_out {
                    let row = l.row_mut(r * dim_out + i);
                    for ((v, &sv), &c) in row.iter_mut().zip(s.row(x)).zip(&c_t.row(i)[..d_out]) {
                        *v = sv * c;
                    }
                    if let Some(k) = &constant {
                        row[d_out] = k[x] * c_t[(i, d_out)];
                    }
                }
            }
            a.resize(rows.len() * dim_out, dim_in);
            crate::linalg::gemm(a.as_mut_slice(), l.view(), false, b.view(), false, 1.0, false);
            for (r, x) in rows.enumerate() {
                let f = f_hat.row(x);
                for i in 0..dim_out {
                    for ((e, &v), &fj) in acc.sum.row_mut(i).iter_mut().zip(a.row(r * dim_out + i)).zip(f) {
                        *e += (v * fj) * (v * fj);
                    }
                }
            }
        }
    }

    /// Squared edges of a layer without activation: `Σ_α w_α J = K_σ C_hᵀ B + K_κ C_cᵀ C_in⁺[:, c]`
    /// with `K_σ = Σ_α w_α` (σ' = 1) and the carrier's `K_κ = Σ_α w_α κ'(α c) = K_σ` (κ(c) = c),
    /// the same for every sample.
    fn squared_linear(
        &self,
        acc: &mut EdgeAccumulator,
        layer: &FoldedLinear,
        b: &Matrix,
        f_hat: &Matrix,
        points: &[QuadraturePoint],
    ) {
        let k: f64 = points.iter().map(|q| q.weight).sum();
        // C_out's rows are the units and, when carried, the constant: B's rows in that order.
        debug_assert_eq!(self.c_out.nrows(), b.nrows());
        debug_assert!(layer.activation() == Activation::Identity);
        let j = self.c_out.transpose().matmul(b).expect("shapes checked");
        let dim_in = b.ncols();
        let mut sq = vec![0.0; dim_in];
        for x in 0..f_hat.nrows() {
            for (s, &v) in sq.iter_mut().zip(f_hat.row(x)) {
                *s += v * v;
            }
        }
        for i in 0..j.nrows() {
            for ((e, &v), &s) in acc.sum.row_mut(i).iter_mut().zip(j.row(i)).zip(&sq) {
                *e += (k * v) * (k * v) * s;
            }
        }
    }

    /// The squared edges of a residual block in product form: per chunk of rows one GEMM
    /// `L B` with rows `(x, i)` of `L` equal to `s(x) ⊙ RC[:, i]`, plus the skip `K T[i, :]`.
    fn squared_residual(
        &self,
        acc: &mut EdgeAccumulator,
        plan: &ResidualPlan<'_>,
        f_hat: &Matrix,
        rebuilt: &Matrix,
        points: &[QuadraturePoint],
    ) {
        let w = plan.block.hidden.folded_weight();
        let (n, units) = (rebuilt.nrows(), w.nrows());
        let p = rebuilt.matmul(&w.transpose()).expect("shapes checked");
        let act = plan.block.hidden.activation();
        let s = Matrix::from_fn(n, units, |x, o| {
            points.iter().map(|q| q.weight * act.derivative(q.alpha * p[(x, o)])).sum()
        });
        let k: f64 = points.iter().map(|q| q.weight).sum();
        let (dim_out, dim_in) = (plan.rc_t.nrows(), plan.b.ncols());
        // One sample at a time over the units with a non-zero derivative only (about half of
        // them for ReLU): `A_x = (s_x ⊙ RC)[active]ᵀ B[active]`.
        let (mut l, mut b, mut a) = (ScratchMatrix::take(), ScratchMatrix::take(), ScratchMatrix::take());
        let mut active = Vec::with_capacity(units);
        for x in 0..n {
            active.clear();
            active.extend((0..units).filter(|&o| s[(x, o)] != 0.0));
            l.resize(dim_out, active.len());
            for i in 0..dim_out {
                let (dst, rc) = (l.row_mut(i), plan.rc_t.row(i));
                for (v, &o) in dst.iter_mut().zip(&active) {
                    *v = s[(x, o)] * rc[o];
                }
            }
            b.resize(active.len(), dim_in);
            for (r, &o) in active.iter().enumerate() {
                b.row_mut(r).copy_from_slice(plan.b.row(o));
            }
            a.resize(dim_out, dim_in);
            if active.is_empty() {
                a.fill(0.0);
            } else {
                crate::linalg::gemm(a.as_mut_slice(), l.view(), false, b.view(), false, 1.0, false);
            }
            let f = f_hat.row(x);
            for i in 0..dim_out {
                let (row, skip) = (a.row(i), plan.t.row(i));
                for (((e, &v), &t), &fj) in acc.sum.row_mut(i).iter_mut().zip(row).zip(skip).zip(f) {
                    let j = (v + k * t) * fj;
                    *e += j * j;
                }
            }
        }
    }

    fn functional_product(
        &self,
        acc: &mut EdgeAccumulator,
        layer: &FoldedLinear,
        b: &Matrix,
        f_hat: &Matrix,
        rebuilt: &Matrix,
        points: &[QuadraturePoint],
    ) -> Result<()> {
        let (n, d_out) = (rebuilt.nrows(), layer.folded_weight().nrows());
        let p = rebuilt.matmul(&layer.folded_weight().transpose())?;
        let act = layer.activation();
        let mut y = Matrix::default();
        self.section.forward(rebuilt.view(), &mut y)?;
        let full = y.matmul(&self.c_out)?;
        let mut diffs = Vec::with_capacity(points.len());
        for q in points {
            self.section.forward(rebuilt.view().scaled(q.alpha).view(), &mut y)?;
            let at = y.matmul(&self.c_out)?;
            diffs.push(Matrix::from_fn(n, at.ncols(), |x, i| full[(x, i)] - at[(x, i)]));
        }
        let derivs: Vec<Matrix> =
            points.iter().map(|q| Matrix::from_fn(n, d_out, |x, o| act.derivative(q.alpha * p[(x, o)]))).collect();
        let carrier = layer.carries_constant().then(|| {
            let c = rebuilt.ncols() - 1;
            let kappa: Vec<Vec<f64>> = points
                .iter()
                .map(|q| (0..n).map(|x| layer.constant_carrier(q.alpha * rebuilt[(x, c)]).1).collect())
                .collect();
            (b.row(d_out), kappa)
        });
        let mut weighted = Matrix::zeros(n, d_out);
        for i in 0..self.c_out.ncols() {
            // Q_i[x, o] = Σ_α w_α ΔF̂_i(x, α) σ'(α p_o(x)) C_h[o, i]
            weighted.fill(0.0);
            for ((q, diff), deriv) in points.iter().zip(&diffs).zip(&derivs) {
                for x in 0..n {
                    let factor = 2.0 * q.weight * diff[(x, i)];
                    for (o, v) in weighted.row_mut(x).iter_mut().enumerate() {
                        *v += factor * deriv[(x, o)] * self.c_out[(o, i)];
                    }
                }
            }
            let mut a = weighted.view().matmul(b.rows(0..d_out))?;
            if let Some((c_col, kappa)) = &carrier {
                let c_i = self.c_out[(d_out, i)];
                for x in 0..n {
                    let k: f64 = points
                        .iter()
                        .zip(&diffs)
                        .zip(kappa)
                        .map(|((q, diff), kp)| 2.0 * q.weight * diff[(x, i)] * kp[x])
                        .sum();
                    for (v, &cj) in a.row_mut(x).iter_mut().zip(c_col.iter()) {
                        *v += c_i * k * cj;
                    }
                }
            }
            add_column_sums(acc.sum.row_mut(i), &a, f_hat, |v| v);
        }
        Ok(())
    }

    /// Per-row `K(x) = Σ_α w_α κ'(α c_x)`, if the layer carries the constant.
    fn constant_terms(&self, layer: &FoldedLinear, rebuilt: &Matrix, points: &[QuadraturePoint]) -> Option<Vec<f64>> {
        let c = rebuilt.ncols() - 1;
        layer.carries_constant().then(|| {
            (0..rebuilt.nrows())
                .map(|x| points.iter().map(|q| q.weight * layer.constant_carrier(q.alpha * rebuilt[(x, c)]).1).sum())
                .collect()
        })
    }
}

/// Values of the per-chunk products of the squared product form (L and `L B`), sized for cache.
const EDGE_CHUNK_VALUES: usize = 1 << 16;

/// `row[j] += Σ_x g(a[x, j] · f̂[x, j])`.
fn add_column_sums(row: &mut [f64], a: &Matrix, f_hat: &Matrix, g: impl Fn(f64) -> f64) {
    for x in 0..a.nrows() {
        for ((r, &v), &f) in row.iter_mut().zip(a.row(x)).zip(f_hat.row(x)) {
            *r += g(v * f);
        }
    }
}
