//! Multi-head causal attention on folded coordinates (rib's `AttentionIn` + `AttentionOut`, with
//! the folded `W_Q, W_K, W_V, W_O` of `fold_attn_*`), its linearisation and batched
//! vector–Jacobian products.
//!
//! Per sample, head `h` and query position `t` (causal: keys `k ≤ t`):
//! `q = x W_Q[h]`, `k = x W_K[h]`, `v = x W_V[h]` (rotary: `q`, `k` rotated by position),
//! `p = softmax_k(q_t · k_k / scale)`, `z_t = Σ_k p_k v_k`, `attn_t = Σ_h z_t W_O[h]`.
//!
//! The VJP of many cotangents has two equivalent forms. The textbook one back-propagates to
//! `q, k, v` and multiplies by `W_Qᵀ, W_Kᵀ, W_Vᵀ` per cotangent. When few query positions are
//! read (rib's `last_pos_module_type`) it is cheaper to precompute, once per linearisation,
//! `a_{h,t} = q_{h,t} W_K[h]ᵀ` and `b_{h,k} = k_{h,k} W_Q[h]ᵀ`: then
//! `∂/∂x_k = Σ_{h,t} (s_{h,t,k} a_{h,t} + p_{h,t,k} z̄_{h,t} W_V[h]ᵀ)` and
//! `∂/∂x_t += Σ_{h,k} s_{h,t,k} b_{h,k}` with `s` the gradients of `q_t · k_k`: a few `d_model`-wide
//! axpys per cotangent instead of three products with `d_model × d_head` matrices. The
//! products `z̄ = ḡ W_Oᵀ` and `z̄ W_V[h]ᵀ` are taken once per cotangent block when a block's
//! rows are the same for every sample (the basis and edge cotangents).

use super::config::{PositionalEmbedding, TransformerConfig};
use super::folded::{FoldedBlock, FoldedGrads};
use super::layout::{Kind, Stage};
use super::ops::{Ctx, Op, OpLinearized, add_xt_c, blocks_of, columns, default_vjp_mapped, times, times_t};
use crate::error::{Error, Result};
use crate::linalg::gemm;
use crate::matrix::{Matrix, MatrixView};
use crate::nn::NodeShape;
use std::cell::{OnceCell, Ref, RefCell};

/// Rotary embedding tables (rib's `calculate_sin_cos_rotary`, base 10000).
#[derive(Clone, Debug)]
struct Rotary {
    dim: usize,
    neox: bool,
    /// `[n_ctx, dim/2]`: cos and sin of `pos / 10000^(i / (dim/2))`.
    cos: Matrix,
    sin: Matrix,
}

impl Rotary {
    /// The coordinate pairs `(a, b)` rotated together, pair `i` by angle `pos · freq_i`.
    fn pair(&self, i: usize) -> (usize, usize) {
        if self.neox { (i, i + self.dim / 2) } else { (2 * i, 2 * i + 1) }
    }

    /// Rotates one head's vector at position `pos` (`inverse`: by the transposed rotation).
    fn apply(&self, v: &mut [f64], pos: usize, inverse: bool) {
        for i in 0..self.dim / 2 {
            let (a, b) = self.pair(i);
            let (c, s) = (self.cos[(pos, i)], if inverse { -self.sin[(pos, i)] } else { self.sin[(pos, i)] });
            let (x, y) = (v[a], v[b]);
            v[a] = x * c - y * s;
            v[b] = y * c + x * s;
        }
    }
}

/// What every attention layer of a model shares: head sizes, the score scale, rotary tables.
#[derive(Clone, Debug)]
pub(crate) struct AttentionCore {
    heads: usize,
    d_head: usize,
    scale: f64,
    rotary: Option<Rotary>,
}

impl AttentionCore {
    pub fn new(config: &TransformerConfig) -> Self {
        let rotary = match config.positional_embedding {
            PositionalEmbedding::Standard => None,
            PositionalEmbedding::Rotary { dim, neox } => {
                let half = dim / 2;
                let angle = |p: usize, i: usize| p as f64 / 10000f64.powf(i as f64 / half as f64);
                Some(Rotary {
                    dim,
                    neox,
                    cos: Matrix::from_fn(config.n_ctx, half, |p, i| angle(p, i).cos()),
                    sin: Matrix::from_fn(config.n_ctx, half, |p, i| angle(p, i).sin()),
                })
            }
        };
        AttentionCore { heads: config.n_heads, d_head: config.d_head, scale: config.attn_scale(), rotary }
    }

    /// Rotates every head of rows `[n·p, H·d_head]` by their positions (row `r` is position
    /// `r % p`), or back with `inverse`.
    fn rotate(&self, m: &mut Matrix, p: usize, inverse: bool) {
        let Some(rot) = &self.rotary else { return };
        let e = self.d_head;
        for r in 0..m.nrows() {
            let pos = r % p;
            let row = m.row_mut(r);
            for h in 0..self.heads {
                rot.apply(&mut row[h * e..(h + 1) * e], pos, inverse);
            }
        }
    }
}

