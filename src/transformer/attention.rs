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
use super::ops::{Ctx, Op, OpLinearized, add_xt_c, blocks_of, columns, times, times_t};
use crate::error::Result;
use crate::linalg::gemm;
use crate::matrix::{Matrix, MatrixView};
use crate::nn::NodeShape;
use std::cell::OnceCell;

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
    input: NodeShape,
    output: NodeShape,
}

impl<'a> AttentionOp<'a> {
    pub fn new(ctx: Ctx<'a>, stages: &[Stage], input: NodeShape, output: NodeShape) -> Self {
        let (layer, mode) = match (stages[0].kind, stages.get(1).map(|s| s.kind), stages.get(2).map(|s| s.kind)) {
            (Kind::AttnIn(l), Some(Kind::AttnOut(_)), Some(Kind::AddResid { last_pos, keep_residual })) => {
                (l, Mode::BlockAdd { last_pos, keep_residual })
            }
            (Kind::AttnIn(l), Some(Kind::AttnOut(_)), _) => (l, Mode::Block),
            (Kind::AttnIn(l), _, _) => (l, Mode::In),
            (Kind::AttnOut(l), _, _) => (l, Mode::Out),
            (other, ..) => unreachable!("not an attention module: {other:?}"),
        };
        AttentionOp { ctx, layer, mode, input, output }
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
                let xin = columns(x, 0, d);
                let (q, k, v) = self.qkv(xin.view(), p);
                (xin, q, k, v)
            }
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
                    for ((o, a), res) in row[..d].iter_mut().zip(attn.row(r)).zip(&src[d..2 * d]) {
                        *o = a + res;
                    }
                    if keep_residual {
                        row[d..].copy_from_slice(&src[d..2 * d]);
                    }
                }
                y
            }
            _ => {
                let mut y = Matrix::zeros(n * p, 2 * d);
                let rest = if self.mode == Mode::Out { 3 * h * e + h } else { d };
                for r in 0..n * p {
                    let row = y.row_mut(r);
                    row[..d].copy_from_slice(attn.row(r));
                    row[d..].copy_from_slice(&x.row(r)[rest..rest + d]);
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
        AttentionAt { op, n, p, qpos, xin, q, k, v, pattern, z, y, axpy: OnceCell::new() }
    }

    fn dims(&self) -> (usize, usize, usize) {
        let core = self.op.core();
        (core.heads, core.d_head, self.op.block().wo.ncols())
    }

    /// Splits stacked output cotangents into `ḡ_attn` (`[k·n·T, D]`, at the read positions) and
    /// the residual's gradient (`[k·n·P, D]`).
    fn split_cotangents(&self, cot: MatrixView<'_>, kb: usize) -> (Matrix, Matrix) {
        let (_, _, d) = self.dims();
        let (n, p, tq) = (self.n, self.p, self.qpos.len());
        let mut g_res = Matrix::zeros(kb * n * p, d);
        let g_attn = match self.op.mode {
            Mode::BlockAdd { keep_residual, .. } => {
                for r in 0..kb * n * tq {
                    let dst = g_res.row_mut((r / tq) * p + self.qpos[r % tq]);
                    let src = cot.row(r);
                    dst.copy_from_slice(&src[..d]);
                    if keep_residual {
                        for (a, b) in dst.iter_mut().zip(&src[d..2 * d]) {
                            *a += b;
                        }
                    }
                }
                columns(cot, 0, d)
            }
            _ => {
                for r in 0..kb * n * p {
                    g_res.row_mut(r).copy_from_slice(&cot.row(r)[d..2 * d]);
                }
                columns(cot, 0, d)
            }
        };
        (g_attn, g_res)
    }

    /// The textbook backward from `z̄ = ḡ W_Oᵀ` (`[k·n·T, H·(e+1)]`) to `(q̄, k̄, v̄)` in rotated
    /// coordinates: `[k·n·T, H·e]`, `[k·n·P, H·e]`, `[k·n·P, H·(e+1)]`.
    fn core_backward(&self, gz: &Matrix, kb: usize) -> (Matrix, Matrix, Matrix) {
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

    /// `x̄` by the axpy form: `g_attn` `[k·n·T, D]`, into `gx` `[k·n·P, D]` (zeroed here).
    fn axpy_backward(&self, g_attn: &Matrix, kb: usize, gx: &mut Matrix) {
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
            g_attn.clone()
        };
        let mut gz = Vec::with_capacity(h);
        let mut ev = Vec::with_capacity(h);
        for hh in 0..h {
            let wo_h = blk.wo.rows(hh * (e + 1)..(hh + 1) * (e + 1));
            let mut g = Matrix::zeros(reps.nrows(), e + 1);
            gemm(g.as_mut_slice(), reps.view(), false, wo_h, true, 1.0, false);
            let mut v = Matrix::default();
            times_t(g.view(), &blk.wv_heads[hh], &mut v);
            gz.push(g);
            ev.push(v);
        }
        gx.resize(kb * n * p, d);
        gx.fill(0.0);
        let mut gs = vec![0.0; p];
        for b in 0..kb {
            for s in 0..n {
                for hh in 0..h {
                    for (t, &qt) in self.qpos.iter().enumerate() {
                        let rep = if uniform { b * tq + t } else { (b * n + s) * tq + t };
                        let pat = &self.pattern[((s * h + hh) * tq + t) * p..][..p];
                        let gzr = gz[hh].row(rep);
                        let mut sum = 0.0;
                        for kp in 0..=qt {
                            gs[kp] = gzr.iter().zip(ax.v[hh].row(s * p + kp)).map(|(a, b)| a * b).sum::<f64>();
                            sum += pat[kp] * gs[kp];
                        }
                        let (arow, evr) = (ax.a[hh].row(s * tq + t), ev[hh].row(rep));
                        let mut from_q = vec![0.0; d];
                        for kp in 0..=qt {
                            let g = pat[kp] * (gs[kp] - sum) / scale;
                            let brow = ax.b[hh].row(s * p + kp);
                            for (f, bv) in from_q.iter_mut().zip(brow) {
                                *f += g * bv;
                            }
                            let dst = gx.row_mut((b * n + s) * p + kp);
                            for ((o, av), vv) in dst.iter_mut().zip(arow).zip(evr) {
                                *o += g * av + pat[kp] * vv;
                            }
                        }
                        for (o, f) in gx.row_mut((b * n + s) * p + qt).iter_mut().zip(&from_q) {
                            *o += f;
                        }
                    }
                }
            }
        }
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
                let (g_attn, g_res) = self.split_cotangents(cot, kb);
                let mut gz = Matrix::default();
                times_t(g_attn.view(), &blk.wo, &mut gz);
                let (gq, gk, gv) = self.core_backward(&gz, kb);
                let w = 3 * h * e + h;
                *grad_x = Matrix::zeros(kb * n * p, w + d);
                for r in 0..kb * n * p {
                    let row = grad_x.row_mut(r);
                    row[..h * e].copy_from_slice(gq.row(r));
                    row[h * e..2 * h * e].copy_from_slice(gk.row(r));
                    row[2 * h * e..w].copy_from_slice(gv.row(r));
                    row[w..].copy_from_slice(g_res.row(r));
                }
            }
            Mode::Block | Mode::BlockAdd { .. } => {
                let (g_attn, g_res) = self.split_cotangents(cot, kb);
                let gx = if self.use_axpy() {
                    let mut gx = Matrix::default();
                    self.axpy_backward(&g_attn, kb, &mut gx);
                    gx
                } else {
                    let mut gz = Matrix::default();
                    times_t(g_attn.view(), &blk.wo, &mut gz);
                    let (gq, gk, gv) = self.core_backward(&gz, kb);
                    self.input_gradient(gq, gk, &gv)
                };
                *grad_x = Matrix::zeros(kb * n * p, 2 * d);
                for r in 0..kb * n * p {
                    let row = grad_x.row_mut(r);
                    row[..d].copy_from_slice(gx.row(r));
                    row[d..].copy_from_slice(g_res.row(r));
                }
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
                let (g_attn, _) = self.split_cotangents(cot, 1);
                add_xt_c(&mut g.wo, self.z.view(), g_attn.view());
                if self.op.mode == Mode::Out {
                    return Ok(());
                }
                let mut gz = Matrix::default();
                times_t(g_attn.view(), &blk.wo, &mut gz);
                self.core_backward(&gz, 1)
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
