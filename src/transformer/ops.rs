//! The modules as maps on batches of folded tuples (rows = samples × positions, the tuple's
//! tensors side by side): forward, linearisation with batched vector–Jacobian products, and the
//! gradients of the folded weights (for training and the LLC).

use super::attention::{AttentionCore, AttentionOp};
use super::folded::{Folded, FoldedGrads};
use super::layout::{Kind, Stage};
use crate::error::{Error, Result};
use crate::linalg::gemm;
use crate::matrix::{Matrix, MatrixView};
use crate::nn::{Activation, FoldedLinear, Linearized, NodeShape, ResidualLayer, Section};
use crate::scratch::ScratchMatrix;

/// Everything an op needs from its model.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub folded: &'a Folded,
    pub core: &'a AttentionCore,
    pub act: Activation,
    pub eps: f64,
}

/// A module (or a fused run of modules) of a transformer.
pub(crate) trait Op: Send + Sync {
    fn input(&self) -> NodeShape;
    fn output(&self) -> NodeShape;
    fn forward(&self, x: MatrixView<'_>, y: &mut Matrix) -> Result<()>;
    fn linearize_op<'s>(&'s self, x: MatrixView<'_>) -> Result<Box<dyn OpLinearized + 's>>;
    /// The map as one affine + elementwise layer, when it is one.
    fn structure(&self) -> Option<&FoldedLinear> {
        None
    }
    /// The map as a residual block around one such layer, when it is one.
    fn residual(&self) -> Option<ResidualLayer<'_>> {
        None
    }
}

/// An op at a batch: its output, VJPs of stacked cotangent blocks, and weight gradients of one
/// cotangent block.
pub(crate) trait OpLinearized {
    fn output(&self) -> MatrixView<'_>;
    fn vjp(&self, cotangents: MatrixView<'_>, grad_x: &mut Matrix) -> Result<()>;
    /// `out ← vjp(cotangents) · map` (see [`Linearized::vjp_mapped`]).
    fn vjp_mapped(&self, cotangents: MatrixView<'_>, map: &Matrix, out: &mut Matrix) -> Result<()> {
        default_vjp_mapped(self, cotangents, map, out)
    }
    /// `grads += ∂(Σ cotangent · output)/∂(folded weights)`; the default: no weights.
    fn param_grads(&self, _cotangent: MatrixView<'_>, _grads: &mut FoldedGrads) -> Result<()> {
        Ok(())
    }
}

/// The VJP, then one product with `map`.
pub(crate) fn default_vjp_mapped(
    lin: &(impl OpLinearized + ?Sized),
    cotangents: MatrixView<'_>,
    map: &Matrix,
    out: &mut Matrix,
) -> Result<()> {
    let mut grad = ScratchMatrix::take();
    lin.vjp(cotangents, &mut grad)?;
    if grad.ncols() != map.nrows() {
        return Err(Error::shape("vjp_mapped map [input width, m]", &[grad.ncols()], &[map.nrows()]));
    }
    times(grad.view(), map, out);
    Ok(())
}

/// An [`Op`] as a [`Section`].
pub(crate) struct OpSection<'a>(pub Box<dyn Op + 'a>);

impl Section for OpSection<'_> {
    fn input(&self) -> NodeShape {
        self.0.input()
    }
    fn output(&self) -> NodeShape {
        self.0.output()
    }
    fn forward(&self, x: MatrixView<'_>, y: &mut Matrix) -> Result<()> {
        check_rows("transformer section", self.0.input(), x)?;
        self.0.forward(x, y)
    }
    fn linearize<'s>(&'s self, x: MatrixView<'_>) -> Result<Box<dyn Linearized + 's>> {
        check_rows("transformer section", self.0.input(), x)?;
        Ok(Box::new(AsLinearized(self.0.linearize_op(x)?)))
    }
    fn structure(&self) -> Option<&FoldedLinear> {
        self.0.structure()
    }
    fn residual(&self) -> Option<ResidualLayer<'_>> {
        self.0.residual()
    }
}

