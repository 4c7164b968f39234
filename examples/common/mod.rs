//! Shared plumbing of the command-line examples: JSON configs (paths relative to the config
//! file, unknown keys rejected), model and data loading, output files and phase timers.
#![allow(dead_code)]

use degeneracy::basis::{BasisFormula, JacobianPath, LibConfig};
use degeneracy::data::{ActivationSampler, NpySampler};
use degeneracy::distributed::{Communicator, Fingerprint};
use degeneracy::estimate::Quadrature;
use degeneracy::transformer::{LastPosModule, Transformer, read_tokens};
use degeneracy::{Activation, Error, Layer, Matrix, Mlp, Network, io};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Any error of an example, printed by `main`.
pub type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Errors unless the command line is exactly `PROGRAM CONFIG.json` (jobs without shard or stage
/// options: an argument they would ignore, such as `--shard 0/2`, is refused by name).
pub fn only_config_arg(usage: &str) -> AnyResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [config] if !config.starts_with("--") => Ok(()),
        [] => Err(format!("usage: {usage}").into()),
        [config, extra, ..] if !config.starts_with("--") => {
            Err(format!("unexpected argument `{extra}`; usage: {usage}").into())
        }
        [flag, ..] => Err(format!("unexpected argument `{flag}`; usage: {usage}").into()),
    }
}

/// Reads the config file named by the first command-line argument; returns it with its folder.
pub fn read_config<T: DeserializeOwned>(usage: &str) -> AnyResult<(T, PathBuf)> {
    let path = std::env::args().nth(1).ok_or_else(|| format!("usage: {usage}"))?;
    let path = PathBuf::from(path);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::Io { path: path.clone(), source: e })?;
    let config = from_json_text(&text).map_err(|reason| Error::Malformed {
        path: path.clone(),
        format: "json config",
        reason,
    })?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok((config, dir))
}

/// Parses JSON into `T`, an error naming the key it was reading (`batch_size: invalid value: …`,
/// also for a value that is not JSON at all, such as `NaN`).
pub fn from_json_text<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| keyed(e.path().to_string(), e.into_inner()))?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// [`from_json_text`] for a value already parsed.
fn from_json_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| keyed(e.path().to_string(), e.into_inner()))
}

fn keyed(path: String, e: serde_json::Error) -> String {
    if path.is_empty() || path == "." { e.to_string() } else { format!("key `{path}`: {e}") }
}

/// Reads a config holding the [`BuildKeys`], the [`TransformerKeys`] and the keys `extra_keys`
/// of `E` (the first command-line argument): the transformer and extra keys are split off and
/// read into their types, the rest into `BuildKeys`, so an unknown key is still an error naming
/// it. Returns them with the config's folder.
pub fn read_build_config<E: DeserializeOwned>(
    usage: &str,
    extra_keys: &[&str],
) -> AnyResult<(BuildKeys, TransformerKeys, E, PathBuf)> {
    let (value, dir): (serde_json::Value, PathBuf) = read_config(usage)?;
    let path = std::env::args().nth(1).map(PathBuf::from).unwrap_or_default();
    let malformed = |reason: String| Error::Malformed { path: path.clone(), format: "json config", reason };
    let serde_json::Value::Object(mut build) = value else {
        return Err(Error::Malformed { path, format: "json config", reason: "expected an object".into() }.into());
    };
    let mut split = |keys: &[&str]| {
        let mut part = serde_json::Map::new();
        for key in keys {
            if let Some(v) = build.remove(*key) {
                part.insert((*key).to_string(), v);
            }
        }
        serde_json::Value::Object(part)
    };
    let (transformer, extra) = (split(&TRANSFORMER_KEYS), split(extra_keys));
    let transformer = from_json_value(transformer).map_err(malformed)?;
    let extra = from_json_value(extra).map_err(malformed)?;
    let keys = from_json_value(serde_json::Value::Object(build)).map_err(malformed)?;
    Ok((keys, transformer, extra, dir))
}

