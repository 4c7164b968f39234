//! rib's bias folding (`fold_bias`, `models/utils.py`): every bias becomes one more weight row
//! read by the constant coordinate `c` of the residual stream, so the sections are functions of
//! the folded node coordinates alone; and the way back from folded-weight gradients to the
//! TransformerLens parameters.

use super::config::{PositionalEmbedding, TransformerConfig};
use super::weights::TransformerWeights;
use crate::matrix::Matrix;
use crate::nn::{Activation, FoldedLinear, Linear};

/// One block's folded weights (`D = d_model + 1`, row-vector convention `x · W`).
#[derive(Clone, Debug)]
pub(crate) struct FoldedBlock {
    /// `[D, H·d_head]`: `W_Q` with `b_Q` as row `D − 1` (`fold_attn_QK`), heads side by side.
    pub wq: Matrix,
    /// `[D, H·d_head]`, as `wq`.
    pub wk: Matrix,
    /// `[D, H·(d_head + 1)]`: `W_V`, `b_V` in row `D − 1` and an extra value coordinate per head
    /// equal to `c` (`fold_attn_V`).
    pub wv: Matrix,
    /// Per head: `[D, d_head]` blocks of `wq`, `wk` and `[D, d_head + 1]` of `wv`.
    pub wq_heads: Vec<Matrix>,
    pub wk_heads: Vec<Matrix>,
    pub wv_heads: Vec<Matrix>,
    /// `[H·(d_head + 1), D]`: `W_O`, and `b_O / H` in every head's extra row; last column 0
    /// (`fold_attn_O`).
    pub wo: Matrix,
    /// `[D, d_mlp + 1]`: `W_in`, `b_in` in row `D − 1`, and a last unit fed `root_one · c`
    /// (`fold_mlp_in`).
    pub w_in: Matrix,
    /// `[d_mlp + 1, D]`: `W_out`, `b_out` in row `d_mlp`, last column 0 (`fold_mlp_out`).
    pub w_out: Matrix,
    /// The MLP's hidden layer `f ↦ σ(f W_in)` as a folded layer (`[d_mlp + 1, D]` weight
    /// `W_inᵀ`, the `root_one` unit included), for the closed forms of residual blocks.
    pub hidden: FoldedLinear,
}

/// All folded weights of a transformer.
#[derive(Clone, Debug)]
pub(crate) struct Folded {
    /// `[d_vocab, D]`: `W_E` with a last column of zeros (standard positions) or ones (rotary).
    pub w_e: Matrix,
    /// `[n_ctx, D]`: `W_pos` with a last column of ones.
    pub w_pos: Option<Matrix>,
    pub blocks: Vec<FoldedBlock>,
    /// `[D, d_vocab]`: `W_U` with `b_U` as last row (`fold_unembed`).
    pub w_u: Matrix,
    /// The unembedding as a folded layer (`[W_Uᵀ, b_U]`), for the closed forms.
    pub unembed: FoldedLinear,
}

impl Folded {
    pub fn new(config: &TransformerConfig, w: &TransformerWeights) -> Self {
        let (d, h, e, m, v) = (config.d_model, config.n_heads, config.d_head, config.d_mlp, config.d_vocab);
        let dd = d + 1;
        let rotary = matches!(config.positional_embedding, PositionalEmbedding::Rotary { .. });
        let w_e =
            Matrix::from_fn(v, dd, |t, i| if i < d { w.w_e.data[t * d + i] } else { f64::from(u8::from(rotary)) });
        let w_pos = w
            .w_pos
            .as_ref()
            .map(|p| Matrix::from_fn(config.n_ctx, dd, |t, i| if i < d { p.data[t * d + i] } else { 1.0 }));
        let root_one = config.act_fn.root_of_one().unwrap_or(1.0);
        let blocks = w
            .blocks
            .iter()
            .map(|b| {
                let qk = |wt: &[f64], bt: &[f64]| {
                    Matrix::from_fn(dd, h * e, |i, c| {
                        let (hh, ee) = (c / e, c % e);
                        if i < d { wt[(hh * d + i) * e + ee] } else { bt[hh * e + ee] }
                    })
                };
                let wq = qk(&b.w_q.data, &b.b_q.data);
                let wk = qk(&b.w_k.data, &b.b_k.data);
                let wv = Matrix::from_fn(dd, h * (e + 1), |i, c| {
                    let (hh, ee) = (c / (e + 1), c % (e + 1));
                    match (i < d, ee < e) {
                        (true, true) => b.w_v.data[(hh * d + i) * e + ee],
                        (false, true) => b.b_v.data[hh * e + ee],
                        (true, false) => 0.0,
                        (false, false) => 1.0,
                    }
                });
                let heads = |m: &Matrix, width: usize| {
                    (0..h).map(|hh| Matrix::from_fn(dd, width, |i, c| m[(i, hh * width + c)])).collect()
                };
                let wo = Matrix::from_fn(h * (e + 1), dd, |r, j| {
                    let (hh, ee) = (r / (e + 1), r % (e + 1));
                    match (ee < e, j < d) {
                        (true, true) => b.w_o.data[(hh * e + ee) * d + j],
                        (false, true) => b.b_o.data[j] / h as f64,
                        _ => 0.0,
                    }
                });
                let w_in = Matrix::from_fn(dd, m + 1, |i, o| match (i < d, o < m) {
                    (true, true) => b.w_in.data[i * m + o],
                    (false, true) => b.b_in.data[o],
                    (true, false) => 0.0,
                    (false, false) => root_one,
                });
                let w_out = Matrix::from_fn(m + 1, dd, |o, j| match (o < m, j < d) {
                    (true, true) => b.w_out.data[o * d + j],
                    (false, true) => b.b_out.data[j],
                    _ => 0.0,
                });
                let linear = Linear::new(
                    Matrix::from_fn(m + 1, d, |o, i| w_in[(i, o)]),
                    Some((0..=m).map(|o| w_in[(d, o)]).collect()),
                )
                .expect("finite weights (checked when loaded)");
                let hidden = FoldedLinear::new(&linear, config.act_fn, false);
                FoldedBlock {
                    hidden,
                    wq_heads: heads(&wq, e),
                    wk_heads: heads(&wk, e),
                    wv_heads: heads(&wv, e + 1),
                    wq,
                    wk,
                    wv,
                    wo,
                    w_in,
                    w_out,
                }
            })
            .collect();
        let w_u = Matrix::from_fn(dd, v, |i, t| if i < d { w.w_u.data[i * v + t] } else { w.b_u.data[t] });
        let linear = Linear::new(Matrix::from_fn(v, d, |t, i| w.w_u.data[i * v + t]), Some(w.b_u.data.clone()))
            .expect("finite weights (checked when loaded)");
        let unembed = FoldedLinear::new(&linear, Activation::Identity, false);
        Folded { w_e, w_pos, blocks, w_u, unembed }
    }
}

