//! [`Transformer`]: rib's `SequentialTransformer` as a [`Network`] (node layers at rib's module
//! ids, sections between any two of them) and as a [`Layer`] (token ids → last-position logits,
//! with parameter gradients, for training and the LLC).

use super::attention::AttentionCore;
use super::config::{LastPosModule, Normalization, PositionalEmbedding, TransformerConfig};
use super::folded::{Folded, FoldedGrads};
use super::layout::{Kind, Stage, layout};
use super::ops::{Ctx, Op, OpLinearized, OpSection, build_op, fused_len};
use super::weights::TransformerWeights;
use crate::error::{Error, Result};
use crate::matrix::{Matrix, MatrixView};
use crate::nn::{Chain, Layer, Network, NodeLayer, OUTPUT_NODE, Section, check_backward_shapes};
use std::path::Path;

/// A TransformerLens transformer in rib's sequential, bias-folded form.
///
/// Node layers are rib's module ids, in order: `add_embed` (standard positional embeddings),
/// then per block `l` `ln1.l`, `ln1_out.l`, `attn_in.l`, `attn_out.l`, `add_resid1.l`, `ln2.l`,
/// `ln2_out.l`, `mlp_in.l`, `mlp_act.l`, `mlp_out.l`, `add_resid2.l`, then `ln_final`,
/// `ln_final_out`, `unembed` and `output` (the logits). A node layer's coordinates are the input
/// tuple of its module concatenated in tuple order, each tensor folded (`docs/math.md` §3.3):
/// `ln1.l` is the residual stream `[r, c]`, `mlp_out.l` is `(post-activation [d_mlp + 1],
/// residual [d_model + 1])`, `ln2_out.l` with LayerNorm is `(variance, residual)`. Every node
/// but `output` carries the constant coordinate last. A sample is `positions` rows (one per
/// token) until [`LastPosModule`] cuts them to the last one.
///
/// Inputs are token ids as `f64` rows `[n, positions]`.
///
/// ```
/// use degeneracy::transformer::{LastPosModule, Transformer, TransformerConfig, TransformerWeights};
/// use degeneracy::{Layer, Matrix, Network};
/// let config = TransformerConfig::from_json_str(
///     r#"{"n_layers": 1, "d_model": 8, "n_heads": 2, "d_head": 4, "d_mlp": 16, "d_vocab": 5,
///         "n_ctx": 3, "act_fn": "relu", "normalization_type": null}"#,
/// )?;
/// let weights = TransformerWeights::random(&config, 0.3, 0)?;
/// let model = Transformer::new(config, weights)?.with_last_pos_module(Some(LastPosModule::AddResid1));
/// let ln2 = &model.node_layers()[model.node_index("ln2.0")?];
/// assert_eq!((ln2.positions, ln2.width), (1, 9)); // one position after add_resid1, [r, c]
/// let tokens = Matrix::from_rows(&[[0.0, 1.0, 4.0], [3.0, 3.0, 4.0]])?;
/// let mut logits = Matrix::default();
/// model.forward(tokens.view(), &mut logits)?;
/// assert_eq!(logits.shape(), (2, 5));
/// # Ok::<(), degeneracy::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Transformer {
    config: TransformerConfig,
    weights: TransformerWeights,
    folded: Folded,
    core: AttentionCore,
    last_pos: Option<LastPosModule>,
    isolate_ln_var: bool,
    positions: usize,
    stages: Vec<Stage>,
    nodes: Vec<NodeLayer>,
}

impl Transformer {
    /// A transformer of `config` with `weights` (checked against it), sequences of `n_ctx`
    /// tokens, all positions kept, LayerNorm variances isolated.
    pub fn new(config: TransformerConfig, weights: TransformerWeights) -> Result<Self> {
        config.validate()?;
        weights.check(&config)?;
        let folded = Folded::new(&config, &weights);
        let core = AttentionCore::new(&config);
        let positions = config.n_ctx;
        let mut model = Transformer {
            config,
            weights,
            folded,
            core,
            last_pos: None,
            isolate_ln_var: true,
            positions,
            stages: Vec::new(),
            nodes: Vec::new(),
        };
        model.relayout();
        Ok(model)
    }

