//! A transformer's parameters under their TransformerLens names and shapes, and their strict
//! safetensors reading and writing.

use super::config::{Normalization, PositionalEmbedding, TransformerConfig};
use crate::error::{Error, Result};
use crate::io::TensorFile;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use std::collections::BTreeMap;
use std::path::Path;

/// A dense tensor: row-major values and their shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// The shape (TransformerLens convention, e.g. `W_Q [n_heads, d_model, d_head]`).
    pub shape: Vec<usize>,
    /// The values, row-major (last index fastest).
    pub data: Vec<f64>,
}

impl Tensor {
    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor { shape: shape.to_vec(), data: vec![0.0; shape.iter().product()] }
    }

    /// A tensor of `shape` from row-major `data`; errors unless the sizes agree.
    pub fn new(shape: &[usize], data: Vec<f64>) -> Result<Self> {
        if data.len() != shape.iter().product::<usize>() {
            return Err(Error::shape("Tensor::new (values vs shape)", &[shape.iter().product()], &[data.len()]));
        }
        Ok(Tensor { shape: shape.to_vec(), data })
    }

    /// Entry `index` (one index per axis).
    pub fn at(&self, index: &[usize]) -> f64 {
        let mut flat = 0;
        for (i, (&k, &n)) in index.iter().zip(&self.shape).enumerate() {
            debug_assert!(k < n, "index {k} ≥ {n} on axis {i}");
            flat = flat * n + k;
        }
        self.data[flat]
    }
}

/// The parameters of one transformer block (TransformerLens `blocks.{l}.attn.*`, `blocks.{l}.mlp.*`).
#[derive(Clone, Debug, PartialEq)]
pub struct BlockWeights {
    /// `W_Q [n_heads, d_model, d_head]`.
    pub w_q: Tensor,
    /// `b_Q [n_heads, d_head]`.
    pub b_q: Tensor,
    /// `W_K [n_heads, d_model, d_head]`.
    pub w_k: Tensor,
    /// `b_K [n_heads, d_head]`.
    pub b_k: Tensor,
    /// `W_V [n_heads, d_model, d_head]`.
    pub w_v: Tensor,
    /// `b_V [n_heads, d_head]`.
    pub b_v: Tensor,
    /// `W_O [n_heads, d_head, d_model]`.
    pub w_o: Tensor,
    /// `b_O [d_model]`.
    pub b_o: Tensor,
    /// `W_in [d_model, d_mlp]`.
    pub w_in: Tensor,
    /// `b_in [d_mlp]`.
    pub b_in: Tensor,
    /// `W_out [d_mlp, d_model]`.
    pub w_out: Tensor,
    /// `b_out [d_model]`.
    pub b_out: Tensor,
}

/// All parameters of a transformer, as a TransformerLens `state_dict` names them.
///
/// The flat parameter order of [`crate::transformer::Transformer`] (its [`crate::Layer`]
/// implementation, the LLC) is [`TransformerWeights::named`]'s order.
#[derive(Clone, Debug, PartialEq)]
pub struct TransformerWeights {
    /// `embed.W_E [d_vocab, d_model]`.
    pub w_e: Tensor,
    /// `pos_embed.W_pos [n_ctx, d_model]` (standard positional embeddings only).
    pub w_pos: Option<Tensor>,
    /// `blocks.{l}`.
    pub blocks: Vec<BlockWeights>,
    /// `unembed.W_U [d_model, d_vocab]`.
    pub w_u: Tensor,
    /// `unembed.b_U [d_vocab]`.
    pub b_u: Tensor,
}

const BLOCK_TENSORS: [&str; 12] = [
    "attn.W_Q",
    "attn.b_Q",
    "attn.W_K",
    "attn.b_K",
    "attn.W_V",
    "attn.b_V",
    "attn.W_O",
    "attn.b_O",
    "mlp.W_in",
    "mlp.b_in",
    "mlp.W_out",
    "mlp.b_out",
];

