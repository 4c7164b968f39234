//! Node- or edge-ablation curves of a model from a JSON config (the `lib_build` keys plus the
//! ablation keys below), for benchmark harnesses and scripts.
//!
//! `cargo run --release --example ablate -- CONFIG.json`
//!
//! Keys besides those of `lib_build` (which builds the bases the ablation uses):
//! - `"labels"` (`.npy` of integer classes) or `"targets"` (`.npy` of floats, one column per
//!   output): what the model is scored against. With neither and `"eval": "mse"`, the model's own
//!   outputs are the targets (the unablated loss is then 0).
//! - `"eval"`: `"accuracy"`, `"cross_entropy"` or `"mse"`.
//! - `"ablation_type"`: `"node"` (keep the first n directions of every rotated node layer's basis;
//!   the neuron basis keeps the constant coordinate first, then the neurons by decreasing mean
//!   square activation on the build's inputs) or `"edge"` (keep the k strongest edges of one layer pair at a time;
//!   the edges use `"edge_formula"`, default `"squared"`).
//! - `"schedule"`: `{"type": "linear", "n_points": 10}`, `{"type": "exponential", "base": 1.05,
//!   "all_below": 10}` (every n ≤ all_below, then steps ⌈base^x⌉), `{"type": "explicit",
//!   "points": [0, 5, 20]}`, or for edges `{"type": "bisect", "midpoint": "linear" | "log"}`
//!   (default linear). Static schedules run over 0..=dim for nodes and 0..=orig_in × orig_out
//!   for edges.
//! - `"score_target_difference"`: δ, default 0.001 (within δ: accuracy ≥ base − δ, a loss ≤
//!   base + δ).
//! - `"eval_inputs"` and `"eval_labels"`: the data that score the ablations (rib builds on the
//!   train split and scores on the test split). By default the build's own `"inputs"` with
//!   `"labels"`/`"targets"`. With `"eval_inputs"`, the bases and edges are still built on
//!   `"inputs"`; `"eval_labels"` label its rows (required by `accuracy` and `cross_entropy`;
//!   `mse` without them scores against the model's own outputs on `"eval_inputs"`), and
//!   `"labels"`/`"targets"` are refused (nothing would read them).
//!
//! A transformer takes the `lib_build` model keys (`docs/math.md` §3.3): `"model_config"` (its
//! TransformerLens config; `"model"` is then its state dict), `"inputs"` (and `"eval_inputs"`)
//! of integer token ids `[n, positions]`, `"last_pos_module_type"` and `"isolate_ln_var"`. Its
//! output is the logits at the last position, so `"labels"` hold one class per sequence. For
//! the paper's modular-addition transformer: `"node_layers": ["ln1.0", "ln2.0", "unembed",
//! "output"]`, `"last_pos_module_type": "add_resid1"`, the train split as `"inputs"` and the
//! test split as `"eval_inputs"`.
//!
//! Writes `ablation.json` into `out_dir`: for node ablation
//! `{"no_ablation_result": s, "results": {"layers.1": [[n_kept, score], …], …}}` (n ascending); for
//! edge ablation also `"n_edges_required": {"layers.0": k, …}` (keyed by the pair's input node
//! layer; with a static schedule, the smallest scheduled k within δ) and `"results"` with every
//! probe `[n_edges_kept, score]` in the order evaluated, plus `"log_norm_eps"` (ε per layer for
//! the by-layer log edge norm). Both also record `"eval"`, `"basis_formula"`, `"seconds"`, and
//! the rows built on and scored on (`"n_build_samples"`, `"n_eval_samples"`).

mod common;

use common::{AnyResult, Outputs, Phases, read_build_config, resolve};
use degeneracy::ablation::{Directions, EdgeAblation, Eval, Midpoint, Schedule, evaluate, node_ablation_curve};
use degeneracy::basis::{Basis, BasisFormula, NodeBasis, build_bases};
use degeneracy::data::ActivationSampler;
use degeneracy::estimate::NodeStatistics;
use degeneracy::graph::{EdgeConfig, EdgeFormula, compute_edges};
use degeneracy::{Dataset, Matrix, Targets, io};
use serde::Deserialize;
use serde_json::{Map, Value, json};

const KEYS: [&str; 8] =
    ["labels", "targets", "eval", "ablation_type", "schedule", "score_target_difference", "eval_inputs", "eval_labels"];

