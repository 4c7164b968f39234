//! Stage 2: the local learning coefficient λ̂ of the trained network, for the training loss
//! (cross-entropy) and the behavioural loss ‖f(x, w) − f(x, w*)‖².
//!
//! Hyper-parameters come from a small sweep on this model (4 chains, batch 64, nβ = n/ln n =
//! 84.4; λ̂ over all steps, quarters of the trace in brackets; full table in `docs/llc.md`):
//! * cross-entropy, γ = 100: lr 3e-4 → 13.8 [13.1 14.2 13.5 14.3], lr 1e-3 → 15.9
//!   [15.6 16.2 15.5 16.1] (R̂ 1.00, MALA 0.41), lr 3e-3 → 21.9 (MALA 0.19: steps too large);
//!   γ = 1 or 10 never plateaus below lr 1e-3 (the loss is so flat that the chain wanders
//!   ~30–90 units away; λ̂ then measures the prior, not the loss). Chosen: lr 1e-3, γ = 100.
//! * behavioural (γ barely matters: the loss dominates): lr 1e-5 still rising after 2000 steps
//!   (1182, last quarter 1360), lr 2e-5 → 1560 [1448 1598 1594 1602] (R̂ 1.01), lr 3e-5 → 2811
//!   with an initial spike [3321 2706 2611 2606] (at the stability edge of the stiffest
//!   directions), lr ≥ 3e-4 diverges. Chosen: lr 2e-5, γ = 100, with a 500-step burn-in.
//!
//! The behavioural λ̂ is two orders of magnitude larger: at a confidently correct classifier the
//! cross-entropy saturates, so most changes of the logits barely change the training loss,
//! while the behavioural loss penalises every change of the function.
//!
//! Then the restricted λ̂ (cross-entropy) of every layer and of every module of the LIB graph
//! with more than one direction, next to its size, and λ̂ over the training run's checkpoints
//! with shorter chains (same settings and seeds at every checkpoint), next to the training loss
//! and the diagnostics' effective-parameter bound. Expected direction: both λ̂ grow from the
//! initialisation to the end. At initialisation the logits are small and nearly constant, so
//! the loss and the function barely react to most parameter directions (their curvature
//! nβ·h is far below γ and they count ≈ 0); training makes the function react to more and more
//! directions. The cross-entropy λ̂ peaks while the network memorises (epoch ≈ 100) and falls as
//! the loss saturates; the behavioural λ̂ keeps rising.

use crate::bases::Bases;
use crate::graph::Graph;
use crate::report::{Report, progress};
use crate::training::Trained;
use crate::{SEED, StageResult};
use degeneracy::diagnostics::{DiagnosticsConfig, diagnose};
use degeneracy::llc::{
    BehaviouralLoss, Checkpoint, LlcConfig, LlcEstimator, LlcReport, MlpLoss, ParamLayout, ParamSubset, Trajectory,
    module_parameters,
};
use degeneracy::plot::{Panel, Scale, Series, line_chart, panel_chart};
use degeneracy::{Dataset, Layer, Loss, Mlp};
use serde_json::json;
use std::time::Instant;

/// λ̂ of the training and the behavioural loss.
pub struct LlcStage {
    /// Cross-entropy (training loss) report.
    pub training: LlcReport,
    /// Behavioural loss report.
    pub behavioural: LlcReport,
}

