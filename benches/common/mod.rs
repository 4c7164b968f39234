//! Shared bench plumbing: a throughput baseline (faer GEMM through the crate's own `Matrix`
//! product) and a ratio table read back from criterion's estimates of this run.
#![allow(dead_code)]

use std::path::PathBuf;

/// Median time (ns) of `group/bench` from criterion's `estimates.json` of the latest run.
pub fn median_ns(group: &str, bench: &str) -> Option<f64> {
    let dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target"));
    let path = dir.join("criterion").join(group).join(bench).join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

/// Prints `work/time` ratios: each row is (label, bench, baseline bench, flops of bench,
/// flops of baseline). Throughput ratio = (flops/time) / (baseline flops/baseline time).
pub fn print_throughput_ratios(group: &str, rows: &[(&str, &str, &str, f64, f64)]) {
    println!("\n{group}: throughput relative to the baseline measured in this run");
    for &(label, bench, base, flops, base_flops) in rows {
        match (median_ns(group, bench), median_ns(group, base)) {
            (Some(t), Some(tb)) => {
                let gf = flops / t;
                let gb = base_flops / tb;
                println!("  {label:<40} {gf:7.2} GFLOP/s vs {gb:7.2} GFLOP/s  ratio {:.2}", gf / gb);
            }
            _ => println!("  {label:<40} (no estimate; run without a filter)"),
        }
    }
}

/// Prints time ratios: each row is (label, bench, baseline bench, external reference ns). With a
/// baseline bench the ratio is `time(bench) / time(baseline)` (both from this run); with an
/// external reference (e.g. another library's recorded time) it is `reference / time(bench)`,
/// i.e. the speed-up.
pub fn print_time_ratios(group: &str, rows: &[(&str, &str, &str, Option<f64>)]) {
    println!("\n{group}: time ratios (medians of this run)");
    for &(label, bench, base, reference) in rows {
        let t = median_ns(group, bench);
        match (t, reference, median_ns(group, base)) {
            (Some(t), Some(r), _) => println!("  {label:<40} {:9.2} µs   speed-up ×{:.1}", t / 1e3, r / t),
            (Some(t), None, Some(tb)) => {
                println!("  {label:<40} {:9.2} µs vs {:9.2} µs   ratio {:.2}", t / 1e3, tb / 1e3, t / tb)
            }
            _ => println!("  {label:<40} (no estimate; run without a filter)"),
        }
    }
}