    /// Reads a model config JSON and a TransformerLens state dict in safetensors
    /// ([`TransformerConfig::from_json_file`], [`TransformerWeights::load`]).
    pub fn load(config: impl AsRef<Path>, weights: impl AsRef<Path>) -> Result<Self> {
        let config = TransformerConfig::from_json_file(config)?;
        let weights = TransformerWeights::load(weights, &config)?;
        Self::new(config, weights)
    }

    /// Keeps only the last position from every module of this type on (rib's
    /// `last_pos_module_type`; `None` keeps all positions).
    pub fn with_last_pos_module(mut self, module: Option<LastPosModule>) -> Self {
        self.last_pos = module;
        self.relayout();
        self
    }

    /// Whether the LayerNorm variance coordinate (coordinate 0 of `ln1_out.*` and `ln2_out.*`) is
    /// kept as its own basis direction (rib's `isolate_ln_var`, default true). Models without
    /// LayerNorm have no such coordinate.
    pub fn with_isolate_ln_var(mut self, isolate: bool) -> Self {
        self.isolate_ln_var = isolate;
        self.relayout();
        self
    }

    /// Sequences of `positions ≤ n_ctx` tokens (default `n_ctx`).
    pub fn with_positions(mut self, positions: usize) -> Result<Self> {
        if positions == 0 || positions > self.config.n_ctx {
            return Err(Error::invalid("positions", positions, format!("must be in 1..={}", self.config.n_ctx)));
        }
        self.positions = positions;
        self.relayout();
        Ok(self)
    }

    fn relayout(&mut self) {
        let l = layout(&self.config, self.last_pos, self.positions);
        let ln = self.config.normalization == Normalization::LnPre;
        let mut nodes: Vec<NodeLayer> = l
            .stages
            .iter()
            .map(|s| {
                let variance_first = ln && matches!(s.kind, Kind::LnOut { keep_residual: true, .. });
                let isolated = usize::from(self.isolate_ln_var && variance_first);
                NodeLayer::new(s.id.clone(), s.width(), true, s.positions).with_isolated(isolated)
            })
            .collect();
        nodes.push(NodeLayer::new(OUTPUT_NODE, l.output_width, false, l.output_positions));
        self.stages = l.stages;
        self.nodes = nodes;
        self.position_unembed();
    }

    /// The unembedding's folded layer acts on every position of its node (its closed forms
    /// read the section's shape from it).
    fn position_unembed(&mut self) {
        let positions = self.stages.last().map_or(1, |s| s.positions);
        self.folded.unembed = self.folded.unembed.clone().with_positions(positions);
    }

