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
//! direction, and Q). `report.json` holds the dimensions per node layer and seconds per phase.
//!
//! A transformer (`docs/math.md` §3.3): `"model_config": "model_config.json"` (a TransformerLens
//! config) marks one; `"model"` is then its TransformerLens state dict in safetensors,
//! `"inputs"` integer token ids `[n, positions]`, `"node_layers"` rib's module ids (`ln1.0`,
//! `ln2.0`, `unembed`, `output`, …), and `"last_pos_module_type"` (`add_resid1` or `unembed`)
//! keeps only the last position from that module on. `"isolate_ln_var"` (default true) keeps
//! LayerNorm variances as their own directions. rib's `"n_stochastic_sources_basis_pos"`,
//! `"n_stochastic_sources_basis_hidden"` and `"n_stochastic_sources_edges"` (with `"seed"`)
//! replace sums over output positions / directions by random sources (long contexts).
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

use common::{AnyResult, BuildKeys, Mode, NpyOut, Phases, file_node, read_build_config, shard_dir, write_json};
use degeneracy::basis::{Basis, JacobianPath, LibConfig, NodeBasis, build_bases};
use degeneracy::data::ActivationSampler;
use degeneracy::distributed::{
    Communicator, Shard, ShardHeader, compute_edges_by_outputs, merge_shard_files, read_shard_file, write_shard_file,
};
use degeneracy::estimate::{NodeStatistics, StochasticSources};
use degeneracy::graph::{
    EdgeAccumulator, EdgeConfig, EdgeFormula, EdgeNorm, Edges, InteractionGraph, LeidenConfig, accumulate_edges,
    compute_edges, find_modules,
};
use degeneracy::transformer::{LastPosModule, Transformer, read_tokens};
use degeneracy::{Matrix, Network};
use serde::Deserialize;
use serde_json::json;
use std::path::{Path, PathBuf};

const USAGE: &str = "lib_build CONFIG.json [--stage statistics|edges] [--shard I/K | --merge FILE…]";
const STATISTICS: &str = "lib_build/statistics";
const BASES: &str = "lib_build/bases";
const EDGES: &str = "lib_build/edges";

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
    /// A transformer's TransformerLens config (the model is then its state dict).
    #[serde(default)]
    model_config: Option<String>,
    /// rib's `last_pos_module_type` (transformers).
    #[serde(default)]
    last_pos_module_type: Option<String>,
    /// rib's `isolate_ln_var` (transformers; default true).
    #[serde(default)]
    isolate_ln_var: Option<bool>,
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
const EXTRA_KEYS: [&str; 9] = [
    "distributed",
    "edge_split",
    "model_config",
    "last_pos_module_type",
    "isolate_ln_var",
    "n_stochastic_sources_basis_pos",
    "n_stochastic_sources_basis_hidden",
    "n_stochastic_sources_edges",
    "seed",
];

fn main() {
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
    inputs: Matrix,
    out: PathBuf,
    phases: Phases,
}

