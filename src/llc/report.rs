//! [`LlcReport`]: the estimate, its traces and diagnostics, serialisable to JSON.

use super::chain::Divergence;
use super::config::{LlcConfig, Sampler};
use super::convergence::{effective_sample_size, mean, split_rhat};
use super::restrict::ParamSubset;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Per-step records of one chain, as the estimator collected them (internal; serialised inside
/// [`super::ChainRuns`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ChainRun {
    pub loss: Vec<f64>,
    pub grad_norm: Vec<f64>,
    pub noise_norm: Vec<f64>,
    pub distance: Vec<f64>,
    pub mala: Vec<f64>,
    pub init_loss: f64,
    pub thermostat: f64,
    pub divergence: Option<Divergence>,
}

/// Summary diagnostics of one chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChainSummary {
    /// Steps recorded (all of them unless the chain diverged).
    pub steps: usize,
    /// Mean applied loss-drift norm ‖(ε/2)·nβ·G⊙g‖ over the steps.
    pub mean_grad_norm: f64,
    /// Mean applied noise norm ‖√ε·σ·√G⊙ξ‖. Drift ≫ noise means ε·nβ is too large.
    pub mean_noise_norm: f64,
    /// Mean ‖w_t − w*‖.
    pub mean_distance: f64,
    /// Largest ‖w_t − w*‖ (growing without bound: γ too small or divergence).
    pub max_distance: f64,
    /// ‖w_t − w*‖ at the last recorded step.
    pub final_distance: f64,
    /// Mean MALA acceptance probability (aim near 0.9; stuck at 0 or 1 is unhealthy);
    /// `None` for SGNHT or a single step.
    pub mala_acceptance: Option<f64>,
    /// SGNHT's thermostat α at the end (0 for the other samplers).
    pub final_thermostat: f64,
}

/// Diagnostics of the whole run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Diagnostics {
    /// One summary per chain.
    pub per_chain: Vec<ChainSummary>,
    /// Split-R̂ of the loss over the draws of the healthy chains (see [`super::split_rhat`]).
    pub r_hat: Option<f64>,
    /// Effective sample size of the loss over those draws (see
    /// [`super::effective_sample_size`]).
    pub ess: Option<f64>,
}

/// Per-step diagnostic traces, `[chain][step]` (`mala_acceptance[c][t − 1]` is for the
/// transition into step t; empty for SGNHT).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DiagnosticTraces {
    /// Applied loss-drift norm per step.
    pub grad_norm: Vec<Vec<f64>>,
    /// Applied noise norm per step.
    pub noise_norm: Vec<Vec<f64>>,
    /// ‖w_t − w*‖ per step.
    pub distance: Vec<Vec<f64>>,
    /// MALA acceptance probability per transition.
    pub mala_acceptance: Vec<Vec<f64>>,
}

/// The result of [`super::LlcEstimator::estimate`].
///
/// Two estimates are reported, both as nβ·(mean sampled minibatch loss − `init_loss`) per chain,
/// then mean and std (population, ddof 0, unless [`LlcConfig::chain_std`] says otherwise) over
/// the chains that did not diverge:
/// * `llc_*`: the mean over **all** steps including burn-in (devinterp 2.0.1's `llc_per_chain`);
/// * `llc_draws_*`: the mean over the draws only (after burn-in, every `num_steps_bw_draws`-th
///   step; devinterp 1.x's convention). Equal to the first with no burn-in and no thinning.
///
/// A diverged chain has `NaN` (JSON `null`) in the per-chain vectors, a [`Divergence`] in
/// `divergences`, a line in `warnings`, and its traces stop where it diverged;
/// `n_excluded_chains` counts them. [`super::LlcEstimator::estimate`] never returns a report
/// without a healthy chain: that is [`Error::NoHealthyChain`], which carries the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlcReport {
    /// Mean of `llc_per_chain` over healthy chains (NaN if none).
    pub llc_mean: f64,
    /// Std of `llc_per_chain` over healthy chains (population, ddof 0, by default; see
    /// [`LlcConfig::chain_std`]).
    pub llc_std: f64,
    /// nβ·(mean over all steps of the minibatch loss − `init_loss`) per chain.
    pub llc_per_chain: Vec<f64>,
    /// Mean of `llc_draws_per_chain` over healthy chains.
    pub llc_draws_mean: f64,
    /// Std of `llc_draws_per_chain` over healthy chains (same ddof as `llc_std`).
    pub llc_draws_std: f64,
    /// nβ·(mean over the draws of the minibatch loss − `init_loss`) per chain.
    pub llc_draws_per_chain: Vec<f64>,
    /// L̂₀: mean over chains of each chain's mean loss at w* over its first
    /// `num_init_loss_batches` minibatches (devinterp's convention).
    pub init_loss: f64,
    /// Each chain's L̂₀.
    pub init_loss_per_chain: Vec<f64>,
    /// The nβ used.
    pub nbeta: f64,
    /// Whether nβ was the default n/ln n.
    pub nbeta_is_default: bool,
    /// Number of samples n of the loss.
    pub n_samples: usize,
    /// Number of parameters d.
    pub n_params: usize,
    /// Number of parameters sampled (k = d unless the estimate was restricted).
    pub n_sampled_params: usize,
    /// The label of the sampled subset (`None`: every parameter).
    pub sampled_params: Option<String>,
    /// Chains that diverged and were left out of every estimate.
    pub n_excluded_chains: usize,
    /// The configuration, as run.
    pub config: LlcConfig,
    /// Minibatch loss at every step, `[chain][step]`.
    pub loss_trace: Vec<Vec<f64>>,
    /// nβ·(loss_trace − init_loss).
    pub llc_trace_instantaneous: Vec<Vec<f64>>,
    /// nβ·(running mean of loss_trace − init_loss); the last entry equals `llc_per_chain`.
    pub llc_trace_running_mean: Vec<Vec<f64>>,
    /// Where each chain diverged, if it did.
    pub divergences: Vec<Option<Divergence>>,
    /// Everything a reader should not miss: diverged chains, R̂ alarms, negative estimates.
    pub warnings: Vec<String>,
    /// Summary diagnostics, split-R̂, ESS.
    pub diagnostics: Diagnostics,
    /// Per-step diagnostic traces.
    pub traces: DiagnosticTraces,
}

