//! The architecture of a transformer: the TransformerLens `HookedTransformerConfig` fields rib's
//! `SequentialTransformerConfig` reads, parsed strictly.

use crate::error::{Error, Result};
use crate::nn::Activation;
use serde_json::{Map, Value};
use std::path::Path;

/// How the residual stream is normalised before attention, the MLP and the unembedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Normalization {
    /// No normalisation (`normalization_type: null`): the `ln*` modules are identities.
    None,
    /// LayerNorm without affine parameters (`"LNPre"`), split as rib splits it: `ln*` computes the
    /// variance, `ln*_out` normalises with it.
    LnPre,
}

/// Where positions enter the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PositionalEmbedding {
    /// Learned `W_pos` added to the token embedding (`"standard"`).
    Standard,
    /// Rotary embeddings of the first `dim` query/key coordinates of every head (`"rotary"`);
    /// `neox` rotates the halves `(i, i + dim/2)` (GPT-NeoX, Llama), otherwise adjacent pairs
    /// `(2i, 2i + 1)` (GPT-J), as rib chooses from `original_architecture`.
    Rotary {
        /// Rotated coordinates per head (`rotary_dim`).
        dim: usize,
        /// Halves (GPT-NeoX) instead of adjacent pairs (GPT-J).
        neox: bool,
    },
}

/// The module type after which only the last position is kept (rib's `last_pos_module_type`):
/// what a model trained on its last position needs (modular addition).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LastPosModule {
    /// Every `add_resid1.*`: everything after the first attention block has one position.
    AddResid1,
    /// `unembed`: only the logits are cut to the last position.
    Unembed,
}

impl LastPosModule {
    /// Parses rib's names `add_resid1` and `unembed`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "add_resid1" => Ok(LastPosModule::AddResid1),
            "unembed" => Ok(LastPosModule::Unembed),
            _ => Err(Error::invalid("last_pos_module_type", name, "expected add_resid1 or unembed")),
        }
    }

    /// rib's name.
    pub fn name(self) -> &'static str {
        match self {
            LastPosModule::AddResid1 => "add_resid1",
            LastPosModule::Unembed => "unembed",
        }
    }
}

/// A transformer's architecture (TransformerLens `HookedTransformerConfig` names).
///
/// ```
/// use degeneracy::transformer::{Normalization, TransformerConfig};
/// let config = TransformerConfig::from_json_str(
///     r#"{"n_layers": 1, "d_model": 8, "n_heads": 2, "d_head": 4, "d_mlp": 16, "d_vocab": 5,
///         "n_ctx": 3, "act_fn": "relu", "normalization_type": null,
///         "positional_embedding_type": "standard", "model_name": "toy"}"#,
/// )?;
/// assert_eq!((config.n_heads, config.normalization), (2, Normalization::None));
/// // A value that changes the computation and is not implemented is refused by name.
/// let err = TransformerConfig::from_json_str(r#"{"n_layers": 1, "d_model": 8, "n_heads": 2,
///     "d_head": 4, "d_mlp": 16, "d_vocab": 5, "n_ctx": 3, "act_fn": "solu_ln"}"#).unwrap_err();
/// assert!(err.to_string().contains("act_fn"));
/// # Ok::<(), degeneracy::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct TransformerConfig {
    /// Transformer blocks.
    pub n_layers: usize,
    /// Residual stream width.
    pub d_model: usize,
    /// Attention heads per block.
    pub n_heads: usize,
    /// Width of a head's queries, keys and values.
    pub d_head: usize,
    /// MLP hidden width.
    pub d_mlp: usize,
    /// Vocabulary size (token ids `0..d_vocab`, and the logits).
    pub d_vocab: usize,
    /// Context length (positions of `W_pos`, the longest sequence).
    pub n_ctx: usize,
    /// MLP activation: `relu`, `gelu` (exact) or `gelu_new` ([`Activation::GeluTanh`]).
    pub act_fn: Activation,
    /// `normalization_type`: null, `"LNPre"`, or `"LN"` (its affine parameters are folded into the
    /// following weights when loading, which leaves `LNPre`).
    pub normalization: Normalization,
    /// Whether the stored weights have LayerNorm affine parameters to fold (`"LN"`).
    pub ln_affine: bool,
    /// `positional_embedding_type` (and `rotary_dim`).
    pub positional_embedding: PositionalEmbedding,
    /// Attention and MLP read the same residual stream (`parallel_attn_mlp`, Pythia).
    pub parallel_attn_mlp: bool,
    /// LayerNorm's `ε`.
    pub eps: f64,
    /// Divide attention scores by `√d_head` (`use_attn_scale`).
    pub use_attn_scale: bool,
}

