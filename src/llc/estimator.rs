//! [`LlcEstimator`]: runs the chains in parallel and assembles the [`LlcReport`].

use super::chain::Chain;
use super::config::{LlcConfig, SgldParams};
use super::loss_model::LossModel;
use super::report::{ChainRun, LlcReport};
use crate::distributed::{Communicator, all_merge, shard_range};
use crate::error::{Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Estimates the local learning coefficient λ̂(w*) of a [`LossModel`] by SGLD-family sampling.
///
/// Chains run in parallel on the current rayon pool. Each chain owns a clone of the model and
/// its own ChaCha streams derived from `(seed, chain)`, and matrix products inside a chain run
/// single-threaded, so the report is bitwise identical for any number of threads.
///
/// ```
/// use degeneracy::llc::{LlcConfig, LlcEstimator, MlpLoss};
/// use degeneracy::{Activation, Dataset, Linear, Loss, Matrix, Mlp, Targets};
/// // y = 2x with noise-free targets; one weight.
/// let x = Matrix::from_fn(400, 1, |i, _| (i as f64 * 0.37).sin());
/// let y = Matrix::from_fn(400, 1, |i, _| 2.0 * x[(i, 0)]);
/// let mlp = Mlp::new(vec![Linear::new(Matrix::from_rows(&[[2.0]])?, None)?], Activation::Identity)?;
/// let model = MlpLoss::new(&mlp, Loss::Mse, Dataset::new(x, Targets::Values(y))?)?;
/// let config = LlcConfig::new(1e-3).batch_size(100).num_draws(2000).num_burnin_steps(200).seed(0);
/// let report = LlcEstimator::new(config)?.estimate(&model, &model.params())?;
/// assert!((report.llc_draws_mean - 0.5).abs() < 0.2); // one parameter: λ = 1/2
/// # Ok::<(), degeneracy::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct LlcEstimator {
    config: LlcConfig,
}

impl LlcEstimator {
    /// Validates everything that does not depend on the model (lr > 0, nβ > 0 if given,
    /// counts ≥ 1, finite values…) into typed [`Error::InvalidParameter`]s.
    pub fn new(config: LlcConfig) -> Result<Self> {
        config.check()?;
        Ok(LlcEstimator { config })
    }

    /// The configuration.
    pub fn config(&self) -> &LlcConfig {
        &self.config
    }

    /// The checked sampler parameters for `model` (nβ resolved), after checking `w_star`'s
    /// length and finiteness and `batch_size ≤ n`.
    pub fn params_for<M: LossModel + ?Sized>(&self, model: &M, w_star: &[f64]) -> Result<SgldParams> {
        let (d, n) = (model.n_params(), model.n_samples());
        if d == 0 {
            return Err(Error::Empty { what: "LossModel parameters".into() });
        }
        if w_star.len() != d {
            return Err(Error::shape("LlcEstimator: w_star", &[d], &[w_star.len()]));
        }
        if let Some(k) = w_star.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite { what: "w_star".into(), row: 0, col: k, value: w_star[k] });
        }
        if n == 0 {
            return Err(Error::Empty { what: "LossModel samples".into() });
        }
        if self.config.batch_size > n {
            return Err(Error::invalid("batch_size", self.config.batch_size, format!("exceeds the {n} samples")));
        }
        self.config.sgld.validate(n)
    }

    /// Chain `index` at `w_star` (for driving a chain step by step; [`LlcEstimator::estimate`]
    /// runs `num_chains` of them). Its `init_loss` is computed here.
    pub fn chain<M: LossModel>(&self, model: M, w_star: &[f64], index: usize) -> Result<Chain<M>> {
        let params = self.params_for(&model, w_star)?;
        Chain::new(model, w_star, params, &self.config, index)
    }

    /// Runs `num_chains` chains from `w_star` in parallel and reports λ̂.
    ///
    /// Errors (typed) on invalid configuration for this model, a model error, or a non-finite
    /// loss at w*. A chain whose loss, gradient or parameters become non-finite stops and is
    /// flagged in the report (never silently averaged).
    pub fn estimate<M: LossModel + Clone>(&self, model: &M, w_star: &[f64]) -> Result<LlcReport> {
        self.run_chains(model, w_star, 0..self.config.num_chains)?.into_report()
    }

    /// Runs the chains `chains` (a range of `0..num_chains`) in parallel and returns their
    /// records, to be combined with [`ChainRuns::merge`] (other processes' chains, shard files)
    /// and turned into the report by [`ChainRuns::into_report`]. Chain `c` is the same whichever
    /// process runs it, so the report does not depend on how the chains were split.
    pub fn run_chains<M: LossModel + Clone>(
        &self,
        model: &M,
        w_star: &[f64],
        chains: Range<usize>,
    ) -> Result<ChainRuns> {
        let params = self.params_for(model, w_star)?;
        if chains.start > chains.end || chains.end > self.config.num_chains {
            return Err(Error::invalid(
                "chains",
                format!("{chains:?}"),
                format!("need a range of 0..{}", self.config.num_chains),
            ));
        }
        let total = self.config.total_steps().expect("checked in new");
        // Clone on the calling thread, so `M` need only be `Send` (not `Sync`).
        let models: Vec<(usize, M)> = chains.map(|c| (c, model.clone())).collect();
        let runs = models
            .into_par_iter()
            .map(|(c, m)| Ok((c, run_chain(Chain::new(m, w_star, params, &self.config, c)?, total)?)))
            .collect::<Result<Vec<(usize, ChainRun)>>>()?;
        Ok(ChainRuns {
            config: self.config,
            nbeta: params.nbeta(),
            nbeta_is_default: params.nbeta_is_default(),
            n_samples: model.n_samples(),
            n_params: model.n_params(),
            runs,
        })
    }

    /// [`LlcEstimator::estimate`] over a group of processes: rank `r` of `size` runs the chains
    /// [`shard_range`]`(num_chains, r, size, 1)` (contiguous blocks whose sizes differ by at most
    /// one), then the chains' records are merged across the ranks and every rank returns the
    /// same report — identical to a single process's for any number of ranks, since each chain
    /// owns its random streams. Every rank must call it; a rank that fails makes every rank fail.
    pub fn estimate_distributed<M: LossModel + Clone>(
        &self,
        model: &M,
        w_star: &[f64],
        comm: &dyn Communicator,
    ) -> Result<LlcReport> {
        let mine = shard_range(self.config.num_chains, comm.rank(), comm.size(), 1)
            .and_then(|chains| self.run_chains(model, w_star, chains));
        all_merge(comm, mine, |a, b| a.merge(b))?.into_report()
    }
}

