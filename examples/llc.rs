//! Local learning coefficient of a saved MLP from a JSON config.
//!
//! ```sh
//! cargo run --release --example llc -- CONFIG.json
//! ```
//!
//! CONFIG (relative paths resolve against the config file's folder):
//! ```json
//! {"model": "model.safetensors", "activation": "identity", "inputs": "inputs.npy",
//!  "targets": "targets.npy", "loss": "mse", "sampler": "sgld", "lr": 1e-4,
//!  "localization": 1.0, "nbeta": 1085.7, "batch_size": 500, "num_chains": 4,
//!  "num_draws": 2000, "num_burnin_steps": 0, "seed": 0, "out_dir": "out"}
//! ```
//! * `loss`: `mse` (needs `targets`), `cross_entropy` (needs `labels`, integer `.npy`) or
//!   `behavioural` (inputs only: ‖f(x, w) − f(x, w*)‖², summed over outputs).
//! * `sampler`: `sgld` (default), `rmsprop_sgld` or `sgnht`.
//! * Optional: `nbeta` (default n / ln n), `localization` (1.0), `sampler`, `batch_size` (32),
//!   `num_chains` (4), `num_draws` (200), `num_burnin_steps` (0), `seed` (0), `out_dir` (`llc_out`),
//!   and the extra sampler knobs `num_steps_bw_draws` (1), `num_init_loss_batches` (32),
//!   `weight_decay` (0), `noise_level` (1), `bounding_box_size` (none).
//! * Model file: `bias` (`true`; `false` declares a bias-free model, otherwise a missing bias is
//!   an error) and `tensor_names` (`{"name in file": "layers.0.weight", …}`).
//!
//! * `parameters` (default: all): `["layers.1.weight", …]` samples only those tensors (names as
//!   in the model file), every other parameter held at w* (the restricted LLC).
//! * `preset`: `"devinterp"` switches to devinterp's conventions (γ = 0, nβ = b / ln b from the
//!   batch size, `llc_std` with ddof 1, one `init_loss` over at most one epoch; `docs/llc.md`
//!   §4); explicit keys still win. `"default"` is this crate's conventions.
//! * `calibrate`: `{"lr": [...], "nbeta": [...] or "localization": [...], "num_draws": 300}`
//!   (optional thresholds `max_relative_slope`, `max_rhat`, `min_mala_acceptance`,
//!   `max_prior_drop`) sweeps short chains over the grid first and writes `calibration.json` =
//!   `{"settings": [{"lr", "nbeta", "localization", "llc_mean", "diverged", "stationary",
//!   "mala_acceptance", "rhat"}, …], "recommended": {"lr", "nbeta", "localization"}}` and
//!   `calibration.svg`, then runs the full estimate at the recommended setting (its details go
//!   to `summary.json` under `calibration`). No recommendation: exit 1 after writing both files.
//! * `checkpoints`: `["a.safetensors", …]` in place of `model`: λ̂ at every checkpoint with the
//!   same settings and seeds; writes `trajectory.json` = `[{"checkpoint", "llc_mean", "llc_std",
//!   "healthy_chains"}, …]`, `trajectory.svg` (one point per checkpoint) and `summary.json`.
//!
//! A transformer takes the `lib_build` model keys (`docs/math.md` §3.3): `"model_config"` (its
//! TransformerLens config; `"model"`, or each of `"checkpoints"`, is then its state dict in
//! safetensors), `"inputs"` of integer token ids `[n, positions]`, `"last_pos_module_type"` and
//! `"isolate_ln_var"` (accepted so one config serves every job; the loss reads only the logits,
//! which they do not change). `"activation"` is then not needed (the config's `act_fn`), and
//! `"bias"`/`"tensor_names"` do not apply. The model's output is its logits at the **last
//! position**: loss `cross_entropy` is the training loss there (`labels`: one class per
//! sequence), `behavioural` is ‖Δlogits‖² there, `mse` compares those logits with `targets`
//! `[n, d_vocab]`. `parameters` name TransformerLens tensors (`blocks.0.mlp.W_in`, …).
//!
//! Unknown keys and bad values are errors that name the key. Writes `out_dir/summary.json`
//! (estimates, timing, diagnostics, settings), `loss_trace.npy` `[chains, steps]` (a diverged
//! chain is padded with NaN), `llc_trace_instantaneous.npy`, `llc_trace_running_mean.npy` and
//! `llc_per_chain.npy`.
//!
//! **No healthy chain, exit 1.** A run in which every chain diverged has no estimate: it still
//! writes its outputs (`summary.json` with `llc_mean` null, the divergences and the warnings),
//! then exits with status 1 and says so on stderr. So does a trajectory with a checkpoint
//! without a healthy chain. A run with some diverged chains exits 0; `summary.json` says how many
//! were excluded (`n_excluded_chains`).
//!
//! Beyond one machine (`docs/distributed.md`); the outputs are identical to one process's:
//! * `"distributed": true` (built with `--features mpi`, run as `mpirun -n K
//!   target/release/examples/llc CONFIG.json`): the chains are split over the ranks; rank 0 writes.
//! * File-based, without MPI: `llc CONFIG.json --shard I/K` runs chain block I of K and writes
//!   `out_dir/shards/chains_I_of_K.shard`; `llc CONFIG.json --merge FILE…` writes the outputs
//!   (`sampling_seconds` is then the longest shard's).