/// Rows per chunk when a job streams its inputs from a `.npy` file: a multiple of the
/// determinism grid (so the work units are those of an in-memory pass), 64 Ki rows.
pub const CHUNK_ROWS: usize = 1 << 16;

/// `path` relative to the config's folder (absolute paths unchanged).
pub fn resolve(dir: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() { p.to_path_buf() } else { dir.join(p) }
}

/// The MLP activation when the key `"activation"` is not given.
pub const DEFAULT_ACTIVATION: &str = "relu";

/// Writes `"activation"` as its default when it was not given, so configs without the key keep
/// the fingerprints they had when the key was a plain string with that default.
fn activation_or_default<S: serde::Serializer>(a: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(a.as_deref().unwrap_or(DEFAULT_ACTIVATION))
}
fn default_basis() -> String {
    "jacobian".into()
}
fn default_integration() -> String {
    "gradient".into()
}
fn default_true() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
fn default_threshold() -> f64 {
    1e-10
}
fn default_batch() -> usize {
    1024
}
fn default_out() -> String {
    "out".into()
}

/// The keys shared by `lib_build` and `ablate` (rib's `RibBuildConfig` names).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BuildKeys {
    pub model: String,
    /// The MLP's hidden activation (default `relu`); a transformer's is `act_fn` in its config.
    #[serde(default, serialize_with = "activation_or_default")]
    pub activation: Option<String>,
    pub inputs: String,
    #[serde(default)]
    pub node_layers: Option<Vec<String>>,
    #[serde(default = "default_basis")]
    pub basis_formula: String,
    #[serde(default)]
    pub edge_formula: Option<String>,
    #[serde(default = "default_integration")]
    pub integration_method: String,
    #[serde(default)]
    pub n_intervals: usize,
    #[serde(default = "default_true")]
    pub center: bool,
    #[serde(default = "default_threshold")]
    pub truncation_threshold: f64,
    #[serde(default)]
    pub rotate_final_node_layer: bool,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "default_out")]
    pub out_dir: String,
    /// `false` declares a bias-free model (a missing bias is otherwise an error). Left out of
    /// the serialised keys at its default, so earlier configs keep their fingerprints.
    #[serde(default = "default_true", skip_serializing_if = "is_true", deserialize_with = "bias_key")]
    pub bias: bool,
    /// Tensor names of the model file mapped to the expected ones (`layers.{i}.weight`...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tensor_names: BTreeMap<String, String>,
}

/// The config key `"bias"`, whose type error (serde's own does not) names the key.
pub fn bias_key<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Bool(b) => Ok(b),
        v => Err(serde::de::Error::custom(format!("invalid bias = {v}: must be true or false"))),
    }
}

/// The model-loading options of the config keys `"bias"` (default `true`) and
/// `"tensor_names"` (`{"name in file": "layers.0.weight", …}`).
pub fn load_options(bias: bool, tensor_names: &BTreeMap<String, String>) -> io::LoadOptions {
    io::LoadOptions { bias, rename: tensor_names.clone(), ..io::LoadOptions::default() }
}

impl BuildKeys {
    /// The basis settings, validated (errors name the key).
    pub fn lib_config(&self) -> AnyResult<LibConfig> {
        let config = LibConfig {
            basis_formula: BasisFormula::from_name(&self.basis_formula)?,
            center: self.center,
            truncation_threshold: self.truncation_threshold,
            rotate_final_node_layer: self.rotate_final_node_layer,
            quadrature: Quadrature::from_name(&self.integration_method, self.n_intervals)?,
            batch_size: self.batch_size,
            node_layers: self.node_layers.clone(),
            jacobian_path: JacobianPath::Auto,
        };
        config.validate()?;
        Ok(config)
    }

