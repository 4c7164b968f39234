//! Degeneracy diagnostics of a model on data, for scripts and benchmark harnesses.
//!
//! `cargo run --release --example diagnose -- CONFIG.json` with
//! `{"model", "activation", "inputs", "rank_tol", "out_dir"}` (paths relative to the config
//! file; optional `"bias": false` for a bias-free model and `"tensor_names": {"name in file":
//! "layers.0.weight", …}`) writes `degeneracy.json`:
//! `{"nodes": [{"name", "dim", "activation_rank", "jacobian_rank", "relu": null | {"dead",
//! "always_on", "sync_groups"}, "free_directions": {...}, ...}], "n_params",
//! "effective_params_bound", ...}`.
//!
//! `"node_layers"` (optional, default every node layer of the model) diagnoses at those node
//! layers only, in order, the last being `output`: the sections then run between consecutive
//! chosen node layers. `null` values are "not counted": `relu` where the section before a node
//! exposes no ReLUs, `free_directions`, `preactivation_jacobian_rank` where the section after it
//! is not affine + elementwise, `n_params` and the bound unless every section is.
//!
//! A transformer takes the `lib_build` model keys (`docs/math.md` §3.3): `"model_config"` (its
//! TransformerLens config; `"model"` is then its state dict), `"inputs"` of integer token ids
//! `[n, positions]` (read into memory), `"last_pos_module_type"` and `"isolate_ln_var"`; node
//! layers are rib's module ids. The activation and Jacobian ranks are reported at every chosen
//! node layer (positions pooled as rows); the ReLU groups of the MLP where a section exposes
//! them, e.g. at `unembed` for `"node_layers": ["ln1.0", "ln2.0", "unembed", "output"]` (the
//! section `ln2.0 → unembed` is the MLP block: its `d_mlp` units, then its bias unit).

mod common;

use common::{AnyResult, MlpKeys, Outputs, TransformerKeys, read_config, resolve};
use degeneracy::diagnostics::{DiagnosticsConfig, Rank, diagnose};
use degeneracy::nn::NodeLayer;
use degeneracy::{Matrix, MatrixView, Network, Section};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    model: String,
    #[serde(default)]
    activation: Option<String>,
    inputs: String,
    #[serde(default)]
    model_config: Option<String>,
    #[serde(default)]
    last_pos_module_type: Option<String>,
    #[serde(default)]
    isolate_ln_var: Option<bool>,
    #[serde(default)]
    node_layers: Option<Vec<String>>,
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
    let mlp_keys =
        MlpKeys { activation: config.activation.as_deref(), bias: config.bias, tensor_names: &config.tensor_names };
    let transformer = TransformerKeys {
        model_config: config.model_config.clone(),
        last_pos_module_type: config.last_pos_module_type.clone(),
        isolate_ln_var: config.isolate_ln_var,
    };
    let model = common::load_model(&dir, &resolve(&dir, &config.model), &mlp_keys, &transformer)?;
    let inputs = model.open_inputs(&resolve(&dir, &config.inputs))?;
    let net = model.network();
    let subset = config.node_layers.as_deref().map(|names| NodeSubset::new(net, names)).transpose()?;
    let net: &dyn Network = match &subset {
        Some(s) => s,
        None => net,
    };
    let mut outputs = Outputs::prepare(&resolve(&dir, &config.out_dir), &[])?;
    let settings = DiagnosticsConfig { rank_tol: config.rank_tol, batch_size: config.batch_size };
    let d = diagnose(net, &*inputs, &settings)?;
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

/// A network seen at some of its node layers only (`"node_layers"`): node `k` here is node
/// `indices[k]` of the model, and the section between two chosen node layers is the model's.
struct NodeSubset<'a> {
    net: &'a dyn Network,
    indices: Vec<usize>,
    nodes: Vec<NodeLayer>,
}

impl<'a> NodeSubset<'a> {
    /// Errors name the key: an unknown node layer, an order that is not the model's, a list
    /// that does not end at the output (the Jacobians are the output's).
    fn new(net: &'a dyn Network, names: &[String]) -> AnyResult<Self> {
        let indices = names.iter().map(|n| net.node_index(n)).collect::<degeneracy::Result<Vec<usize>>>()?;
        let output = net.node_layers().len() - 1;
        let bad = |reason: &str| degeneracy::Error::InvalidParameter {
            name: "node_layers".into(),
            value: format!("{names:?}"),
            reason: reason.into(),
        };
        if indices.len() < 2 || indices.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad("need at least two node layers, in the model's order").into());
        }
        if indices.last() != Some(&output) {
            let last = &net.node_layers()[output].name;
            return Err(bad(&format!("the last must be the output node layer `{last}`")).into());
        }
        let nodes = indices.iter().map(|&k| net.node_layers()[k].clone()).collect();
        Ok(NodeSubset { net, indices, nodes })
    }

    fn index(&self, k: usize) -> degeneracy::Result<usize> {
        self.indices
            .get(k)
            .copied()
            .ok_or_else(|| degeneracy::Error::UnknownNode { name: format!("node {k}"), available: self.node_names() })
    }
}

impl Network for NodeSubset<'_> {
    fn node_layers(&self) -> &[NodeLayer] {
        &self.nodes
    }

    fn input_dim(&self) -> usize {
        self.net.input_dim()
    }

    fn forward_nodes(&self, inputs: MatrixView<'_>, nodes: &[usize], acts: &mut [Matrix]) -> degeneracy::Result<()> {
        let mapped = nodes.iter().map(|&k| self.index(k)).collect::<degeneracy::Result<Vec<usize>>>()?;
        self.net.forward_nodes(inputs, &mapped, acts)
    }

    fn section(&self, from: usize, to: usize) -> degeneracy::Result<Box<dyn Section + '_>> {
        self.net.section(self.index(from)?, self.index(to)?)
    }
}
