//! Builds the bases of a model's node layers from a JSON config (rib's `rib_build` keys) and
//! writes them as `.npy` files, for benchmark harnesses and scripts.
//!
//! `cargo run --release --example lib_build -- CONFIG.json`
//!
//! For node layer `k` named `N` (`.` written `_`): `C_{k}_{N}.npy` `[orig, kept]`,
//! `C_pinv_{k}_{N}.npy`, `Lambda_{k}_{N}.npy` (LIB only, C-column order),
//! `gram_eigvals_{k}_{N}.npy` (full spectrum, descending); an unrotated final node layer gets
//! no files. With `edge_formula` set, also `E_hat_{k}_{N}__{N'}.npy` (`[dim out, dim in]`, `k` the
//! input node layer's index) and `modules.json` (per node layer the module id of each
//! direction, and Q). `report.json` holds the dimensions per node layer, seconds per phase of the
//! job and, under `library_seconds`, of the library's steps (`degeneracy::profile`), and the
//! process's peak memory (`peak_memory_bytes`; the inputs are streamed, so it does not grow with
//! the rows).
//!
//! A transformer (`docs/math.md` §3.3): `"model_config": "model_config.json"` (a TransformerLens
//! config) marks one; `"model"` is then its TransformerLens state dict in safetensors,
//! `"inputs"` integer token ids `[n, positions]`, `"node_layers"` rib's module ids (`ln1.0`,
//! `ln2.0`, `unembed`, `output`, …), and `"last_pos_module_type"` (`add_resid1` or `unembed`)
//! keeps only the last position from that module on. `"isolate_ln_var"` (default true) keeps
//! LayerNorm variances as their own directions. rib's `"n_stochastic_sources_basis_pos"`,
//! `"n_stochastic_sources_basis_hidden"` and `"n_stochastic_sources_edges"` (with `"seed"`)
//! replace sums over output positions / directions by random sources (long contexts). The MLP
//! keys do not apply to a transformer: `"bias": false` and `"tensor_names"` are refused, and
//! `"activation"` must be left out or equal the config's `act_fn`. The same model keys are read
//! by `ablate`, `llc` and `diagnose` (`examples/common`).
//!
//! Beyond one machine (`docs/distributed.md`):
//! * `"distributed": true` (built with `--features mpi`, run as `mpirun -n K
//!   target/release/examples/lib_build CONFIG.json`): every pass is split over the ranks by rows
//!   and merged; rank 0 writes the files above. `"edge_split": "outputs"` splits the edges over
//!   output directions instead (each rank streams all rows; `docs/distributed.md` says when).
//! * File-based, without MPI: `--stage statistics --shard I/K` on each of K workers writes
//!   `out_dir/shards/statistics_I_of_K.shard`; `--stage statistics --merge FILE…` writes the
//!   basis files and `report.json` (and, with `edge_formula`, `out_dir/shards/bases.shard`); then
//!   `--stage edges --shard I/K` and `--stage edges --merge FILE…` write the `E_hat` files,
//!   `modules.json` and `report.json`. Bases that need a data pass per node layer (`(1-alpha)^2`,
//!   non-consecutive node layers) are refused there: use MPI or one process.

mod common;

use common::{AnyResult, BuildKeys, Mode, NpyOut, Outputs, Phases, file_node, read_build_config, shard_dir};
use degeneracy::Network;
use degeneracy::basis::{Basis, JacobianPath, LibConfig, NodeBasis, build_bases};
use degeneracy::data::ActivationSampler;
use degeneracy::distributed::{Communicator, Shard, StagedBuild, compute_edges_by_outputs};
use degeneracy::estimate::{NodeStatistics, StochasticSources};
use degeneracy::graph::{
    EdgeConfig, EdgeFormula, EdgeNorm, Edges, InteractionGraph, LeidenConfig, compute_edges, find_modules,
};
use serde::Deserialize;
use serde_json::json;
use std::path::PathBuf;

const USAGE: &str = "lib_build CONFIG.json [--stage statistics|edges] [--shard I/K | --merge FILE…]";

