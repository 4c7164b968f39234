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
//!
//! Unknown keys and bad values are errors that name the key. Writes `out_dir/summary.json`
//! (estimates, timing, diagnostics, settings), `loss_trace.npy` `[chains, steps]` (a diverged
//! chain is padded with NaN), `llc_trace_instantaneous.npy`, `llc_trace_running_mean.npy` and
//! `llc_per_chain.npy`.

use degeneracy::llc::{BehaviouralLoss, LlcConfig, LlcEstimator, LlcReport, MlpLoss, Sampler};
use degeneracy::{Activation, Dataset, Error, Layer, Loss, Matrix, Targets, io};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::time::Instant;

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

const KEYS: [&str; 21] = [
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
];

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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config_path] = args.as_slice() else {
        return Err("usage: cargo run --release --example llc -- CONFIG.json".into());
    };
    let cfg = Config::load(Path::new(config_path))?;

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

    let mlp = io::load_mlp(&model_path, activation)?;
    let inputs = io::read_matrix(&inputs_path)?;
    let (targets_path, labels_path) = (cfg.path("targets")?, cfg.path("labels")?);
    let (n, d) = (inputs.nrows(), mlp.n_params());
    println!(
        "model {} ({} parameters, widths {:?}, {}), {} samples, loss {loss_name}, sampler {}",
        model_path.display(),
        d,
        mlp.widths(),
        activation.name(),
        n,
        sampler.name()
    );

    let t = Instant::now();
    let report = match loss_name.as_str() {
        "mse" => {
            let p = targets_path.ok_or("loss `mse` needs the key `targets` (a float .npy)")?;
            if labels_path.is_some() {
                return Err("key `labels` is for loss `cross_entropy`; loss `mse` uses `targets`".into());
            }
            let data = Dataset::new(inputs, Targets::Values(io::read_matrix(&p)?))?;
            let model = MlpLoss::new(&mlp, Loss::Mse, data)?;
            estimator.estimate(&model, &model.params())?
        }
        "cross_entropy" => {
            let p = labels_path.ok_or("loss `cross_entropy` needs the key `labels` (an integer .npy)")?;
            if targets_path.is_some() {
                return Err("key `targets` is for loss `mse`; loss `cross_entropy` uses `labels`".into());
            }
            let data = Dataset::new(inputs, Targets::Labels(io::read_labels(&p)?))?;
            let model = MlpLoss::new(&mlp, Loss::CrossEntropy, data)?;
            estimator.estimate(&model, &model.params())?
        }
        "behavioural" | "behavioral" => {
            if targets_path.is_some() || labels_path.is_some() {
                println!("note: loss `behavioural` uses the inputs only; `targets`/`labels` are not read");
            }
            let model = BehaviouralLoss::new(&mlp, inputs)?;
            estimator.estimate(&model, &model.params())?
        }
        other => {
            return Err(bad("loss", &Value::String(other.into()), "expected mse, cross_entropy or behavioural"));
        }
    };
    let wall = t.elapsed().as_secs_f64();
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