impl TransformerConfig {
    /// Reads a config JSON file (see [`TransformerConfig::from_json_str`]); errors name the file.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text).map_err(|e| match e {
            Error::InvalidParameter { name, value, reason } => {
                Error::InvalidParameter { name: format!("{}: {name}", path.display()), value, reason }
            }
            Error::Malformed { reason, .. } => Error::malformed(path, "json", reason),
            other => other,
        })
    }

    /// Parses the fields rib reads from a TransformerLens config: `n_layers`, `d_model`,
    /// `n_heads`, `d_head`, `d_mlp`, `d_vocab`, `n_ctx`, `act_fn`, `normalization_type`,
    /// `positional_embedding_type`, `rotary_dim`, `parallel_attn_mlp`, `eps`, `use_attn_scale`
    /// (and `original_architecture` for the rotary convention).
    ///
    /// Other TransformerLens fields are checked where a value would change the computation and
    /// is not implemented here (`attn_only`, `attention_dir`, `gated_mlp`, `final_rms`,
    /// `use_local_attn`, `scale_attn_by_inverse_layer_idx`, `post_embedding_ln`, `d_vocab_out`,
    /// `n_key_value_heads`, `rotary_base`, `attn_scale`): such a value is an error naming the
    /// key. Fields that do not change the computation (names, seeds, dtypes, devices, …) are
    /// ignored.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| Error::malformed("model config", "json", e.to_string()))?;
        let Value::Object(map) = value else {
            return Err(Error::malformed("model config", "json", "expected an object"));
        };
        Self::from_map(&map)
    }

    fn from_map(map: &Map<String, Value>) -> Result<Self> {
        let n_heads = positive(map, "n_heads")?;
        let d_head = positive(map, "d_head")?;
        let act_fn = match string(map, "act_fn")?.as_deref() {
            Some("relu") => Activation::Relu,
            Some("gelu") => Activation::Gelu,
            Some("gelu_new") => Activation::GeluTanh,
            other => {
                return Err(Error::invalid(
                    "act_fn",
                    format!("{other:?}"),
                    "supported: relu, gelu, gelu_new (rib's MLPAct)",
                ));
            }
        };
        let (normalization, ln_affine) = match string(map, "normalization_type")?.as_deref() {
            None => (Normalization::None, false),
            Some("LNPre") => (Normalization::LnPre, false),
            Some("LN") => (Normalization::LnPre, true),
            Some(other) => {
                return Err(Error::invalid(
                    "normalization_type",
                    other,
                    "supported: null, LNPre, LN (affine folded into the next weights)",
                ));
            }
        };
        let architecture = string(map, "original_architecture")?;
        let positional_embedding = match string(map, "positional_embedding_type")?.as_deref() {
            None | Some("standard") => PositionalEmbedding::Standard,
            Some("rotary") => {
                let dim = match map.get("rotary_dim") {
                    Some(Value::Null) | None => {
                        return Err(Error::invalid("rotary_dim", "null", "rotary embeddings need rotary_dim"));
                    }
                    _ => positive(map, "rotary_dim")?,
                };
                if dim % 2 != 0 || dim > d_head {
                    return Err(Error::invalid(
                        "rotary_dim",
                        dim,
                        format!("must be even and at most d_head = {d_head}"),
                    ));
                }
                let neox = matches!(architecture.as_deref(), Some("GPTNeoXForCausalLM" | "LlamaForCausalLM"));
                PositionalEmbedding::Rotary { dim, neox }
            }
            Some(other) => {
                return Err(Error::invalid("positional_embedding_type", other, "supported: standard, rotary"));
            }
        };
        let use_attn_scale = boolean(map, "use_attn_scale", true)?;
        let config = TransformerConfig {
            n_layers: positive(map, "n_layers")?,
            d_model: positive(map, "d_model")?,
            n_heads,
            d_head,
            d_mlp: positive(map, "d_mlp")?,
            d_vocab: positive(map, "d_vocab")?,
            n_ctx: positive(map, "n_ctx")?,
            act_fn,
            normalization,
            ln_affine,
            positional_embedding,
            parallel_attn_mlp: boolean(map, "parallel_attn_mlp", false)?,
            eps: number(map, "eps")?.unwrap_or(1e-5),
            use_attn_scale,
        };
        config.check_unsupported(map)?;
        config.validate()?;
        Ok(config)
    }

    /// Errors for fields whose values change the computation in ways not implemented here.
    fn check_unsupported(&self, map: &Map<String, Value>) -> Result<()> {
        for (key, default) in [
            ("attn_only", false),
            ("gated_mlp", false),
            ("final_rms", false),
            ("use_local_attn", false),
            ("scale_attn_by_inverse_layer_idx", false),
            ("post_embedding_ln", false),
        ] {
            if boolean(map, key, default)? != default {
                return Err(Error::invalid(key, !default, format!("only {default} is supported")));
            }
        }
        if let Some(dir) = string(map, "attention_dir")?.filter(|d| d != "causal") {
            return Err(Error::invalid("attention_dir", dir, "only causal attention is supported"));
        }
        if let Some(v) = integer(map, "d_vocab_out")?.filter(|&v| v != -1 && v != self.d_vocab as i64) {
            return Err(Error::invalid("d_vocab_out", v, format!("must equal d_vocab = {}", self.d_vocab)));
        }
        if let Some(v) = integer(map, "n_key_value_heads")?.filter(|&v| v != self.n_heads as i64) {
            return Err(Error::invalid("n_key_value_heads", v, "grouped-query attention is not supported"));
        }
        let rotary = matches!(self.positional_embedding, PositionalEmbedding::Rotary { .. });
        if let Some(base) = number(map, "rotary_base")?.filter(|&b| rotary && b != 10000.0) {
            return Err(Error::invalid("rotary_base", base, "rib's rotary embeddings use base 10000"));
        }
        if let Some(scale) = number(map, "attn_scale")? {
            let expected = self.attn_scale();
            if (scale - expected).abs() > 1e-9 * expected {
                return Err(Error::invalid(
                    "attn_scale",
                    scale,
                    format!("only {expected} (√d_head with use_attn_scale, else 1) is supported"),
                ));
            }
        }
        Ok(())
    }

    /// Checks the sizes; errors name the field.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("n_layers", self.n_layers),
            ("d_model", self.d_model),
            ("n_heads", self.n_heads),
            ("d_head", self.d_head),
            ("d_mlp", self.d_mlp),
            ("d_vocab", self.d_vocab),
            ("n_ctx", self.n_ctx),
        ] {
            if v == 0 {
                return Err(Error::invalid(name, 0, "must be at least 1"));
            }
        }
        if !matches!(self.act_fn, Activation::Relu | Activation::Gelu | Activation::GeluTanh) {
            return Err(Error::invalid("act_fn", self.act_fn.name(), "supported: relu, gelu, gelu_new"));
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(Error::invalid("eps", self.eps, "must be finite and ≥ 0"));
        }
        if self.parallel_attn_mlp && self.normalization == Normalization::None {
            return Err(Error::invalid(
                "parallel_attn_mlp",
                true,
                "needs normalization_type LNPre or LN (rib's parallel blocks split through DualLayerNorm)",
            ));
        }
        if let PositionalEmbedding::Rotary { dim, .. } = self.positional_embedding {
            if dim % 2 != 0 || dim > self.d_head || dim == 0 {
                return Err(Error::invalid("rotary_dim", dim, format!("must be even, in 2..={}", self.d_head)));
            }
        }
        Ok(())
    }

    /// What attention scores are divided by: `√d_head`, or 1 without `use_attn_scale`.
    pub fn attn_scale(&self) -> f64 {
        if self.use_attn_scale { (self.d_head as f64).sqrt() } else { 1.0 }
    }

    /// The folded residual width `d_model + 1` (the constant coordinate last).
    pub fn residual_width(&self) -> usize {
        self.d_model + 1
    }
}

fn positive(map: &Map<String, Value>, key: &str) -> Result<usize> {
    match map.get(key) {
        None => Err(Error::invalid(key, "missing", "required field")),
        Some(v) => v
            .as_u64()
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .ok_or_else(|| Error::invalid(key, v, "expected a positive integer")),
    }
}

fn integer(map: &Map<String, Value>, key: &str) -> Result<Option<i64>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| Error::invalid(key, v, "expected an integer")),
    }
}

fn number(map: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| Error::invalid(key, v, "expected a number")),
    }
}

fn string(map: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(Error::invalid(key, v, "expected a string or null")),
    }
}

fn boolean(map: &Map<String, Value>, key: &str, default: bool) -> Result<bool> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(Error::invalid(key, v, "expected true or false")),
    }
}