/// The keys of `lib_build` beyond the shared [`BuildKeys`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Extra {
    /// Split every pass over the ranks of `mpirun` (feature `mpi`).
    #[serde(default)]
    distributed: bool,
    /// How a distributed run splits the edges: `"rows"` (default: each rank its rows, partial
    /// sums merged) or `"outputs"` (each rank its output directions over all rows).
    #[serde(default)]
    edge_split: Option<String>,
    /// rib's stochastic sources: the basis's sums over output positions and directions, the
    /// edges' sum over output positions (`None`: exact).
    #[serde(default)]
    n_stochastic_sources_basis_pos: Option<usize>,
    #[serde(default)]
    n_stochastic_sources_basis_hidden: Option<usize>,
    #[serde(default)]
    n_stochastic_sources_edges: Option<usize>,
    /// Seed of the stochastic sources (rib's `seed`).
    #[serde(default)]
    seed: u64,
}

/// The keys of [`Extra`] (split off the shared keys when the config is read).
const EXTRA_KEYS: [&str; 6] = [
    "distributed",
    "edge_split",
    "n_stochastic_sources_basis_pos",
    "n_stochastic_sources_basis_hidden",
    "n_stochastic_sources_edges",
    "seed",
];

fn main() {
    common::start_build_process();
    common::exit_on_error(run());
}

/// What every mode needs.
struct Job {
    keys: BuildKeys,
    dir: PathBuf,
    config: LibConfig,
    edge_formula: Option<EdgeFormula>,
    /// How the edges' Jacobians are summed (stochastic sources or exact).
    edge_path: JacobianPath,
    /// The model: an MLP, or a transformer with `model_config`.
    net: Box<dyn Network + Send>,
    /// The transformer keys, for the fingerprints of file-based runs (`Value::Null` for an MLP).
    transformer_keys: serde_json::Value,
    /// The rows, streamed from their file (an MLP's) or in memory (a transformer's tokens).
    inputs: Box<dyn ActivationSampler>,
    out: PathBuf,
    phases: Phases,
}

fn run() -> AnyResult<()> {
    let cli = common::parse_cli(USAGE, true)?;
    let mut phases = Phases::start();
    let (keys, transformer, extra, dir): (BuildKeys, _, Extra, _) = read_build_config(USAGE, &EXTRA_KEYS)?;
    let mut config = keys.lib_config()?;
    let edge_formula = keys.edge_formula.as_deref().map(EdgeFormula::from_name).transpose()?;
    let (model, inputs_path) = keys.load_model(&transformer, &dir)?;
    let inputs = model.open_inputs(&inputs_path)?;
    let (net, mut transformer_keys) = (model.into_network(), transformer.fingerprint(&dir));
    let (basis_pos, basis_hidden) = (extra.n_stochastic_sources_basis_pos, extra.n_stochastic_sources_basis_hidden);
    if basis_pos.is_some() || basis_hidden.is_some() {
        let sources = StochasticSources { positions: basis_pos, hidden: basis_hidden, seed: extra.seed };
        config.jacobian_path = JacobianPath::Stochastic(sources);
        config.validate()?;
    }
    let edge_path = match extra.n_stochastic_sources_edges {
        Some(n) => JacobianPath::Stochastic(StochasticSources { positions: Some(n), hidden: None, seed: extra.seed }),
        None => JacobianPath::Auto,
    };
    if edge_path != JacobianPath::Auto || config.jacobian_path != JacobianPath::Auto {
        let sources = json!({"basis": config.jacobian_path, "edges": edge_path});
        transformer_keys = json!({"model": transformer_keys, "sources": sources});
    }
    let out = keys.out_dir(&dir);
    phases.lap("load");
    let job = Job { keys, dir, config, edge_formula, edge_path, net, transformer_keys, inputs, out, phases };

    let stage = match cli.stage.as_deref() {
        None | Some("statistics" | "stats") => Stage::Statistics,
        Some("edges") => Stage::Edges,
        Some(other) => return Err(format!("unknown --stage `{other}`: expected statistics or edges").into()),
    };
    if extra.distributed && cli.mode != Mode::Whole {
        return Err(
            "\"distributed\": true (MPI) and --shard/--merge (files) are two ways to split a run; use one".into()
        );
    }
    let split_outputs = match extra.edge_split.as_deref() {
        None | Some("rows") => false,
        Some("outputs") if extra.distributed => true,
        Some("outputs") => return Err("\"edge_split\": \"outputs\" is for \"distributed\": true runs".into()),
        Some(other) => return Err(format!("unknown edge_split `{other}`: expected rows or outputs").into()),
    };
    if cli.mode == Mode::Whole && cli.stage.is_some() {
        return Err("--stage is for file-based runs (--shard I/K or --merge FILE…)".into());
    }
    if stage == Stage::Edges && job.edge_formula.is_none() {
        return Err("--stage edges needs `edge_formula` in the config".into());
    }
    match cli.mode {
        Mode::Whole if extra.distributed => {
            let comm = common::communicator()?;
            whole(job, Some(comm.as_ref()), split_outputs)
        }
        Mode::Whole => whole(job, None, false),
        Mode::Shard { index, count } => shard(job, stage, index, count),
        Mode::Merge(files) => merge(job, stage, &files),
    }
}

