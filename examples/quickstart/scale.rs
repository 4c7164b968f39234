//! Stage: builds at scale. When a node's statistics come from fewer samples than its width, the
//! bases decompose the `n × n` kernel side of its rows instead of the `d × d` Gram
//! (`docs/math.md` §3.5): built from 40 samples, fewer than the input and hidden node layers'
//! coordinates, the kernel-side LIB equals the `d × d` one. Then where a whole build spends its time, phase by
//! phase (`degeneracy::profile`; the cost model of `docs/performance.md`).

use crate::StageResult;
use crate::report::Report;
use degeneracy::basis::{Basis, LibConfig, NodeBasis, build_bases, fit_bases};
use degeneracy::estimate::NodeStatistics;
use degeneracy::{Dataset, Matrix, Mlp, profile};
use serde_json::json;
use std::time::Instant;

/// Samples of the small build: fewer than the 47 and 65 coordinates of the input and hidden
/// node layers.
const ROWS: usize = 40;

/// `max |A − B| / max |B|` of two bases' projectors `C C⁺` and their Λ.
fn deviation(a: &NodeBasis, b: &NodeBasis) -> StageResult<(f64, f64)> {
    let (pa, pb) = (a.c().matmul(a.c_pinv())?, b.c().matmul(b.c_pinv())?);
    let projector =
        pa.as_slice().iter().zip(pb.as_slice()).fold(0.0f64, |m, (x, y)| m.max((x - y).abs())) / pb.max_abs();
    let lambda = match (&a.lambda, &b.lambda) {
        (Some(la), Some(lb)) => {
            let top = lb.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            la.iter().zip(lb).fold(0.0f64, |m, (x, y)| m.max((x - y).abs())) / top
        }
        _ => 0.0,
    };
    Ok((projector, lambda))
}

/// The kernel-side build against the `d × d` one on 40 samples, and the phases of the full build.
pub fn run(mlp: &Mlp, data: &Dataset, report: &mut Report) -> StageResult<()> {
    let t = Instant::now();
    let config = LibConfig::default();
    let x = data.inputs();
    let rows = Matrix::from_fn(ROWS, x.ncols(), |i, j| x[(i, j)]);
    let nodes = config.node_indices(mlp)?;
    let stats = NodeStatistics::collect(mlp, &rows, &nodes, config.statistics_quadrature(), config.batch_size)?;
    let kernel = build_bases(mlp, &rows, &stats, &config)?;
    let dense = build_bases(mlp, &rows, &stats.to_dense()?, &config)?;
    println!("\n== scale: kernel-side bases and the build's phases");
    println!("   {ROWS} samples, LIB by the n × n kernel side vs the d × d Gram:");
    let mut compared = Vec::new();
    for (k, d) in kernel.iter().zip(&dense) {
        let (projector, lambda) = deviation(k, d)?;
        println!(
            "   {:<10} width {:>3}, dim {:>2} vs {:>2}: C C⁺ within {projector:.1e}, Λ within {lambda:.1e}",
            k.node,
            k.orig_dim(),
            k.dim(),
            d.dim()
        );
        compared.push(json!({"node": k.node, "orig_dim": k.orig_dim(), "dim_kernel": k.dim(), "dim_dense": d.dim(),
                             "projector_deviation": projector, "lambda_deviation": lambda}));
    }
    profile::reset();
    let started = Instant::now();
    fit_bases(mlp, data, &config)?;
    let total = started.elapsed().as_secs_f64();
    let phases = profile::phases();
    println!("   the full LIB build ({} samples, {:.1} ms), by phase:", x.nrows(), total * 1e3);
    for p in &phases {
        println!("   {:<22} {:>8.2} ms  ({} calls)", p.name, p.seconds * 1e3, p.calls);
    }
    let timed: f64 = phases.iter().map(|p| p.seconds).sum();
    println!("   {:<22} {:>8.2} ms", "statistics pass, rest", (total - timed) * 1e3);
    report.section(
        "scale",
        json!({
            "settings": config,
            "kernel_side": {"samples": ROWS, "nodes": compared},
            "phases": phases.iter().map(|p| json!({"name": p.name, "seconds": p.seconds, "calls": p.calls})).collect::<Vec<_>>(),
            "build_seconds": total,
            "seconds": t.elapsed().as_secs_f64(),
        }),
    );
    Ok(())
}
