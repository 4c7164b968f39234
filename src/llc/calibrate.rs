//! Calibration: a sweep of short chains over (ε, nβ) or (ε, γ), health and stationarity per
//! setting, a recommendation, and a heat map.

use super::config::LlcConfig;
use super::estimator::{Job, LlcEstimator, params_for, run_jobs};
use super::loss_model::LossModel;
use super::report::{ChainRun, LlcReport};
use crate::error::{Error, Result};
use crate::plot::{HeatCell, heat_map};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The hyper-parameter swept next to the step size ε.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CalibrationAxis {
    /// nβ values (the localisation stays the estimator's).
    Nbeta(Vec<f64>),
    /// Localisation strengths γ (nβ stays the estimator's).
    Localization(Vec<f64>),
}

impl CalibrationAxis {
    /// `"nbeta"` or `"localization"`.
    pub fn name(&self) -> &'static str {
        match self {
            CalibrationAxis::Nbeta(_) => "nbeta",
            CalibrationAxis::Localization(_) => "localization",
        }
    }

    /// The swept values.
    pub fn values(&self) -> &[f64] {
        match self {
            CalibrationAxis::Nbeta(v) | CalibrationAxis::Localization(v) => v,
        }
    }
}

/// What a calibration sweeps and when it calls a setting healthy. Build with
/// [`CalibrationConfig::new`] and the setters; [`CalibrationConfig::validate`] (called by
/// [`LlcEstimator::calibrate`]) checks it, naming the field.
///
/// ```
/// use degeneracy::llc::{CalibrationAxis, CalibrationConfig};
/// let c = CalibrationConfig::new(vec![1e-5, 1e-4, 1e-3], CalibrationAxis::Localization(vec![1.0, 10.0]))
///     .num_draws(300);
/// assert!(c.validate().is_ok());
/// assert!(CalibrationConfig::new(vec![], c.axis.clone()).validate().is_err()); // "calibrate.lr"
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationConfig {
    /// Step sizes ε to try (positive, finite, distinct).
    pub lrs: Vec<f64>,
    /// The second swept hyper-parameter.
    pub axis: CalibrationAxis,
    /// Draws per chain of every setting (the estimator's burn-in and thinning are not used):
    /// short, the point is to see which settings are healthy. Default 300.
    pub num_draws: usize,
    /// A setting is non-stationary when its running λ̂ changes by more than this fraction of its
    /// final value over the second half of the draws (fitted line). Default 0.05.
    pub max_relative_slope: f64,
    /// Largest acceptable split-R̂ of the loss draws. Default 1.1.
    pub max_rhat: f64,
    /// Smallest acceptable mean MALA acceptance (ignored for SGNHT). Default 0.5: below it the
    /// step's discretisation error dominates (devinterp's guidance aims at ≈ 0.9).
    pub min_mala_acceptance: f64,
    /// (ε, γ) sweeps: a healthy setting is *prior-dominated* when its λ̂ lies more than this
    /// fraction below λ̂ at the nearest smaller γ (same ε) whose chains did not diverge, pass
    /// the MALA check and are not falling: the localising prior, not the loss, then sets λ̂.
    /// Default 0.1.
    pub max_prior_drop: f64,
}

impl CalibrationConfig {
    /// A sweep of `lrs` × `axis` with the defaults above.
    pub fn new(lrs: Vec<f64>, axis: CalibrationAxis) -> Self {
        CalibrationConfig {
            lrs,
            axis,
            num_draws: 300,
            max_relative_slope: 0.05,
            max_rhat: 1.1,
            min_mala_acceptance: 0.5,
            max_prior_drop: 0.1,
        }
    }

    /// Sets the draws per chain.
    pub fn num_draws(mut self, k: usize) -> Self {
        self.num_draws = k;
        self
    }
    /// Sets the stationarity threshold.
    pub fn max_relative_slope(mut self, v: f64) -> Self {
        self.max_relative_slope = v;
        self
    }
    /// Sets the R̂ threshold.
    pub fn max_rhat(mut self, v: f64) -> Self {
        self.max_rhat = v;
        self
    }
    /// Sets the MALA threshold.
    pub fn min_mala_acceptance(mut self, v: f64) -> Self {
        self.min_mala_acceptance = v;
        self
    }
    /// Sets the largest tolerated drop of λ̂ when γ grows.
    pub fn max_prior_drop(mut self, v: f64) -> Self {
        self.max_prior_drop = v;
        self
    }

