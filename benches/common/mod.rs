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