fn default_delta() -> f64 {
    0.001
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AblateKeys {
    #[serde(default)]
    labels: Option<String>,
    #[serde(default)]
    targets: Option<String>,
    eval: String,
    ablation_type: String,
    schedule: ScheduleKeys,
    #[serde(default = "default_delta")]
    score_target_difference: f64,
    /// The inputs that score the ablations (default: the build's `inputs`).
    #[serde(default)]
    eval_inputs: Option<String>,
    /// The labels of `eval_inputs`.
    #[serde(default)]
    eval_labels: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleKeys {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    n_points: Option<usize>,
    #[serde(default)]
    base: Option<f64>,
    #[serde(default)]
    all_below: Option<usize>,
    #[serde(default)]
    points: Option<Vec<usize>>,
    #[serde(default)]
    midpoint: Option<String>,
}

/// A static schedule, or a bisection with its midpoint rule.
enum Plan {
    Static(Schedule),
    Bisect(Midpoint),
}

impl ScheduleKeys {
    fn plan(&self) -> AnyResult<Plan> {
        let need = |what: &str| format!("schedule.{what} is required for a {} schedule", self.kind);
        let unused = |present: bool, what: &str| -> AnyResult<()> {
            if present {
                Err(format!("schedule.{what} does not apply to a {} schedule", self.kind).into())
            } else {
                Ok(())
            }
        };
        let plan = match self.kind.as_str() {
            "linear" => Plan::Static(Schedule::Linear { n_points: self.n_points.ok_or_else(|| need("n_points"))? }),
            "exponential" => Plan::Static(Schedule::Exponential {
                base: self.base.ok_or_else(|| need("base"))?,
                all_below: self.all_below.ok_or_else(|| need("all_below"))?,
            }),
            "explicit" => {
                Plan::Static(Schedule::Explicit { points: self.points.clone().ok_or_else(|| need("points"))? })
            }
            "bisect" => Plan::Bisect(Midpoint::from_name(self.midpoint.as_deref().unwrap_or("linear"))?),
            other => {
                return Err(format!("schedule.type `{other}`: expected linear, exponential, explicit or bisect").into());
            }
        };
        if let Plan::Static(schedule) = &plan {
            schedule.validate()?;
        }
        let bisect = matches!(plan, Plan::Bisect(_));
        unused(self.midpoint.is_some() && !bisect, "midpoint")?;
        unused(self.n_points.is_some() && self.kind != "linear", "n_points")?;
        unused((self.base.is_some() || self.all_below.is_some()) && self.kind != "exponential", "base/all_below")?;
        unused(self.points.is_some() && self.kind != "explicit", "points")?;
        Ok(plan)
    }
}

fn main() {
    common::exit_on_error(run());
}

fn run() -> AnyResult<()> {
    let mut phases = Phases::start();
    common::only_config_arg("ablate CONFIG.json")?;
    let (keys, transformer, ablate, dir): (_, _, AblateKeys, _) = read_build_config("ablate CONFIG.json", &KEYS)?;
    let config = keys.lib_config()?;
    let eval = Eval::from_name(&ablate.eval)?;
    let plan = ablate.schedule.plan()?;
    let delta = ablate.score_target_difference;
    if !(delta >= 0.0 && delta.is_finite()) {
        return Err(format!("score_target_difference = {delta}: must be finite and ≥ 0").into());
    }
    let edge = match ablate.ablation_type.as_str() {
        "node" => false,
        "edge" => true,
        other => return Err(format!("ablation_type `{other}`: expected node or edge").into()),
    };
    if !edge && matches!(plan, Plan::Bisect(_)) {
        return Err("schedule.type bisect applies to edge ablation; use a static schedule for nodes".into());
    }
    let (model, inputs_path) = keys.load_model(&transformer, &dir)?;
    let inputs = model.read_inputs(&inputs_path)?;
    let mlp = model.network();
    let own_outputs = |x: &Matrix| -> AnyResult<Targets> {
        let mut own = Matrix::default();
        model.layer().forward(x.view(), &mut own)?;
        Ok(Targets::Values(own))
    };
    // `build`: the rows the bases and edges are built on when they are not the scoring rows.
    let (build, data) = match &ablate.eval_inputs {
        None => {
            if ablate.eval_labels.is_some() {
                return Err("`eval_labels` label the rows of `eval_inputs`: give `eval_inputs` too".into());
            }
            let targets = match (&ablate.labels, &ablate.targets) {
                (Some(_), Some(_)) => return Err("give either \"labels\" or \"targets\", not both".into()),
                (Some(l), None) => Targets::Labels(io::read_labels(resolve(&dir, l))?),
                (None, Some(t)) => Targets::Values(io::read_matrix(resolve(&dir, t))?),
                (None, None) if eval == Eval::Mse => own_outputs(&inputs)?,
                (None, None) => return Err(format!("eval {}: needs \"labels\"", eval.name()).into()),
            };
            (None, Dataset::new(inputs, targets)?)
        }
        Some(path) => {
            for (key, set) in [("labels", ablate.labels.is_some()), ("targets", ablate.targets.is_some())] {
                if set {
                    return Err(format!(
                        "`{key}` describe the build's `inputs`, which are not scored when `eval_inputs` is given: label the scored rows with `eval_labels`"
                    )
                    .into());
                }
            }
            let eval_inputs = model.read_inputs(&resolve(&dir, path))?;
            let targets = match &ablate.eval_labels {
                Some(l) => Targets::Labels(io::read_labels(resolve(&dir, l))?),
                None if eval == Eval::Mse => own_outputs(&eval_inputs)?,
                None => return Err(format!("eval {}: needs \"eval_labels\" for `eval_inputs`", eval.name()).into()),
            };
            (Some(inputs), Dataset::new(eval_inputs, targets)?)
        }
    };
    let rows: &dyn ActivationSampler = match &build {
        Some(inputs) => inputs,
        None => &data,
    };
    let mut outputs = Outputs::prepare(&keys.out_dir(&dir), &[])?;
    phases.lap("load");

    let nodes = config.node_indices(mlp)?;
    let stats = NodeStatistics::collect(mlp, rows, &nodes, config.statistics_quadrature(), config.batch_size)?;
    let bases = build_bases(mlp, rows, &stats, &config)?;
    phases.lap("bases");
    let base = evaluate(mlp, &data, eval)?;

    let mut report = Map::new();
    report.insert("no_ablation_result".into(), base.into());
    report.insert("n_build_samples".into(), rows.n_samples().into());
    report.insert("n_eval_samples".into(), data.len().into());
    let mut results = Map::new();
    if edge {
        let formula = EdgeFormula::from_name(keys.edge_formula.as_deref().unwrap_or("squared"))?;
        let edge_config = EdgeConfig {
            formula,
            quadrature: config.quadrature,
            batch_size: config.batch_size,
            ..EdgeConfig::default()
        };
        let edges = compute_edges(mlp, rows, &bases, &edge_config)?;
        phases.lap("edges");
        let mut required = Map::new();
        let mut bisects = Vec::new();
        for (pair, e) in bases.windows(2).zip(&edges) {
            let ablation = EdgeAblation::new(mlp, &data, &pair[0], &pair[1], e, eval)?;
            let (k, probes) = match &plan {
                Plan::Bisect(midpoint) => {
                    let b = ablation.bisect(delta, *midpoint)?;
                    let r = (b.n_edges_required, b.probes.clone());
                    bisects.push(b);
                    r
                }
                Plan::Static(schedule) => {
                    let points = schedule.points(ablation.total())?;
                    if points.is_empty() {
                        return Err(format!(
                            "schedule: no point within 0..={} (the edges {} → {}): nothing would be evaluated",
                            ablation.total(),
                            pair[0].node,
                            pair[1].node
                        )
                        .into());
                    }
                    let probes = points
                        .into_iter()
                        .map(|k| Ok((k, ablation.score(k)?)))
                        .collect::<AnyResult<Vec<(usize, f64)>>>()?;
                    let k = probes.iter().find(|p| eval.within(p.1, base, delta)).map(|p| p.0);
                    (k.unwrap_or(ablation.total()), probes)
                }
            };
            required.insert(e.in_node.clone(), k.into());
            results.insert(e.in_node.clone(), json!(probes.iter().map(|&(k, s)| json!([k, s])).collect::<Vec<_>>()));
        }
        report.insert("n_edges_required".into(), Value::Object(required));
        if !bisects.is_empty() {
            let eps: Map<String, Value> = bisects.iter().map(|b| (b.in_node.clone(), b.eps.into())).collect();
            report.insert("log_norm_eps".into(), Value::Object(eps));
        }
    } else {
        let Plan::Static(schedule) = &plan else { return Err("bisect: checked above".into()) };
        for b in bases.iter().filter(|b| b.is_rotated()) {
            let points = schedule.points(b.dim())?;
            let node = mlp.node_index(&b.node)?;
            let curve = if b.formula == Some(BasisFormula::Neuron) {
                let d = Directions::neurons_by_power(mlp, rows, node)?;
                node_ablation_curve(mlp, &data, node, &d, &points, eval)?
            } else {
                node_ablation_curve(mlp, &data, node, b as &NodeBasis, &points, eval)?
            };
            results.insert(b.node.clone(), json!(curve.scores.iter().map(|&(n, s)| json!([n, s])).collect::<Vec<_>>()));
        }
    }
    phases.lap("ablation");
    report.insert("results".into(), Value::Object(results));
    report.insert("eval".into(), eval.name().into());
    report.insert("basis_formula".into(), config.basis_formula.name().into());
    report.insert("seconds".into(), phases.to_json());
    outputs.json("ablation.json", &Value::Object(report))?;
    outputs.commit()
}