/// Which modules the op covers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// `attn_in` alone: `(x, r) ↦ (q, k, v, r)`.
    In,
    /// `attn_out` alone: `(q, k, v, r) ↦ (attn, r)`.
    Out,
    /// `attn_in` + `attn_out`: `(x, r) ↦ (attn, r)`.
    Block,
    /// `attn_in` + `attn_out` + `add_resid1`: `(x, r) ↦ r_t + attn_t` (and `r_t` with
    /// `keep_residual`) at the last position only with `last_pos`.
    BlockAdd { last_pos: bool, keep_residual: bool },
}

/// An attention layer's modules as one op.
pub(crate) struct AttentionOp<'a> {
    ctx: Ctx<'a>,
    layer: usize,
    mode: Mode,
    /// Preceded by `ln1_out`'s `IdentitySplit`: the input is the residual stream alone, read both
    /// as the attention input and as the residual.
    split: bool,
    input: NodeShape,
    output: NodeShape,
}

impl<'a> AttentionOp<'a> {
    pub fn new(ctx: Ctx<'a>, stages: &[Stage], input: NodeShape, output: NodeShape) -> Self {
        let split = stages[0].kind == Kind::Split;
        let stages = if split { &stages[1..] } else { stages };
        let (layer, mode) = match (stages[0].kind, stages.get(1).map(|s| s.kind), stages.get(2).map(|s| s.kind)) {
            (Kind::AttnIn(l), Some(Kind::AttnOut(_)), Some(Kind::AddResid { last_pos, keep_residual })) => {
                (l, Mode::BlockAdd { last_pos, keep_residual })
            }
            (Kind::AttnIn(l), Some(Kind::AttnOut(_)), _) => (l, Mode::Block),
            (Kind::AttnIn(l), _, _) => (l, Mode::In),
            (Kind::AttnOut(l), _, _) => (l, Mode::Out),
            (other, ..) => unreachable!("not an attention module: {other:?}"),
        };
        debug_assert!(!split || matches!(mode, Mode::Block | Mode::BlockAdd { .. }));
        AttentionOp { ctx, layer, mode, split, input, output }
    }

    fn block(&self) -> &'a FoldedBlock {
        &self.ctx.folded.blocks[self.layer]
    }

    fn core(&self) -> &'a AttentionCore {
        self.ctx.core
    }

    /// `(x, r) ↦ (q, k, v)`, `q` and `k` rotated.
    fn qkv(&self, x: MatrixView<'_>, p: usize) -> (Matrix, Matrix, Matrix) {
        let b = self.block();
        let (mut q, mut k, mut v) = (Matrix::default(), Matrix::default(), Matrix::default());
        times(x, &b.wq, &mut q);
        times(x, &b.wk, &mut k);
        times(x, &b.wv, &mut v);
        self.core().rotate(&mut q, p, false);
        self.core().rotate(&mut k, p, false);
        (q, k, v)
    }

    /// The query positions the op's output reads.
    fn query_positions(&self, p: usize) -> Vec<usize> {
        match self.mode {
            Mode::BlockAdd { last_pos: true, .. } => vec![p - 1],
            _ => (0..p).collect(),
        }
    }
}

