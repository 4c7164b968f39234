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

use crate::report::{Report, progress};
use crate::{SEED, StageResult};
use degeneracy::llc::{BehaviouralLoss, LlcConfig, LlcEstimator, LlcReport, MlpLoss};
use degeneracy::plot::{Scale, Series, line_chart};
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

/// Estimates both coefficients and prints them with their diagnostics.
pub fn run(mlp: &Mlp, data: &Dataset, report: &mut Report) -> StageResult<LlcStage> {
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
    report.section(
        "llc",
        json!({"settings": {"training": training.config, "behavioural": behavioural.config},
               "training": summary(&training), "behavioural": summary(&behavioural),
               "two_llc_training": 2.0 * training.llc_draws_mean, "two_llc_behavioural": 2.0 * behavioural.llc_draws_mean}),
    );
    Ok(LlcStage { training, behavioural })
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