mod common;

use common::{AnyResult, Mode, Outputs};
use degeneracy::distributed::{
    Communicator, Fingerprint, ShardHeader, merge_shard_files, shard_range, write_shard_file,
};
use degeneracy::llc::{
    BehaviouralLoss, CalibrationAxis, CalibrationConfig, ChainRuns, Checkpoint, LayerLoss, LlcConfig, LlcEstimator,
    LlcReport, LossModel, MlpLoss, NbetaDefault, ParamLayout, Sampler,
};
use degeneracy::transformer::Transformer;
use degeneracy::{Activation, Dataset, Error, Loss, Matrix, Targets, io};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const USAGE: &str = "llc CONFIG.json [--shard I/K | --merge FILE…]";
const CHAINS: &str = "llc/chains";

const KEYS: [&str; 31] = [
    "model",
    "activation",
    "inputs",
    "targets",
    "labels",
    "loss",
    "sampler",
    "lr",
    "localization",
    "nbeta",
    "batch_size",
    "num_chains",
    "num_draws",
    "num_burnin_steps",
    "seed",
    "out_dir",
    "num_steps_bw_draws",
    "num_init_loss_batches",
    "weight_decay",
    "noise_level",
    "bounding_box_size",
    "distributed",
    "bias",
    "tensor_names",
    "parameters",
    "preset",
    "calibrate",
    "checkpoints",
    "model_config",
    "last_pos_module_type",
    "isolate_ln_var",
];

/// Keys of the `calibrate` block.
const CALIBRATE_KEYS: [&str; 8] = [
    "lr",
    "nbeta",
    "localization",
    "num_draws",
    "max_relative_slope",
    "max_rhat",
    "min_mala_acceptance",
    "max_prior_drop",
];

/// Keys naming files: their contents, not their paths, enter the shard fingerprint.
const PATH_KEYS: [&str; 5] = ["model", "inputs", "targets", "labels", "model_config"];

/// What an `llc --shard` worker writes.
#[derive(Serialize, Deserialize)]
struct ChainShard {
    runs: ChainRuns,
    sampling_seconds: f64,
}

/// Typed access to the config object; every error names its key.
struct Config {
    map: Map<String, Value>,
    dir: PathBuf,
}

fn bad(key: &str, value: &Value, reason: &str) -> Box<dyn std::error::Error> {
    Box::new(Error::InvalidParameter { name: key.into(), value: value.to_string(), reason: reason.into() })
}