/// The fingerprint of a stage: the shared keys and files, and the transformer and source keys.
fn stage_fingerprint(job: &Job, stage: &str) -> AnyResult<degeneracy::distributed::Fingerprint> {
    let fp = job.keys.fingerprint(&job.dir, stage)?;
    Ok(if job.transformer_keys.is_null() { fp } else { fp.json("transformer", &job.transformer_keys)? })
}

#[derive(Clone, Copy, PartialEq)]
enum Stage {
    Statistics,
    Edges,
}

/// The whole build in this process, or as one rank of `comm` (rank 0 writes); edges over this
/// rank's rows, or with `split_outputs` over its output directions.
fn whole(mut job: Job, comm: Option<&dyn Communicator>, split_outputs: bool) -> AnyResult<()> {
    let shard = comm.map(|c| Shard::of_rank(&*job.inputs, c)).transpose()?;
    let rows: &dyn ActivationSampler = match &shard {
        Some(s) => s,
        None => &*job.inputs,
    };
    // Rank 0 writes; it checks its out_dir before any computation.
    let outputs = comm.is_none_or(|c| c.rank() == 0).then(|| Outputs::prepare(&job.out, &[])).transpose()?;
    let (mlp, config): (&dyn Network, _) = (&*job.net, &job.config);
    let nodes = config.node_indices(mlp)?;
    let stats = NodeStatistics::collect(mlp, rows, &nodes, config.statistics_quadrature(), config.batch_size)?;
    job.phases.lap("grams");
    let bases = build_bases(mlp, rows, &stats, config)?;
    job.phases.lap("bases");
    let edges = match job.edge_formula {
        Some(formula) => {
            let edge_config = edge_config(formula, config, job.edge_path);
            let edges = match comm {
                Some(c) if split_outputs => compute_edges_by_outputs(c, mlp, &*job.inputs, &bases, &edge_config)?,
                _ => compute_edges(mlp, rows, &bases, &edge_config)?,
            };
            job.phases.lap("edges");
            Some(edges)
        }
        None => None,
    };
    if let Some(outputs) = outputs {
        let ranks = comm.map_or(1, |c| c.size());
        let split = if split_outputs { "outputs" } else { "rows" };
        write_outputs(&mut job, outputs, &bases, edges.as_deref(), json!({"ranks": ranks, "edge_split": split}))?;
    }
    Ok(())
}

fn edge_config(formula: EdgeFormula, config: &LibConfig, path: JacobianPath) -> EdgeConfig {
    EdgeConfig { formula, quadrature: config.quadrature, batch_size: config.batch_size, path }
}

/// The library's staged build of this run, its shard files in `out_dir/shards`.
fn staged(job: &Job) -> AnyResult<StagedBuild<'_>> {
    let run = stage_fingerprint(job, "lib_build")?.finish();
    let edges = job.edge_formula.map(|f| edge_config(f, &job.config, job.edge_path));
    StagedBuild::new(&*job.net, job.config.clone(), edges, &run, shard_dir(&job.out)?).map_err(|e| match e {
        degeneracy::Error::InvalidParameter { ref name, .. } if name == "basis_formula" => {
            format!("{e} (in lib_build: \"distributed\": true with mpirun)").into()
        }
        other => other.into(),
    })
}

/// One worker of a file-based run: its shard's state to `out_dir/shards/`.
fn shard(mut job: Job, stage: Stage, index: usize, count: usize) -> AnyResult<()> {
    let path = match stage {
        Stage::Statistics => staged(&job)?.statistics_shard(&*job.inputs, index, count)?,
        Stage::Edges => staged(&job)?.edges_shard(&*job.inputs, index, count).map_err(with_hint)?,
    };
    job.phases.lap("shard");
    let rows = Shard::new(&*job.inputs, index, count)?.rows();
    println!("rows {rows:?} of {}: wrote {}", job.inputs.n_samples(), path.display());
    Ok(())
}

