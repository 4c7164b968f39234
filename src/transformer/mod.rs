//! Transformers as rib cuts them: TransformerLens weights, rib's sequential module list, bias
//! folding, node layers at module ids, and the sections between them.
//!
//! A [`Transformer`] is one more [`crate::Network`]: the basis, edge, ablation and diagnostics
//! estimators take it as they take an MLP. Positions are rows: a batch of `n` token sequences is
//! `n · positions` rows at a node layer, sample-major. The definitions (node-layer layouts, the
//! position sums, the LayerNorm split, the folding) are in `docs/math.md` §3.3.
//!
//! ```
//! use degeneracy::basis::{Basis, LibConfig, fit_bases};
//! use degeneracy::transformer::{LastPosModule, Transformer, TransformerConfig, TransformerWeights};
//! use degeneracy::Matrix;
//! let config = TransformerConfig::from_json_str(
//!     r#"{"n_layers": 1, "d_model": 6, "n_heads": 2, "d_head": 3, "d_mlp": 8, "d_vocab": 4,
//!         "n_ctx": 3, "act_fn": "relu", "normalization_type": null}"#,
//! )?;
//! let model = Transformer::new(config.clone(), TransformerWeights::random(&config, 0.5, 1)?)?
//!     .with_last_pos_module(Some(LastPosModule::AddResid1));
//! let tokens = Matrix::from_fn(16, 3, |i, p| if p == 2 { 3.0 } else { ((i >> p) % 3) as f64 });
//! let nodes = ["ln1.0", "ln2.0", "unembed", "output"].map(String::from).to_vec();
//! let lib = LibConfig { node_layers: Some(nodes), ..LibConfig::default() };
//! let bases = fit_bases(&model, &tokens, &lib)?;
//! assert_eq!(bases[0].orig_dim(), 7); // [r, c] at each of the 3 positions
//! # Ok::<(), degeneracy::Error>(())
//! ```

mod attention;
mod config;
mod folded;
mod layout;
mod model;
mod ops;
mod tokens;
mod weights;

pub use config::{LastPosModule, Normalization, PositionalEmbedding, TransformerConfig};
pub use model::Transformer;
pub use tokens::read_tokens;
pub use weights::{BlockWeights, Tensor, TransformerWeights};