/// TransformerLens buffers that are not parameters: accepted in a state dict and checked or
/// recomputed, never read as weights.
const BLOCK_BUFFERS: [&str; 4] = ["attn.mask", "attn.IGNORE", "attn.rotary_sin", "attn.rotary_cos"];

impl TransformerWeights {
    /// The parameter names and shapes `config` needs, in the flat parameter order.
    pub fn expected(config: &TransformerConfig) -> Vec<(String, Vec<usize>)> {
        let (d, h, e, m, v) = (config.d_model, config.n_heads, config.d_head, config.d_mlp, config.d_vocab);
        let mut out = vec![("embed.W_E".to_string(), vec![v, d])];
        if config.positional_embedding == PositionalEmbedding::Standard {
            out.push(("pos_embed.W_pos".into(), vec![config.n_ctx, d]));
        }
        for l in 0..config.n_layers {
            let shapes = [
                vec![h, d, e],
                vec![h, e],
                vec![h, d, e],
                vec![h, e],
                vec![h, d, e],
                vec![h, e],
                vec![h, e, d],
                vec![d],
                vec![d, m],
                vec![m],
                vec![m, d],
                vec![d],
            ];
            for (name, shape) in BLOCK_TENSORS.iter().zip(shapes) {
                out.push((format!("blocks.{l}.{name}"), shape));
            }
        }
        out.push(("unembed.W_U".into(), vec![d, v]));
        out.push(("unembed.b_U".into(), vec![v]));
        out
    }

    /// The tensors with their names, in the flat parameter order.
    pub fn named(&self) -> Vec<(String, &Tensor)> {
        let mut out = vec![("embed.W_E".to_string(), &self.w_e)];
        if let Some(p) = &self.w_pos {
            out.push(("pos_embed.W_pos".into(), p));
        }
        for (l, b) in self.blocks.iter().enumerate() {
            let tensors =
                [&b.w_q, &b.b_q, &b.w_k, &b.b_k, &b.w_v, &b.b_v, &b.w_o, &b.b_o, &b.w_in, &b.b_in, &b.w_out, &b.b_out];
            for (name, t) in BLOCK_TENSORS.iter().zip(tensors) {
                out.push((format!("blocks.{l}.{name}"), t));
            }
        }
        out.push(("unembed.W_U".into(), &self.w_u));
        out.push(("unembed.b_U".into(), &self.b_u));
        out
    }

    /// The tensors, mutably, in the flat parameter order.
    pub fn tensors_mut(&mut self) -> Vec<&mut Tensor> {
        let mut out = vec![&mut self.w_e];
        if let Some(p) = &mut self.w_pos {
            out.push(p);
        }
        for b in &mut self.blocks {
            out.extend([
                &mut b.w_q,
                &mut b.b_q,
                &mut b.w_k,
                &mut b.b_k,
                &mut b.w_v,
                &mut b.b_v,
                &mut b.w_o,
                &mut b.b_o,
                &mut b.w_in,
                &mut b.b_in,
                &mut b.w_out,
                &mut b.b_out,
            ]);
        }
        out.push(&mut self.w_u);
        out.push(&mut self.b_u);
        out
    }

    /// Number of parameters.
    pub fn n_params(&self) -> usize {
        self.named().iter().map(|(_, t)| t.data.len()).sum()
    }

