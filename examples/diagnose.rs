//! Degeneracy diagnostics of a model on data, for scripts and benchmark harnesses.
//!
//! `cargo run --release --example diagnose -- CONFIG.json` with
//! `{"model", "activation", "inputs", "rank_tol", "out_dir"}` (paths relative to the config
//! file; optional `"bias": false` for a bias-free model and `"tensor_names": {"name in file":
//! "layers.0.weight", …}`) writes `degeneracy.json`:
//! `{"nodes": [{"name", "dim", "activation_rank", "jacobian_rank", "relu": null | {"dead",
//! "always_on", "sync_groups"}, "free_directions": {...}, ...}], "n_params",
//! "effective_params_bound", ...}`.

mod common;

use common::{AnyResult, Outputs, read_config, resolve};
use degeneracy::data::{ActivationSampler, NpySampler};
use degeneracy::diagnostics::{DiagnosticsConfig, Rank, diagnose};
use degeneracy::{Activation, io};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    model: String,
    #[serde(default = "relu")]
    activation: String,
    inputs: String,
    #[serde(default = "default_tol")]
    rank_tol: f64,
    #[serde(default = "default_out")]
    out_dir: String,
    #[serde(default = "default_batch")]
    batch_size: usize,
    #[serde(default = "default_true", deserialize_with = "common::bias_key")]
    bias: bool,
    #[serde(default)]
    tensor_names: std::collections::BTreeMap<String, String>,
}

fn default_true() -> bool {
    true
}

fn relu() -> String {
    "relu".into()
}
fn default_tol() -> f64 {
    1e-10
}
fn default_out() -> String {
    "out".into()
}
fn default_batch() -> usize {
    1024
}

fn main() {
    common::exit_on_error(run());
}

fn gap(r: &Rank) -> serde_json::Value {
    json!({"smallest_kept": r.smallest_kept, "largest_dropped": r.largest_dropped, "ratio": r.gap()})
}

fn run() -> AnyResult<()> {
    common::only_config_arg("diagnose CONFIG.json")?;
    let (config, dir): (Config, _) = read_config("diagnose CONFIG.json")?;
    let options = common::load_options(config.bias, &config.tensor_names);
    let mlp = io::load_mlp_with(resolve(&dir, &config.model), Activation::from_name(&config.activation)?, &options)?;
    // Streamed in chunks: the diagnosis is one pass, so the rows never need to fit in memory.
    let inputs = NpySampler::open(resolve(&dir, &config.inputs), common::CHUNK_ROWS)?;
    let mut outputs = Outputs::prepare(&resolve(&dir, &config.out_dir), &[])?;
    let d = diagnose(&mlp, &inputs, &DiagnosticsConfig { rank_tol: config.rank_tol, batch_size: config.batch_size })?;
    let nodes: Vec<serde_json::Value> = d
        .nodes
        .iter()
        .map(|n| {
            json!({
                "name": n.name,
                "dim": n.dim,
                "activation_rank": n.activation.rank,
                "jacobian_rank": n.jacobian.rank,
                "preactivation_jacobian_rank": n.preactivation_jacobian.as_ref().map(|r| r.rank),
                "relu": n.relu,
                "free_directions": n.free_directions,
                "activation_spectrum": n.activation.spectrum,
                "jacobian_spectrum": n.jacobian.spectrum,
                "activation_gap": gap(&n.activation),
                "jacobian_gap": gap(&n.jacobian),
            })
        })
        .collect();
    let report = json!({
        "nodes": nodes,
        "n_params": d.n_params,
        "free_directions_total": d.free_directions_total,
        "effective_params_bound": d.effective_params_bound,
        "rank_tol": d.rank_tol,
        "n_samples": inputs.n_samples(),
    });
    outputs.json("degeneracy.json", &report)?;
    outputs.commit()
}