/// Points a missing `bases.shard` to the stage that writes it.
fn with_hint(e: degeneracy::Error) -> Box<dyn std::error::Error> {
    format!("{e} (run --stage statistics --merge first)").into()
}

/// The merge step of a file-based run.
fn merge(mut job: Job, stage: Stage, files: &[PathBuf]) -> AnyResult<()> {
    match stage {
        Stage::Statistics => {
            let outputs = Outputs::prepare(&job.out, &["shards"])?;
            let bases = staged(&job)?.merge_statistics(&*job.inputs, files)?;
            job.phases.lap("bases");
            if job.edge_formula.is_some() {
                println!("wrote the bases; next: --stage edges --shard I/K on each worker, then --stage edges --merge");
            }
            write_outputs(&mut job, outputs, &bases, None, json!({"stage": "statistics", "shards": files.len()}))
        }
        Stage::Edges => {
            let outputs = Outputs::prepare(&job.out, &["shards"])?;
            let build = staged(&job)?;
            let bases = build.bases().map_err(with_hint)?;
            let edges = build.merge_edges(files)?;
            drop(build);
            job.phases.lap("merge");
            write_outputs(&mut job, outputs, &bases, Some(&edges), json!({"stage": "edges", "shards": files.len()}))
        }
    }
}

/// The basis files, and with edges the `E_hat` files and `modules.json`; then `report.json`
/// (with `split` describing how the run was split).
fn write_outputs(
    job: &mut Job,
    mut outputs: Outputs,
    bases: &[NodeBasis],
    edges: Option<&[Edges]>,
    split: serde_json::Value,
) -> AnyResult<()> {
    let mut files: Vec<(String, NpyOut)> = Vec::new();
    let mut report_nodes = Vec::new();
    for (k, b) in bases.iter().enumerate() {
        let name = format!("{k}_{}", file_node(&b.node));
        if b.is_rotated() {
            files.push((format!("C_{name}.npy"), NpyOut::Matrix(b.c().clone())));
            files.push((format!("C_pinv_{name}.npy"), NpyOut::Matrix(b.c_pinv().clone())));
            files.push((format!("gram_eigvals_{name}.npy"), NpyOut::Vector(b.gram_eigenvalues.clone())));
            if let Some(l) = &b.lambda {
                files.push((format!("Lambda_{name}.npy"), NpyOut::Vector(l.clone())));
            }
        }
        report_nodes.push(json!({
            "index": k,
            "node_layer": b.node,
            "orig_dim": b.orig_dim(),
            "gram_kept": b.gram_kept.len(),
            "dim": b.dim(),
            "rotated": b.is_rotated(),
        }));
    }
    let mut modules_json = serde_json::Value::Null;
    if let Some(edges) = edges {
        for (k, e) in edges.iter().enumerate() {
            let name = format!("E_hat_{k}_{}__{}.npy", file_node(&e.in_node), file_node(&e.out_node));
            files.push((name, NpyOut::Matrix(e.e_hat.clone())));
        }
        let graph = InteractionGraph::build(bases, edges, &EdgeNorm::Sqrt, true)?;
        let modules = find_modules(&graph, &LeidenConfig::default())?;
        job.phases.lap("modules");
        let per_node: serde_json::Map<String, serde_json::Value> =
            modules.layers.iter().zip(&modules.membership).map(|(n, m)| (n.clone(), json!(m))).collect();
        modules_json = json!({
            "nodes": per_node,
            "Q": modules.modularity,
            "quality": modules.quality,
            "n_modules": modules.n_modules,
            "n_nonsingleton": modules.n_nonsingleton,
            "sizes": modules.sizes,
            "spans": modules.spans,
            "within_module_fraction": modules.within_module_fraction,
            "settings": {"edge_norm": "sqrt", "resolution": 1.0, "seed": 0, "include_output": true},
        });
    }
    outputs.npy(&files)?;
    if !modules_json.is_null() {
        outputs.json("modules.json", &modules_json)?;
    }
    job.phases.lap("write");
    let report = json!({
        "basis_formula": job.config.basis_formula.name(),
        "n_samples": job.inputs.n_samples(),
        "nodes": report_nodes,
        "peak_memory_bytes": common::peak_memory_bytes(),
        "seconds": job.phases.to_json(),
        "library_seconds": degeneracy::profile::phases()
            .iter()
            .map(|p| (p.name.to_string(), json!(p.seconds)))
            .collect::<serde_json::Map<_, _>>(),
        "split": split,
    });
    outputs.json("report.json", &report)?;
    outputs.commit()
}