impl Config {
    fn load(path: &Path) -> AnyResult<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let value: Value =
            common::from_json_text(&text).map_err(|e| format!("{}: invalid JSON: {e}", path.display()))?;
        let Value::Object(map) = value else {
            return Err(format!("{}: expected a JSON object", path.display()).into());
        };
        if let Some(k) = map.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(format!("{}: unknown key `{k}`; known keys: {}", path.display(), KEYS.join(", ")).into());
        }
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Config { map, dir })
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn string(&self, key: &str) -> AnyResult<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(bad(key, v, "must be a string")),
        }
    }

    fn required_string(&self, key: &str) -> AnyResult<String> {
        self.string(key)?.ok_or_else(|| format!("missing required key `{key}`").into())
    }

    fn path(&self, key: &str) -> AnyResult<Option<PathBuf>> {
        Ok(self.string(key)?.map(|s| {
            let p = PathBuf::from(s);
            if p.is_absolute() { p } else { self.dir.join(p) }
        }))
    }

    fn float(&self, key: &str) -> AnyResult<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| bad(key, v, "must be a number")),
        }
    }

    fn flag(&self, key: &str) -> AnyResult<bool> {
        match self.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(bad(key, v, "must be true or false")),
        }
    }

    /// Everything the chains depend on: the keys (less paths, output folder and how the run is
    /// split) and the contents of the files they name.
    fn fingerprint(&self) -> AnyResult<String> {
        let mut keys = self.map.clone();
        for k in PATH_KEYS.iter().chain(&["out_dir", "distributed"]) {
            keys.remove(*k);
        }
        let mut fp = Fingerprint::new(CHAINS).json("config", &keys)?;
        for k in PATH_KEYS {
            if let Some(p) = self.path(k)? {
                fp = fp.file(k, p)?;
            }
        }
        Ok(fp.finish())
    }

    /// The model-loading key `bias` (default true).
    fn bias(&self) -> AnyResult<bool> {
        match self.get("bias") {
            None => Ok(true),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(bad("bias", v, "must be true or false")),
        }
    }

    /// The model-loading key `tensor_names`.
    fn tensor_names(&self) -> AnyResult<std::collections::BTreeMap<String, String>> {
        match self.get("tensor_names") {
            None => Ok(Default::default()),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|_| bad("tensor_names", v, "must map names in the file to names, as strings")),
        }
    }

    /// The transformer keys `model_config`, `last_pos_module_type`, `isolate_ln_var`.
    fn transformer(&self) -> AnyResult<common::TransformerKeys> {
        let isolate_ln_var = match self.get("isolate_ln_var") {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(v) => return Err(bad("isolate_ln_var", v, "must be true or false")),
        };
        Ok(common::TransformerKeys {
            model_config: self.string("model_config")?,
            last_pos_module_type: self.string("last_pos_module_type")?,
            isolate_ln_var,
        })
    }

    /// A list of strings (`parameters`, `checkpoints`).
    fn strings(&self, key: &str) -> AnyResult<Option<Vec<String>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(|| bad(key, v, "must be a list of strings")))
                .collect::<AnyResult<Vec<_>>>()
                .map(Some),
            Some(v) => Err(bad(key, v, "must be a list of strings")),
        }
    }

    /// The `calibrate` block, checked key by key.
    fn calibration(&self) -> AnyResult<Option<CalibrationConfig>> {
        let Some(block) = self.get("calibrate") else { return Ok(None) };
        let Value::Object(map) = block else {
            return Err(bad("calibrate", block, "must be an object"));
        };
        if let Some(k) = map.keys().find(|k| !CALIBRATE_KEYS.contains(&k.as_str())) {
            return Err(bad(
                &format!("calibrate.{k}"),
                &map[k],
                &format!("unknown key; known keys: {}", CALIBRATE_KEYS.join(", ")),
            ));
        }
        let list = |k: &str| -> AnyResult<Option<Vec<f64>>> {
            let name = format!("calibrate.{k}");
            match map.get(k).filter(|v| !v.is_null()) {
                None => Ok(None),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| v.as_f64().ok_or_else(|| bad(&name, v, "must be a list of numbers")))
                    .collect::<AnyResult<Vec<f64>>>()
                    .map(Some),
                Some(v) => Err(bad(&name, v, "must be a list of numbers")),
            }
        };
        let number = |k: &str| -> AnyResult<Option<f64>> {
            match map.get(k).filter(|v| !v.is_null()) {
                None => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| bad(&format!("calibrate.{k}"), v, "must be a number")),
            }
        };
        let lrs = list("lr")?.ok_or("the `calibrate` block needs `lr`: a list of step sizes")?;
        let axis = match (list("nbeta")?, list("localization")?) {
            (Some(v), None) => CalibrationAxis::Nbeta(v),
            (None, Some(v)) => CalibrationAxis::Localization(v),
            (Some(_), Some(_)) => {
                return Err(bad("calibrate", block, "sweep either `nbeta` or `localization` next to `lr`, not both"));
            }
            (None, None) => return Err(bad("calibrate", block, "needs `nbeta` or `localization`: a list of values")),
        };
        let mut cal = CalibrationConfig::new(lrs, axis);
        if let Some(v) = map.get("num_draws").filter(|v| !v.is_null()) {
            let k = v.as_u64().and_then(|u| usize::try_from(u).ok());
            cal = cal.num_draws(k.ok_or_else(|| bad("calibrate.num_draws", v, "must be a non-negative integer"))?);
        }
        if let Some(v) = number("max_relative_slope")? {
            cal = cal.max_relative_slope(v);
        }
        if let Some(v) = number("max_rhat")? {
            cal = cal.max_rhat(v);
        }
        if let Some(v) = number("min_mala_acceptance")? {
            cal = cal.min_mala_acceptance(v);
        }
        if let Some(v) = number("max_prior_drop")? {
            cal = cal.max_prior_drop(v);
        }
        cal.validate()?;
        Ok(Some(cal))
    }

    fn count(&self, key: &str) -> AnyResult<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|u| usize::try_from(u).ok())
                .map(Some)
                .ok_or_else(|| bad(key, v, "must be a non-negative integer")),
        }
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> AnyResult<()> {
    let process_start = Instant::now();
    let cli = common::parse_cli(USAGE, false)?;
    let config_path = std::env::args().nth(1).expect("checked by parse_cli");
    let cfg = Config::load(Path::new(&config_path))?;
    let distributed = cfg.flag("distributed")?;
    if distributed && cli.mode != Mode::Whole {
        return Err(
            "\"distributed\": true (MPI) and --shard/--merge (files) are two ways to split a run; use one".into()
        );
    }

    let transformer = cfg.transformer()?;
    transformer.check_for_mlp()?;
    let activation_key = match cfg.string("activation")? {
        None if !transformer.is_transformer() => return Err("missing required key `activation`".into()),
        key => key,
    };
    let activation = activation_key.as_deref().map(Activation::from_name).transpose()?;
    let (bias, tensor_names) = (cfg.bias()?, cfg.tensor_names()?);
    let mlp_keys = common::MlpKeys { activation: activation_key.as_deref(), bias, tensor_names: &tensor_names };
    let load = |path: &Path| common::load_model(&cfg.dir, path, &mlp_keys, &transformer);
    let checkpoints = cfg.strings("checkpoints")?;
    let calibration = cfg.calibration()?;
    let model_path = match (cfg.path("model")?, &checkpoints) {
        (Some(p), None) => p,
        (None, Some(list)) => {
            let first = list.first().ok_or_else(|| bad("checkpoints", &json!([]), "give at least one checkpoint"))?;
            common::resolve(&cfg.dir, first)
        }
        (Some(_), Some(_)) => return Err("give either `model` or `checkpoints` (a trajectory), not both".into()),
        (None, None) => return Err("missing required key `model` (or `checkpoints` for a trajectory)".into()),
    };
    let split = distributed || cli.mode != Mode::Whole;
    if split && (checkpoints.is_some() || calibration.is_some()) {
        return Err(
            "`calibrate` and `checkpoints` run in one process: drop \"distributed\", --shard and --merge".into()
        );
    }
    if checkpoints.is_some() && calibration.is_some() {
        return Err(
            "`calibrate` sweeps one model: calibrate on one checkpoint (`model`), then run the trajectory".into()
        );
    }
    let inputs_path = cfg.path("inputs")?.ok_or("missing required key `inputs`")?;
    let loss_name = cfg.required_string("loss")?;
    let lr = cfg.float("lr")?.ok_or("missing required key `lr`")?;
    let sampler = Sampler::from_name(cfg.string("sampler")?.as_deref().unwrap_or("sgld"))?;
    let out_dir = cfg.path("out_dir")?.unwrap_or_else(|| cfg.dir.join("llc_out"));

    let mut config = LlcConfig::new(lr).sampler(sampler).seed(0);
    match cfg.string("preset")?.as_deref() {
        None | Some("default") => {}
        Some("devinterp") => config = config.devinterp_compatible(),
        Some(other) => return Err(bad("preset", &json!(other), "expected \"devinterp\" or \"default\"")),
    }
    if let Some(v) = cfg.float("localization")? {
        config = config.localization(v);
    }
    if let Some(v) = cfg.float("nbeta")? {
        config = config.nbeta(v);
    }
    if let Some(v) = cfg.float("weight_decay")? {
        config = config.weight_decay(v);
    }
    if let Some(v) = cfg.float("noise_level")? {
        config = config.noise_level(v);
    }
    if let Some(v) = cfg.float("bounding_box_size")? {
        config = config.bounding_box(v);
    }
    if let Some(v) = cfg.count("batch_size")? {
        config = config.batch_size(v);
    }
    if let Some(v) = cfg.count("num_chains")? {
        config = config.num_chains(v);
    }
    if let Some(v) = cfg.count("num_draws")? {
        config = config.num_draws(v);
    }
    if let Some(v) = cfg.count("num_burnin_steps")? {
        config = config.num_burnin_steps(v);
    }
    if let Some(v) = cfg.count("num_steps_bw_draws")? {
        config = config.num_steps_bw_draws(v);
    }
    if let Some(v) = cfg.count("num_init_loss_batches")? {
        config = config.num_init_loss_batches(v);
    }
    if let Some(v) = cfg.count("seed")? {
        config = config.seed(v as u64);
    }
    let mut estimator = LlcEstimator::new(config)?;

    let net = load(&model_path)?;
    if let Some(names) = cfg.strings("parameters")? {
        let layout = match &net {
            common::Model::Mlp(m) => ParamLayout::mlp(m),
            common::Model::Transformer(t) => ParamLayout::transformer(t),
        };
        estimator = estimator.restrict(layout.select(&names)?);
    }
    let inputs = net.read_inputs(&inputs_path)?;
    let (targets_path, labels_path) = (cfg.path("targets")?, cfg.path("labels")?);
    let loss_name = loss_name.as_str();
    let (n, d) = (inputs.nrows(), net.layer().n_params());
    // The activation as the log and the settings name it: the config's for an MLP, `act_fn` for
    // a transformer.
    let activation_name = activation.map_or_else(|| net.activation_name(), |a| a.name());
    let shape = match &net {
        common::Model::Mlp(m) => format!("widths {:?}, {activation_name}", m.widths()),
        common::Model::Transformer(_) => net.describe(),
    };
    let comm = if distributed { Some(common::communicator()?) } else { None };
    let comm = comm.as_deref();
    let lead = comm.is_none_or(|c| c.rank() == 0);
    if lead {
        println!(
            "model {} ({} parameters{}, {shape}), {} samples, loss {loss_name}, sampler {}",
            model_path.display(),
            d,
            estimator.restriction().map_or_else(String::new, |s| format!(
                ", sampling {} of them ({})",
                s.len(),
                s.label()
            )),
            n,
            sampler.name()
        );
    }
    // The process that writes the results checks its out_dir now, before sampling, and writes
    // into a staging folder swapped in when complete (README, "Output folders"); shard workers
    // write their shard files into out_dir/shards directly.
    let writes = lead && !matches!(cli.mode, Mode::Shard { .. });
    let outputs = writes.then(|| Outputs::prepare(&out_dir, &["shards"])).transpose()?;
    let write_dir = outputs.as_ref().map_or_else(|| out_dir.clone(), |o| o.staging().to_path_buf());
    let run = Run {
        estimator: &estimator,
        mode: &cli.mode,
        comm,
        cfg: &cfg,
        out_dir: &write_dir,
        calibration: calibration.as_ref(),
    };
    let data = Data::load(inputs, targets_path, labels_path, loss_name)?;

    if let Some(list) = &checkpoints {
        let files: Vec<PathBuf> = list.iter().map(|c| common::resolve(&cfg.dir, c)).collect();
        let result = run.trajectory(&data, &load, &files, process_start);
        return finish(outputs, result);
    }
    let sampled = run.sample(&data.model(&net)?)?;
    let Some(Sampled { report, wall, calibration }) = sampled else {
        return Ok(()); // a shard worker, or a rank other than 0
    };
    let total_steps = report.config.num_chains * report.config.total_steps().unwrap_or(0);
    let seconds_per_step = wall / total_steps.max(1) as f64;

    write_outputs(&write_dir, &report)?;
    let settings = json!({
        "model": model_path, "activation": activation_name, "inputs": inputs_path,
        "targets": cfg.path("targets")?, "labels": cfg.path("labels")?, "loss": loss_name,
        "sampler": report.config.sgld.sampler, "lr": report.config.sgld.lr,
        "localization": report.config.sgld.localization, "nbeta": report.nbeta,
        "weight_decay": report.config.sgld.weight_decay, "noise_level": report.config.sgld.noise_level,
        "bounding_box_size": report.config.sgld.bounding_box, "batch_size": report.config.batch_size,
        "num_chains": report.config.num_chains, "num_draws": report.config.num_draws,
        "num_burnin_steps": report.config.num_burnin_steps,
        "num_steps_bw_draws": report.config.num_steps_bw_draws,
        "num_init_loss_batches": report.config.num_init_loss_batches, "seed": report.config.seed,
        "shared_batch_order": report.config.shared_batch_order, "out_dir": out_dir,
        "preset": cfg.string("preset")?.unwrap_or_else(|| "default".into()),
        "chain_std": report.config.chain_std, "init_loss": report.config.init_loss,
        "parameters": cfg.strings("parameters")?,
        "model_config": cfg.path("model_config")?, "last_pos_module_type": transformer.last_pos_module_type,
        "isolate_ln_var": transformer.isolate_ln_var,
    });
    let mut summary = json!({
        "settings": settings,
        "llc_mean": report.llc_mean,
        "llc_std": report.llc_std,
        "llc_per_chain": report.llc_per_chain,
        "llc_draws_mean": report.llc_draws_mean,
        "llc_draws_std": report.llc_draws_std,
        "llc_draws_per_chain": report.llc_draws_per_chain,
        "init_loss": report.init_loss,
        "init_loss_per_chain": report.init_loss_per_chain,
        "seconds_per_step": seconds_per_step,
        "seconds_per_step_definition": "wall seconds of sampling (all chains, in parallel) / (num_chains × steps per chain), as devinterp's wall_seconds_per_sgld_step",
        "sampling_seconds": wall,
        "process_seconds": process_start.elapsed().as_secs_f64(),
        "threads": rayon::current_num_threads(),
        "split": match (&cli.mode, comm) {
            (Mode::Merge(files), _) => json!({"shards": files.len()}),
            (_, c) => json!({"ranks": c.map_or(1, |c| c.size())}),
        },
        "n_steps_total": total_steps,
        "nbeta": report.nbeta,
        "nbeta_source": nbeta_source(&report),
        "n_samples": report.n_samples,
        "n_params": report.n_params,
        "n_sampled_params": report.n_sampled_params,
        "n_excluded_chains": report.n_excluded_chains,
        "diagnostics": report.diagnostics,
        "divergences": report.divergences,
        "warnings": report.warnings,
        "estimate_definitions": {
            "llc_per_chain": "nbeta * (mean over all steps incl. burn-in of the minibatch loss - init_loss) (devinterp 2.0.1)",
            "llc_draws_per_chain": "nbeta * (mean over draws after burn-in - init_loss) (devinterp 1.x)",
            "llc_std": format!("std with ddof {} over non-diverged chains", report.config.chain_std.ddof()),
        },
    });
    if let Some(c) = &calibration {
        summary["calibration"] = serde_json::to_value(c)?;
    }
    let path = write_dir.join("summary.json");
    let text = serde_json::to_string_pretty(&summary)?;
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    finish(outputs, Ok(()))?;

    println!(
        "λ̂ = {:.4} ± {:.4} (all steps; draws only {:.4} ± {:.4}) per chain {:?}",
        report.llc_mean,
        report.llc_std,
        report.llc_draws_mean,
        report.llc_draws_std,
        report.llc_per_chain.iter().map(|v| (v * 1e4).round() / 1e4).collect::<Vec<_>>()
    );
    println!(
        "init_loss {:.6e}, nβ {:.4}, split-R̂ {:?}, ESS {:?}; {:.1} µs/step over {total_steps} steps ({:.2} s); wrote {}",
        report.init_loss,
        report.nbeta,
        report.diagnostics.r_hat.map(|r| (r * 1e3).round() / 1e3),
        report.diagnostics.ess.map(f64::round),
        seconds_per_step * 1e6,
        wall,
        out_dir.display()
    );
    for w in &report.warnings {
        println!("warning: {w}");
    }
    if report.healthy_chains().is_empty() {
        return Err(format!(
            "no healthy chain: all {} chains diverged, there is no estimate (outputs written to {})",
            report.divergences.len(),
            out_dir.display()
        )
        .into());
    }
    Ok(())
}