fn run() -> AnyResult<()> {
    let cli = common::parse_cli(USAGE, true)?;
    let mut phases = Phases::start();
    let (keys, extra, dir): (BuildKeys, Extra, _) = read_build_config(USAGE, &EXTRA_KEYS)?;
    let mut config = keys.lib_config()?;
    let edge_formula = keys.edge_formula.as_deref().map(EdgeFormula::from_name).transpose()?;
    let (net, inputs, mut transformer_keys) = load_model(&keys, &extra, &dir)?;
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
    let out = keys.out_dir(&dir)?;
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

/// The MLP of `model`, or with `model_config` a transformer; its inputs; the transformer keys.
fn load_model(
    keys: &BuildKeys,
    extra: &Extra,
    dir: &Path,
) -> AnyResult<(Box<dyn Network + Send>, Matrix, serde_json::Value)> {
    let Some(model_config) = &extra.model_config else {
        for (key, set) in [
            ("last_pos_module_type", extra.last_pos_module_type.is_some()),
            ("isolate_ln_var", extra.isolate_ln_var.is_some()),
        ] {
            if set {
                return Err(format!("`{key}` is for transformers: give `model_config` too").into());
            }
        }
        let (mlp, inputs) = keys.load(dir)?;
        return Ok((Box::new(mlp), inputs, serde_json::Value::Null));
    };
    let last_pos = extra.last_pos_module_type.as_deref().map(LastPosModule::from_name).transpose()?;
    let model = Transformer::load(common::resolve(dir, model_config), common::resolve(dir, &keys.model))?
        .with_last_pos_module(last_pos)
        .with_isolate_ln_var(extra.isolate_ln_var.unwrap_or(true));
    let tokens = read_tokens(common::resolve(dir, &keys.inputs))?;
    let values = json!({
        "model_config": std::fs::read_to_string(common::resolve(dir, model_config)).unwrap_or_default(),
        "last_pos_module_type": extra.last_pos_module_type,
        "isolate_ln_var": extra.isolate_ln_var,
    });
    Ok((Box::new(model), tokens, values))
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
    let shard = comm.map(|c| Shard::of_rank(&job.inputs, c)).transpose()?;
    let rows: &dyn ActivationSampler = match &shard {
        Some(s) => s,
        None => &job.inputs,
    };
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
                Some(c) if split_outputs => compute_edges_by_outputs(c, mlp, &job.inputs, &bases, &edge_config)?,
                _ => compute_edges(mlp, rows, &bases, &edge_config)?,
            };
            job.phases.lap("edges");
            Some(edges)
        }
        None => None,
    };
    if comm.is_none_or(|c| c.rank() == 0) {
        let ranks = comm.map_or(1, |c| c.size());
        let split = if split_outputs { "outputs" } else { "rows" };
        write_outputs(&mut job, &bases, edges.as_deref(), json!({"ranks": ranks, "edge_split": split}))?;
    }
    Ok(())
}

fn edge_config(formula: EdgeFormula, config: &LibConfig, path: JacobianPath) -> EdgeConfig {
    EdgeConfig { formula, quadrature: config.quadrature, batch_size: config.batch_size, path }
}

fn bases_file(out: &Path) -> AnyResult<PathBuf> {
    Ok(shard_dir(out)?.join("bases.shard"))
}

/// The bases written by the statistics merge, checked against this run's config and data.
fn read_bases(job: &Job) -> AnyResult<(PathBuf, Vec<NodeBasis>)> {
    let path = bases_file(&job.out)?;
    let fingerprint = stage_fingerprint(job, BASES)?.finish();
    let (_, bases) = read_shard_file::<Vec<NodeBasis>>(&path, BASES, &fingerprint)
        .map_err(|e| format!("{e} (run --stage statistics --merge first)"))?;
    Ok((path, bases))
}

fn edges_fingerprint(job: &Job, bases: &Path) -> AnyResult<String> {
    Ok(stage_fingerprint(job, EDGES)?.file("bases", bases)?.finish())
}

/// One worker of a file-based run: its shard's state to `out_dir/shards/`.
fn shard(mut job: Job, stage: Stage, index: usize, count: usize) -> AnyResult<()> {
    let rows = Shard::new(&job.inputs, index, count)?;
    let total = job.inputs.nrows();
    let (mlp, config): (&dyn Network, _) = (&*job.net, &job.config);
    let path = match stage {
        Stage::Statistics => {
            let passes = config.extra_passes(mlp)?;
            if passes > 0 {
                return Err(format!(
                    "basis_formula `{}` on these node layers needs {passes} more data pass(es) after the \
                     statistics; file-based shards support one pass per stage (jacobian on consecutive node \
                     layers, svd, neuron): use \"distributed\": true (MPI) or one process",
                    config.basis_formula.name()
                )
                .into());
            }
            let nodes = config.node_indices(mlp)?;
            let stats = NodeStatistics::collect(mlp, &rows, &nodes, config.statistics_quadrature(), config.batch_size)?;
            let fingerprint = stage_fingerprint(&job, STATISTICS)?.finish();
            let header = ShardHeader::new(STATISTICS, fingerprint, index, count, rows.rows(), total);
            let path = shard_dir(&job.out)?.join(format!("statistics_{index}_of_{count}.shard"));
            write_shard_file(&path, &header, &stats)?;
            path
        }
        Stage::Edges => {
            let (bases_path, bases) = read_bases(&job)?;
            let formula = job.edge_formula.expect("checked in run");
            let accs = accumulate_edges(mlp, &rows, &bases, &edge_config(formula, config, job.edge_path))?;
            let header =
                ShardHeader::new(EDGES, edges_fingerprint(&job, &bases_path)?, index, count, rows.rows(), total);
            let path = shard_dir(&job.out)?.join(format!("edges_{index}_of_{count}.shard"));
            write_shard_file(&path, &header, &accs)?;
            path
        }
    };
    job.phases.lap("shard");
    println!("rows {:?} of {total}: wrote {}", rows.rows(), path.display());
    Ok(())
}