    /// The MLP-loading keys of this config.
    pub fn mlp_keys(&self) -> MlpKeys<'_> {
        MlpKeys { activation: self.activation.as_deref(), bias: self.bias, tensor_names: &self.tensor_names }
    }

    /// The model (an MLP, or a transformer with `model_config`) and its inputs (rows of
    /// features, or token ids).
    pub fn load_model(&self, transformer: &TransformerKeys, dir: &Path) -> AnyResult<(Model, PathBuf)> {
        let model = load_model(dir, &resolve(dir, &self.model), &self.mlp_keys(), transformer)?;
        Ok((model, resolve(dir, &self.inputs)))
    }

    /// A fingerprint of everything a `stage` of a run computes from: these keys (not the paths
    /// or the output folder) and the contents of the model and inputs files.
    pub fn fingerprint(&self, dir: &Path, stage: &str) -> AnyResult<Fingerprint> {
        let mut keys = serde_json::to_value(self)?;
        let map = keys.as_object_mut().expect("a struct serialises to an object");
        for path_key in ["model", "inputs", "out_dir"] {
            map.remove(path_key);
        }
        Ok(Fingerprint::new(stage)
            .json("config", &keys)?
            .file("model", resolve(dir, &self.model))?
            .file("inputs", resolve(dir, &self.inputs))?)
    }

    /// The output folder (not created: see [`Outputs`]).
    pub fn out_dir(&self, dir: &Path) -> PathBuf {
        resolve(dir, &self.out_dir)
    }
}

/// The keys that make a job's model a transformer, shared by every job that reads a model
/// (`lib_build`, `ablate`, `llc`, `diagnose`): `"model_config"` (a TransformerLens config JSON)
/// marks one; `"model"` is then its state dict in safetensors and `"inputs"` integer token ids
/// `[n, positions]` (`docs/math.md` §3.3).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerKeys {
    /// The TransformerLens config (relative to the config file).
    #[serde(default)]
    pub model_config: Option<String>,
    /// rib's `last_pos_module_type`: `add_resid1` or `unembed` (only the last position from that
    /// module on).
    #[serde(default)]
    pub last_pos_module_type: Option<String>,
    /// rib's `isolate_ln_var` (default true): LayerNorm variances as their own directions.
    #[serde(default)]
    pub isolate_ln_var: Option<bool>,
}

/// The keys of [`TransformerKeys`].
pub const TRANSFORMER_KEYS: [&str; 3] = ["model_config", "last_pos_module_type", "isolate_ln_var"];

impl TransformerKeys {
    /// Whether the config names a transformer.
    pub fn is_transformer(&self) -> bool {
        self.model_config.is_some()
    }

    /// Errors, naming the key, if a transformer key is set without `model_config`.
    pub fn check_for_mlp(&self) -> AnyResult<()> {
        if self.model_config.is_none() {
            for (key, set) in [
                ("last_pos_module_type", self.last_pos_module_type.is_some()),
                ("isolate_ln_var", self.isolate_ln_var.is_some()),
            ] {
                if set {
                    return Err(format!("`{key}` is for transformers: give `model_config` too").into());
                }
            }
        }
        Ok(())
    }

    /// What the transformer keys add to a run's fingerprint (`Null` for an MLP): the model
    /// config's contents and the two layout keys.
    pub fn fingerprint(&self, dir: &Path) -> serde_json::Value {
        match &self.model_config {
            None => serde_json::Value::Null,
            Some(config) => serde_json::json!({
                "model_config": std::fs::read_to_string(resolve(dir, config)).unwrap_or_default(),
                "last_pos_module_type": self.last_pos_module_type,
                "isolate_ln_var": self.isolate_ln_var,
            }),
        }
    }
}

/// The keys that load an MLP: `"activation"` (default `relu`), `"bias"`, `"tensor_names"`.
pub struct MlpKeys<'a> {
    /// The hidden activation, if given.
    pub activation: Option<&'a str>,
    /// `false` declares a bias-free model.
    pub bias: bool,
    /// Tensor names of the file mapped to the expected ones.
    pub tensor_names: &'a BTreeMap<String, String>,
}

/// A job's model: an MLP, or a transformer (rib's sequential transformer, `docs/math.md` §3.3).
/// Both are a [`Network`] (bases, edges, ablations, diagnostics) and a [`Layer`] (the LLC; a
/// transformer's output is its logits at the last position).
#[derive(Clone, Debug)]
pub enum Model {
    Mlp(Mlp),
    Transformer(Box<Transformer>),
}