impl Op for AttentionOp<'_> {
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

    fn linearize_op<'s>(&'s self, x: MatrixView<'_>) -> Result<Box<dyn OpLinearized + 's>> {
        let p = self.input.positions;
        let n = x.nrows() / p;
        let core = self.core();
        let (h, e) = (core.heads, core.d_head);
        let d = self.block().wo.ncols();
        let (xin, q, k, v) = match self.mode {
            Mode::Out => {
                let q = columns(x, 0, h * e);
                let k = columns(x, h * e, h * e);
                let v = columns(x, 2 * h * e, h * (e + 1));
                (Matrix::default(), q, k, v)
            }
            _ => {
                let xin = if self.split { x.to_owned() } else { columns(x, 0, d) };
                let (q, k, v) = self.qkv(xin.view(), p);
                (xin, q, k, v)
            }
        };
        // Where the residual stream sits in the input rows.
        let res_at = match self.mode {
            Mode::Out => 3 * h * e + h,
            _ if self.split => 0,
            _ => d,
        };
        if self.mode == Mode::In {
            // (q, k, v, r).
            let mut y = Matrix::zeros(n * p, 3 * h * e + h + d);
            for r in 0..n * p {
                let row = y.row_mut(r);
                row[..h * e].copy_from_slice(q.row(r));
                row[h * e..2 * h * e].copy_from_slice(k.row(r));
                row[2 * h * e..3 * h * e + h].copy_from_slice(v.row(r));
                row[3 * h * e + h..].copy_from_slice(&x.row(r)[d..2 * d]);
            }
            return Ok(Box::new(AttentionAt::new(self, n, p, xin, q, k, v, Vec::new(), Matrix::default(), y)));
        }
        let qpos = self.query_positions(p);
        let tq = qpos.len();
        // Queries at the read positions only.
        let q = if tq == p { q } else { Matrix::from_fn(n * tq, h * e, |r, c| q[((r / tq) * p + qpos[r % tq], c)]) };
        let mut pattern = vec![0.0; n * h * tq * p];
        let mut z = Matrix::zeros(n * tq, h * (e + 1));
        let mut scores = vec![0.0; p];
        for s in 0..n {
            for hh in 0..h {
                for (t, &qt) in qpos.iter().enumerate() {
                    let qrow = &q.row(s * tq + t)[hh * e..(hh + 1) * e];
                    let mut max = f64::NEG_INFINITY;
                    for (kp, sc) in scores.iter_mut().enumerate().take(qt + 1) {
                        let krow = &k.row(s * p + kp)[hh * e..(hh + 1) * e];
                        *sc = qrow.iter().zip(krow).map(|(a, b)| a * b).sum::<f64>() / core.scale;
                        max = max.max(*sc);
                    }
                    let pat = &mut pattern[((s * h + hh) * tq + t) * p..][..p];
                    let mut sum = 0.0;
                    for (pk, sc) in pat.iter_mut().zip(&scores).take(qt + 1) {
                        *pk = (sc - max).exp();
                        sum += *pk;
                    }
                    let zrow = &mut z.row_mut(s * tq + t)[hh * (e + 1)..(hh + 1) * (e + 1)];
                    for (kp, pk) in pat.iter_mut().enumerate().take(qt + 1) {
                        *pk /= sum;
                        let vrow = &v.row(s * p + kp)[hh * (e + 1)..(hh + 1) * (e + 1)];
                        for (zz, vv) in zrow.iter_mut().zip(vrow) {
                            *zz += *pk * vv;
                        }
                    }
                }
            }
        }
        let mut attn = Matrix::default();
        times(z.view(), &self.block().wo, &mut attn);
        let y = match self.mode {
            Mode::BlockAdd { keep_residual, .. } => {
                let w = if keep_residual { 2 * d } else { d };
                let mut y = Matrix::zeros(n * tq, w);
                for r in 0..n * tq {
                    let src = x.row((r / tq) * p + qpos[r % tq]);
                    let row = y.row_mut(r);
                    for ((o, a), res) in row[..d].iter_mut().zip(attn.row(r)).zip(&src[res_at..res_at + d]) {
                        *o = a + res;
                    }
                    if keep_residual {
                        row[d..].copy_from_slice(&src[res_at..res_at + d]);
                    }
                }
                y
            }
            _ => {
                let mut y = Matrix::zeros(n * p, 2 * d);
                for r in 0..n * p {
                    let row = y.row_mut(r);
                    row[..d].copy_from_slice(attn.row(r));
                    row[d..].copy_from_slice(&x.row(r)[res_at..res_at + d]);
                }
                y
            }
        };
        Ok(Box::new(AttentionAt::new(self, n, p, xin, q, k, v, pattern, z, y)))
    }
}

/// The precomputed vectors of the axpy form of the VJP (see the module docs), per head.
struct Axpy {
    /// `q_{h,t} W_K[h]ᵀ`: `[n·T, D]` per head.
    a: Vec<Matrix>,
    /// `k_{h,k} W_Q[h]ᵀ`: `[n·P, D]` per head.
    b: Vec<Matrix>,
    /// The values of each head, `[n·P, d_head + 1]`.
    v: Vec<Matrix>,
}

/// The axpy form's per-sample vectors mapped by the map of [`OpLinearized::vjp_mapped`] (the
/// same map for every cotangent group of an edge computation).
struct MappedAxpy {
    map: Matrix,
    a: Vec<Matrix>,
    b: Vec<Matrix>,
}

struct AttentionAt<'a> {
    op: &'a AttentionOp<'a>,
    n: usize,
    p: usize,
    qpos: Vec<usize>,
    /// The `x` input (not for `attn_out` alone).
    xin: Matrix,
    /// Rotated queries at the read positions `[n·T, H·e]`, keys `[n·P, H·e]`, values
    /// `[n·P, H·(e+1)]`.
    q: Matrix,
    k: Matrix,
    v: Matrix,
    /// `[n][H][T][P]`, zero above the diagonal.
    pattern: Vec<f64>,
    /// `[n·T, H·(e+1)]`.
    z: Matrix,
    y: Matrix,
    axpy: OnceCell<Axpy>,
    mapped: RefCell<Option<MappedAxpy>>,
}