fn nbeta_source(report: &LlcReport) -> &'static str {
    match (report.nbeta_is_default, report.config.nbeta_default) {
        (false, _) => "config",
        (true, NbetaDefault::SampleCount) => "n / ln n",
        (true, NbetaDefault::BatchSize) => "batch_size / ln batch_size",
    }
}

/// The data and loss named by the config, read once and shared by every model built on them.
struct Data {
    /// The training data (MSE, cross-entropy); `None` for the behavioural loss.
    dataset: Option<(Loss, Arc<Dataset>)>,
    inputs: Matrix,
}

impl Data {
    /// Reads the targets or labels the loss `loss_name` needs (`mse`, `cross_entropy`,
    /// `behavioural`), refusing the ones it does not use.
    fn load(inputs: Matrix, targets: Option<PathBuf>, labels: Option<PathBuf>, loss_name: &str) -> AnyResult<Self> {
        let dataset = match loss_name {
            "mse" => {
                let p = targets.ok_or("loss `mse` needs the key `targets` (a float .npy)")?;
                if labels.is_some() {
                    return Err("key `labels` is for loss `cross_entropy`; loss `mse` uses `targets`".into());
                }
                Some((Loss::Mse, Arc::new(Dataset::new(inputs.clone(), Targets::Values(io::read_matrix(&p)?))?)))
            }
            "cross_entropy" => {
                let p = labels.ok_or("loss `cross_entropy` needs the key `labels` (an integer .npy)")?;
                if targets.is_some() {
                    return Err("key `targets` is for loss `mse`; loss `cross_entropy` uses `labels`".into());
                }
                Some((
                    Loss::CrossEntropy,
                    Arc::new(Dataset::new(inputs.clone(), Targets::Labels(io::read_labels(&p)?))?),
                ))
            }
            "behavioural" | "behavioral" => {
                if targets.is_some() || labels.is_some() {
                    println!("note: loss `behavioural` uses the inputs only; `targets`/`labels` are not read");
                }
                None
            }
            other => {
                return Err(bad("loss", &Value::String(other.into()), "expected mse, cross_entropy or behavioural"));
            }
        };
        Ok(Data { dataset, inputs })
    }