    /// The architecture.
    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }

    /// The parameters (TransformerLens names and shapes).
    pub fn weights(&self) -> &TransformerWeights {
        &self.weights
    }

    /// The module type that cuts to the last position, if any.
    pub fn last_pos_module(&self) -> Option<LastPosModule> {
        self.last_pos
    }

    /// Tokens per sequence.
    pub fn positions(&self) -> usize {
        self.positions
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx { folded: &self.folded, core: &self.core, act: self.config.act_fn, eps: self.config.eps }
    }

    /// The ops from node `from` to node `to` (fused where whole blocks are included; identity
    /// modules dropped unless they are all there is).
    fn ops(&self, from: usize, to: usize) -> Vec<Box<dyn Op + '_>> {
        let mut ops = Vec::new();
        let mut at = from;
        while at < to {
            let len = fused_len(&self.stages[at..to]);
            let output = self.nodes[at + len].shape();
            if self.stages[at].kind != Kind::Identity || (at == from && at + len == to) {
                ops.push(build_op(self.ctx(), &self.stages[at..at + len], output));
            }
            at += len;
        }
        ops
    }

    /// The embeddings of token ids `[n, positions]`: the input of the first node layer
    /// (`(W_E[t], W_pos[p])` folded, or `W_E[t]` with rotary embeddings), `n · positions` rows.
    fn embed(&self, tokens: MatrixView<'_>) -> Result<Matrix> {
        let p = self.positions;
        if tokens.ncols() != p {
            return Err(Error::shape(
                "Transformer: token ids [n, positions]",
                &[tokens.nrows(), p],
                &[tokens.nrows(), tokens.ncols()],
            ));
        }
        if tokens.nrows() == 0 {
            return Err(Error::Empty { what: "Transformer: no sequences".into() });
        }
        let v = self.config.d_vocab;
        let dd = self.config.residual_width();
        let standard = self.config.positional_embedding == PositionalEmbedding::Standard;
        let width = if standard { 2 * dd } else { dd };
        let mut x = Matrix::zeros(tokens.nrows() * p, width);
        for i in 0..tokens.nrows() {
            for (pos, &t) in tokens.row(i).iter().enumerate() {
                if !(t >= 0.0 && t < v as f64 && t.fract() == 0.0) {
                    return Err(Error::invalid(
                        format!("token id at sequence {i}, position {pos}"),
                        t,
                        format!("must be an integer in 0..{v}"),
                    ));
                }
                let row = x.row_mut(i * p + pos);
                row[..dd].copy_from_slice(self.folded.w_e.row(t as usize));
                if let Some(w_pos) = &self.folded.w_pos {
                    row[dd..].copy_from_slice(w_pos.row(pos));
                }
            }
        }
        Ok(x)
    }

    /// Logits of every output position, `[n · output positions, d_vocab]`.
    pub fn logits(&self, tokens: MatrixView<'_>) -> Result<Matrix> {
        let mut x = self.embed(tokens)?;
        let mut y = Matrix::default();
        for op in self.ops(0, self.stages.len()) {
            op.forward(x.view(), &mut y)?;
            std::mem::swap(&mut x, &mut y);
        }
        Ok(x)
    }

    /// Rows of the last position of every sample.
    fn last_position(&self, all: &Matrix) -> Matrix {
        let p = self.nodes[self.nodes.len() - 1].positions;
        if p == 1 {
            return all.clone();
        }
        Matrix::from_fn(all.nrows() / p, all.ncols(), |i, j| all[(i * p + p - 1, j)])
    }

    /// Rebuilds the folded weights after the parameters changed.
    fn refold(&mut self) {
        self.folded = Folded::new(&self.config, &self.weights);
        self.position_unembed();
    }
}

impl Network for Transformer {
    fn node_layers(&self) -> &[NodeLayer] {
        &self.nodes
    }

    fn input_dim(&self) -> usize {
        self.positions
    }

    fn forward_nodes(&self, inputs: MatrixView<'_>, nodes: &[usize], acts: &mut [Matrix]) -> Result<()> {
        crate::nn::check_nodes(self, nodes, "Transformer::forward_nodes nodes")?;
        if acts.len() != nodes.len() {
            return Err(Error::shape("Transformer::forward_nodes buffers", &[nodes.len()], &[acts.len()]));
        }
        let mut x = self.embed(inputs)?;
        let mut y = Matrix::default();
        // From node to requested node through the fused ops (an attention block cut to the last
        // position computes that query only).
        let mut at = 0;
        for (slot, &k) in nodes.iter().enumerate() {
            for op in self.ops(at, k) {
                op.forward(x.view(), &mut y)?;
                std::mem::swap(&mut x, &mut y);
            }
            at = k;
            if slot + 1 == nodes.len() {
                acts[slot] = std::mem::take(&mut x);
            } else {
                acts[slot].clone_from(&x);
            }
        }
        Ok(())
    }

    fn section(&self, from: usize, to: usize) -> Result<Box<dyn Section + '_>> {
        if from >= to || to >= self.nodes.len() {
            return Err(Error::invalid(
                "section",
                format!("{from} → {to}"),
                format!("need node indices 0 ≤ from < to < {}", self.nodes.len()),
            ));
        }
        let mut ops: Vec<Box<dyn Section + '_>> =
            self.ops(from, to).into_iter().map(|op| Box::new(OpSection(op)) as Box<dyn Section + '_>).collect();
        if ops.len() == 1 {
            return Ok(ops.pop().expect("one op"));
        }
        Ok(Box::new(Chain::new(ops)?))
    }
}