impl<'a> AttentionAt<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        op: &'a AttentionOp<'a>,
        n: usize,
        p: usize,
        xin: Matrix,
        q: Matrix,
        k: Matrix,
        v: Matrix,
        pattern: Vec<f64>,
        z: Matrix,
        y: Matrix,
    ) -> Self {
        let qpos = op.query_positions(p);
        AttentionAt { op, n, p, qpos, xin, q, k, v, pattern, z, y, axpy: OnceCell::new(), mapped: RefCell::new(None) }
    }

    fn dims(&self) -> (usize, usize, usize) {
        let core = self.op.core();
        (core.heads, core.d_head, self.op.block().wo.ncols())
    }

    /// `ḡ_attn`, the cotangents of the attention output (`[k·n·T, D]`, at the read positions).
    fn attn_cotangents<'c>(&self, cot: MatrixView<'c>, owned: &'c mut Matrix) -> MatrixView<'c> {
        let (_, _, d) = self.dims();
        if cot.ncols() == d {
            return cot;
        }
        *owned = columns(cot, 0, d);
        owned.view()
    }

    /// Writes the residual stream's gradient (`[k·n·P]` rows, zero where the output does not
    /// read it) into columns `at..at + D` of `dst`.
    fn residual_into(&self, cot: MatrixView<'_>, kb: usize, dst: &mut Matrix, at: usize) {
        let (_, _, d) = self.dims();
        let (n, p, tq) = (self.n, self.p, self.qpos.len());
        match self.op.mode {
            Mode::BlockAdd { keep_residual, .. } => {
                if tq < p {
                    for r in 0..kb * n * p {
                        dst.row_mut(r)[at..at + d].fill(0.0);
                    }
                }
                for r in 0..kb * n * tq {
                    let row = dst.row_mut((r / tq) * p + self.qpos[r % tq]);
                    let (out, src) = (&mut row[at..at + d], cot.row(r));
                    out.copy_from_slice(&src[..d]);
                    if keep_residual {
                        for (a, b) in out.iter_mut().zip(&src[d..2 * d]) {
                            *a += b;
                        }
                    }
                }
            }
            _ => {
                for r in 0..kb * n * p {
                    dst.row_mut(r)[at..at + d].copy_from_slice(&cot.row(r)[d..2 * d]);
                }
            }
        }
    }

    /// Adds the residual stream's gradient into columns `at..at + D` of `dst` (rows the output
    /// reads only: the others get nothing).
    fn residual_add(&self, cot: MatrixView<'_>, kb: usize, dst: &mut Matrix, at: usize) {
        let (_, _, d) = self.dims();
        let (n, p, tq) = (self.n, self.p, self.qpos.len());
        match self.op.mode {
            Mode::BlockAdd { keep_residual, .. } => {
                for r in 0..kb * n * tq {
                    let row = dst.row_mut((r / tq) * p + self.qpos[r % tq]);
                    let src = cot.row(r);
                    for (c, o) in row[at..at + d].iter_mut().enumerate() {
                        *o += src[c] + if keep_residual { src[d + c] } else { 0.0 };
                    }
                }
            }
            _ => {
                for r in 0..kb * n * p {
                    for (o, v) in dst.row_mut(r)[at..at + d].iter_mut().zip(&cot.row(r)[d..2 * d]) {
                        *o += v;
                    }
                }
            }
        }
    }

    /// The textbook backward from `z̄ = ḡ W_Oᵀ` (`[k·n·T, H·(e+1)]`) to `(q̄, k̄, v̄)` in rotated
    /// coordinates: `[k·n·T, H·e]`, `[k·n·P, H·e]`, `[k·n·P, H·(e+1)]`.
    fn core_backward(&self, gz: MatrixView<'_>, kb: usize) -> (Matrix, Matrix, Matrix) {
        let (h, e, _) = self.dims();
        let (n, p, tq) = (self.n, self.p, self.qpos.len());
        let scale = self.op.core().scale;
        let mut gq = Matrix::zeros(kb * n * tq, h * e);
        let mut gk = Matrix::zeros(kb * n * p, h * e);
        let mut gv = Matrix::zeros(kb * n * p, h * (e + 1));
        let mut gs = vec![0.0; p];
        for b in 0..kb {
            for s in 0..n {
                for hh in 0..h {
                    for (t, &qt) in self.qpos.iter().enumerate() {
                        let row_z = (b * n + s) * tq + t;
                        let pat = &self.pattern[((s * h + hh) * tq + t) * p..][..p];
                        let gzr = &gz.row(row_z)[hh * (e + 1)..(hh + 1) * (e + 1)];
                        let mut sum = 0.0;
                        for kp in 0..=qt {
                            let vrow = &self.v.row(s * p + kp)[hh * (e + 1)..(hh + 1) * (e + 1)];
                            gs[kp] = gzr.iter().zip(vrow).map(|(a, b)| a * b).sum::<f64>();
                            sum += pat[kp] * gs[kp];
                        }
                        for kp in 0..=qt {
                            gs[kp] = pat[kp] * (gs[kp] - sum) / scale;
                        }
                        let qrow = self.q.row(s * tq + t)[hh * e..(hh + 1) * e].to_vec();
                        for kp in 0..=qt {
                            let krow = &self.k.row(s * p + kp)[hh * e..(hh + 1) * e];
                            for (g, kv) in gq.row_mut(row_z)[hh * e..(hh + 1) * e].iter_mut().zip(krow) {
                                *g += gs[kp] * kv;
                            }
                            let rk = (b * n + s) * p + kp;
                            for (g, qv) in gk.row_mut(rk)[hh * e..(hh + 1) * e].iter_mut().zip(&qrow) {
                                *g += gs[kp] * qv;
                            }
                            for (g, zv) in gv.row_mut(rk)[hh * (e + 1)..(hh + 1) * (e + 1)].iter_mut().zip(gzr) {
                                *g += pat[kp] * zv;
                            }
                        }
                    }
                }
            }
        }
        (gq, gk, gv)
    }

    /// `x̄ = q̄ W_Qᵀ + k̄ W_Kᵀ + v̄ W_Vᵀ` for rotated `q̄` (at the read positions), `k̄`, `v̄`.
    fn input_gradient(&self, mut gq: Matrix, mut gk: Matrix, gv: &Matrix) -> Matrix {
        let b = self.op.block();
        let (p, tq) = (self.p, self.qpos.len());
        let core = self.op.core();
        if core.rotary.is_some() {
            // Rows of q̄ are at positions qpos; unrotate them position by position.
            if tq == p {
                core.rotate(&mut gq, p, true);
            } else if let Some(rot) = &core.rotary {
                let e = core.d_head;
                for r in 0..gq.nrows() {
                    let pos = self.qpos[r % tq];
                    let row = gq.row_mut(r);
                    for hh in 0..core.heads {
                        rot.apply(&mut row[hh * e..(hh + 1) * e], pos, true);
                    }
                }
            }
            core.rotate(&mut gk, p, true);
        }
        let mut gx = Matrix::default();
        times_t(gk.view(), &b.wk, &mut gx);
        gemm(gx.as_mut_slice(), gv.view(), false, b.wv.view(), true, 1.0, true);
        let mut from_q = Matrix::default();
        times_t(gq.view(), &b.wq, &mut from_q);
        if tq == p {
            gx.add_scaled(1.0, &from_q);
        } else {
            for r in 0..from_q.nrows() {
                let dst = gx.row_mut((r / tq) * p + self.qpos[r % tq]);
                for (a, v) in dst.iter_mut().zip(from_q.row(r)) {
                    *a += v;
                }
            }
        }
        gx
    }

    /// Whether the axpy form is cheaper than the textbook one (never with rotary embeddings,
    /// whose rotation depends on the key–query pair).
    fn use_axpy(&self) -> bool {
        let core = self.op.core();
        if core.rotary.is_some() || !matches!(self.op.mode, Mode::Block | Mode::BlockAdd { .. }) {
            return false;
        }
        let (h, e, d) = self.dims();
        let (p, tq) = (self.p, self.qpos.len());
        let textbook = tq * h * e * d + p * h * (2 * e + 1) * d + tq * p * h * (3 * e + 2);
        let axpy = tq * h * (e + 1) * d + 3 * tq * p * h * d + tq * p * h * (e + 1);
        axpy < textbook
    }

    fn axpy(&self) -> &Axpy {
        self.axpy.get_or_init(|| {
            let (h, e, _) = self.dims();
            let b = self.op.block();
            let mut a = Vec::with_capacity(h);
            let mut bq = Vec::with_capacity(h);
            let mut v = Vec::with_capacity(h);
            for hh in 0..h {
                let mut m = Matrix::default();
                times_t(columns(self.q.view(), hh * e, e).view(), &b.wk_heads[hh], &mut m);
                a.push(std::mem::take(&mut m));
                times_t(columns(self.k.view(), hh * e, e).view(), &b.wq_heads[hh], &mut m);
                bq.push(m);
                v.push(columns(self.v.view(), hh * (e + 1), e + 1));
            }
            Axpy { a, b: bq, v }
        })
    }

    /// The precomputed vectors times `map` (cached while the map stays the same).
    fn mapped(&self, map: MatrixView<'_>) -> Ref<'_, Option<MappedAxpy>> {
        let fresh = self.mapped.borrow().as_ref().is_none_or(|c| c.map.view() != map);
        if fresh {
            let ax = self.axpy();
            let owned = map.to_owned();
            let mut times_map = |v: &Matrix| {
                let mut out = Matrix::default();
                times(v.view(), &owned, &mut out);
                out
            };
            let a = ax.a.iter().map(&mut times_map).collect();
            let b = ax.b.iter().map(&mut times_map).collect();
            *self.mapped.borrow_mut() = Some(MappedAxpy { map: owned, a, b });
        }
        self.mapped.borrow()
    }

    /// `x̄` by the axpy form: `g_attn` `[k·n·T, D]`, written into columns `at..at + D` of `gx`
    /// (`[k·n·P]` rows, every row written); with `map` (`[D, m]`) the mapped gradient `x̄ · map`
    /// into columns `at..at + m` (every vector is mapped once, before the per-cotangent loops).
    /// Returns whether every block's cotangent was the same for all samples.
    fn axpy_backward(
        &self,
        g_attn: MatrixView<'_>,
        kb: usize,
        gx: &mut Matrix,
        at: usize,
        map: Option<MatrixView<'_>>,
    ) -> bool {
        let (h, e, d) = self.dims();
        let (n, p, tq) = (self.n, self.p, self.qpos.len());
        let scale = self.op.core().scale;
        let ax = self.axpy();
        let blk = self.op.block();
        // One representative row set per block when every sample's cotangent is the same.
        let uniform = (0..kb).all(|b| {
            let first = &g_attn.as_slice()[b * n * tq * d..(b * n * tq + tq) * d];
            (1..n).all(|s| &g_attn.as_slice()[(b * n + s) * tq * d..((b * n + s) * tq + tq) * d] == first)
        });
        let reps = if uniform {
            Matrix::from_fn(kb * tq, d, |r, c| g_attn[((r / tq) * n * tq + r % tq, c)])
        } else {
            g_attn.to_owned()
        };
        let mut gz = Vec::with_capacity(h);
        let mut ev = Vec::with_capacity(h);
        for hh in 0..h {
            let wo_h = blk.wo.rows(hh * (e + 1)..(hh + 1) * (e + 1));
            let mut g = Matrix::zeros(reps.nrows(), e + 1);
            gemm(g.as_mut_slice(), reps.view(), false, wo_h, true, 1.0, false);
            let mut v = Matrix::default();
            times_t(g.view(), &blk.wv_heads[hh], &mut v);
            if let Some(map) = map {
                let mut mapped = Matrix::default();
                times(v.view(), &map.to_owned(), &mut mapped);
                v = mapped;
            }
            gz.push(g);
            ev.push(v);
        }
        let cache;
        let (a, b, d) = match map {
            None => (&ax.a, &ax.b, d),
            Some(map) => {
                cache = self.mapped(map);
                let c = cache.as_ref().expect("filled by mapped");
                // SAFETY-free borrow juggling: the cache lives until the end of this call.
                (&c.a, &c.b, map.ncols())
            }
        };
        let args = AxpyLoops {
            n,
            kb,
            p,
            h,
            d,
            at,
            scale,
            uniform,
            qpos: &self.qpos,
            pattern: &self.pattern,
            gz: &gz,
            ev: &ev,
            v: &ax.v,
            a,
            b,
        };
        args.run(gx);
        uniform
    }
}