/// The merge step of a file-based run.
fn merge(mut job: Job, stage: Stage, files: &[PathBuf]) -> AnyResult<()> {
    match stage {
        Stage::Statistics => {
            let fingerprint = stage_fingerprint(&job, STATISTICS)?.finish();
            let (stats, headers) =
                merge_shard_files::<NodeStatistics>(files, STATISTICS, &fingerprint, |a, b| a.merge(&b))?;
            job.phases.lap("merge");
            let bases = build_bases(&*job.net, &job.inputs, &stats, &job.config)?;
            job.phases.lap("bases");
            if job.edge_formula.is_some() {
                let path = bases_file(&job.out)?;
                let fingerprint = stage_fingerprint(&job, BASES)?.finish();
                let n = job.inputs.nrows();
                write_shard_file(&path, &ShardHeader::new(BASES, fingerprint, 0, 1, 0..n, n), &bases)?;
                println!(
                    "wrote {}; next: --stage edges --shard I/K on each worker, then --stage edges --merge",
                    path.display()
                );
            }
            write_outputs(&mut job, &bases, None, json!({"stage": "statistics", "shards": headers.len()}))
        }
        Stage::Edges => {
            let (bases_path, bases) = read_bases(&job)?;
            let fingerprint = edges_fingerprint(&job, &bases_path)?;
            let (accs, headers) = merge_shard_files::<Vec<EdgeAccumulator>>(files, EDGES, &fingerprint, |a, b| {
                if a.len() != b.len() {
                    return Err(degeneracy::Error::InvalidParameter {
                        name: "edge shards".into(),
                        value: b.len().to_string(),
                        reason: format!("expected {} edge matrices", a.len()),
                    });
                }
                a.iter_mut().zip(&b).try_for_each(|(a, b)| a.merge(b))
            })?;
            job.phases.lap("merge");
            let edges = accs
                .iter()
                .zip(bases.windows(2))
                .map(|(acc, pair)| {
                    Ok(Edges { in_node: pair[0].node.clone(), out_node: pair[1].node.clone(), e_hat: acc.finish()? })
                })
                .collect::<degeneracy::Result<Vec<Edges>>>()?;
            write_outputs(&mut job, &bases, Some(&edges), json!({"stage": "edges", "shards": headers.len()}))
        }
    }
}

/// The basis files, and with edges the `E_hat` files and `modules.json`; then `report.json`
/// (with `split` describing how the run was split).
fn write_outputs(
    job: &mut Job,
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
    let out = &job.out;
    common::write_npy_files(out, &files)?;
    if !modules_json.is_null() {
        write_json(&out.join("modules.json"), &modules_json)?;
    }
    job.phases.lap("write");
    let report = json!({
        "basis_formula": job.config.basis_formula.name(),
        "n_samples": job.inputs.nrows(),
        "nodes": report_nodes,
        "seconds": job.phases.to_json(),
        "split": split,
    });
    write_json(&out.join("report.json"), &report)?;
    Ok(())
}
