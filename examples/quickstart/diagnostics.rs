//! Stage 4: the three sources of degeneracy and the effective parameter count they imply.

use crate::StageResult;
use crate::llc::LlcStage;
use crate::report::Report;
use degeneracy::diagnostics::{Diagnostics, DiagnosticsConfig, diagnose};
use degeneracy::{Dataset, Mlp};
use serde_json::json;
use std::time::Instant;

/// Diagnoses the trained network on its training data and prints one line per node layer.
/// λ̂ (behavioural loss, after burn-in) puts `N_eff = 2λ̂` next to the bound.
pub fn run(mlp: &Mlp, data: &Dataset, llc: &LlcStage, report: &mut Report) -> StageResult<Diagnostics> {
    let t = Instant::now();
    let config = DiagnosticsConfig::default();
    let d = diagnose(mlp, data, &config)?;
    println!(
        "\n== degeneracy diagnostics (rank tolerance 1e-10 · largest eigenvalue; {:.2} s)",
        t.elapsed().as_secs_f64()
    );
    println!(
        "   {:<9} {:>4} {:>9} {:>9} {:>5} {:>6} {:>6}   free directions (a)+(b) / (c)",
        "node", "dim", "act rank", "jac rank", "dead", "on", "sync"
    );
    for n in &d.nodes {
        let (dead, on, sync) = n.relu.as_ref().map_or(("-".into(), "-".into(), "-".into()), |r| {
            (r.dead.len().to_string(), r.always_on.len().to_string(), r.sync_groups.len().to_string())
        });
        println!(
            "   {:<9} {:>4} {:>9} {:>9} {:>5} {:>6} {:>6}   {} / {}",
            n.name,
            n.dim,
            n.activation.rank,
            n.jacobian.rank,
            dead,
            on,
            sync,
            n.free_directions.as_ref().map_or("not counted".into(), |f| f.activation_and_jacobian.to_string()),
            n.free_directions.as_ref().map_or("not counted".into(), |f| f.synchronised.to_string())
        );
    }
    let (two_b, gap_b) = d.compare_llc(llc.behavioural.llc_draws_mean);
    let (two_t, _) = d.compare_llc(llc.training.llc_draws_mean);
    println!(
        "   {} parameters, {} free directions → effective parameter count ≤ {}; 2λ̂ = {:.0} (behavioural), {:.0} (training loss)",
        counted(d.n_params),
        counted(d.free_directions_total),
        counted(d.effective_params_bound),
        two_b,
        two_t
    );
    report.section(
        "diagnostics",
        json!({"settings": config, "result": d, "two_llc_behavioural": two_b, "bound_minus_two_llc_behavioural": gap_b,
               "two_llc_training": two_t, "seconds": t.elapsed().as_secs_f64()}),
    );
    Ok(d)
}

/// A count, or "not counted" where a section is not affine + elementwise.
fn counted<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "not counted".into(), |v| v.to_string())
}