impl OpLinearized for AttentionAt<'_> {
    fn output(&self) -> MatrixView<'_> {
        self.y.view()
    }

    fn vjp(&self, cot: MatrixView<'_>, grad_x: &mut Matrix) -> Result<()> {
        let kb = blocks_of("attention vjp", cot, self.y.nrows(), self.y.ncols())?;
        let (h, e, d) = self.dims();
        let (n, p) = (self.n, self.p);
        let blk = self.op.block();
        match self.op.mode {
            Mode::In => {
                // cot = (q̄, k̄, v̄, r̄) at every position.
                let gq = columns(cot, 0, h * e);
                let gk = columns(cot, h * e, h * e);
                let gv = columns(cot, 2 * h * e, h * (e + 1));
                let gx = self.input_gradient(gq, gk, &gv);
                *grad_x = Matrix::zeros(kb * n * p, 2 * d);
                for r in 0..kb * n * p {
                    let row = grad_x.row_mut(r);
                    row[..d].copy_from_slice(gx.row(r));
                    row[d..].copy_from_slice(&cot.row(r)[3 * h * e + h..]);
                }
            }
            Mode::Out => {
                let mut owned = Matrix::default();
                let g_attn = self.attn_cotangents(cot, &mut owned);
                let mut gz = Matrix::default();
                times_t(g_attn, &blk.wo, &mut gz);
                let (gq, gk, gv) = self.core_backward(gz.view(), kb);
                let w = 3 * h * e + h;
                grad_x.resize(kb * n * p, w + d);
                for r in 0..kb * n * p {
                    let row = grad_x.row_mut(r);
                    row[..h * e].copy_from_slice(gq.row(r));
                    row[h * e..2 * h * e].copy_from_slice(gk.row(r));
                    row[2 * h * e..w].copy_from_slice(gv.row(r));
                }
                self.residual_into(cot, kb, grad_x, w);
            }
            Mode::Block | Mode::BlockAdd { .. } => {
                let mut owned = Matrix::default();
                let g_attn = self.attn_cotangents(cot, &mut owned);
                // Split: x̄ = residual gradient + attention gradient in one buffer; otherwise the
                // two segments side by side.
                let width = if self.op.split { d } else { 2 * d };
                grad_x.resize(kb * n * p, width);
                if self.use_axpy() {
                    // The axpy loops write every row of x̄'s first D columns; then the residual.
                    self.axpy_backward(g_attn, kb, grad_x, 0, None);
                    if self.op.split {
                        self.residual_add(cot, kb, grad_x, 0);
                    } else {
                        self.residual_into(cot, kb, grad_x, d);
                    }
                } else {
                    let res_at = if self.op.split { 0 } else { d };
                    self.residual_into(cot, kb, grad_x, res_at);
                    if !self.op.split {
                        for r in 0..kb * n * p {
                            grad_x.row_mut(r)[..d].fill(0.0);
                        }
                    }
                    let mut gz = Matrix::default();
                    times_t(g_attn, &blk.wo, &mut gz);
                    let (gq, gk, gv) = self.core_backward(gz.view(), kb);
                    let gx = self.input_gradient(gq, gk, &gv);
                    for r in 0..kb * n * p {
                        for (a, b) in grad_x.row_mut(r)[..d].iter_mut().zip(gx.row(r)) {
                            *a += b;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn vjp_mapped(&self, cot: MatrixView<'_>, map: &Matrix, out: &mut Matrix) -> Result<()> {
        let Mode::BlockAdd { keep_residual, .. } = self.op.mode else {
            return default_vjp_mapped(self, cot, map, out);
        };
        if !self.use_axpy() {
            return default_vjp_mapped(self, cot, map, out);
        }
        let kb = blocks_of("attention vjp", cot, self.y.nrows(), self.y.ncols())?;
        let (_, _, d) = self.dims();
        let (n, p, tq) = (self.n, self.p, self.qpos.len());
        let width = if self.op.split { d } else { 2 * d };
        if map.nrows() != width {
            return Err(Error::shape("attention vjp_mapped map [input width, m]", &[width], &[map.nrows()]));
        }
        let m = map.ncols();
        let (map_x, map_r) = (map.rows(0..d), if self.op.split { map.rows(0..d) } else { map.rows(d..2 * d) });
        let mut owned = Matrix::default();
        let g_attn = self.attn_cotangents(cot, &mut owned);
        out.resize(kb * n * p, m);
        let uniform = self.axpy_backward(g_attn, kb, out, 0, Some(map_x));
        // The residual stream's gradient at the read positions, mapped: the cotangent (and the
        // kept residual's), once per block when it is the same for every sample.
        let residual = |r: usize| -> Vec<f64> {
            let src = cot.row(r);
            (0..d).map(|c| src[c] + if keep_residual { src[d + c] } else { 0.0 }).collect()
        };
        let same = uniform
            && (!keep_residual
                || (0..kb).all(|b| {
                    (1..n).all(|s| (0..tq).all(|t| residual((b * n + s) * tq + t) == residual(b * n * tq + t)))
                }));
        let rows: Vec<usize> =
            if same { (0..kb * tq).map(|r| (r / tq) * n * tq + r % tq).collect() } else { (0..kb * n * tq).collect() };
        let src = Matrix::from_vec(rows.len(), d, rows.iter().flat_map(|&r| residual(r)).collect())?;
        let mut mapped = Matrix::default();
        times(src.view(), &map_r.to_owned(), &mut mapped);
        for r in 0..kb * n * tq {
            let k = if same { (r / (n * tq)) * tq + r % tq } else { r };
            let dst = out.row_mut((r / tq) * p + self.qpos[r % tq]);
            for (o, v) in dst.iter_mut().zip(mapped.row(k)) {
                *o += v;
            }
        }
        Ok(())
    }

    fn param_grads(&self, cot: MatrixView<'_>, grads: &mut FoldedGrads) -> Result<()> {
        let (h, e, _) = self.dims();
        let (n, p, tq) = (self.n, self.p, self.qpos.len());
        let blk = self.op.block();
        let g = &mut grads.blocks[self.op.layer];
        let (gq, gk, gv) = match self.op.mode {
            Mode::In => (columns(cot, 0, h * e), columns(cot, h * e, h * e), columns(cot, 2 * h * e, h * (e + 1))),
            _ => {
                let mut owned = Matrix::default();
                let g_attn = self.attn_cotangents(cot, &mut owned);
                add_xt_c(&mut g.wo, self.z.view(), g_attn);
                if self.op.mode == Mode::Out {
                    return Ok(());
                }
                let mut gz = Matrix::default();
                times_t(g_attn, &blk.wo, &mut gz);
                self.core_backward(gz.view(), 1)
            }
        };
        let core = self.op.core();
        let (mut gq, mut gk) = (gq, gk);
        // Back to unrotated q̄, k̄, then the weight gradients xᵀ q̄ etc.
        if let Some(rot) = &core.rotary {
            for r in 0..gq.nrows() {
                let pos = if tq == p { r % p } else { self.qpos[r % tq] };
                let row = gq.row_mut(r);
                for hh in 0..h {
                    rot.apply(&mut row[hh * e..(hh + 1) * e], pos, true);
                }
            }
            core.rotate(&mut gk, p, true);
        }
        let xq = if tq == p || self.op.mode == Mode::In {
            self.xin.clone()
        } else {
            Matrix::from_fn(n * tq, self.xin.ncols(), |r, c| self.xin[((r / tq) * p + self.qpos[r % tq], c)])
        };
        add_xt_c(&mut g.wq, xq.view(), gq.view());
        add_xt_c(&mut g.wk, self.xin.view(), gk.view());
        add_xt_c(&mut g.wv, self.xin.view(), gv.view());
        Ok(())
    }
}

/// The per-cotangent loops of the axpy form (see the module docs).
struct AxpyLoops<'a> {
    n: usize,
    kb: usize,
    p: usize,
    h: usize,
    d: usize,
    at: usize,
    scale: f64,
    uniform: bool,
    qpos: &'a [usize],
    pattern: &'a [f64],
    gz: &'a [Matrix],
    ev: &'a [Matrix],
    v: &'a [Matrix],
    a: &'a [Matrix],
    b: &'a [Matrix],
}

impl AxpyLoops<'_> {
    /// With AVX2 and FMA where the CPU has them (the crate is built for baseline x86-64, so the
    /// loops would otherwise run two lanes wide).
    fn run(&self, gx: &mut Matrix) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                unsafe { self.run_avx2(gx) };
                return;
            }
        }
        self.run_with::<false>(gx);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, gx: &mut Matrix) {
        self.run_with::<true>(gx);
    }

    #[inline(always)]
    fn run_with<const FMA: bool>(&self, gx: &mut Matrix) {
        let (n, p, h, d, at) = (self.n, self.p, self.h, self.d, self.at);
        let tq = self.qpos.len();
        // Score gradients s_{h,t,k} of one sample and block.
        let mut g = vec![0.0; h * tq * p];
        let mut terms: Vec<(f64, &[f64])> = Vec::with_capacity(2 * h * tq + h * p);
        // Sample-major: a sample's precomputed vectors stay in cache while every cotangent block
        // passes; each output row gets all its terms in one sweep.
        for s in 0..n {
            for b in 0..self.kb {
                for hh in 0..h {
                    for (t, &qt) in self.qpos.iter().enumerate() {
                        let rep = if self.uniform { b * tq + t } else { (b * n + s) * tq + t };
                        let pat = &self.pattern[((s * h + hh) * tq + t) * p..][..p];
                        let gzr = self.gz[hh].row(rep);
                        let gs = &mut g[(hh * tq + t) * p..][..p];
                        let mut sum = 0.0;
                        for kp in 0..=qt {
                            gs[kp] = dot::<FMA>(gzr, self.v[hh].row(s * p + kp));
                            sum += pat[kp] * gs[kp];
                        }
                        for kp in 0..=qt {
                            gs[kp] = pat[kp] * (gs[kp] - sum) / self.scale;
                        }
                    }
                }
                let base = (b * n + s) * p;
                for kp in 0..p {
                    terms.clear();
                    for hh in 0..h {
                        for (t, &qt) in self.qpos.iter().enumerate() {
                            let rep = if self.uniform { b * tq + t } else { (b * n + s) * tq + t };
                            if kp <= qt {
                                let pat = self.pattern[((s * h + hh) * tq + t) * p + kp];
                                terms.push((g[(hh * tq + t) * p + kp], self.a[hh].row(s * tq + t)));
                                terms.push((pat, self.ev[hh].row(rep)));
                            }
                            if kp == qt {
                                for k2 in 0..=qt {
                                    terms.push((g[(hh * tq + t) * p + k2], self.b[hh].row(s * p + k2)));
                                }
                            }
                        }
                    }
                    let row = &mut gx.row_mut(base + kp)[at..at + d];
                    row.fill(0.0);
                    axpy_n::<FMA>(row, &terms);
                }
            }
        }
    }
}