struct AsLinearized<'a>(Box<dyn OpLinearized + 'a>);

impl Linearized for AsLinearized<'_> {
    fn output(&self) -> MatrixView<'_> {
        self.0.output()
    }
    fn vjp(&self, cotangents: MatrixView<'_>, grad_x: &mut Matrix) -> Result<()> {
        self.0.vjp(cotangents, grad_x)
    }
    fn vjp_mapped(&self, cotangents: MatrixView<'_>, map: &Matrix, out: &mut Matrix) -> Result<()> {
        self.0.vjp_mapped(cotangents, map, out)
    }
}

/// Errors unless `x` is whole samples of `shape`; returns the number of samples.
pub(crate) fn check_rows(op: &'static str, shape: NodeShape, x: MatrixView<'_>) -> Result<usize> {
    if x.ncols() != shape.width || x.nrows() % shape.positions.max(1) != 0 {
        return Err(Error::shape(op, &[shape.positions, shape.width], &[x.nrows(), x.ncols()]));
    }
    Ok(x.nrows() / shape.positions.max(1))
}

/// The number of cotangent blocks for an output of `rows × width`.
pub(crate) fn blocks_of(op: &'static str, cotangents: MatrixView<'_>, rows: usize, width: usize) -> Result<usize> {
    if cotangents.ncols() != width || rows == 0 || cotangents.nrows() == 0 || cotangents.nrows() % rows != 0 {
        return Err(Error::shape(op, &[rows, width], &[cotangents.nrows(), cotangents.ncols()]));
    }
    Ok(cotangents.nrows() / rows)
}

/// Builds the op of a run of stages: one module, or a fused attention / MLP block.
pub(crate) fn build_op<'a>(ctx: Ctx<'a>, stages: &[Stage], output: NodeShape) -> Box<dyn Op + 'a> {
    let first = &stages[0];
    let input = NodeShape { positions: first.positions, width: first.width() };
    let split = first.kind == Kind::Split && stages.len() > 1;
    let block = if split { stages[1].kind } else { first.kind };
    match block {
        Kind::AttnIn(_) | Kind::AttnOut(_) => Box::new(AttentionOp::new(ctx, stages, input, output)),
        Kind::MlpIn(l) if stages.len() > 1 => {
            let add = matches!(stages.last().map(|s| s.kind), Some(Kind::AddResid { .. }));
            Box::new(MlpBlock { ctx, layer: l, add, split, input, output })
        }
        kind => Box::new(Module { ctx, kind, segments: first.segments.clone(), input, output }),
    }
}

/// How many stages from `stages[0]` one op takes: an attention block (`attn_in`, `attn_out` and
/// a following `add_resid1`) and an MLP block (`mlp_in` … `mlp_out`, and `add_resid2`) are fused
/// when all of their modules are in the run.
///
/// Without normalisation the `IdentitySplit` before a whole block joins it: the block then reads
/// the residual stream once, as its input and as its residual.
pub(crate) fn fused_len(stages: &[Stage]) -> usize {
    let kinds: Vec<Kind> = stages.iter().take(5).map(|s| s.kind).collect();
    let block = |kinds: &[Kind]| match kinds {
        [Kind::AttnIn(_), Kind::AttnOut(_), Kind::AddResid { .. }, ..] => 3,
        [Kind::AttnIn(_), Kind::AttnOut(_), ..] => 2,
        [Kind::MlpIn(_), Kind::MlpAct, Kind::MlpOut(_), Kind::AddResid { .. }, ..] => 4,
        [Kind::MlpIn(_), Kind::MlpAct, Kind::MlpOut(_), ..] => 3,
        _ => 0,
    };
    match kinds.as_slice() {
        [Kind::Split, rest @ ..] if block(rest) > 0 => 1 + block(rest),
        _ => block(&kinds).max(1),
    }
}

/// One module that is not fused.
struct Module<'a> {
    ctx: Ctx<'a>,
    kind: Kind,
    segments: Vec<usize>,
    input: NodeShape,
    output: NodeShape,
}

