//! Trajectories: λ̂ over the checkpoints of one training run, with the same hyper-parameters
//! and seeds at every checkpoint (the developmental-interpretability use).

use super::estimator::{Job, LlcEstimator, params_for, run_jobs};
use super::loss_model::LossModel;
use super::report::{ChainRun, LlcReport};
use crate::error::{Error, Result};
use crate::plot::{Panel, Scale, Series, panel_chart};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One checkpoint of a training run: a label (file name, epoch), the loss model at it and its
/// parameters w*.
#[derive(Clone, Debug)]
pub struct Checkpoint<M> {
    /// Shown in reports and pictures.
    pub label: String,
    /// Where it sits along training (the epoch, the step): the x axis of the picture.
    pub position: f64,
    /// The loss at this checkpoint (its data are usually shared with the other checkpoints').
    pub model: M,
    /// The checkpoint's parameters.
    pub w_star: Vec<f64>,
}

/// λ̂ at one checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrajectoryPoint {
    /// The checkpoint's label.
    pub checkpoint: String,
    /// Its position along training.
    pub position: f64,
    /// λ̂ (all steps), mean over the healthy chains; NaN (JSON null) if none is healthy.
    pub llc_mean: f64,
    /// Std over the healthy chains.
    pub llc_std: f64,
    /// Chains that did not diverge. **0 means no estimate at this checkpoint**:
    /// [`Trajectory::failed`] lists those checkpoints.
    pub healthy_chains: usize,
    /// The whole report.
    pub report: LlcReport,
}

/// λ̂ over checkpoints ([`LlcEstimator::estimate_trajectory`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    /// One point per checkpoint, in the order given.
    pub points: Vec<TrajectoryPoint>,
}

impl Trajectory {
    /// The checkpoints without a healthy chain (no estimate there).
    pub fn failed(&self) -> Vec<&str> {
        self.points.iter().filter(|p| p.healthy_chains == 0).map(|p| p.checkpoint.as_str()).collect()
    }

    /// Ok if every checkpoint has an estimate; otherwise [`Error::NoHealthyChain`] for the
    /// first checkpoint without one (its report attached).
    pub fn check(&self) -> Result<()> {
        match self.points.iter().find(|p| p.healthy_chains == 0) {
            None => Ok(()),
            Some(p) => Err(Error::NoHealthyChain {
                what: format!("LLC at checkpoint {}", p.checkpoint),
                chains: p.report.divergences.len(),
                report: Box::new(p.report.clone()),
            }),
        }
    }

    /// The summary the `llc` job writes as `trajectory.json`: per checkpoint
    /// `{"checkpoint", "llc_mean", "llc_std", "healthy_chains"}`.
    pub fn summary(&self) -> serde_json::Value {
        self.points
            .iter()
            .map(|p| {
                serde_json::json!({"checkpoint": p.checkpoint, "llc_mean": p.llc_mean, "llc_std": p.llc_std,
                                   "healthy_chains": p.healthy_chains})
            })
            .collect()
    }

    /// Draws λ̂ (mean over the healthy chains) against the checkpoints' positions, one dot per
    /// checkpoint (those without an estimate are left out and named in the title; the std is in
    /// [`Trajectory::summary`]).
    pub fn draw(&self, path: &Path, title: &str, x_label: &str) -> Result<()> {
        let failed = self.failed();
        let title = if failed.is_empty() {
            title.to_string()
        } else {
            format!("{title} (no estimate at {})", failed.join(", "))
        };
        let point = |f: fn(&TrajectoryPoint) -> f64| -> Vec<(f64, f64)> {
            self.points.iter().filter(|p| p.healthy_chains > 0).map(|p| (p.position, f(p))).collect()
        };
        panel_chart(
            path,
            &title,
            &[Panel {
                title: "λ̂ over the checkpoints".into(),
                x_label: x_label.into(),
                y_label: "λ̂".into(),
                y_scale: Scale::Linear,
                markers: true,
                series: vec![Series { name: "λ̂ (mean over healthy chains)".into(), points: point(|p| p.llc_mean) }],
            }],
        )
    }
}