/// The records of some chains of one run: mergeable (chains run by other threads, processes or
/// machines), serialisable (shard files), and turned into the [`LlcReport`] once every chain is
/// there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChainRuns {
    config: LlcConfig,
    nbeta: f64,
    nbeta_is_default: bool,
    n_samples: usize,
    n_params: usize,
    /// `(chain index, records)`, by chain index.
    runs: Vec<(usize, ChainRun)>,
}

impl ChainRuns {
    /// The chain indices held, increasing.
    pub fn chains(&self) -> Vec<usize> {
        self.runs.iter().map(|(c, _)| *c).collect()
    }

    /// The configuration the chains ran with.
    pub fn config(&self) -> &LlcConfig {
        &self.config
    }

    /// Adds another set of chains of the same run (same configuration, nβ, sample and parameter
    /// counts); a chain present in both is an error.
    pub fn merge(&mut self, other: ChainRuns) -> Result<()> {
        let same = self.config == other.config
            && self.nbeta.to_bits() == other.nbeta.to_bits()
            && self.nbeta_is_default == other.nbeta_is_default
            && self.n_samples == other.n_samples
            && self.n_params == other.n_params;
        if !same {
            return Err(Error::invalid(
                "ChainRuns::merge",
                format!("{:?}, nβ {}, n {}, d {}", other.config, other.nbeta, other.n_samples, other.n_params),
                format!(
                    "chains of another run: expected {:?}, nβ {}, n {}, d {}",
                    self.config, self.nbeta, self.n_samples, self.n_params
                ),
            ));
        }
        if let Some((c, _)) = other.runs.iter().find(|(c, _)| self.runs.iter().any(|(s, _)| s == c)) {
            return Err(Error::invalid("ChainRuns::merge", format!("chain {c}"), "present in both sets"));
        }
        self.runs.extend(other.runs);
        self.runs.sort_by_key(|(c, _)| *c);
        Ok(())
    }

    /// The report; errors unless the chains are exactly `0..num_chains`.
    pub fn into_report(self) -> Result<LlcReport> {
        let chains = self.chains();
        if chains.len() != self.config.num_chains || chains.iter().enumerate().any(|(i, &c)| i != c) {
            return Err(Error::invalid(
                "chains",
                format!("{chains:?}"),
                format!("the report needs every chain 0..{}", self.config.num_chains),
            ));
        }
        let runs = self.runs.into_iter().map(|(_, r)| r).collect();
        Ok(LlcReport::build(self.config, self.nbeta, self.nbeta_is_default, self.n_samples, self.n_params, runs))
    }
}

fn run_chain<M: LossModel>(mut chain: Chain<M>, total: usize) -> Result<ChainRun> {
    let mut run = ChainRun {
        loss: Vec::with_capacity(total),
        grad_norm: Vec::with_capacity(total),
        noise_norm: Vec::with_capacity(total),
        distance: Vec::with_capacity(total),
        mala: Vec::with_capacity(total.saturating_sub(1)),
        init_loss: chain.init_loss(),
        ..ChainRun::default()
    };
    for _ in 0..total {
        let rec = chain.step()?;
        // Every record with a finite loss is kept (its loss is a valid L_B(w_t)).
        if rec.loss.is_finite() {
            run.loss.push(rec.loss);
            run.grad_norm.push(rec.grad_norm);
            run.noise_norm.push(rec.noise_norm);
            run.distance.push(rec.distance);
            if let Some(a) = rec.mala_acceptance {
                run.mala.push(a);
            }
        }
        if chain.divergence().is_some() {
            break;
        }
    }
    run.thermostat = chain.thermostat();
    run.divergence = chain.divergence();
    Ok(run)
}
