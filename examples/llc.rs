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
//! Unknown keys and bad values are errors that name the key. Writes `out_dir/summary.json`
//! (estimates, timing, diagnostics, settings), `loss_trace.npy` `[chains, steps]` (a diverged
//! chain is padded with NaN), `llc_trace_instantaneous.npy`, `llc_trace_running_mean.npy` and
//! `llc_per_chain.npy`.
//!
//! Beyond one machine (`docs/distributed.md`); the outputs are identical to one process's:
//! * `"distributed": true` (built with `--features mpi`, run as `mpirun -n K
//!   target/release/examples/llc CONFIG.json`): the chains are split over the ranks; rank 0 writes.
//! * File-based, without MPI: `llc CONFIG.json --shard I/K` runs chain block I of K and writes
//!   `out_dir/shards/chains_I_of_K.shard`; `llc CONFIG.json --merge FILE…` writes the outputs
//!   (`sampling_seconds` is then the longest shard's).

mod common;

use common::{AnyResult, Mode};
use degeneracy::distributed::{
    Communicator, Fingerprint, ShardHeader, merge_shard_files, shard_range, write_shard_file,
};
use degeneracy::llc::{BehaviouralLoss, ChainRuns, LlcConfig, LlcEstimator, LlcReport, LossModel, MlpLoss, Sampler};
use degeneracy::{Activation, Dataset, Error, Layer, Loss, Matrix, Targets, io};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::time::Instant;

const USAGE: &str = "llc CONFIG.json [--shard I/K | --merge FILE…]";
const CHAINS: &str = "llc/chains";

const KEYS: [&str; 24] = [
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
];