    /// Checks every field; errors name it (`calibrate.lr`, `calibrate.nbeta`, …).
    pub fn validate(&self) -> Result<()> {
        // γ = 0 (no localisation) is a legitimate setting; ε and nβ must be positive.
        let list = |name: &str, v: &[f64], zero_ok: bool| -> Result<()> {
            if v.is_empty() {
                return Err(Error::invalid(name, "[]", "give at least one value"));
            }
            if v.len() > MAX_VALUES {
                return Err(Error::invalid(name, v.len(), format!("at most {MAX_VALUES} values")));
            }
            if let Some(x) = v.iter().find(|x| !(x.is_finite() && (**x > 0.0 || (zero_ok && **x == 0.0)))) {
                let rule = if zero_ok {
                    "every value must be non-negative and finite"
                } else {
                    "every value must be positive and finite"
                };
                return Err(Error::invalid(name, x, rule));
            }
            for (i, x) in v.iter().enumerate() {
                if v[..i].contains(x) {
                    return Err(Error::invalid(name, x, "value given twice"));
                }
            }
            Ok(())
        };
        list("calibrate.lr", &self.lrs, false)?;
        match &self.axis {
            CalibrationAxis::Nbeta(v) => list("calibrate.nbeta", v, false)?,
            CalibrationAxis::Localization(v) => list("calibrate.localization", v, true)?,
        }
        if self.num_draws < 4 {
            return Err(Error::invalid("calibrate.num_draws", self.num_draws, "need at least 4 draws"));
        }
        for (name, v) in [
            ("calibrate.max_relative_slope", self.max_relative_slope),
            ("calibrate.max_rhat", self.max_rhat),
            ("calibrate.max_prior_drop", self.max_prior_drop),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::invalid(name, v, "must be positive and finite"));
            }
        }
        if !(0.0..=1.0).contains(&self.min_mala_acceptance) {
            return Err(Error::invalid(
                "calibrate.min_mala_acceptance",
                self.min_mala_acceptance,
                "must lie in [0, 1]",
            ));
        }
        Ok(())
    }
}

/// Most values per axis (a sweep is a grid of short runs; more is a typo).
const MAX_VALUES: usize = 64;

/// One setting of a calibration sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationPoint {
    /// Step size ε.
    pub lr: f64,
    /// The nβ used.
    pub nbeta: f64,
    /// The localisation γ used.
    pub localization: f64,
    /// λ̂ over all steps, mean over the healthy chains (NaN if none).
    pub llc_mean: f64,
    /// Its std over the healthy chains.
    pub llc_std: f64,
    /// λ̂ over the second half of the steps.
    pub llc_second_half: f64,
    /// Whether any chain diverged.
    pub diverged: bool,
    /// How many chains diverged.
    pub n_diverged: usize,
    /// The running λ̂ (mean over healthy chains) fitted by a line over the second half of the
    /// steps: its change over that half, relative to the final running λ̂.
    pub relative_slope: f64,
    /// `|relative_slope| ≤ max_relative_slope`.
    pub stationary: bool,
    /// Mean MALA acceptance over the healthy chains (`None` for SGNHT).
    pub mala_acceptance: Option<f64>,
    /// Split-R̂ of the loss draws of the healthy chains.
    pub rhat: Option<f64>,
    /// No divergence, stationary, R̂ and MALA acceptable.
    pub healthy: bool,
    /// (ε, γ) sweeps: healthy, but λ̂ falls by more than `max_prior_drop` below the value at a
    /// smaller γ (see [`CalibrationConfig::max_prior_drop`]).
    pub prior_dominated: bool,
    /// Why the setting is not healthy, or prior-dominated (empty if neither).
    pub problems: Vec<String>,
}