/// Gradients with respect to the folded weights (same shapes as [`Folded`]'s).
#[derive(Clone, Debug)]
pub(crate) struct FoldedGrads {
    pub w_e: Matrix,
    pub w_pos: Option<Matrix>,
    pub blocks: Vec<BlockGrads>,
    pub w_u: Matrix,
}

#[derive(Clone, Debug)]
pub(crate) struct BlockGrads {
    pub wq: Matrix,
    pub wk: Matrix,
    pub wv: Matrix,
    pub wo: Matrix,
    pub w_in: Matrix,
    pub w_out: Matrix,
}

impl FoldedGrads {
    pub fn zeros(f: &Folded) -> Self {
        let z = |m: &Matrix| Matrix::zeros(m.nrows(), m.ncols());
        FoldedGrads {
            w_e: z(&f.w_e),
            w_pos: f.w_pos.as_ref().map(z),
            blocks: f
                .blocks
                .iter()
                .map(|b| BlockGrads {
                    wq: z(&b.wq),
                    wk: z(&b.wk),
                    wv: z(&b.wv),
                    wo: z(&b.wo),
                    w_in: z(&b.w_in),
                    w_out: z(&b.w_out),
                })
                .collect(),
            w_u: z(&f.w_u),
        }
    }

    /// Adds the gradient of the TransformerLens parameters, in [`TransformerWeights::named`]
    /// order, to `out`. Entries of the folded weights that are not parameters (the ones that
    /// carry `c`) are dropped; `b_O`, split over the heads, collects its `H` shares.
    pub fn add_to_params(&self, config: &TransformerConfig, out: &mut [f64]) {
        let (d, h, e, m, v) = (config.d_model, config.n_heads, config.d_head, config.d_mlp, config.d_vocab);
        let mut k = 0;
        let mut put = |out: &mut [f64], value: f64| {
            out[k] += value;
            k += 1;
        };
        for t in 0..v {
            for i in 0..d {
                put(out, self.w_e[(t, i)]);
            }
        }
        if let Some(p) = &self.w_pos {
            for t in 0..config.n_ctx {
                for i in 0..d {
                    put(out, p[(t, i)]);
                }
            }
        }
        for b in &self.blocks {
            for (w, width) in [(&b.wq, e), (&b.wk, e), (&b.wv, e + 1)] {
                for hh in 0..h {
                    for i in 0..d {
                        for ee in 0..e {
                            put(out, w[(i, hh * width + ee)]);
                        }
                    }
                }
                for hh in 0..h {
                    for ee in 0..e {
                        put(out, w[(d, hh * width + ee)]);
                    }
                }
            }
            for hh in 0..h {
                for ee in 0..e {
                    for j in 0..d {
                        put(out, b.wo[(hh * (e + 1) + ee, j)]);
                    }
                }
            }
            for j in 0..d {
                put(out, (0..h).map(|hh| b.wo[(hh * (e + 1) + e, j)]).sum::<f64>() / h as f64);
            }
            for i in 0..d {
                for o in 0..m {
                    put(out, b.w_in[(i, o)]);
                }
            }
            for o in 0..m {
                put(out, b.w_in[(d, o)]);
            }
            for o in 0..m {
                for j in 0..d {
                    put(out, b.w_out[(o, j)]);
                }
            }
            for j in 0..d {
                put(out, b.w_out[(m, j)]);
            }
        }
        for i in 0..d {
            for t in 0..v {
                put(out, self.w_u[(i, t)]);
            }
        }
        for t in 0..v {
            put(out, self.w_u[(d, t)]);
        }
        debug_assert_eq!(k, out.len());
    }
}