/// `dst[r, at..at + w] ← src[r, from..from + w]` for every row.
fn copy_cols(dst: &mut Matrix, at: usize, src: MatrixView<'_>, from: usize, w: usize) {
    for r in 0..src.nrows() {
        dst.row_mut(r)[at..at + w].copy_from_slice(&src.row(r)[from..from + w]);
    }
}

/// `dst[r, at..at + w] += src[r, from..from + w]` for every row.
fn add_cols(dst: &mut Matrix, at: usize, src: MatrixView<'_>, from: usize, w: usize) {
    for r in 0..src.nrows() {
        for (a, b) in dst.row_mut(r)[at..at + w].iter_mut().zip(&src.row(r)[from..from + w]) {
            *a += b;
        }
    }
}

/// Columns `from..from + w` of every row, as a matrix.
pub(crate) fn columns(src: MatrixView<'_>, from: usize, w: usize) -> Matrix {
    let mut m = Matrix::zeros(src.nrows(), w);
    copy_cols(&mut m, 0, src, from, w);
    m
}

/// `y ← x · W` (`W` row-major `[in, out]`).
pub(crate) fn times(x: MatrixView<'_>, w: &Matrix, y: &mut Matrix) {
    y.resize(x.nrows(), w.ncols());
    gemm(y.as_mut_slice(), x, false, w.view(), false, 1.0, false);
}

/// `y ← x · Wᵀ` (`W` row-major `[out, in]`... here `[in, out]` of the forward map: the VJP).
pub(crate) fn times_t(x: MatrixView<'_>, w: &Matrix, y: &mut Matrix) {
    y.resize(x.nrows(), w.nrows());
    gemm(y.as_mut_slice(), x, false, w.view(), true, 1.0, false);
}

/// `g += xᵀ · c` (weight gradient of `y = x · W`).
pub(crate) fn add_xt_c(g: &mut Matrix, x: MatrixView<'_>, c: MatrixView<'_>) {
    gemm(g.as_mut_slice(), x, true, c, false, 1.0, true);
}

/// Rows of sample `x` at the positions in `keep` out of `p` positions.
fn last_rows(x: MatrixView<'_>, p: usize) -> Matrix {
    let n = x.nrows() / p;
    Matrix::from_fn(n, x.ncols(), |i, j| x[(i * p + p - 1, j)])
}

/// `var(r)` over the first `d` coordinates (the constant left out), population variance.
fn variance(r: &[f64]) -> f64 {
    let d = r.len() as f64;
    let mean = r.iter().sum::<f64>() / d;
    r.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d
}