/// The recommended setting of a sweep.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// Step size ε.
    pub lr: f64,
    /// nβ.
    pub nbeta: f64,
    /// Localisation γ.
    pub localization: f64,
    /// Index of the setting in [`Calibration::settings`].
    pub index: usize,
}

/// The result of [`LlcEstimator::calibrate`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// What was swept.
    pub config: CalibrationConfig,
    /// The estimator's configuration the sweep started from (chains, batch, seed, sampler).
    pub base: LlcConfig,
    /// Every setting, ε fastest: `settings[j · lrs.len() + i]` is (`lrs[i]`, `axis[j]`).
    pub settings: Vec<CalibrationPoint>,
    /// The recommended setting (see [`LlcEstimator::calibrate`]); `None` if no setting is
    /// healthy.
    pub recommended: Option<Recommendation>,
}

impl Calibration {
    /// The base configuration at the recommended setting (ε and nβ or γ replaced), for the full
    /// estimate; `None` without a recommendation.
    pub fn recommended_config(&self) -> Option<LlcConfig> {
        let r = self.recommended?;
        let c = self.base.lr(r.lr);
        Some(match self.config.axis {
            CalibrationAxis::Nbeta(_) => c.nbeta(r.nbeta),
            CalibrationAxis::Localization(_) => c.localization(r.localization),
        })
    }

    /// The setting at (`lrs[i]`, `axis[j]`).
    pub fn at(&self, i: usize, j: usize) -> Option<&CalibrationPoint> {
        (i < self.config.lrs.len()).then(|| self.settings.get(j * self.config.lrs.len() + i)).flatten()
    }

    /// Draws the sweep as a heat map: ε across, the second hyper-parameter down, each cell
    /// coloured by λ̂ and labelled with it; diverged settings are grey with "diverged",
    /// unhealthy ones carry their first problem, the recommended one is framed.
    pub fn draw(&self, path: &Path, title: &str) -> Result<()> {
        let lrs = &self.config.lrs;
        let second = self.config.axis.values();
        let cells: Vec<HeatCell> = self
            .settings
            .iter()
            .enumerate()
            .map(|(k, p)| {
                let (i, j) = (k % lrs.len(), k / lrs.len());
                let note = if p.diverged {
                    "diverged".to_string()
                } else if !p.stationary {
                    "not stationary".to_string()
                } else if !p.healthy || p.prior_dominated {
                    p.problems.first().map_or_else(String::new, |s| s.split(':').next().unwrap_or("").to_string())
                } else {
                    String::new()
                };
                HeatCell {
                    column: i,
                    row: j,
                    value: (!p.diverged && p.llc_mean.is_finite()).then_some(p.llc_mean),
                    label: if p.llc_mean.is_finite() { format!("{:.3}", p.llc_mean) } else { "–".into() },
                    note,
                    framed: self.recommended.is_some_and(|r| r.index == k),
                }
            })
            .collect();
        heat_map(
            path,
            title,
            "step size ε (lr)",
            self.config.axis.name(),
            &lrs.iter().map(|v| format!("{v:e}")).collect::<Vec<_>>(),
            &second.iter().map(|v| format!("{v}")).collect::<Vec<_>>(),
            "λ̂",
            &cells,
        )
    }
}