    /// The loss model of `net` on these data.
    fn model(&self, net: &common::Model) -> AnyResult<Model> {
        Ok(match (net, &self.dataset) {
            (common::Model::Mlp(m), Some((loss, data))) => Model::Layer(MlpLoss::new(m, *loss, data.clone())?),
            (common::Model::Mlp(m), None) => Model::Behavioural(BehaviouralLoss::new(m, self.inputs.clone())?),
            (common::Model::Transformer(t), Some((loss, data))) => {
                Model::TransformerLayer(LayerLoss::new(&**t, *loss, data.clone())?)
            }
            (common::Model::Transformer(t), None) => {
                Model::TransformerBehavioural(BehaviouralLoss::new(&**t, self.inputs.clone())?)
            }
        })
    }
}

/// The training loss (MSE, cross-entropy) or the behavioural loss of an MLP or a transformer
/// (its logits at the last position).
#[derive(Clone)]
enum Model {
    Layer(MlpLoss),
    Behavioural(BehaviouralLoss),
    TransformerLayer(LayerLoss<Transformer>),
    TransformerBehavioural(BehaviouralLoss<Transformer>),
}

/// `$body` with `$m` bound to the loss model inside whichever variant `$model` is.
macro_rules! each {
    ($model:expr, $m:ident => $body:expr) => {
        match $model {
            Model::Layer($m) => $body,
            Model::Behavioural($m) => $body,
            Model::TransformerLayer($m) => $body,
            Model::TransformerBehavioural($m) => $body,
        }
    };
}