/// Estimates both coefficients, the per-layer and per-module breakdown and the trajectory, and
/// prints them with their diagnostics.
pub fn run(
    trained: &Trained,
    data: &Dataset,
    bases: &Bases,
    graph: &Graph,
    report: &mut Report,
) -> StageResult<LlcStage> {
    let mlp = &trained.mlp;
    let n = data.len();
    println!(
        "\n== llc: local learning coefficient at the trained w* (d = {}, n = {n}, nβ = n/ln n = {:.1})",
        mlp.n_params(),
        n as f64 / (n as f64).ln()
    );
    let base = LlcConfig::new(1e-3).localization(100.0).batch_size(64).num_chains(4).seed(SEED);

    let bar = progress(2, "llc");
    let t = Instant::now();
    let model = MlpLoss::new(mlp, Loss::CrossEntropy, data.clone())?;
    let config = base.num_burnin_steps(200).num_draws(1000);
    let training = LlcEstimator::new(config)?.estimate(&model, &model.params())?;
    bar.inc(1);
    print_line("training loss (cross-entropy)", &training, t.elapsed().as_secs_f64());

    let t = Instant::now();
    let model = BehaviouralLoss::from_dataset(mlp, data)?;
    let config = base.lr(2e-5).num_burnin_steps(500).num_draws(1500);
    let behavioural = LlcEstimator::new(config)?.estimate(&model, &model.params())?;
    bar.finish_and_clear();
    print_line("behavioural loss", &behavioural, t.elapsed().as_secs_f64());

    for w in training.warnings.iter().chain(&behavioural.warnings) {
        println!("   warning: {w}");
    }
    if !training.all_healthy() || !behavioural.all_healthy() {
        return Err("an LLC chain diverged".into());
    }
    for (r, file, what) in [
        (&training, "llc_traces_training.svg", "cross-entropy"),
        (&behavioural, "llc_traces_behavioural.svg", "behavioural loss"),
    ] {
        let series: Vec<Series> = r
            .llc_trace_running_mean
            .iter()
            .enumerate()
            .map(|(c, trace)| Series {
                name: format!("chain {c}"),
                points: trace.iter().enumerate().map(|(t, &v)| (t as f64, v)).collect(),
            })
            .collect();
        line_chart(
            &report.picture(file),
            &format!("λ̂ running mean per chain, {what}"),
            "SGLD step",
            "λ̂ (running mean)",
            Scale::Linear,
            &series,
        )?;
    }
    let summary = |r: &LlcReport| {
        json!({"llc_mean": r.llc_mean, "llc_std": r.llc_std, "llc_per_chain": r.llc_per_chain,
               "llc_draws_mean": r.llc_draws_mean, "llc_draws_std": r.llc_draws_std, "init_loss": r.init_loss,
               "nbeta": r.nbeta, "r_hat": r.diagnostics.r_hat, "ess": r.diagnostics.ess, "config": r.config})
    };
    let breakdown = breakdown(mlp, data, bases, graph, base)?;
    let trajectory = trajectory(trained, data, base, report)?;
    report.section(
        "llc",
        json!({"settings": {"training": training.config, "behavioural": behavioural.config},
               "training": summary(&training), "behavioural": summary(&behavioural),
               "two_llc_training": 2.0 * training.llc_draws_mean, "two_llc_behavioural": 2.0 * behavioural.llc_draws_mean,
               "breakdown": breakdown, "trajectory": trajectory}),
    );
    Ok(LlcStage { training, behavioural })
}

/// Restricted λ̂ (cross-entropy, the stage's settings with shorter chains) of every layer and of
/// every LIB module with more than one direction, all chains in parallel.
fn breakdown(
    mlp: &Mlp,
    data: &Dataset,
    bases: &Bases,
    graph: &Graph,
    base: LlcConfig,
) -> StageResult<serde_json::Value> {
    let t = Instant::now();
    let layers = ParamLayout::mlp(mlp).per_layer();
    let modules: Vec<_> =
        module_parameters(mlp, &bases.lib, &graph.modules)?.into_iter().filter(|m| m.directions > 1).collect();
    let subsets: Vec<ParamSubset> = layers.iter().cloned().chain(modules.iter().map(|m| m.params.clone())).collect();
    let model = MlpLoss::new(mlp, Loss::CrossEntropy, data.clone())?;
    let config = base.num_burnin_steps(100).num_draws(400);
    let b = LlcEstimator::new(config)?.estimate_breakdown(&model, &model.params(), &subsets)?;
    println!(
        "   restricted λ̂ (cross-entropy; {} × ({} + {}) steps per subset, the rest of w held at w*; {:.2} s):",
        config.num_chains,
        config.num_burnin_steps,
        config.num_draws,
        t.elapsed().as_secs_f64()
    );
    let mut rows = Vec::new();
    for (k, e) in b.entries.iter().enumerate() {
        let directions = k.checked_sub(layers.len()).map(|m| modules[m].directions);
        let size = directions.map_or_else(String::new, |d| format!("{d} directions, "));
        println!(
            "     {:<10} {size}{} parameters: λ̂ = {:7.2} ± {:5.2}",
            e.label, e.n_params, e.report.llc_draws_mean, e.report.llc_draws_std
        );
        rows.push(json!({"subset": e.label, "directions": directions, "n_params": e.n_params,
                         "llc_draws_mean": e.report.llc_draws_mean, "llc_draws_std": e.report.llc_draws_std,
                         "r_hat": e.report.diagnostics.r_hat}));
    }
    Ok(
        json!({"settings": config, "module_parameters": "weights between two units of the module and biases of its units; a unit belongs to the module holding most of its loading (degeneracy::llc::module_parameters)", "subsets": rows}),
    )
}