impl Op for Module<'_> {
    fn input(&self) -> NodeShape {
        self.input
    }

    fn output(&self) -> NodeShape {
        self.output
    }

    fn forward(&self, x: MatrixView<'_>, y: &mut Matrix) -> Result<()> {
        let lin = self.linearize_op(x)?;
        let out = lin.output();
        y.resize(out.nrows(), out.ncols());
        y.as_mut_slice().copy_from_slice(out.as_slice());
        Ok(())
    }

    fn linearize_op<'s>(&'s self, x: MatrixView<'_>) -> Result<Box<dyn OpLinearized + 's>> {
        let rows = x.nrows();
        let d = *self.segments.last().expect("a module reads at least one tensor");
        let f = self.ctx.folded;
        let mut y = Matrix::default();
        let keep_x = matches!(self.kind, Kind::LnIn { .. } | Kind::LnOut { .. } | Kind::MlpIn(_) | Kind::MlpOut(_))
            || matches!(self.kind, Kind::Unembed { .. } | Kind::MlpAct);
        match self.kind {
            Kind::AddEmbed => {
                y.resize(rows, d);
                copy_cols(&mut y, 0, x, 0, d);
                add_cols(&mut y, 0, x, d, d);
            }
            Kind::Identity => y = x.to_owned(),
            Kind::Split => {
                y.resize(rows, 2 * d);
                copy_cols(&mut y, 0, x, 0, d);
                copy_cols(&mut y, d, x, 0, d);
            }
            Kind::LnIn { dual } => {
                // (r) ↦ (var, r); dual: (attn_resid, r) ↦ (var(r), r, attn_resid).
                let (r_at, w) = if dual { (d, 1 + 2 * d) } else { (0, 1 + d) };
                y.resize(rows, w);
                for i in 0..rows {
                    let r = &x.row(i)[r_at..r_at + d];
                    let out = y.row_mut(i);
                    out[0] = variance(&r[..d - 1]);
                    out[1..1 + d].copy_from_slice(r);
                    if dual {
                        out[1 + d..].copy_from_slice(&x.row(i)[..d]);
                    }
                }
            }
            Kind::LnOut { dual, keep_residual } => {
                // (var, r[, a]) ↦ (LN(r), r) | LN(r) | (LN(r), a).
                let w = if dual || keep_residual { 2 * d } else { d };
                y.resize(rows, w);
                for i in 0..rows {
                    let row = x.row(i);
                    let (var, r) = (row[0].max(0.0), &row[1..1 + d]);
                    let mean = r[..d - 1].iter().sum::<f64>() / (d - 1) as f64;
                    let s = 1.0 / (var + self.ctx.eps).sqrt();
                    let out = y.row_mut(i);
                    for (o, v) in out[..d - 1].iter_mut().zip(&r[..d - 1]) {
                        *o = (v - mean) * s;
                    }
                    out[d - 1] = r[d - 1];
                    if dual {
                        out[d..].copy_from_slice(&row[1 + d..1 + 2 * d]);
                    } else if keep_residual {
                        out[d..].copy_from_slice(r);
                    }
                }
            }
            Kind::AddResid { last_pos, keep_residual } => {
                let p = self.input.positions;
                let src: Matrix;
                let x = if last_pos && p > 1 {
                    src = last_rows(x, p);
                    src.view()
                } else {
                    x
                };
                let w = if keep_residual { 2 * d } else { d };
                y.resize(x.nrows(), w);
                copy_cols(&mut y, 0, x, d, d);
                add_cols(&mut y, 0, x, 0, d);
                if keep_residual {
                    copy_cols(&mut y, d, x, d, d);
                }
            }
            Kind::MlpIn(l) => {
                let mut pre = Matrix::default();
                times(columns(x, 0, d).view(), &f.blocks[l].w_in, &mut pre);
                y = concat(&pre, x, d, d);
            }
            Kind::MlpAct => {
                let m = self.segments[0];
                y = x.to_owned();
                for i in 0..rows {
                    for v in &mut y.row_mut(i)[..m] {
                        *v = self.ctx.act.value(*v);
                    }
                }
            }
            Kind::MlpOut(l) => {
                let m = self.segments[0];
                let mut out = Matrix::default();
                times(columns(x, 0, m).view(), &f.blocks[l].w_out, &mut out);
                y = concat(&out, x, m, d);
            }
            Kind::Unembed { last_pos } => {
                let p = self.input.positions;
                let src;
                let x = if last_pos && p > 1 {
                    src = last_rows(x, p);
                    src.view()
                } else {
                    x
                };
                times(x, &f.w_u, &mut y);
            }
            Kind::AttnIn(_) | Kind::AttnOut(_) => unreachable!("attention modules are AttentionOp"),
        }
        let x = if keep_x { x.to_owned() } else { Matrix::default() };
        Ok(Box::new(ModuleAt { module: self, x, y }))
    }

    fn structure(&self) -> Option<&FoldedLinear> {
        match self.kind {
            Kind::Unembed { last_pos } if !last_pos || self.input.positions == 1 => Some(&self.ctx.folded.unembed),
            _ => None,
        }
    }
}