impl Model {
    /// The model as a network of node layers.
    pub fn network(&self) -> &dyn Network {
        match self {
            Model::Mlp(m) => m,
            Model::Transformer(t) => &**t,
        }
    }

    /// The model as a layer (inputs → outputs, parameters).
    pub fn layer(&self) -> &dyn Layer {
        match self {
            Model::Mlp(m) => m,
            Model::Transformer(t) => &**t,
        }
    }

    /// The network, boxed (for jobs that keep it in a struct).
    pub fn into_network(self) -> Box<dyn Network + Send> {
        match self {
            Model::Mlp(m) => Box::new(m),
            Model::Transformer(t) => t,
        }
    }

    /// The hidden activation's name.
    pub fn activation_name(&self) -> &'static str {
        match self {
            Model::Mlp(m) => m.activations().first().map_or("identity", |a| a.name()),
            Model::Transformer(t) => t.config().act_fn.name(),
        }
    }

    /// One line for a job's log: widths and activation, or the transformer's shape.
    pub fn describe(&self) -> String {
        match self {
            Model::Mlp(m) => format!("widths {:?}, {}", m.widths(), self.activation_name()),
            Model::Transformer(t) => {
                let c = t.config();
                format!(
                    "transformer: {} layer(s), d_model {}, {} heads × {}, d_mlp {}, vocabulary {}, {} positions, {}",
                    c.n_layers,
                    c.d_model,
                    c.n_heads,
                    c.d_head,
                    c.d_mlp,
                    c.d_vocab,
                    t.positions(),
                    self.activation_name()
                )
            }
        }
    }

    /// The inputs of this model in `path`: a float `.npy` of rows for an MLP, integer token ids
    /// `[n, positions]` for a transformer.
    pub fn read_inputs(&self, path: &Path) -> AnyResult<Matrix> {
        Ok(match self {
            Model::Mlp(_) => io::read_matrix(path)?,
            Model::Transformer(_) => read_tokens(path)?,
        })
    }

    /// The inputs in `path` for passes over them: an MLP's rows streamed in chunks of
    /// [`CHUNK_ROWS`] (only the header is read here; the rows never need to fit in memory), a
    /// transformer's token ids read whole (`n × n_ctx` integers, a small fraction of one pass's
    /// activations).
    pub fn open_inputs(&self, path: &Path) -> AnyResult<Box<dyn ActivationSampler>> {
        Ok(match self {
            Model::Mlp(_) => Box::new(NpySampler::open(path, CHUNK_ROWS)?),
            Model::Transformer(_) => Box::new(read_tokens(path)?),
        })
    }
}

/// Loads the model file `model`: an MLP (with `mlp`), or with `model_config` (relative to the
/// config's folder `dir`) a transformer. Keys that do not apply to the kind of model are errors naming
/// them (`last_pos_module_type` without `model_config`; `bias: false`, `tensor_names` or an
/// `activation` other than the config's `act_fn` with it).
pub fn load_model(dir: &Path, model: &Path, mlp: &MlpKeys<'_>, transformer: &TransformerKeys) -> AnyResult<Model> {
    transformer.check_for_mlp()?;
    let Some(model_config) = &transformer.model_config else {
        let activation = Activation::from_name(mlp.activation.unwrap_or(DEFAULT_ACTIVATION))?;
        let options = load_options(mlp.bias, mlp.tensor_names);
        return Ok(Model::Mlp(io::load_mlp_with(model, activation, &options)?));
    };
    if !mlp.bias {
        return Err("`bias: false` declares a bias-free MLP; a transformer's biases are in its state dict".into());
    }
    if !mlp.tensor_names.is_empty() {
        return Err(
            "`tensor_names` renames an MLP checkpoint's tensors; a transformer's state dict keeps TransformerLens' names"
                .into(),
        );
    }
    let last_pos = transformer.last_pos_module_type.as_deref().map(LastPosModule::from_name).transpose()?;
    let model = Transformer::load(resolve(dir, model_config), model)?
        .with_last_pos_module(last_pos)
        .with_isolate_ln_var(transformer.isolate_ln_var.unwrap_or(true));
    if let Some(name) = mlp.activation {
        let given = Activation::from_name(name)?;
        if given != model.config().act_fn {
            return Err(Error::InvalidParameter {
                name: "activation".into(),
                value: name.into(),
                reason: format!(
                    "the transformer's activation is act_fn = {} in model_config; leave `activation` out",
                    model.config().act_fn.name()
                ),
            }
            .into());
        }
    }
    Ok(Model::Transformer(Box::new(model)))
}