/// λ̂ of both losses at every checkpoint of the training run (same settings and seeds at each,
/// shorter chains than the final estimate), the effective-parameter bound of the diagnostics
/// there, and the picture `llc_trajectory.svg`.
fn trajectory(
    trained: &Trained,
    data: &Dataset,
    base: LlcConfig,
    report: &mut Report,
) -> StageResult<serde_json::Value> {
    let t = Instant::now();
    let nets: Vec<(usize, Mlp)> = trained
        .checkpoints
        .iter()
        .map(|(epoch, w)| {
            let mut m = trained.mlp.clone();
            m.set_params(w).map(|_| (*epoch, m))
        })
        .collect::<Result<_, _>>()?;
    let ce_config = base.num_burnin_steps(100).num_draws(300);
    let ce = LlcEstimator::new(ce_config)?
        .estimate_trajectory(&checkpoints(&nets, |m| MlpLoss::new(m, Loss::CrossEntropy, data.clone()))?)?;
    let beh_config = base.lr(2e-5).num_burnin_steps(200).num_draws(400);
    let beh = LlcEstimator::new(beh_config)?
        .estimate_trajectory(&checkpoints(&nets, |m| BehaviouralLoss::from_dataset(m, data))?)?;
    ce.check()?;
    beh.check()?;
    let bounds = nets
        .iter()
        .map(|(_, m)| Ok(diagnose(m, data, &DiagnosticsConfig::default())?.effective_params_bound))
        .collect::<StageResult<Vec<Option<i64>>>>()?;
    println!(
        "   over training ({} checkpoints, same seeds; cross-entropy {} × ({} + {}), behavioural {} × ({} + {}) steps; {:.2} s):",
        nets.len(),
        ce_config.num_chains,
        ce_config.num_burnin_steps,
        ce_config.num_draws,
        beh_config.num_chains,
        beh_config.num_burnin_steps,
        beh_config.num_draws,
        t.elapsed().as_secs_f64()
    );
    println!(
        "     {:>6} {:>11} {:>16} {:>16} {:>14}",
        "epoch", "loss", "λ̂ cross-entropy", "λ̂ behavioural", "params bound"
    );
    let mut rows = Vec::new();
    for (k, (epoch, _)) in nets.iter().enumerate() {
        let loss = if *epoch == 0 { f64::NAN } else { trained.epoch_losses[epoch - 1] };
        let (c, b) = (&ce.points[k], &beh.points[k]);
        println!(
            "     {epoch:>6} {loss:>11.3e} {:>9.2} ± {:<5.2} {:>9.1} ± {:<5.1} {:>14}",
            c.report.llc_draws_mean,
            c.report.llc_draws_std,
            b.report.llc_draws_mean,
            b.report.llc_draws_std,
            bounds[k].map_or_else(|| "not counted".into(), |v| v.to_string())
        );
        rows.push(json!({"epoch": epoch, "epoch_loss": (*epoch > 0).then_some(loss),
                         "llc_training": c.report.llc_draws_mean, "llc_training_std": c.report.llc_draws_std,
                         "llc_behavioural": b.report.llc_draws_mean, "llc_behavioural_std": b.report.llc_draws_std,
                         "healthy_chains": [c.healthy_chains, b.healthy_chains], "effective_params_bound": bounds[k]}));
    }
    draw_trajectory(trained, &ce, &beh, &nets, &bounds, report)?;
    Ok(json!({"settings": {"training": ce_config, "behavioural": beh_config}, "checkpoints": rows,
              "expected_direction": "λ̂ (both losses) larger at the last checkpoint than at the initialisation"}))
}