impl Layer for Transformer {
    fn in_dim(&self) -> usize {
        self.positions
    }

    fn out_dim(&self) -> usize {
        self.config.d_vocab
    }

    /// The logits at the last position, `[n, d_vocab]`.
    fn forward(&self, x: MatrixView<'_>, y: &mut Matrix) -> Result<()> {
        let all = self.logits(x)?;
        *y = self.last_position(&all);
        Ok(())
    }

    /// Parameter gradients of `Σ grad_y · logits(last position)`; token ids are not
    /// differentiable, so `grad_x` is zero.
    fn backward(
        &self,
        x: MatrixView<'_>,
        grad_y: MatrixView<'_>,
        grad_x: &mut Matrix,
        grad_params: &mut [f64],
    ) -> Result<()> {
        check_backward_shapes("Transformer::backward", self, x, grad_y, grad_params)?;
        let n = x.nrows();
        let ops = self.ops(0, self.stages.len());
        let x0 = self.embed(x)?;
        let mut lins: Vec<Box<dyn OpLinearized + '_>> = Vec::with_capacity(ops.len());
        for (k, op) in ops.iter().enumerate() {
            let lin = if k == 0 { op.linearize_op(x0.view())? } else { op.linearize_op(lins[k - 1].output())? };
            lins.push(lin);
        }
        // The cotangent of every output row: grad_y at the last position, zero elsewhere.
        let p_out = self.nodes[self.nodes.len() - 1].positions;
        let mut cot = Matrix::zeros(n * p_out, self.config.d_vocab);
        for i in 0..n {
            cot.row_mut(i * p_out + p_out - 1).copy_from_slice(grad_y.row(i));
        }
        let mut grads = FoldedGrads::zeros(&self.folded);
        let mut next = Matrix::default();
        for lin in lins.iter().rev() {
            lin.param_grads(cot.view(), &mut grads)?;
            lin.vjp(cot.view(), &mut next)?;
            std::mem::swap(&mut cot, &mut next);
        }
        // The embeddings: W_E[t] and W_pos[p] receive their rows' cotangents.
        let (p, dd) = (self.positions, self.config.residual_width());
        for i in 0..n {
            for pos in 0..p {
                let g = cot.row(i * p + pos);
                let t = x[(i, pos)] as usize;
                for (a, b) in grads.w_e.row_mut(t).iter_mut().zip(&g[..dd]) {
                    *a += b;
                }
                if let Some(w_pos) = &mut grads.w_pos {
                    for (a, b) in w_pos.row_mut(pos).iter_mut().zip(&g[dd..]) {
                        *a += b;
                    }
                }
            }
        }
        grads.add_to_params(&self.config, grad_params);
        *grad_x = Matrix::zeros(n, p);
        Ok(())
    }

    fn n_params(&self) -> usize {
        self.weights.n_params()
    }

    fn copy_params(&self, out: &mut [f64]) -> Result<()> {
        if out.len() != self.n_params() {
            return Err(Error::shape("Transformer::copy_params", &[self.n_params()], &[out.len()]));
        }
        let mut at = 0;
        for (_, t) in self.weights.named() {
            out[at..at + t.data.len()].copy_from_slice(&t.data);
            at += t.data.len();
        }
        Ok(())
    }

    fn set_params(&mut self, params: &[f64]) -> Result<()> {
        if params.len() != self.n_params() {
            return Err(Error::shape("Transformer::set_params", &[self.n_params()], &[params.len()]));
        }
        if let Some(k) = params.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite { what: "Transformer::set_params".into(), row: 0, col: k, value: params[k] });
        }
        let mut at = 0;
        for t in self.weights.tensors_mut() {
            let len = t.data.len();
            t.data.copy_from_slice(&params[at..at + len]);
            at += len;
        }
        self.refold();
        Ok(())
    }
}