impl LlcEstimator {
    /// Runs a calibration sweep: for every (ε, nβ) or (ε, γ) of `calibration`, this
    /// estimator's chains (count, batch, seed, sampler, restriction) for
    /// `calibration.num_draws` draws, all settings' chains in parallel; then per setting λ̂,
    /// divergence, MALA acceptance, split-R̂ and stationarity, and a recommendation.
    ///
    /// A setting's chains are **healthy** when none diverged, the running λ̂ is flat over the
    /// second half (stationary), split-R̂ ≤ `max_rhat` and the MALA acceptance is at least
    /// `min_mala_acceptance` (the step's discretisation error is moderate); its λ̂ is **stable**
    /// when, in addition, it is not prior-dominated (λ̂ does not fall by more than
    /// `max_prior_drop` below its value at a smaller γ, see
    /// [`CalibrationConfig::max_prior_drop`]).
    ///
    /// **The recommendation** is the healthy, stable setting with the largest ε: within the
    /// healthy ones the largest step mixes fastest and leaves the least transient in a run of
    /// given length. Ties in ε go to the smallest γ (the least pull of the prior) or to the nβ
    /// closest to the estimator's own (log scale). No such setting, no recommendation: lengthen
    /// `num_draws` or widen the grid. `docs/llc.md` shows the sweep on the `llc_dln` fixture.
    pub fn calibrate<M: LossModel + Clone>(
        &self,
        model: &M,
        w_star: &[f64],
        calibration: &CalibrationConfig,
    ) -> Result<Calibration> {
        calibration.validate()?;
        let base = self.config().num_draws(calibration.num_draws).num_burnin_steps(0).num_steps_bw_draws(1);
        let base_params = self.params_for(model, w_star)?;
        let d = model.n_params();
        let active = self.restriction().filter(|s| !s.is_all(d)).map(|s| s.indices());
        let second = calibration.axis.values();
        let mut configs = Vec::with_capacity(second.len() * calibration.lrs.len());
        for &v in second {
            for &lr in &calibration.lrs {
                let c = base.lr(lr);
                configs.push(match calibration.axis {
                    CalibrationAxis::Nbeta(_) => c.nbeta(v),
                    CalibrationAxis::Localization(_) => c.localization(v),
                });
            }
        }
        let mut jobs = Vec::with_capacity(configs.len() * base.num_chains);
        for config in &configs {
            config.check()?;
            let params = params_for(config, model, w_star)?;
            for chain in 0..config.num_chains {
                jobs.push(Job { chain, config: *config, params, model: model.clone(), w_star, active });
            }
        }
        let mut runs = run_jobs(jobs)?.into_iter();
        let mut settings = Vec::with_capacity(configs.len());
        for config in &configs {
            let chains: Vec<ChainRun> = runs.by_ref().take(config.num_chains).collect();
            let params = params_for(config, model, w_star)?;
            let report = LlcReport::build(
                *config,
                params.nbeta(),
                params.nbeta_is_default(),
                model.n_samples(),
                d,
                self.restriction(),
                chains,
            );
            settings.push(point(&report, calibration));
        }
        if let CalibrationAxis::Localization(_) = calibration.axis {
            mark_prior_dominated(&mut settings, calibration);
        }
        let recommended = recommend(&settings, calibration, base_params.nbeta());
        Ok(Calibration { config: calibration.clone(), base: *self.config(), settings, recommended })
    }
}

/// λ̂ and the health checks of one setting.
fn point(r: &LlcReport, cal: &CalibrationConfig) -> CalibrationPoint {
    let total = r.config.total_steps().unwrap_or(0);
    let healthy = r.healthy_chains();
    let n_diverged = r.n_excluded_chains;
    let second_half = r.llc_over_steps(total / 2..total).unwrap_or(f64::NAN);
    // Running λ̂ averaged over the healthy chains, fitted by a line over the second half.
    let relative_slope = if healthy.is_empty() || total < 4 {
        f64::NAN
    } else {
        let start = total / 2;
        let ys: Vec<f64> = (start..total)
            .map(|t| healthy.iter().map(|&c| r.llc_trace_running_mean[c][t]).sum::<f64>() / healthy.len() as f64)
            .collect();
        let slope = fitted_slope(&ys);
        let level = ys.last().copied().unwrap_or(f64::NAN).abs();
        slope * (ys.len() - 1) as f64 / level
    };
    let stationary = relative_slope.abs() <= cal.max_relative_slope;
    let accept: Vec<f64> =
        healthy.iter().filter_map(|&c| r.diagnostics.per_chain[c].mala_acceptance).collect::<Vec<_>>();
    let mala_acceptance = (!accept.is_empty()).then(|| accept.iter().sum::<f64>() / accept.len() as f64);
    let rhat = r.diagnostics.r_hat;
    let mut problems = Vec::new();
    if n_diverged > 0 {
        problems.push(format!("diverged: {n_diverged} of {} chains", r.divergences.len()));
    }
    if healthy.is_empty() {
        problems.push("no healthy chain".into());
    } else if !stationary {
        problems
            .push(format!("not stationary: running λ̂ changes by {:.1} % over the second half", 100.0 * relative_slope));
    }
    if let Some(x) = rhat.filter(|&x| x > cal.max_rhat) {
        problems.push(format!("R̂: {x:.3} > {}", cal.max_rhat));
    }
    if let Some(a) = mala_acceptance.filter(|&a| a < cal.min_mala_acceptance) {
        problems.push(format!("MALA: acceptance {a:.2} < {}", cal.min_mala_acceptance));
    }
    CalibrationPoint {
        lr: r.config.sgld.lr,
        nbeta: r.nbeta,
        localization: r.config.sgld.localization,
        llc_mean: r.llc_mean,
        llc_std: r.llc_std,
        llc_second_half: second_half,
        diverged: n_diverged > 0,
        n_diverged,
        relative_slope,
        stationary,
        mala_acceptance,
        rhat,
        healthy: problems.is_empty(),
        prior_dominated: false,
        problems,
    }
}