/// Mean and std with `ddof` (NaN where undefined: no value, or ddof 1 with one value).
fn mean_std(values: &[f64], ddof: usize) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = mean(values);
    if values.len() <= ddof {
        return (m, f64::NAN);
    }
    (m, (values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (values.len() - ddof) as f64).sqrt())
}

impl LlcReport {
    pub(crate) fn build(
        config: LlcConfig,
        nbeta: f64,
        nbeta_is_default: bool,
        n_samples: usize,
        n_params: usize,
        restriction: Option<&ParamSubset>,
        runs: Vec<ChainRun>,
    ) -> LlcReport {
        let init_loss_per_chain: Vec<f64> = runs.iter().map(|r| r.init_loss).collect();
        let init_loss = mean(&init_loss_per_chain);
        let healthy = |r: &ChainRun| r.divergence.is_none();
        let draw_steps: Vec<usize> =
            (0..config.num_draws).map(|k| config.num_burnin_steps + k * config.num_steps_bw_draws).collect();
        let mut llc_per_chain = Vec::new();
        let mut llc_draws_per_chain = Vec::new();
        let mut draws: Vec<Vec<f64>> = Vec::new();
        for r in &runs {
            if healthy(r) {
                llc_per_chain.push(nbeta * (mean(&r.loss) - init_loss));
                let d: Vec<f64> = draw_steps.iter().map(|&t| r.loss[t]).collect();
                llc_draws_per_chain.push(nbeta * (mean(&d) - init_loss));
                draws.push(d);
            } else {
                llc_per_chain.push(f64::NAN);
                llc_draws_per_chain.push(f64::NAN);
            }
        }
        let finite = |v: &[f64]| v.iter().copied().filter(|x| !x.is_nan()).collect::<Vec<_>>();
        let ddof = config.chain_std.ddof();
        let (llc_mean, llc_std) = mean_std(&finite(&llc_per_chain), ddof);
        let (llc_draws_mean, llc_draws_std) = mean_std(&finite(&llc_draws_per_chain), ddof);

        let llc_trace_instantaneous: Vec<Vec<f64>> =
            runs.iter().map(|r| r.loss.iter().map(|l| nbeta * (l - init_loss)).collect()).collect();
        let llc_trace_running_mean: Vec<Vec<f64>> = runs
            .iter()
            .map(|r| {
                let mut sum = 0.0;
                r.loss
                    .iter()
                    .enumerate()
                    .map(|(t, l)| {
                        sum += l;
                        nbeta * (sum / (t + 1) as f64 - init_loss)
                    })
                    .collect()
            })
            .collect();

        let draw_refs: Vec<&[f64]> = draws.iter().map(Vec::as_slice).collect();
        let r_hat = split_rhat(&draw_refs);
        let ess = effective_sample_size(&draw_refs);
        let per_chain = runs
            .iter()
            .map(|r| {
                let avg = |v: &[f64]| if v.is_empty() { f64::NAN } else { mean(v) };
                ChainSummary {
                    steps: r.loss.len(),
                    mean_grad_norm: avg(&r.grad_norm),
                    mean_noise_norm: avg(&r.noise_norm),
                    mean_distance: avg(&r.distance),
                    max_distance: r.distance.iter().copied().fold(0.0, f64::max),
                    final_distance: r.distance.last().copied().unwrap_or(0.0),
                    mala_acceptance: (!r.mala.is_empty()).then(|| mean(&r.mala)),
                    final_thermostat: r.thermostat,
                }
            })
            .collect();

        let mut warnings = Vec::new();
        let n_healthy = runs.iter().filter(|r| healthy(r)).count();
        for (c, r) in runs.iter().enumerate() {
            if let Some(d) = r.divergence {
                warnings.push(format!(
                    "chain {c} diverged at step {} ({:?}); excluded from llc_mean, its traces stop there",
                    d.step, d.cause
                ));
            }
        }
        let n_excluded_chains = runs.len() - n_healthy;
        if n_healthy == 0 {
            warnings.push("every chain diverged: no estimate (llc_mean is NaN); lower lr or raise localization".into());
        } else if n_excluded_chains > 0 {
            warnings.push(format!(
                "{n_excluded_chains} of {} chains diverged and were excluded: the estimate is over {n_healthy} chains",
                runs.len()
            ));
        }
        if nbeta == 1.0 {
            warnings.push("nbeta = 1: almost surely not intended (the default is n / ln n)".into());
        }
        if config.sgld.noise_level != 1.0 {
            warnings.push(format!(
                "noise_level = {}: the chains sample the posterior at temperature noise_level² = {}, not the posterior (λ̂ scales with it)",
                config.sgld.noise_level,
                config.sgld.noise_level.powi(2)
            ));
        }
        if let Sampler::RmspropSgld { eps, .. } = config.sgld.sampler {
            warnings.push(format!(
                "rmsprop_sgld has no Γ correction (as devinterp): with a position-dependent preconditioner G = 1/(√V + {eps}) it samples ∝ e^(-U)/G, not e^(-U), which biases λ̂ upwards where |gradient| is comparable to eps (+16 % on the quadratic of docs/llc.md §2); compare with sgld"
            ));
        }
        if let Some(r) = r_hat.filter(|&r| r > 1.1) {
            warnings.push(format!("split-R̂ = {r:.3} > 1.1: chains disagree or have not converged"));
        }
        if llc_mean < 0.0 {
            warnings.push(
                "negative estimate: sampled loss below init_loss (w* not a local minimum, or init_loss too noisy)"
                    .into(),
            );
        }

        LlcReport {
            llc_mean,
            llc_std,
            llc_per_chain,
            llc_draws_mean,
            llc_draws_std,
            llc_draws_per_chain,
            init_loss,
            init_loss_per_chain,
            nbeta,
            nbeta_is_default,
            n_samples,
            n_params,
            n_sampled_params: restriction.map_or(n_params, ParamSubset::len),
            sampled_params: restriction.map(|s| s.label().to_string()),
            n_excluded_chains,
            config,
            llc_trace_instantaneous,
            llc_trace_running_mean,
            divergences: runs.iter().map(|r| r.divergence).collect(),
            warnings,
            diagnostics: Diagnostics { per_chain, r_hat, ess },
            traces: DiagnosticTraces {
                grad_norm: runs.iter().map(|r| r.grad_norm.clone()).collect(),
                noise_norm: runs.iter().map(|r| r.noise_norm.clone()).collect(),
                distance: runs.iter().map(|r| r.distance.clone()).collect(),
                mala_acceptance: runs.iter().map(|r| r.mala.clone()).collect(),
            },
            loss_trace: runs.into_iter().map(|r| r.loss).collect(),
        }
    }