fn io_err(path: impl AsRef<Path>, source: std::io::Error) -> Error {
    Error::Io { path: path.as_ref().to_path_buf(), source }
}

/// The marker a job leaves in its output folder: the folder may be replaced by the next run.
const MARKER: &str = ".degeneracy-job";
/// Report files of earlier versions (which wrote no marker) that also mark a job's folder.
const REPORTS: [&str; 4] = ["report.json", "degeneracy.json", "ablation.json", "summary.json"];

/// A job's output folder, replaced whole and only once complete (README, "Output folders"):
/// files are written into a staging folder beside it, and [`Outputs::commit`] swaps it in. If the
/// job fails before that, the staging folder is removed and the previous result stays as it was.
/// A folder that exists but was not written by a job is never replaced.
///
/// `DEGENERACY_FAIL_AFTER_FILES=N` makes the `N + 1`-th file write fail (a test hook that
/// simulates a full disk).
pub struct Outputs {
    out: PathBuf,
    staging: PathBuf,
    /// Subfolders of the previous result carried into the new one (shard files of a staged run).
    keep: Vec<&'static str>,
    written: usize,
    committed: bool,
}

impl Outputs {
    /// Checks, before any computation, that `out` may be replaced and that a folder can be
    /// created beside it.
    pub fn prepare(out: &Path, keep: &[&'static str]) -> AnyResult<Self> {
        if out.exists() {
            let entries: Vec<_> = std::fs::read_dir(out)
                .map_err(|e| io_err(out, e))?
                .collect::<Result<_, _>>()
                .map_err(|e| io_err(out, e))?;
            let ours = out.join(MARKER).exists() || REPORTS.iter().any(|r| out.join(r).exists());
            if !entries.is_empty() && !ours {
                return Err(format!(
                    "out_dir {} exists and holds files no degeneracy job wrote; refusing to replace it (choose another out_dir or empty it)",
                    out.display()
                )
                .into());
            }
        }
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
        let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
        let staging = parent.join(format!(".{name}.staging-{}", std::process::id()));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| io_err(&staging, e))?;
        }
        std::fs::create_dir(&staging).map_err(|e| io_err(&staging, e))?;
        let outputs = Outputs { out: out.to_path_buf(), staging, keep: keep.to_vec(), written: 0, committed: false };
        std::fs::write(
            outputs.staging.join(MARKER),
            "written by a degeneracy job; the next run replaces this folder\n",
        )
        .map_err(|e| io_err(outputs.staging.join(MARKER), e))?;
        Ok(outputs)
    }

    /// The final folder (what reports and messages name).
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// The staging folder, for writers that take a folder (the files count toward nothing).
    pub fn staging(&self) -> &Path {
        &self.staging
    }

    /// Where a file named `name` is written now (in the staging folder).
    fn path(&mut self, name: &str) -> AnyResult<PathBuf> {
        let fail_after = std::env::var("DEGENERACY_FAIL_AFTER_FILES").ok().and_then(|v| v.parse::<usize>().ok());
        if fail_after.is_some_and(|n| self.written >= n) {
            let path = self.staging.join(name);
            let e = std::io::Error::other("simulated write failure (DEGENERACY_FAIL_AFTER_FILES)");
            return Err(io_err(path, e).into());
        }
        self.written += 1;
        Ok(self.staging.join(name))
    }

    /// Writes pretty JSON as `name`.
    pub fn json(&mut self, name: &str, value: &serde_json::Value) -> AnyResult<()> {
        let path = self.path(name)?;
        write_json(&path, value)
    }

    /// Writes `(file name, array)` pairs.
    pub fn npy(&mut self, files: &[(String, NpyOut)]) -> AnyResult<()> {
        let paths = files.iter().map(|(name, _)| self.path(name)).collect::<AnyResult<Vec<PathBuf>>>()?;
        use rayon::prelude::*;
        files
            .par_iter()
            .zip(&paths)
            .map(|((_, a), path)| match a {
                NpyOut::Matrix(m) => io::write_matrix(path, m),
                NpyOut::Vector(v) => io::write_vector(path, v),
            })
            .collect::<Result<Vec<()>, Error>>()?;
        Ok(())
    }

    /// Swaps the staging folder in for `out` (carrying the kept subfolders over); the previous
    /// folder is removed only after the new one is in place.
    pub fn commit(mut self) -> AnyResult<()> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| io_err(&p, e)
        };
        if self.out.exists() {
            for sub in &self.keep {
                let from = self.out.join(sub);
                if from.exists() {
                    std::fs::rename(&from, self.staging.join(sub)).map_err(io(&from))?;
                }
            }
            let old = self.staging.with_extension("old");
            std::fs::rename(&self.out, &old).map_err(io(&self.out))?;
            if let Err(e) = std::fs::rename(&self.staging, &self.out) {
                let _ = std::fs::rename(&old, &self.out);
                return Err(io_err(&self.out, e).into());
            }
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        } else {
            std::fs::rename(&self.staging, &self.out).map_err(io(&self.out))?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

/// `layers.0` → `layers_0`, as the reference's file names write node layers.
pub fn file_node(name: &str) -> String {
    name.replace('.', "_")
}

/// Wall-clock seconds per named phase.
pub struct Phases {
    start: Instant,
    last: Instant,
    pub seconds: Vec<(String, f64)>,
}

impl Phases {
    pub fn start() -> Self {
        let now = Instant::now();
        Phases { start: now, last: now, seconds: Vec::new() }
    }

    /// Ends the current phase under `name`.
    pub fn lap(&mut self, name: &str) {
        let now = Instant::now();
        self.seconds.push((name.to_string(), (now - self.last).as_secs_f64()));
        self.last = now;
    }

    pub fn total(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (k, v) in &self.seconds {
            map.insert(k.clone(), (*v).into());
        }
        map.insert("total".into(), self.total().into());
        serde_json::Value::Object(map)
    }
}

/// The process's peak resident memory in bytes (Linux's `VmHWM`); `None` where the system does
/// not report it. Jobs put it in their report, so that a harness sees memory beside time.
pub fn peak_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// Writes pretty JSON.
pub fn write_json(path: &Path, value: &serde_json::Value) -> AnyResult<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
    Ok(())
}

