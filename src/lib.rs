//! # degeneracy
//!
//! Degeneracy-aware mechanistic interpretability (Bushnaq et al. 2024, arXiv 2405.10927 and
//! 2405.10928): activation and Jacobian Gram matrices streamed over a dataset, the Local
//! Interaction Basis, interaction graphs and modules, degeneracy diagnostics, and the local
//! learning coefficient estimated by SGLD.
//!
//! Everything computes in `f64`; a batch is a [`Matrix`] with one row per sample.
//!
//! ```
//! use degeneracy::{Activation, Layer, Matrix, Mlp};
//! let mlp = Mlp::init(&[4, 8, 3], Activation::Relu, true, 0)?;
//! let mut y = Matrix::default();
//! mlp.forward(Matrix::zeros(5, 4).view(), &mut y)?;
//! assert_eq!(y.shape(), (5, 3));
//! assert_eq!(mlp.node_names(), ["layers.0", "layers.1", "output"]);
//! # Ok::<(), degeneracy::Error>(())
//! ```
#![warn(missing_docs)]

pub mod ablation;
pub mod basis;
pub mod data;
pub mod diagnostics;
pub mod distributed;
mod error;
pub mod estimate;
pub mod graph;
pub mod io;
pub mod linalg;
pub mod llc;
mod matrix;
pub mod nn;
pub mod plot;
mod scratch;

pub use data::{Dataset, Targets};
pub use error::{Error, Result, ShardProblem};
pub use llc::{BehaviouralLoss, LlcConfig, LlcEstimator, LlcReport, LossModel, MlpLoss, Sampler};
pub use matrix::{Matrix, MatrixView};
pub use nn::{Activation, Elementwise, Layer, Linear, Loss, Mlp};