impl Model {
    fn params(&self) -> Vec<f64> {
        each!(self, m => m.params())
    }
}

impl LossModel for Model {
    fn n_params(&self) -> usize {
        each!(self, m => m.n_params())
    }
    fn n_samples(&self) -> usize {
        each!(self, m => m.n_samples())
    }
    fn loss_and_grad(&mut self, w: &[f64], batch: &[usize], grad: &mut [f64]) -> degeneracy::Result<f64> {
        each!(self, m => m.loss_and_grad(w, batch, grad))
    }
    fn loss(&mut self, w: &[f64], batch: &[usize]) -> degeneracy::Result<f64> {
        each!(self, m => m.loss(w, batch))
    }
}

/// A finished estimate: the report, the sampling wall time and the calibration it followed.
struct Sampled {
    report: LlcReport,
    wall: f64,
    calibration: Option<degeneracy::llc::Calibration>,
}

/// The report of an estimate, also when every chain diverged (the caller writes it, then exits
/// non-zero).
fn keep_diverged(result: degeneracy::Result<LlcReport>) -> AnyResult<LlcReport> {
    match result {
        Ok(r) => Ok(r),
        Err(Error::NoHealthyChain { report, .. }) => Ok(*report),
        Err(e) => Err(e.into()),
    }
}