impl LlcEstimator {
    /// λ̂ at every checkpoint, with this estimator's configuration, seeds and restriction, the
    /// chains of all checkpoints in parallel. The same seed means the same minibatch order and
    /// noise streams at every checkpoint, so differences along the trajectory come from the
    /// checkpoints, not from the sampler's randomness.
    ///
    /// Checkpoints where every chain diverged do not stop the others: their point has
    /// `healthy_chains == 0` and a NaN estimate, [`Trajectory::failed`] names them and
    /// [`Trajectory::check`] turns them into [`Error::NoHealthyChain`].
    ///
    /// ```
    /// use degeneracy::llc::{Checkpoint, LlcConfig, LlcEstimator, MlpLoss};
    /// use degeneracy::{Activation, Dataset, Loss, Matrix, Mlp, Targets};
    /// let x = Matrix::from_fn(200, 2, |i, j| ((i * 5 + j) as f64 * 0.3).sin());
    /// let y = Matrix::from_fn(200, 1, |i, _| x[(i, 0)] - x[(i, 1)]);
    /// let data = Dataset::new(x, Targets::Values(y))?;
    /// let checkpoints = [0.5, 1.0]
    ///     .iter()
    ///     .map(|&s| {
    ///         let mlp = Mlp::new(vec![degeneracy::Linear::new(Matrix::from_rows(&[[s, -s]])?, None)?], Activation::Identity)?;
    ///         let model = MlpLoss::new(&mlp, Loss::Mse, data.clone())?;
    ///         Ok(Checkpoint { label: format!("scale {s}"), position: s, w_star: model.params(), model })
    ///     })
    ///     .collect::<degeneracy::Result<Vec<_>>>()?;
    /// let config = LlcConfig::new(1e-3).batch_size(50).num_draws(200).seed(0);
    /// let t = LlcEstimator::new(config)?.estimate_trajectory(&checkpoints)?;
    /// assert_eq!(t.points.len(), 2);
    /// assert!(t.failed().is_empty());
    /// # Ok::<(), degeneracy::Error>(())
    /// ```
    pub fn estimate_trajectory<M: LossModel + Clone>(&self, checkpoints: &[Checkpoint<M>]) -> Result<Trajectory> {
        if checkpoints.is_empty() {
            return Err(Error::invalid("checkpoints", "[]", "give at least one checkpoint"));
        }
        let config = *self.config();
        let mut prepared = Vec::with_capacity(checkpoints.len());
        for c in checkpoints {
            let params = params_for(&config, &c.model, &c.w_star)?;
            let d = c.model.n_params();
            if let Some(s) = self.restriction() {
                s.check(d)?;
            }
            let active = self.restriction().filter(|s| !s.is_all(d)).map(|s| s.indices());
            prepared.push((params, active));
        }
        let mut jobs = Vec::with_capacity(checkpoints.len() * config.num_chains);
        for (c, &(params, active)) in checkpoints.iter().zip(&prepared) {
            for chain in 0..config.num_chains {
                jobs.push(Job { chain, config, params, model: c.model.clone(), w_star: &c.w_star, active });
            }
        }
        let mut runs = run_jobs(jobs)?.into_iter();
        let mut points = Vec::with_capacity(checkpoints.len());
        for (c, (params, _)) in checkpoints.iter().zip(&prepared) {
            let chains: Vec<ChainRun> = runs.by_ref().take(config.num_chains).collect();
            let report = LlcReport::build(
                config,
                params.nbeta(),
                params.nbeta_is_default(),
                c.model.n_samples(),
                c.model.n_params(),
                self.restriction(),
                chains,
            );
            points.push(TrajectoryPoint {
                checkpoint: c.label.clone(),
                position: c.position,
                llc_mean: report.llc_mean,
                llc_std: report.llc_std,
                healthy_chains: report.healthy_chains().len(),
                report,
            });
        }
        Ok(Trajectory { points })
    }
}