    /// The report itself if at least one chain is healthy, otherwise
    /// [`Error::NoHealthyChain`] carrying it.
    pub fn checked(self) -> Result<LlcReport> {
        if self.divergences.iter().any(Option::is_none) {
            return Ok(self);
        }
        Err(Error::NoHealthyChain {
            what: self
                .sampled_params
                .as_ref()
                .map_or_else(|| "LLC estimate".into(), |s| format!("LLC restricted to {s}")),
            chains: self.divergences.len(),
            report: Box::new(self),
        })
    }

    /// Indices of the chains that did not diverge.
    pub fn healthy_chains(&self) -> Vec<usize> {
        (0..self.divergences.len()).filter(|&c| self.divergences[c].is_none()).collect()
    }

    /// Whether every chain ran to the end.
    pub fn all_healthy(&self) -> bool {
        self.divergences.iter().all(Option::is_none)
    }

    /// nβ·(mean loss over `steps` − `init_loss`), averaged over the healthy chains: e.g. the
    /// second half of the steps, to leave out the transient. `None` if the range is empty or out
    /// of bounds, or no chain is healthy.
    pub fn llc_over_steps(&self, steps: Range<usize>) -> Option<f64> {
        let total = self.config.total_steps()?;
        if steps.is_empty() || steps.end > total {
            return None;
        }
        let per: Vec<f64> = self
            .healthy_chains()
            .into_iter()
            .map(|c| self.nbeta * (mean(&self.loss_trace[c][steps.clone()]) - self.init_loss))
            .collect();
        (!per.is_empty()).then(|| mean(&per))
    }
}