/// How the chains of this process are run and where the result goes.
struct Run<'a> {
    estimator: &'a LlcEstimator,
    mode: &'a Mode,
    comm: Option<&'a dyn Communicator>,
    cfg: &'a Config,
    out_dir: &'a Path,
    calibration: Option<&'a CalibrationConfig>,
}

impl Run<'_> {
    /// The report and the sampling wall time, where this process writes the outputs (one
    /// process, rank 0, the merge step); `None` on the other ranks and on shard workers. A
    /// report without a healthy chain is returned too (the caller writes it and exits 1).
    fn sample(&self, model: &Model) -> AnyResult<Option<Sampled>> {
        let w = model.params();
        let t = Instant::now();
        match (self.mode, self.comm) {
            (Mode::Whole, None) => {
                let Some(cal) = self.calibration else {
                    let report = keep_diverged(self.estimator.estimate(model, &w))?;
                    return Ok(Some(Sampled { report, wall: t.elapsed().as_secs_f64(), calibration: None }));
                };
                let calibration = self.estimator.calibrate(model, &w, cal)?;
                std::fs::create_dir_all(self.out_dir).map_err(|e| format!("{}: {e}", self.out_dir.display()))?;
                write_calibration(self.out_dir, &calibration)?;
                println!(
                    "calibration: {} settings × {} chains × {} draws ({:.2} s); wrote calibration.json and calibration.svg",
                    calibration.settings.len(),
                    self.estimator.config().num_chains,
                    cal.num_draws,
                    t.elapsed().as_secs_f64()
                );
                let Some(config) = calibration.recommended_config() else {
                    return Err(format!(
                        "calibration: no setting is healthy and stable (see {}); lengthen calibrate.num_draws or widen the grid",
                        self.out_dir.join("calibration.json").display()
                    )
                    .into());
                };
                let r = calibration.recommended.expect("a recommended config has a recommendation");
                println!("recommended: lr {:e}, nbeta {}, localization {}", r.lr, r.nbeta, r.localization);
                let mut full = LlcEstimator::new(config)?;
                if let Some(s) = self.estimator.restriction() {
                    full = full.restrict(s.clone());
                }
                let t = Instant::now();
                let report = keep_diverged(full.estimate(model, &w))?;
                Ok(Some(Sampled { report, wall: t.elapsed().as_secs_f64(), calibration: Some(calibration) }))
            }
            (Mode::Whole, Some(c)) => {
                let report = keep_diverged(self.estimator.estimate_distributed(model, &w, c))?;
                Ok((c.rank() == 0).then(|| Sampled { report, wall: t.elapsed().as_secs_f64(), calibration: None }))
            }
            (&Mode::Shard { index, count }, _) => {
                let chains = self.estimator.config().num_chains;
                let range = shard_range(chains, index, count, 1)?;
                let runs = self.estimator.run_chains(model, &w, range.clone())?;
                let state = ChainShard { runs, sampling_seconds: t.elapsed().as_secs_f64() };
                let header = ShardHeader::new(CHAINS, self.cfg.fingerprint()?, index, count, range.clone(), chains);
                let path = common::shard_dir(self.out_dir)?.join(format!("chains_{index}_of_{count}.shard"));
                write_shard_file(&path, &header, &state)?;
                println!("chains {range:?} of {chains}: wrote {}", path.display());
                Ok(None)
            }
            (Mode::Merge(files), _) => {
                let (merged, _) = merge_shard_files::<ChainShard>(files, CHAINS, &self.cfg.fingerprint()?, |a, b| {
                    a.sampling_seconds = a.sampling_seconds.max(b.sampling_seconds);
                    a.runs.merge(b.runs)
                })?;
                if merged.runs.config() != self.estimator.config() {
                    return Err("the shards' LLC settings differ from this config's".into());
                }
                let report = keep_diverged(merged.runs.into_report())?;
                Ok(Some(Sampled { report, wall: merged.sampling_seconds, calibration: None }))
            }
        }
    }

    /// λ̂ at every checkpoint: `trajectory.json`, `trajectory.svg`, `summary.json`; exit 1 if a
    /// checkpoint has no healthy chain.
    fn trajectory(
        &self,
        data: &Data,
        load: &dyn Fn(&Path) -> AnyResult<common::Model>,
        files: &[PathBuf],
        start: Instant,
    ) -> AnyResult<()> {
        let mut checkpoints = Vec::with_capacity(files.len());
        for (k, file) in files.iter().enumerate() {
            let model = data.model(&load(file)?)?;
            let label = file.file_name().map_or_else(|| file.display().to_string(), |f| f.to_string_lossy().into());
            checkpoints.push(Checkpoint { label, position: k as f64, w_star: model.params(), model });
        }
        std::fs::create_dir_all(self.out_dir).map_err(|e| format!("{}: {e}", self.out_dir.display()))?;
        let t = Instant::now();
        let trajectory = self.estimator.estimate_trajectory(&checkpoints)?;
        let wall = t.elapsed().as_secs_f64();
        common::write_json(&self.out_dir.join("trajectory.json"), &trajectory.summary())?;
        let drawable = trajectory.points.iter().any(|p| p.healthy_chains > 0);
        if drawable {
            trajectory.draw(&self.out_dir.join("trajectory.svg"), "λ̂ over the checkpoints", "checkpoint (index)")?;
        }
        let summary = json!({
            "settings": {"checkpoints": files, "config": self.estimator.config(),
                         "parameters": self.cfg.strings("parameters")?},
            "checkpoints": trajectory.points.iter().map(|p| json!({
                "checkpoint": p.checkpoint, "llc_mean": p.llc_mean, "llc_std": p.llc_std,
                "llc_per_chain": p.report.llc_per_chain, "healthy_chains": p.healthy_chains,
                "n_excluded_chains": p.report.n_excluded_chains, "init_loss": p.report.init_loss,
                "nbeta": p.report.nbeta, "nbeta_source": nbeta_source(&p.report),
                "n_sampled_params": p.report.n_sampled_params, "diagnostics": p.report.diagnostics,
                "divergences": p.report.divergences, "warnings": p.report.warnings,
            })).collect::<Vec<_>>(),
            "sampling_seconds": wall,
            "process_seconds": start.elapsed().as_secs_f64(),
        });
        common::write_json(&self.out_dir.join("summary.json"), &summary)?;
        for p in &trajectory.points {
            println!(
                "{:<30} λ̂ = {:10.4} ± {:8.4}  ({} of {} chains healthy)",
                p.checkpoint,
                p.llc_mean,
                p.llc_std,
                p.healthy_chains,
                p.report.divergences.len()
            );
        }
        println!("{} checkpoints in {wall:.2} s; wrote {}", files.len(), self.out_dir.display());
        let failed = trajectory.failed();
        if !failed.is_empty() {
            return Err(format!("no healthy chain at checkpoint(s) {}: no estimate there", failed.join(", ")).into());
        }
        Ok(())
    }
}