/// `[a, x[:, from..from + w]]`.
fn concat(a: &Matrix, x: MatrixView<'_>, from: usize, w: usize) -> Matrix {
    let mut y = Matrix::zeros(a.nrows(), a.ncols() + w);
    copy_cols(&mut y, 0, a.view(), 0, a.ncols());
    copy_cols(&mut y, a.ncols(), x, from, w);
    y
}

struct ModuleAt<'a> {
    module: &'a Module<'a>,
    /// The input, where the VJP needs it.
    x: Matrix,
    y: Matrix,
}

impl OpLinearized for ModuleAt<'_> {
    fn output(&self) -> MatrixView<'_> {
        self.y.view()
    }

    fn vjp(&self, cot: MatrixView<'_>, gx: &mut Matrix) -> Result<()> {
        let m = self.module;
        let k = blocks_of("transformer module vjp", cot, self.y.nrows(), self.y.ncols())?;
        let segs = &m.segments;
        let d = *segs.last().expect("non-empty");
        let (in_rows, width) = (m.input.positions * (self.y.nrows() / m.output.positions), m.input.width);
        let rows = k * in_rows;
        let f = m.ctx.folded;
        match m.kind {
            Kind::AddEmbed => {
                gx.resize(rows, width);
                copy_cols(gx, 0, cot, 0, d);
                copy_cols(gx, d, cot, 0, d);
            }
            Kind::Identity => {
                gx.resize(cot.nrows(), cot.ncols());
                gx.as_mut_slice().copy_from_slice(cot.as_slice());
            }
            Kind::Split => {
                gx.resize(rows, d);
                copy_cols(gx, 0, cot, 0, d);
                add_cols(gx, 0, cot, d, d);
            }
            Kind::LnIn { dual } => {
                // out = (var(r), r[, a]); ∂var/∂r_i = 2 (r_i − μ)/d' for the d' = d − 1 units.
                let r_at = if dual { d } else { 0 };
                gx.resize(rows, width);
                let n_in = self.x.nrows();
                for b in 0..rows {
                    let r = &self.x.row(b % n_in)[r_at..r_at + d];
                    let c = cot.row(b);
                    let units = d - 1;
                    let mean = r[..units].iter().sum::<f64>() / units as f64;
                    let g = gx.row_mut(b);
                    g.fill(0.0);
                    g[r_at..r_at + d].copy_from_slice(&c[1..1 + d]);
                    for i in 0..units {
                        g[r_at + i] += c[0] * 2.0 * (r[i] - mean) / units as f64;
                    }
                    if dual {
                        g[..d].copy_from_slice(&c[1 + d..1 + 2 * d]);
                    }
                }
            }
            Kind::LnOut { dual, keep_residual } => {
                gx.resize(rows, width);
                let n_in = self.x.nrows();
                let units = d - 1;
                for b in 0..rows {
                    let row = self.x.row(b % n_in);
                    let (var, r) = (row[0], &row[1..1 + d]);
                    let mean = r[..units].iter().sum::<f64>() / units as f64;
                    let s = 1.0 / (var.max(0.0) + m.ctx.eps).sqrt();
                    let c = cot.row(b);
                    let g = gx.row_mut(b);
                    g.fill(0.0);
                    let g_mean = c[..units].iter().sum::<f64>() / units as f64;
                    let mut g_var = 0.0;
                    for i in 0..units {
                        g[1 + i] = s * (c[i] - g_mean);
                        g_var += c[i] * (r[i] - mean);
                    }
                    // n_i = (r_i − μ)(var + ε)^{-1/2}: ∂n_i/∂var = −(r_i − μ) s³ / 2 (0 where
                    // rib's relu clips a negative variance).
                    g[0] = if var >= 0.0 { -0.5 * s * s * s * g_var } else { 0.0 };
                    g[d] = c[units];
                    if dual {
                        g[1 + d..1 + 2 * d].copy_from_slice(&c[d..2 * d]);
                    } else if keep_residual {
                        for i in 0..d {
                            g[1 + i] += c[d + i];
                        }
                    }
                }
            }
            Kind::AddResid { last_pos, keep_residual } => {
                let p = m.input.positions;
                let n = in_rows / p;
                gx.resize(rows, width);
                let cut = last_pos && p > 1;
                if !cut {
                    copy_cols(gx, 0, cot, 0, d);
                    copy_cols(gx, d, cot, 0, d);
                    if keep_residual {
                        add_cols(gx, d, cot, d, d);
                    }
                } else {
                    gx.fill(0.0);
                    for bx in 0..k * n {
                        let (src, dst) = (cot.row(bx), gx.row_mut(bx * p + p - 1));
                        dst[..d].copy_from_slice(&src[..d]);
                        dst[d..2 * d].copy_from_slice(&src[..d]);
                        if keep_residual {
                            for (a, v) in dst[d..2 * d].iter_mut().zip(&src[d..2 * d]) {
                                *a += v;
                            }
                        }
                    }
                }
            }
            Kind::MlpIn(l) => {
                let mm = segs.len();
                debug_assert_eq!(mm, 2);
                let w = &f.blocks[l].w_in;
                let mut g = Matrix::default();
                times_t(columns(cot, 0, w.ncols()).view(), w, &mut g);
                *gx = concat(&g, cot, w.ncols(), d);
            }
            Kind::MlpAct => {
                let units = segs[0];
                *gx = cot.to_owned();
                let n_in = self.x.nrows();
                for b in 0..rows {
                    let x = self.x.row(b % n_in);
                    for (g, &z) in gx.row_mut(b)[..units].iter_mut().zip(x) {
                        *g *= m.ctx.act.derivative(z);
                    }
                }
            }
            Kind::MlpOut(l) => {
                let w = &f.blocks[l].w_out;
                let mut g = Matrix::default();
                times_t(columns(cot, 0, d).view(), w, &mut g);
                *gx = concat(&g, cot, d, d);
            }
            Kind::Unembed { last_pos } => {
                let p = m.input.positions;
                let mut g = Matrix::default();
                times_t(cot, &f.w_u, &mut g);
                if last_pos && p > 1 {
                    gx.resize(rows, width);
                    gx.fill(0.0);
                    for r in 0..g.nrows() {
                        gx.row_mut(r * p + p - 1).copy_from_slice(g.row(r));
                    }
                } else {
                    *gx = g;
                }
            }
            Kind::AttnIn(_) | Kind::AttnOut(_) => unreachable!("attention modules are AttentionOp"),
        }
        Ok(())
    }

    fn param_grads(&self, cot: MatrixView<'_>, grads: &mut FoldedGrads) -> Result<()> {
        let m = self.module;
        let d = *m.segments.last().expect("non-empty");
        match m.kind {
            Kind::MlpIn(l) => {
                let units = grads.blocks[l].w_in.ncols();
                add_xt_c(&mut grads.blocks[l].w_in, columns(self.x.view(), 0, d).view(), columns(cot, 0, units).view());
            }
            Kind::MlpOut(l) => {
                let units = m.segments[0];
                add_xt_c(
                    &mut grads.blocks[l].w_out,
                    columns(self.x.view(), 0, units).view(),
                    columns(cot, 0, d).view(),
                );
            }
            Kind::Unembed { last_pos } => {
                let p = m.input.positions;
                if last_pos && p > 1 {
                    add_xt_c(&mut grads.w_u, last_rows(self.x.view(), p).view(), cot);
                } else {
                    add_xt_c(&mut grads.w_u, self.x.view(), cot);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// `mlp_in` … `mlp_out` (and `add_resid2`): `(x, r) ↦ (σ(x W_in) W_out, r)` or
/// `r + σ(x W_in) W_out`; after a split (`ln2_out` without normalisation) `x = r`.
struct MlpBlock<'a> {
    ctx: Ctx<'a>,
    layer: usize,
    add: bool,
    split: bool,
    input: NodeShape,
    output: NodeShape,
}

impl Op for MlpBlock<'_> {
    fn input(&self) -> NodeShape {
        self.input
    }

    fn output(&self) -> NodeShape {
        self.output
    }

    fn forward(&self, x: MatrixView<'_>, y: &mut Matrix) -> Result<()> {
        let lin = self.linearize_op(x)?;
        *y = lin.output().to_owned();
        Ok(())
    }

    fn residual(&self) -> Option<ResidualLayer<'_>> {
        let b = &self.ctx.folded.blocks[self.layer];
        (self.split && self.add).then_some(ResidualLayer { hidden: &b.hidden, readout: &b.w_out })
    }

    fn linearize_op<'s>(&'s self, x: MatrixView<'_>) -> Result<Box<dyn OpLinearized + 's>> {
        let b = &self.ctx.folded.blocks[self.layer];
        let d = b.w_out.ncols();
        let xin = if self.split { x.to_owned() } else { columns(x, 0, d) };
        let res_at = if self.split { 0 } else { d };
        let mut pre = Matrix::default();
        times(xin.view(), &b.w_in, &mut pre);
        let act = self.ctx.act;
        let mut post = pre.clone();
        post.as_mut_slice().iter_mut().for_each(|v| *v = act.value(*v));
        let mut out = Matrix::default();
        times(post.view(), &b.w_out, &mut out);
        let y = if self.add {
            add_cols(&mut out, 0, x, res_at, d);
            out
        } else {
            concat(&out, x, res_at, d)
        };
        let mut deriv = pre;
        deriv.as_mut_slice().iter_mut().for_each(|v| *v = act.derivative(*v));
        Ok(Box::new(MlpBlockAt { block: self, xin, post, deriv, y }))
    }
}

struct MlpBlockAt<'a> {
    block: &'a MlpBlock<'a>,
    xin: Matrix,
    post: Matrix,
    /// σ'(pre).
    deriv: Matrix,
    y: Matrix,
}