    /// Errors unless every tensor has the shape `config` needs and finite values.
    pub fn check(&self, config: &TransformerConfig) -> Result<()> {
        let expected = Self::expected(config);
        let named = self.named();
        if expected.len() != named.len() {
            return Err(Error::invalid(
                "transformer weights",
                format!("{} tensors", named.len()),
                format!("the config needs {}", expected.len()),
            ));
        }
        for ((name, shape), (_, t)) in expected.iter().zip(&named) {
            if &t.shape != shape || t.data.len() != shape.iter().product::<usize>() {
                return Err(Error::invalid(
                    format!("tensor `{name}`"),
                    format!("shape {:?}", t.shape),
                    format!("expected {shape:?}"),
                ));
            }
            if let Some(k) = t.data.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite { what: format!("tensor `{name}`"), row: 0, col: k, value: t.data[k] });
            }
        }
        Ok(())
    }

    /// Random weights for `config` (normal, standard deviation `scale`, seeded): for tests and
    /// for training from scratch.
    pub fn random(config: &TransformerConfig, scale: f64, seed: u64) -> Result<Self> {
        if !(scale.is_finite() && scale >= 0.0) {
            return Err(Error::invalid("scale", scale, "must be finite and ≥ 0"));
        }
        let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(seed);
        let normal = Normal::new(0.0, scale).map_err(|e| Error::invalid("scale", scale, e.to_string()))?;
        let tensors = Self::expected(config)
            .into_iter()
            .map(|(name, shape)| {
                let data = (0..shape.iter().product::<usize>()).map(|_| normal.sample(&mut rng)).collect();
                (name, Tensor { shape, data })
            })
            .collect();
        Self::from_map(config, tensors, Path::new("<random>"))
    }

    /// Reads a TransformerLens `state_dict` saved as safetensors (names unchanged, F64 or F32).
    ///
    /// Strict: every parameter `config` needs must be present with its shape, and every tensor
    /// in the file must be one of them or a known buffer (`blocks.{l}.attn.mask`, checked to be
    /// the causal mask; `IGNORE`, `rotary_sin`, `rotary_cos`, recomputed). With
    /// `normalization_type: "LN"` the LayerNorms' `ln1.w`, `ln1.b`, `ln2.w`, `ln2.b`,
    /// `ln_final.w`, `ln_final.b` are read too and folded into the weights that follow them
    /// (TransformerLens' `fold_ln`), which leaves an `LNPre` model.
    ///
    /// The file is read with the crate's strict [`TensorFile`], so a transformer checkpoint is
    /// refused exactly as an MLP's is, with the same typed errors naming the file and the tensor:
    /// [`Error::MissingTensor`], [`Error::TensorShape`] (or [`Error::TransposedTensor`]),
    /// [`Error::Dtype`], [`Error::NonFinite`], [`Error::UnexpectedTensor`] (every tensor nothing
    /// reads); a stored mask that is not causal is [`Error::Malformed`].
    pub fn load(path: impl AsRef<Path>, config: &TransformerConfig) -> Result<Self> {
        let path = path.as_ref();
        let mut file = TensorFile::open(path)?;
        let mut tensors = BTreeMap::new();
        for (name, shape) in Self::expected(config) {
            let data = file.take(&name, &shape)?;
            tensors.insert(name, Tensor { shape, data });
        }
        let mut ln = BTreeMap::new();
        if config.ln_affine {
            let d = config.d_model;
            let mut names: Vec<String> = Vec::new();
            for l in 0..config.n_layers {
                for which in ["ln1", "ln2"] {
                    names.push(format!("blocks.{l}.{which}.w"));
                    names.push(format!("blocks.{l}.{which}.b"));
                }
            }
            names.push("ln_final.w".into());
            names.push("ln_final.b".into());
            for name in names {
                let data = file.take(&name, &[d])?;
                ln.insert(name, data);
            }
        }
        for l in 0..config.n_layers {
            for buffer in BLOCK_BUFFERS {
                let name = format!("blocks.{l}.{buffer}");
                if buffer == "attn.mask" {
                    if let Some(mask) = file.take_buffer(&name)? {
                        check_causal_mask(path, &name, &mask)?;
                    }
                } else {
                    file.take_buffer(&name)?;
                }
            }
        }
        file.finish()?;
        let mut weights = Self::from_map(config, tensors, path)?;
        if config.ln_affine {
            weights.fold_layer_norms(config, &ln);
        }
        weights.check(config).map_err(|e| match e {
            Error::NonFinite { what, row, col, value } => {
                Error::NonFinite { what: format!("{}: {what}", path.display()), row, col, value }
            }
            other => other,
        })?;
        Ok(weights)
    }

    fn from_map(config: &TransformerConfig, mut tensors: BTreeMap<String, Tensor>, path: &Path) -> Result<Self> {
        let mut take = |name: &str| {
            tensors.remove(name).ok_or_else(|| Error::MissingTensor { path: path.to_path_buf(), name: name.into() })
        };
        let w_e = take("embed.W_E")?;
        let w_pos = match config.positional_embedding {
            PositionalEmbedding::Standard => Some(take("pos_embed.W_pos")?),
            PositionalEmbedding::Rotary { .. } => None,
        };
        let mut blocks = Vec::with_capacity(config.n_layers);
        for l in 0..config.n_layers {
            let mut t = |n: &str| take(&format!("blocks.{l}.{n}"));
            blocks.push(BlockWeights {
                w_q: t("attn.W_Q")?,
                b_q: t("attn.b_Q")?,
                w_k: t("attn.W_K")?,
                b_k: t("attn.b_K")?,
                w_v: t("attn.W_V")?,
                b_v: t("attn.b_V")?,
                w_o: t("attn.W_O")?,
                b_o: t("attn.b_O")?,
                w_in: t("mlp.W_in")?,
                b_in: t("mlp.b_in")?,
                w_out: t("mlp.W_out")?,
                b_out: t("mlp.b_out")?,
            });
        }
        Ok(TransformerWeights { w_e, w_pos, blocks, w_u: take("unembed.W_U")?, b_u: take("unembed.b_U")? })
    }

    /// `LN(x) W + b_W = LNPre(x) (diag(w) W) + (b W + b_W)` for every weight read after a
    /// LayerNorm with affine `(w, b)`.
    fn fold_layer_norms(&mut self, config: &TransformerConfig, ln: &BTreeMap<String, Vec<f64>>) {
        let (d, h, e) = (config.d_model, config.n_heads, config.d_head);
        // W [.., d, cols] (stacked `groups` times), bias [.., cols].
        let fold = |w: &mut Tensor, bias: &mut Tensor, groups: usize, cols: usize, scale: &[f64], shift: &[f64]| {
            for g in 0..groups {
                for c in 0..cols {
                    let mut extra = 0.0;
                    for i in 0..d {
                        let k = (g * d + i) * cols + c;
                        extra += shift[i] * w.data[k];
                        w.data[k] *= scale[i];
                    }
                    bias.data[g * cols + c] += extra;
                }
            }
        };
        for (l, b) in self.blocks.iter_mut().enumerate() {
            let (w1, b1) = (&ln[&format!("blocks.{l}.ln1.w")], &ln[&format!("blocks.{l}.ln1.b")]);
            fold(&mut b.w_q, &mut b.b_q, h, e, w1, b1);
            fold(&mut b.w_k, &mut b.b_k, h, e, w1, b1);
            fold(&mut b.w_v, &mut b.b_v, h, e, w1, b1);
            let (w2, b2) = (&ln[&format!("blocks.{l}.ln2.w")], &ln[&format!("blocks.{l}.ln2.b")]);
            fold(&mut b.w_in, &mut b.b_in, 1, config.d_mlp, w2, b2);
        }
        fold(&mut self.w_u, &mut self.b_u, 1, config.d_vocab, &ln["ln_final.w"], &ln["ln_final.b"]);
        debug_assert!(config.normalization == Normalization::LnPre);
    }

    /// Writes the parameters as a TransformerLens `state_dict` (F64, names unchanged) that
    /// [`TransformerWeights::load`] and PyTorch's `load_state_dict` read back.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let tensors = self.named().into_iter().map(|(name, t)| (name, t.shape.clone(), &t.data[..])).collect();
        crate::io::write_f64_tensors(path.as_ref(), tensors)
    }
}

/// Errors unless a stored attention mask is the causal (lower-triangular) one.
fn check_causal_mask(path: &Path, name: &str, mask: &(Vec<usize>, Vec<f64>)) -> Result<()> {
    let (shape, values) = mask;
    let causal = shape.len() == 2
        && shape[0] == shape[1]
        && values.iter().enumerate().all(|(k, &v)| (v != 0.0) == (k % shape[1] <= k / shape[1]));
    if causal {
        Ok(())
    } else {
        Err(Error::malformed(path, "safetensors", format!("buffer `{name}` is not a causal mask")))
    }
}