/// `y += Σ_j c_j x_j`, four terms per sweep over `y`.
#[inline(always)]
fn axpy_n<const FMA: bool>(y: &mut [f64], terms: &[(f64, &[f64])]) {
    let mut quads = terms.chunks_exact(4);
    for q in &mut quads {
        let ((c0, x0), (c1, x1), (c2, x2), (c3, x3)) = (q[0], q[1], q[2], q[3]);
        let n = y.len().min(x0.len()).min(x1.len()).min(x2.len()).min(x3.len());
        let (x0, x1, x2, x3) = (&x0[..n], &x1[..n], &x2[..n], &x3[..n]);
        for (i, o) in y[..n].iter_mut().enumerate() {
            *o = if FMA {
                c3.mul_add(x3[i], c2.mul_add(x2[i], c1.mul_add(x1[i], c0.mul_add(x0[i], *o))))
            } else {
                *o + c0 * x0[i] + c1 * x1[i] + c2 * x2[i] + c3 * x3[i]
            };
        }
    }
    for &(c, x) in quads.remainder() {
        axpy::<FMA>(y, c, x);
    }
}

#[inline(always)]
fn dot<const FMA: bool>(a: &[f64], b: &[f64]) -> f64 {
    // Four partial sums: the compiler keeps them in vector lanes.
    let mut acc = [0.0; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..4 {
            acc[l] = if FMA { x[l].mul_add(y[l], acc[l]) } else { acc[l] + x[l] * y[l] };
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// `y += a x`.
#[inline(always)]
fn axpy<const FMA: bool>(y: &mut [f64], a: f64, x: &[f64]) {
    for (o, v) in y.iter_mut().zip(x) {
        *o = if FMA { a.mul_add(*v, *o) } else { *o + a * v };
    }
}
