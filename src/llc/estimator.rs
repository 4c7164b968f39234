//! [`LlcEstimator`]: runs the chains in parallel and assembles the [`LlcReport`].

use super::chain::Chain;
use super::config::{LlcConfig, SgldParams};
use super::loss_model::LossModel;
use super::report::{ChainRun, LlcReport};
use super::restrict::ParamSubset;
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
    restriction: Option<ParamSubset>,
}

impl LlcEstimator {
    /// Validates everything that does not depend on the model (lr > 0, nβ > 0 if given,
    /// counts ≥ 1, finite values…) into typed [`Error::InvalidParameter`]s.
    pub fn new(config: LlcConfig) -> Result<Self> {
        config.check()?;
        Ok(LlcEstimator { config, restriction: None })
    }

    /// Samples only the coordinates of `subset`, every other parameter held at w* (the
    /// restricted, or weight-refined, LLC; devinterp's `optimize_over_per_model_param`). Its
    /// indices are checked against the model when sampling starts. A step still runs the
    /// model's whole backward pass, but updates k coordinates (see [`Chain`]).
    ///
    /// ```
    /// use degeneracy::llc::{LlcConfig, LlcEstimator, LossModel, ParamLayout, MlpLoss};
    /// use degeneracy::{Activation, Dataset, Loss, Matrix, Mlp, Targets};
    /// let x = Matrix::from_fn(400, 2, |i, j| ((i * 7 + j * 3) as f64 * 0.1).sin());
    /// let mlp = Mlp::init(&[2, 3, 1], Activation::Identity, false, 0)?;
    /// let mut y = Matrix::default();
    /// degeneracy::Layer::forward(&mlp, x.view(), &mut y)?;
    /// let model = MlpLoss::new(&mlp, Loss::Mse, Dataset::new(x, Targets::Values(y))?)?;
    /// let second = ParamLayout::mlp(&mlp).select(&["layers.1.weight"])?; // 3 of 9 parameters
    /// let config = LlcConfig::new(1e-3).batch_size(100).num_draws(300).seed(0);
    /// let report = LlcEstimator::new(config)?.restrict(second).estimate(&model, &model.params())?;
    /// assert_eq!((report.n_params, report.n_sampled_params), (9, 3));
    /// # Ok::<(), degeneracy::Error>(())
    /// ```
    pub fn restrict(mut self, subset: ParamSubset) -> Self {
        self.restriction = Some(subset);
        self
    }

