//! rib's sequential module list of a transformer, and what flows between the modules: the
//! node layers.
//!
//! Every module takes a tuple of tensors per position and returns one; a node layer is the
//! input of the module it is named after, its coordinates the tuple **concatenated in tuple
//! order** (rib's hooks `torch.cat(inputs, dim=-1)`). All tensors are folded: the residual
//! stream is `[r, c]` with the constant coordinate `c` last.

use super::config::{LastPosModule, Normalization, PositionalEmbedding, TransformerConfig};

/// What a module computes (rib's module classes, `transformer.py` `create_sections`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `add_embed`: `(token_embed, pos_embed) ↦ token_embed + pos_embed`.
    AddEmbed,
    /// `ln*` with LNPre: `r ↦ (var(r), r)`; `dual` (parallel `ln2`):
    /// `(attn_resid, r) ↦ (var(r), r, attn_resid)`.
    LnIn { dual: bool },
    /// `ln*_out` with LNPre: `(var, r) ↦ (LN(r; var), r)` (`keep_residual`) or `LN(r; var)`;
    /// `dual`: `(var, r, attn_resid) ↦ (LN(r; var), attn_resid)`.
    LnOut { dual: bool, keep_residual: bool },
    /// `ln*` without normalisation, `ln_final_out`: unchanged.
    Identity,
    /// `ln1_out`, `ln2_out` without normalisation (`IdentitySplit`): `r ↦ (r, r)`.
    Split,
    /// `attn_in.{l}`: `(x, r) ↦ (q, k, v, r)`.
    AttnIn(usize),
    /// `attn_out.{l}`: `(q, k, v, r) ↦ (attn, r)`.
    AttnOut(usize),
    /// `add_resid1`, `add_resid2`: `(y, r) ↦ r + y` (`(r + y, r)` with `keep_residual`), at the
    /// last position only with `last_pos`.
    AddResid { last_pos: bool, keep_residual: bool },
    /// `mlp_in.{l}`: `(x, r) ↦ (x W_in, r)`.
    MlpIn(usize),
    /// `mlp_act.{l}`: `(pre, r) ↦ (σ(pre), r)`.
    MlpAct,
    /// `mlp_out.{l}`: `(post, r) ↦ (post W_out, r)`.
    MlpOut(usize),
    /// `unembed`: `x ↦ x W_U`, at the last position only with `last_pos`.
    Unembed { last_pos: bool },
}

/// One module: its id, what it computes, and the shape of its input (a node layer).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Stage {
    /// rib's module id (`ln1.0`, `attn_out.2`, `unembed`).
    pub id: String,
    pub kind: Kind,
    /// Widths of the input tuple's tensors, in tuple order.
    pub segments: Vec<usize>,
    /// Positions per sample at the input.
    pub positions: usize,
}

impl Stage {
    pub fn width(&self) -> usize {
        self.segments.iter().sum()
    }
}

/// The modules after the embeddings, input side first, and the output's width and positions.
pub(crate) struct Layout {
    pub stages: Vec<Stage>,
    pub output_width: usize,
    pub output_positions: usize,
}

/// rib's module list (`get_module_ids`) after the embeddings, with the tuple shapes between the
/// modules, for sequences of `positions` tokens.
pub(crate) fn layout(config: &TransformerConfig, last_pos: Option<LastPosModule>, positions: usize) -> Layout {
    let d = config.residual_width();
    let (h, e, m) = (config.n_heads, config.d_head, config.d_mlp);
    let ln = config.normalization == Normalization::LnPre;
    let mut stages = Vec::new();
    let mut p = positions;
    let push = |stages: &mut Vec<Stage>, id: String, kind: Kind, segments: Vec<usize>, p: usize| {
        stages.push(Stage { id, kind, segments, positions: p });
    };
    if config.positional_embedding == PositionalEmbedding::Standard {
        push(&mut stages, "add_embed".into(), Kind::AddEmbed, vec![d, d], p);
    }
    let parallel = config.parallel_attn_mlp;
    for l in 0..config.n_layers {
        if ln {
            push(&mut stages, format!("ln1.{l}"), Kind::LnIn { dual: false }, vec![d], p);
            push(&mut stages, format!("ln1_out.{l}"), Kind::LnOut { dual: false, keep_residual: true }, vec![1, d], p);
        } else {
            push(&mut stages, format!("ln1.{l}"), Kind::Identity, vec![d], p);
            push(&mut stages, format!("ln1_out.{l}"), Kind::Split, vec![d], p);
        }
        push(&mut stages, format!("attn_in.{l}"), Kind::AttnIn(l), vec![d, d], p);
        push(&mut stages, format!("attn_out.{l}"), Kind::AttnOut(l), vec![h * e, h * e, h * (e + 1), d], p);
        let last = last_pos == Some(LastPosModule::AddResid1);
        push(
            &mut stages,
            format!("add_resid1.{l}"),
            Kind::AddResid { last_pos: last, keep_residual: parallel },
            vec![d, d],
            p,
        );
        if last {
            p = 1;
        }
        if parallel {
            push(&mut stages, format!("ln2.{l}"), Kind::LnIn { dual: true }, vec![d, d], p);
            push(
                &mut stages,
                format!("ln2_out.{l}"),
                Kind::LnOut { dual: true, keep_residual: true },
                vec![1, d, d],
                p,
            );
        } else if ln {
            push(&mut stages, format!("ln2.{l}"), Kind::LnIn { dual: false }, vec![d], p);
            push(&mut stages, format!("ln2_out.{l}"), Kind::LnOut { dual: false, keep_residual: true }, vec![1, d], p);
        } else {
            push(&mut stages, format!("ln2.{l}"), Kind::Identity, vec![d], p);
            push(&mut stages, format!("ln2_out.{l}"), Kind::Split, vec![d], p);
        }
        push(&mut stages, format!("mlp_in.{l}"), Kind::MlpIn(l), vec![d, d], p);
        push(&mut stages, format!("mlp_act.{l}"), Kind::MlpAct, vec![m + 1, d], p);
        push(&mut stages, format!("mlp_out.{l}"), Kind::MlpOut(l), vec![m + 1, d], p);
        push(
            &mut stages,
            format!("add_resid2.{l}"),
            Kind::AddResid { last_pos: false, keep_residual: false },
            vec![d, d],
            p,
        );
    }
    if ln {
        push(&mut stages, "ln_final".into(), Kind::LnIn { dual: false }, vec![d], p);
        push(&mut stages, "ln_final_out".into(), Kind::LnOut { dual: false, keep_residual: false }, vec![1, d], p);
    } else {
        push(&mut stages, "ln_final".into(), Kind::Identity, vec![d], p);
        push(&mut stages, "ln_final_out".into(), Kind::Identity, vec![d], p);
    }
    let last = last_pos == Some(LastPosModule::Unembed);
    push(&mut stages, "unembed".into(), Kind::Unembed { last_pos: last }, vec![d], p);
    Layout { stages, output_width: config.d_vocab, output_positions: if last { 1 } else { p } }
}