/// `calibration.json` (exactly the keys of the issue's spec) and `calibration.svg`.
fn write_calibration(dir: &Path, c: &degeneracy::llc::Calibration) -> AnyResult<()> {
    let settings: Vec<Value> = c
        .settings
        .iter()
        .map(|p| {
            json!({"lr": p.lr, "nbeta": p.nbeta, "localization": p.localization, "llc_mean": p.llc_mean,
                   "diverged": p.diverged, "stationary": p.stationary, "mala_acceptance": p.mala_acceptance,
                   "rhat": p.rhat})
        })
        .collect();
    let recommended = c.recommended.map(|r| json!({"lr": r.lr, "nbeta": r.nbeta, "localization": r.localization}));
    common::write_json(&dir.join("calibration.json"), &json!({"settings": settings, "recommended": recommended}))?;
    c.draw(&dir.join("calibration.svg"), "LLC calibration: λ̂ of short chains per setting")?;
    Ok(())
}

/// `[chains, steps]`, diverged chains padded with NaN.
fn padded(rows: &[Vec<f64>], steps: usize) -> Matrix {
    Matrix::from_fn(rows.len(), steps, |c, t| rows[c].get(t).copied().unwrap_or(f64::NAN))
}

fn write_outputs(dir: &Path, r: &LlcReport) -> AnyResult<()> {
    let steps = r.config.total_steps().unwrap_or(0);
    io::write_matrix(dir.join("loss_trace.npy"), &padded(&r.loss_trace, steps))?;
    io::write_matrix(dir.join("llc_trace_instantaneous.npy"), &padded(&r.llc_trace_instantaneous, steps))?;
    io::write_matrix(dir.join("llc_trace_running_mean.npy"), &padded(&r.llc_trace_running_mean, steps))?;
    io::write_vector(dir.join("llc_per_chain.npy"), &r.llc_per_chain)?;
    Ok(())
}

/// Swaps the written outputs in once `summary.json` is among them (also when the run failed
/// after writing it, as a trajectory with a failed checkpoint does; a run that failed earlier
/// leaves the previous out_dir as it was), then returns the run's result.
fn finish(outputs: Option<Outputs>, result: AnyResult<()>) -> AnyResult<()> {
    if let Some(outputs) = outputs
        && outputs.staging().join("summary.json").exists()
    {
        outputs.commit()?;
    }
    result
}