impl MlpBlockAt<'_> {
    /// `(∂/∂pre, ∂/∂x)` of stacked cotangents of the MLP output.
    fn backward(&self, g_out: MatrixView<'_>) -> (Matrix, Matrix) {
        let b = &self.block.ctx.folded.blocks[self.block.layer];
        let mut g_pre = Matrix::default();
        times_t(g_out, &b.w_out, &mut g_pre);
        let n = self.deriv.nrows();
        for r in 0..g_pre.nrows() {
            for (g, s) in g_pre.row_mut(r).iter_mut().zip(self.deriv.row(r % n)) {
                *g *= s;
            }
        }
        let mut g_x = Matrix::default();
        times_t(g_pre.view(), &b.w_in, &mut g_x);
        (g_pre, g_x)
    }
}

impl OpLinearized for MlpBlockAt<'_> {
    fn output(&self) -> MatrixView<'_> {
        self.y.view()
    }

    fn vjp(&self, cot: MatrixView<'_>, gx: &mut Matrix) -> Result<()> {
        blocks_of("MLP block vjp", cot, self.y.nrows(), self.y.ncols())?;
        let d = self.xin.ncols();
        let owned;
        let g_out = if cot.ncols() == d {
            cot
        } else {
            owned = columns(cot, 0, d);
            owned.view()
        };
        let (_, mut g_x) = self.backward(g_out);
        // The residual: the same cotangent (add), or its own segment; added to the input's
        // gradient after a split.
        let res_at = if self.block.add { 0 } else { d };
        if self.block.split {
            add_cols(&mut g_x, 0, cot, res_at, d);
            *gx = g_x;
        } else {
            *gx = concat(&g_x, cot, res_at, d);
        }
        Ok(())
    }

    fn param_grads(&self, cot: MatrixView<'_>, grads: &mut FoldedGrads) -> Result<()> {
        let d = self.xin.ncols();
        let g_out = columns(cot, 0, d);
        let (g_pre, _) = self.backward(g_out.view());
        let g = &mut grads.blocks[self.block.layer];
        add_xt_c(&mut g.w_out, self.post.view(), g_out.view());
        add_xt_c(&mut g.w_in, self.xin.view(), g_pre.view());
        Ok(())
    }
}