/// Process settings for a build, applied first thing in `main` (`docs/performance.md`, "Where
/// a build's process time goes"). A build allocates and frees the same few sizes phase after
/// phase, and on a virtual machine every fresh 4 KiB page costs a fault of ~3 µs: the 784-wide
/// build touched 18 600 pages, more than half its time. So glibc's malloc keeps one heap for
/// all threads (`M_ARENA_MAX` 1) and keeps freed memory in it for reuse (`M_MMAP_THRESHOLD`
/// 32 MiB, `M_TRIM_THRESHOLD` 1 GiB, `M_TOP_PAD` 64 MiB), and that heap is advised for
/// transparent huge pages (one fault per 2 MiB). Measured: 18 600 → 2 000 faults, and digits
/// 1 759 → 363. Where THP is disabled the advice is a no-op; other platforms change nothing.
pub fn start_build_process() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt`, `malloc`/`free` of a block of our own, `sbrk(0)` (a query) and `madvise`
    // on the heap's own pages; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        // One heap allocation grows the heap by the top pad; the whole 2 MiB pages from it to
        // the heap's end are then advised.
        let probe = libc::malloc(1 << 20);
        libc::free(probe);
        const HUGE: usize = 2 << 20;
        let start = (probe as usize).next_multiple_of(HUGE);
        let end = libc::sbrk(0) as usize & !(HUGE - 1);
        if !probe.is_null() && end > start {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

/// Runs `main_body`, printing an error and exiting with status 1 instead of panicking.
pub fn exit_on_error(result: AnyResult<()>) {
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// An array to write: 2-D or 1-D.
pub enum NpyOut {
    Matrix(Matrix),
    Vector(Vec<f64>),
}

/// How a command-line job splits its work: all in this process (possibly as one MPI rank),
/// one shard of a file-based run, or the merge of shard files.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// The whole job.
    Whole,
    /// `--shard I/K`: shard `index` of `count` (0-based).
    Shard { index: usize, count: usize },
    /// `--merge FILE…`.
    Merge(Vec<PathBuf>),
}

/// `PROGRAM CONFIG.json [--stage NAME] [--shard I/K | --merge FILE…]`.
pub struct Cli {
    pub mode: Mode,
    /// `--stage`, if the job has stages.
    pub stage: Option<String>,
}

/// Parses the arguments after the config path; `stages` says whether `--stage` is accepted.
pub fn parse_cli(usage: &str, stages: bool) -> AnyResult<Cli> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || format!("usage: {usage}");
    if args.is_empty() || args[0].starts_with("--") {
        return Err(usage().into());
    }
    let (mut mode, mut stage) = (Mode::Whole, None);
    let mut rest = args[1..].iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--stage" if stages => stage = Some(rest.next().ok_or_else(usage)?.clone()),
            "--shard" if mode == Mode::Whole => {
                let spec = rest.next().ok_or_else(usage)?;
                let bad = || Error::InvalidParameter {
                    name: "--shard".into(),
                    value: spec.clone(),
                    reason: "expected I/K with 0 ≤ I < K (shard I of K, 0-based)".into(),
                };
                let (i, k) = spec.split_once('/').ok_or_else(bad)?;
                let (index, count) = (i.parse().map_err(|_| bad())?, k.parse().map_err(|_| bad())?);
                if index >= count {
                    return Err(bad().into());
                }
                mode = Mode::Shard { index, count };
            }
            "--merge" if mode == Mode::Whole => {
                let files: Vec<PathBuf> = rest.by_ref().map(PathBuf::from).collect();
                if files.is_empty() {
                    return Err(format!("--merge needs the shard files; {}", usage()).into());
                }
                mode = Mode::Merge(files);
            }
            other => return Err(format!("unexpected argument `{other}`; {}", usage()).into()),
        }
    }
    Ok(Cli { mode, stage })
}

/// The communicator of a run with `"distributed": true`: this process's rank under `mpirun`.
/// Without the `mpi` feature that is an error, never a silent single-process run.
#[cfg(feature = "mpi")]
pub fn communicator() -> AnyResult<Box<dyn Communicator>> {
    Ok(Box::new(degeneracy::distributed::MpiCommunicator::init()?))
}

/// The communicator of a run with `"distributed": true`: this process's rank under `mpirun`.
/// Without the `mpi` feature that is an error, never a silent single-process run.
#[cfg(not(feature = "mpi"))]
pub fn communicator() -> AnyResult<Box<dyn Communicator>> {
    let exe = std::env::args().next().unwrap_or_default();
    let name = Path::new(&exe).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Err(format!(
        "\"distributed\": true needs the `mpi` feature, and this binary was built without it: \
         cargo build --release --features mpi --example {name}, then \
         mpirun -n K target/release/examples/{name} CONFIG.json"
    )
    .into())
}

/// `out/shards`, created: where shard workers write their files.
pub fn shard_dir(out: &Path) -> AnyResult<PathBuf> {
    let dir = out.join("shards");
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    // The folder now holds a job's files: a later merge may replace it (keeping `shards`).
    let marker = out.join(MARKER);
    if !marker.exists() {
        std::fs::write(&marker, "written by a degeneracy job; the next run replaces this folder\n")
            .map_err(|e| io_err(&marker, e))?;
    }
    Ok(dir)
}