/// Keys naming files: their contents, not their paths, enter the shard fingerprint.
const PATH_KEYS: [&str; 4] = ["model", "inputs", "targets", "labels"];

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
        let value: Value = serde_json::from_str(&text).map_err(|e| format!("{}: invalid JSON: {e}", path.display()))?;
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

    /// The model-loading keys `bias` (default true) and `tensor_names`.
    fn load_options(&self) -> AnyResult<io::LoadOptions> {
        let bias = match self.get("bias") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(v) => return Err(bad("bias", v, "must be true or false")),
        };
        let tensor_names = match self.get("tensor_names") {
            None => Default::default(),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|_| bad("tensor_names", v, "must map names in the file to names, as strings"))?,
        };
        Ok(common::load_options(bias, &tensor_names))
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

    let activation = Activation::from_name(&cfg.required_string("activation")?)?;
    let model_path = cfg.path("model")?.ok_or("missing required key `model`")?;
    let inputs_path = cfg.path("inputs")?.ok_or("missing required key `inputs`")?;
    let loss_name = cfg.required_string("loss")?;
    let lr = cfg.float("lr")?.ok_or("missing required key `lr`")?;
    let sampler = Sampler::from_name(cfg.string("sampler")?.as_deref().unwrap_or("sgld"))?;
    let out_dir = cfg.path("out_dir")?.unwrap_or_else(|| cfg.dir.join("llc_out"));

    let mut config = LlcConfig::new(lr).sampler(sampler).seed(0);
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
    let estimator = LlcEstimator::new(config)?;

    let mlp = io::load_mlp_with(&model_path, activation, &cfg.load_options()?)?;
    let inputs = io::read_matrix(&inputs_path)?;
    let (targets_path, labels_path) = (cfg.path("targets")?, cfg.path("labels")?);
    let (n, d) = (inputs.nrows(), mlp.n_params());
    let comm = if distributed { Some(common::communicator()?) } else { None };
    let comm = comm.as_deref();
    let lead = comm.is_none_or(|c| c.rank() == 0);
    if lead {
        println!(
            "model {} ({} parameters, widths {:?}, {}), {} samples, loss {loss_name}, sampler {}",
            model_path.display(),
            d,
            mlp.widths(),
            activation.name(),
            n,
            sampler.name()
        );
    }
    let run = Run { estimator: &estimator, mode: &cli.mode, comm, cfg: &cfg, out_dir: &out_dir };

    let sampled = match loss_name.as_str() {
        "mse" => {
            let p = targets_path.ok_or("loss `mse` needs the key `targets` (a float .npy)")?;
            if labels_path.is_some() {
                return Err("key `labels` is for loss `cross_entropy`; loss `mse` uses `targets`".into());
            }
            let data = Dataset::new(inputs, Targets::Values(io::read_matrix(&p)?))?;
            let model = MlpLoss::new(&mlp, Loss::Mse, data)?;
            run.sample(&model, model.params())?
        }
        "cross_entropy" => {
            let p = labels_path.ok_or("loss `cross_entropy` needs the key `labels` (an integer .npy)")?;
            if targets_path.is_some() {
                return Err("key `targets` is for loss `mse`; loss `cross_entropy` uses `labels`".into());
            }
            let data = Dataset::new(inputs, Targets::Labels(io::read_labels(&p)?))?;
            let model = MlpLoss::new(&mlp, Loss::CrossEntropy, data)?;
            run.sample(&model, model.params())?
        }
        "behavioural" | "behavioral" => {
            if targets_path.is_some() || labels_path.is_some() {
                println!("note: loss `behavioural` uses the inputs only; `targets`/`labels` are not read");
            }
            let model = BehaviouralLoss::new(&mlp, inputs)?;
            run.sample(&model, model.params())?
        }
        other => {
            return Err(bad("loss", &Value::String(other.into()), "expected mse, cross_entropy or behavioural"));
        }
    };
    let Some((report, wall)) = sampled else {
        return Ok(()); // a shard worker, or a rank other than 0
    };
    let total_steps = report.config.num_chains * report.config.total_steps().unwrap_or(0);
    let seconds_per_step = wall / total_steps.max(1) as f64;

    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    write_outputs(&out_dir, &report)?;
    let settings = json!({
        "model": model_path, "activation": activation.name(), "inputs": inputs_path,
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
    });
    let summary = json!({
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
        "nbeta_source": if report.nbeta_is_default { "n / ln n" } else { "config" },
        "n_samples": report.n_samples,
        "n_params": report.n_params,
        "diagnostics": report.diagnostics,
        "divergences": report.divergences,
        "warnings": report.warnings,
        "estimate_definitions": {
            "llc_per_chain": "nbeta * (mean over all steps incl. burn-in of the minibatch loss - init_loss) (devinterp 2.0.1)",
            "llc_draws_per_chain": "nbeta * (mean over draws after burn-in - init_loss) (devinterp 1.x)",
            "llc_std": "population std (ddof 0) over non-diverged chains",
        },
    });
    let path = out_dir.join("summary.json");
    let text = serde_json::to_string_pretty(&summary)?;
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;

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
    Ok(())
}

/// How the chains of this process are run and where the result goes.
struct Run<'a> {
    estimator: &'a LlcEstimator,
    mode: &'a Mode,
    comm: Option<&'a dyn Communicator>,
    cfg: &'a Config,
    out_dir: &'a Path,
}

impl Run<'_> {
    /// The report and the sampling wall time, where this process writes the outputs (one
    /// process, rank 0, the merge step); `None` on the other ranks and on shard workers.
    fn sample<M: LossModel + Clone>(&self, model: &M, w: Vec<f64>) -> AnyResult<Option<(LlcReport, f64)>> {
        let t = Instant::now();
        match (self.mode, self.comm) {
            (Mode::Whole, None) => Ok(Some((self.estimator.estimate(model, &w)?, t.elapsed().as_secs_f64()))),
            (Mode::Whole, Some(c)) => {
                let report = self.estimator.estimate_distributed(model, &w, c)?;
                Ok((c.rank() == 0).then(|| (report, t.elapsed().as_secs_f64())))
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
                Ok(Some((merged.runs.into_report()?, merged.sampling_seconds)))
            }
        }
    }
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