/// Least-squares slope of `ys` against 0, 1, 2, ….
fn fitted_slope(ys: &[f64]) -> f64 {
    let n = ys.len() as f64;
    let tm = (n - 1.0) / 2.0;
    let ym = ys.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (t, y) in ys.iter().enumerate() {
        let dt = t as f64 - tm;
        sxy += dt * (y - ym);
        sxx += dt * dt;
    }
    if sxx > 0.0 { sxy / sxx } else { 0.0 }
}

/// Marks the healthy settings whose λ̂ lies more than `max_prior_drop` below λ̂ at the nearest
/// smaller γ (same ε) that can serve as a reference: its chains did not diverge, its MALA
/// acceptance is acceptable and its running λ̂ is not falling, so its λ̂ can only underestimate
/// its equilibrium value (a still-rising setting qualifies; a prior-dominated one does not).
fn mark_prior_dominated(settings: &mut [CalibrationPoint], cal: &CalibrationConfig) {
    let n_lr = cal.lrs.len();
    let gammas = cal.axis.values();
    let mut order: Vec<usize> = (0..gammas.len()).collect();
    order.sort_by(|&a, &b| gammas[a].total_cmp(&gammas[b]));
    for i in 0..n_lr {
        let mut reference: Option<(f64, f64)> = None; // (γ, λ̂)
        for &j in &order {
            let k = j * n_lr + i;
            let p = &settings[k];
            let llc = p.llc_mean;
            if p.healthy
                && let Some((g, r)) = reference
                && llc < (1.0 - cal.max_prior_drop) * r
            {
                settings[k].prior_dominated = true;
                settings[k].problems.push(format!(
                    "prior-dominated: λ̂ {llc:.3} is {:.0} % below {r:.3} at γ = {g}",
                    100.0 * (1.0 - llc / r)
                ));
                continue;
            }
            let eligible = !p.diverged
                && llc.is_finite()
                && p.mala_acceptance.is_none_or(|a| a >= cal.min_mala_acceptance)
                && p.relative_slope >= -cal.max_relative_slope;
            if eligible {
                reference = Some((p.localization, llc));
            }
        }
    }
}

fn recommend(settings: &[CalibrationPoint], cal: &CalibrationConfig, own_nbeta: f64) -> Option<Recommendation> {
    let pool = (0..settings.len()).filter(|&k| settings[k].healthy && !settings[k].prior_dominated);
    let tie = |p: &CalibrationPoint| match cal.axis {
        CalibrationAxis::Localization(_) => p.localization,
        CalibrationAxis::Nbeta(_) => (p.nbeta / own_nbeta).ln().abs(),
    };
    let best = pool.min_by(|&a, &b| {
        let (pa, pb) = (&settings[a], &settings[b]);
        pb.lr.total_cmp(&pa.lr).then(tie(pa).total_cmp(&tie(pb)))
    })?;
    let p = &settings[best];
    Some(Recommendation { lr: p.lr, nbeta: p.nbeta, localization: p.localization, index: best })
}
