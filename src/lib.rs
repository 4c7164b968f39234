//! # degeneracy
//!
//! Degeneracy-aware mechanistic interpretability (Bushnaq et al. 2024, *Using Degeneracy in
//! the Loss Landscape for Mechanistic Interpretability*, arXiv 2405.10927, and *The Local
//! Interaction Basis*, arXiv 2405.10928).
//!
//! A trained network has many parameter directions that do not change what it computes:
//! activations or gradients that span low-dimensional subspaces, ReLUs that fire together. The
//! crate measures them ([`diagnostics`]), measures the effective number of parameters they leave
//! (the local learning coefficient, [`llc`]), and builds coordinates in which they are invisible:
//! the Local Interaction Basis ([`basis`]), whose directions interact sparsely ([`graph`]) and
//! carry the network's computation with few directions and edges ([`ablation`]).
//!
//! Everything computes in `f64`; a batch is a [`Matrix`] with one row per sample. Estimators
//! stream over data and merge across threads and processes to rounding (1e-12 relative in the
//! tests; results do not depend on the thread count) ([`estimate`]); the same
//! functions run split over MPI ranks or shard files ([`distributed`], `docs/distributed.md`).
//!
//! The interaction basis of every node layer of an MLP, and its interaction edges:
//!
//! ```
//! use degeneracy::basis::{Basis, LibConfig, fit_bases};
//! use degeneracy::graph::{EdgeConfig, compute_edges};
//! use degeneracy::{Activation, Mlp, data::modular_addition};
//!
//! let data = modular_addition(7)?; // 49 samples, one-hot(a) ⊕ one-hot(b)
//! let mlp = Mlp::init(&[14, 16, 7], Activation::Relu, true, 0)?;
//! let bases = fit_bases(&mlp, &data, &LibConfig::default())?; // layers.0, layers.1, output
//! let lambda = bases[1].lambda.as_ref().unwrap(); // importance of each LIB direction
//! assert_eq!(lambda.len(), bases[1].dim());
//! let edges = compute_edges(&mlp, &data, &bases, &EdgeConfig::default())?;
//! assert_eq!(edges[0].e_hat.shape(), (bases[1].dim(), bases[0].dim()));
//! # Ok::<(), degeneracy::Error>(())
//! ```
//!
//! The local learning coefficient of a regression model by SGLD (for a non-degenerate minimum
//! it is half the number of parameters):
//!
//! ```
//! use degeneracy::{Activation, Dataset, LlcConfig, LlcEstimator, Loss, Matrix, Mlp, MlpLoss, Targets};
//! use degeneracy::llc::LossModel;
//!
//! let x = Matrix::from_fn(400, 3, |i, j| ((i * 7 + j * 13) % 17) as f64 / 17.0 - 0.5);
//! let mlp = Mlp::init(&[3, 2], Activation::Identity, false, 1)?; // 6 weights
//! let mut y = Matrix::default();
//! degeneracy::Layer::forward(&mlp, x.view(), &mut y)?;
//! let model = MlpLoss::new(&mlp, Loss::Mse, Dataset::new(x, Targets::Values(y))?)?;
//! let config = LlcConfig::new(0.05).localization(1.0).batch_size(100).num_draws(1000).seed(0);
//! let report = LlcEstimator::new(config)?.estimate(&model, &model.params())?;
//! // d/2 = 3, shrunk a little by the finite nβ = n/ln n and the localisation (docs/llc.md).
//! assert!(report.llc_mean > 2.0 && report.llc_mean < 4.0, "{}", report.llc_mean);
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
pub mod fourier;
pub mod graph;
mod interop;
pub mod io;
pub mod linalg;
pub mod llc;
mod matrix;
pub mod nn;
pub mod plot;
pub mod profile;
mod scratch;
pub mod transformer;

pub use data::{Dataset, Targets};
pub use error::{Error, Result, ShardProblem};
pub use llc::{BehaviouralLoss, LayerLoss, LlcConfig, LlcEstimator, LlcReport, LossModel, MlpLoss, Sampler};
pub use matrix::{Matrix, MatrixView};
pub use nn::{Activation, Elementwise, Layer, Linear, Loss, Mlp, Network, Section, Sequential};
