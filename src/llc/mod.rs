//! The local learning coefficient λ̂(w*) (Lau et al. 2023, arXiv 2308.12108), estimated by
//! sampling the localised, tempered posterior
//! p(w) ∝ exp(−nβ·L_n(w) − (γ/2)‖w − w*‖²) with SGLD-family samplers:
//! λ̂ = nβ·(E_p[L_n(w)] − L_n(w*)).
//!
//! * [`LossModel`]: parameters ↦ minibatch loss and gradient; [`MlpLoss`] (training loss of an
//!   [`crate::Mlp`]) and [`BehaviouralLoss`] (‖f(x, w) − f(x, w*)‖²) implement it.
//! * [`LlcConfig`] / [`SgldConfig`] → [`SgldParams`]: validated hyper-parameters; [`Sampler`]:
//!   SGLD, RMSprop-SGLD (both as devinterp 2.0.1) and SGNHT (Ding et al. 2014).
//! * [`LlcEstimator`] runs [`Chain`]s in parallel (bitwise identical for any thread count) and
//!   returns an [`LlcReport`] with traces, split-R̂, ESS and MALA acceptance; when no chain is
//!   healthy, [`crate::Error::NoHealthyChain`] (carrying the report) instead.
//! * Beyond one λ̂: the restricted LLC of a [`ParamSubset`] ([`LlcEstimator::restrict`], named
//!   tensors and layers from [`ParamLayout`], graph modules from [`module_parameters`]) and
//!   breakdowns over many subsets in one call ([`LlcEstimator::estimate_breakdown`]); a
//!   calibration sweep with a recommendation ([`LlcEstimator::calibrate`]); λ̂ over training
//!   checkpoints ([`LlcEstimator::estimate_trajectory`]); devinterp's conventions
//!   ([`LlcConfig::devinterp_compatible`]).
//! * [`theory`]: exact learning coefficients (regular d/2, reduced-rank regression, deep linear
//!   networks) to check estimates against.
//!
//! Conventions and every difference from devinterp are in `docs/llc.md`.

mod behavioural;
mod calibrate;
mod chain;
mod config;
mod convergence;
mod estimator;
mod loss_model;
mod report;
mod restrict;
mod streams;
pub mod theory;
mod trajectory;

pub use behavioural::BehaviouralLoss;
pub use calibrate::{Calibration, CalibrationAxis, CalibrationConfig, CalibrationPoint, Recommendation};
pub use chain::{Chain, Divergence, DivergenceCause, StepRecord};
pub use config::{ChainStd, InitLoss, LlcConfig, NbetaDefault, Sampler, SgldConfig, SgldParams, default_nbeta};
pub use convergence::{effective_sample_size, split_rhat};
pub use estimator::{BreakdownEntry, ChainRuns, LlcBreakdown, LlcEstimator};
pub use loss_model::{LayerLoss, LossModel, MlpLoss};
pub use report::{ChainSummary, DiagnosticTraces, Diagnostics, LlcReport};
pub use restrict::{ModuleParams, ParamLayout, ParamSubset, ParamTensor, module_parameters};
pub use trajectory::{Checkpoint, Trajectory, TrajectoryPoint};