fn draw_trajectory(
    trained: &Trained,
    ce: &Trajectory,
    beh: &Trajectory,
    nets: &[(usize, Mlp)],
    bounds: &[Option<i64>],
    report: &mut Report,
) -> StageResult<()> {
    let at = |t: &Trajectory| t.points.iter().map(|p| (p.position, p.report.llc_draws_mean)).collect::<Vec<_>>();
    let twice = |t: &Trajectory| t.points.iter().map(|p| (p.position, 2.0 * p.report.llc_draws_mean)).collect();
    let bound: Vec<(f64, f64)> =
        nets.iter().zip(bounds).filter_map(|((e, _), b)| b.map(|b| (*e as f64, b as f64))).collect();
    let losses = trained.epoch_losses.iter().enumerate().map(|(e, &l)| (e as f64 + 1.0, l)).collect();
    panel_chart(
        &report.picture("llc_trajectory.svg"),
        "Modular addition (p = 23): training loss, λ̂ and effective parameters over training",
        &[
            Panel {
                title: "training loss".into(),
                x_label: "epoch".into(),
                y_label: "cross-entropy (log scale)".into(),
                y_scale: Scale::Log,
                markers: false,
                series: vec![Series { name: "epoch mean loss".into(), points: losses }],
            },
            Panel {
                title: "λ̂ at the checkpoints".into(),
                x_label: "epoch".into(),
                y_label: "λ̂ (log scale)".into(),
                y_scale: Scale::Log,
                markers: true,
                series: vec![
                    Series { name: "λ̂ cross-entropy".into(), points: at(ce) },
                    Series { name: "λ̂ behavioural".into(), points: at(beh) },
                ],
            },
            Panel {
                title: "effective parameters".into(),
                x_label: "epoch".into(),
                y_label: "count (log scale)".into(),
                y_scale: Scale::Log,
                markers: true,
                series: vec![
                    Series { name: "diagnostics bound".into(), points: bound },
                    Series { name: "2λ̂ behavioural".into(), points: twice(beh) },
                    Series { name: "2λ̂ cross-entropy".into(), points: twice(ce) },
                ],
            },
        ],
    )?;
    Ok(())
}

/// One [`Checkpoint`] per network, its loss model made by `make`.
fn checkpoints<M>(
    nets: &[(usize, Mlp)],
    make: impl Fn(&Mlp) -> degeneracy::Result<M>,
) -> degeneracy::Result<Vec<Checkpoint<M>>> {
    nets.iter()
        .map(|(epoch, m)| {
            Ok(Checkpoint {
                label: format!("epoch {epoch}"),
                position: *epoch as f64,
                w_star: m.params(),
                model: make(m)?,
            })
        })
        .collect()
}

fn print_line(what: &str, r: &LlcReport, secs: f64) {
    let c = &r.config;
    let mala = r.diagnostics.per_chain.iter().filter_map(|s| s.mala_acceptance).sum::<f64>() / c.num_chains as f64;
    println!(
        "   {what:<30} λ̂ = {:8.2} ± {:5.2} after burn-in ({:8.2} over all steps)   lr {:.0e}, γ {}, {} × ({} + {}) steps, batch {}; R̂ {:.3}, MALA {:.2}   ({:.2} s)",
        r.llc_draws_mean,
        r.llc_draws_std,
        r.llc_mean,
        c.sgld.lr,
        c.sgld.localization,
        c.num_chains,
        c.num_burnin_steps,
        c.num_draws,
        c.batch_size,
        r.diagnostics.r_hat.unwrap_or(f64::NAN),
        mala,
        secs
    );
}