    /// The sampled subset, `None` for all parameters.
    pub fn restriction(&self) -> Option<&ParamSubset> {
        self.restriction.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &LlcConfig {
        &self.config
    }

    /// The checked sampler parameters for `model` (nβ resolved), after checking `w_star`'s
    /// length and finiteness, `batch_size ≤ n` and the restriction's indices.
    pub fn params_for<M: LossModel + ?Sized>(&self, model: &M, w_star: &[f64]) -> Result<SgldParams> {
        let params = params_for(&self.config, model, w_star)?;
        if let Some(s) = &self.restriction {
            s.check(model.n_params())?;
        }
        Ok(params)
    }

    /// Chain `index` at `w_star` (for driving a chain step by step; [`LlcEstimator::estimate`]
    /// runs `num_chains` of them). Its `init_loss` is computed here.
    pub fn chain<M: LossModel>(&self, model: M, w_star: &[f64], index: usize) -> Result<Chain<M>> {
        let params = self.params_for(&model, w_star)?;
        let d = model.n_params();
        Chain::new(model, w_star, params, &self.config, index, self.active(d))
    }

    /// The restriction's indices, `None` when it is absent or covers everything.
    fn active(&self, n_params: usize) -> Option<&[usize]> {
        self.restriction.as_ref().filter(|s| !s.is_all(n_params)).map(ParamSubset::indices)
    }

    /// Runs `num_chains` chains from `w_star` in parallel and reports λ̂.
    ///
    /// Errors (typed) on invalid configuration for this model, a model error, or a non-finite
    /// loss at w*. A chain whose loss, gradient or parameters become non-finite stops and is
    /// flagged in the report and excluded from the mean (never silently averaged); the report
    /// says how many were excluded. **If every chain diverged** there is no estimate and the
    /// result is [`Error::NoHealthyChain`], which carries the report (traces up to each
    /// divergence, where and why) for callers that still want to write it.
    pub fn estimate<M: LossModel + Clone>(&self, model: &M, w_star: &[f64]) -> Result<LlcReport> {
        self.run_chains(model, w_star, 0..self.config.num_chains)?.into_report()
    }

    /// λ̂ restricted to each of `subsets` (per layer: [`super::ParamLayout::per_layer`]; per
    /// tensor; per module: [`super::module_parameters`]), with the chains of every subset
    /// running in parallel, each with this estimator's configuration and seed. Entries come in
    /// the order of `subsets`; an existing restriction of the estimator is ignored.
    ///
    /// Errors like [`LlcEstimator::estimate`]: [`Error::NoHealthyChain`] (for the first subset
    /// without a healthy chain, its label in the message) if a subset has no healthy chain.
    pub fn estimate_breakdown<M: LossModel + Clone>(
        &self,
        model: &M,
        w_star: &[f64],
        subsets: &[ParamSubset],
    ) -> Result<LlcBreakdown> {
        let params = params_for(&self.config, model, w_star)?;
        let d = model.n_params();
        for s in subsets {
            s.check(d)?;
        }
        let mut jobs = Vec::with_capacity(subsets.len() * self.config.num_chains);
        for s in subsets {
            for c in 0..self.config.num_chains {
                let active = (!s.is_all(d)).then(|| s.indices());
                jobs.push(Job { chain: c, config: self.config, params, model: model.clone(), w_star, active });
            }
        }
        let mut runs = run_jobs(jobs)?.into_iter();
        let mut entries = Vec::with_capacity(subsets.len());
        for s in subsets {
            let chains: Vec<ChainRun> = runs.by_ref().take(self.config.num_chains).collect();
            let report = LlcReport::build(
                self.config,
                params.nbeta(),
                params.nbeta_is_default(),
                model.n_samples(),
                d,
                Some(s),
                chains,
            );
            entries.push(BreakdownEntry { label: s.label().to_string(), n_params: s.len(), report: report.checked()? });
        }
        Ok(LlcBreakdown { entries })
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
        let active = self.active(model.n_params());
        // Clone on the calling thread, so `M` need only be `Send` (not `Sync`).
        let jobs: Vec<Job<'_, M>> = chains
            .clone()
            .map(|c| Job { chain: c, config: self.config, params, model: model.clone(), w_star, active })
            .collect();
        let runs = chains.zip(run_jobs(jobs)?).collect();
        Ok(ChainRuns {
            config: self.config,
            nbeta: params.nbeta(),
            nbeta_is_default: params.nbeta_is_default(),
            n_samples: model.n_samples(),
            n_params: model.n_params(),
            restriction: self.restriction.clone(),
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
    /// The sampled subset (`None`: every parameter).
    #[serde(default)]
    restriction: Option<ParamSubset>,
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
    /// counts, sampled subset); a chain present in both is an error.
    pub fn merge(&mut self, other: ChainRuns) -> Result<()> {
        let same = self.config == other.config
            && self.nbeta.to_bits() == other.nbeta.to_bits()
            && self.nbeta_is_default == other.nbeta_is_default
            && self.n_samples == other.n_samples
            && self.n_params == other.n_params
            && self.restriction == other.restriction;
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

    /// The report; errors unless the chains are exactly `0..num_chains`, and with
    /// [`Error::NoHealthyChain`] (carrying the report) if every chain diverged.
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
        LlcReport::build(
            self.config,
            self.nbeta,
            self.nbeta_is_default,
            self.n_samples,
            self.n_params,
            self.restriction.as_ref(),
            runs,
        )
        .checked()
    }
}

/// λ̂ restricted to each of several parameter subsets ([`LlcEstimator::estimate_breakdown`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlcBreakdown {
    /// One entry per subset, in the order given.
    pub entries: Vec<BreakdownEntry>,
}

/// One subset's restricted estimate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BreakdownEntry {
    /// The subset's label (tensor, layer, `module 3`).
    pub label: String,
    /// Its number of parameters k (the restricted λ of a regular subset is at most k/2).
    pub n_params: usize,
    /// The restricted estimate.
    pub report: LlcReport,
}

/// Checks `w_star` and the data against `config` and resolves the sampler parameters.
pub(crate) fn params_for<M: LossModel + ?Sized>(config: &LlcConfig, model: &M, w_star: &[f64]) -> Result<SgldParams> {
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
    if config.batch_size > n {
        return Err(Error::invalid("batch_size", config.batch_size, format!("exceeds the {n} samples")));
    }
    config.sgld_params(n)
}

/// One chain to run: chain `chain` of a group of chains (a subset, a calibration setting, a
/// checkpoint) with its own configuration, model and start point.
pub(crate) struct Job<'a, M> {
    pub chain: usize,
    pub config: LlcConfig,
    pub params: SgldParams,
    pub model: M,
    pub w_star: &'a [f64],
    pub active: Option<&'a [usize]>,
}

/// Bytes of a chain's traces per step: loss, gradient norm, noise norm, distance, MALA.
const TRACE_BYTES_PER_STEP: u128 = 5 * 8;
/// Bytes of a running chain's vectors per parameter: w, gradient, drift, noise, the previous w
/// and drift, RMSprop's two averages.
const CHAIN_BYTES_PER_PARAM: u128 = 8 * 8;

/// Refuses, before any step, jobs whose traces (kept until the report) and running chains need
/// more memory than the system has available, naming the keys that set the size; skipped where
/// the system does not report its available memory.
fn check_memory<M: LossModel>(jobs: &[Job<'_, M>]) -> Result<()> {
    let Some(available) = available_memory() else { return Ok(()) };
    let steps: u128 = jobs.iter().map(|j| j.config.total_steps().unwrap_or(usize::MAX) as u128).sum();
    let running = jobs.len().min(rayon::current_num_threads()) as u128;
    let params = jobs.first().map_or(0, |j| j.w_star.len()) as u128;
    let needed = steps * TRACE_BYTES_PER_STEP + running * params * CHAIN_BYTES_PER_PARAM;
    if needed > u128::from(available) {
        let gib = |b: u128| b as f64 / (1u64 << 30) as f64;
        return Err(Error::invalid(
            "num_chains × (num_burnin_steps + num_draws × num_steps_bw_draws)",
            format!("{} chains, {steps} steps in all", jobs.len()),
            format!(
                "the traces and chains need {:.1} GiB; {:.1} GiB of memory is available",
                gib(needed),
                gib(available.into())
            ),
        ));
    }
    Ok(())
}

/// The memory the system can give this process without swapping (Linux's `MemAvailable`).
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// Runs every job in parallel (each owns its model and streams, so the results do not depend on
/// the thread count) and returns the records in the jobs' order. Errors before any step if the
/// run cannot fit in memory.
pub(crate) fn run_jobs<M: LossModel>(jobs: Vec<Job<'_, M>>) -> Result<Vec<ChainRun>> {
    check_memory(&jobs)?;
    jobs.into_par_iter()
        .map(|j| {
            let total = j.config.total_steps().expect("checked by LlcConfig::check");
            let chain = Chain::new(j.model, j.w_star, j.params, &j.config, j.chain, j.active)?;
            run_chain(chain, total)
        })
        .collect()
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
