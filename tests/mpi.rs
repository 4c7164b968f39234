//! The estimators under `mpirun -n 1, 2, 4` (feature `mpi`): every rank's Grams, Λ, edges and
//! diagnostics equal a single process's within 1e-12 relative, and the LLC report is identical.
//!
//! `cargo test --release --features mpi --test mpi`. A plain `main` (no libtest harness): run
//! without arguments it is the driver (single-process reference, then `mpirun` on this same
//! executable); with `DEGENERACY_MPI_OUT` set it is one MPI rank.

mod common;
#[path = "common/pipeline.rs"]
mod pipeline;

use degeneracy::distributed::{Communicator, MpiCommunicator};
use pipeline::{Results, pipeline};
use std::path::{Path, PathBuf};
use std::process::Command;

const OUT_VAR: &str = "DEGENERACY_MPI_OUT";

fn main() {
    match std::env::var_os(OUT_VAR) {
        Some(dir) => rank(Path::new(&dir)),
        None => driver(),
    }
}

/// One MPI rank: the pipeline over this rank's shard; results to `dir/rank_R.json`.
fn rank(dir: &Path) {
    let comm = MpiCommunicator::init().expect("MPI initialises");
    let results = pipeline(Some(&comm));
    let text = serde_json::to_string(&results).unwrap();
    std::fs::write(dir.join(format!("rank_{}.json", comm.rank())), text).unwrap();
}

/// `mpirun --oversubscribe -n N PROGRAM ARGS` (as root too), with extra environment.
pub fn mpirun(n: usize, program: &Path, args: &[&str], env: &[(&str, &Path)]) -> Result<(), String> {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "--bind-to", "none", "-n", &n.to_string()])
        .arg(program)
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().map_err(|e| format!("cannot run mpirun (install openmpi-bin): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mpirun -n {n} {} failed ({}):\n{}\n{}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn pipeline_under_mpirun(n: usize, single: &Results) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    mpirun(n, &exe, &[], &[(OUT_VAR, dir.path())])?;
    let read = |r: usize| -> Result<Results, String> {
        let path: PathBuf = dir.path().join(format!("rank_{r}.json"));
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| e.to_string())
    };
    let first = read(0)?;
    for r in 1..n {
        if read(r)? != first {
            return Err(format!("rank {r} of {n} holds other results than rank 0"));
        }
    }
    let (worst, name) = first.max_rel_diff(single)?;
    if worst > 1e-12 {
        return Err(format!("{n} ranks: max relative difference {worst:e} at {name}"));
    }
    Ok(format!("mpirun -n {n}: every rank equal; max relative difference to one process {worst:.2e} ({name})"))
}

/// The examples built with the feature (`cargo build --features mpi`), by name.
fn build_examples(names: &[&str]) -> Result<Vec<PathBuf>, String> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--release", "--features", "mpi", "--message-format=json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    for n in names {
        cmd.args(["--example", n]);
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("cargo build failed:\n{}", String::from_utf8_lossy(&out.stderr)));
    }
    let mut found = vec![None; names.len()];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if let (Some(exe), Some(name)) = (msg["executable"].as_str(), msg["target"]["name"].as_str()) {
            if let Some(i) = names.iter().position(|n| *n == name) {
                found[i] = Some(PathBuf::from(exe));
            }
        }
    }
    found.into_iter().zip(names).map(|(f, n)| f.ok_or(format!("no executable for {n}"))).collect()
}

fn run_plain(program: &Path, config: &Path) -> Result<(), String> {
    let out = Command::new(program).arg(config).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{} failed: {}", program.display(), String::from_utf8_lossy(&out.stderr)))
    }
}

fn abs(p: PathBuf) -> String {
    p.canonicalize().unwrap().display().to_string()
}

/// `max |a − b| / max |b|` of two `.npy` files.
fn npy_diff(a: &Path, b: &Path) -> Result<f64, String> {
    let read = |p: &Path| degeneracy::io::read_matrix(p).map_err(|e| e.to_string());
    let (x, y) = (read(a)?, read(b)?);
    if x.shape() != y.shape() {
        return Err(format!("{}: shape {:?} vs {:?}", a.display(), x.shape(), y.shape()));
    }
    Ok(common::rel_max_diff(&x, &y))
}

/// `lib_build` with `"distributed": true` under `mpirun -n N` writes the single-process files.
fn lib_build_under_mpirun(exe: &Path, ranks: &[usize]) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let case = common::fixtures().join("digits_mlp");
    let config = |out: &str, distributed: bool, edge_split: &str| {
        let v = serde_json::json!({
            "model": abs(case.join("model.safetensors")), "inputs": abs(case.join("inputs.npy")),
            "node_layers": ["layers.0", "layers.1", "layers.2", "output"], "basis_formula": "jacobian",
            "edge_formula": "squared", "batch_size": 1024, "out_dir": out, "distributed": distributed,
            "edge_split": edge_split,
        });
        let path = dir.path().join(format!("{out}.json"));
        std::fs::write(&path, v.to_string()).unwrap();
        path
    };
    run_plain(exe, &config("single", false, "rows"))?;
    let single = dir.path().join("single");
    let mut notes = Vec::new();
    for (&n, split) in ranks.iter().flat_map(|n| [(n, "rows"), (n, "outputs")]) {
        let out = format!("ranks_{n}_{split}");
        mpirun(n, exe, &[config(&out, true, split).to_str().unwrap()], &[])?;
        let mut worst: (f64, String) = (0.0, String::new());
        let mut files = 0;
        for entry in std::fs::read_dir(&single).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let invariant = ["Lambda_", "gram_eigvals_", "E_hat_"].iter().any(|p| name.starts_with(p));
            if invariant {
                let d = npy_diff(&dir.path().join(&out).join(&name), &single.join(&name))?;
                files += 1;
                if d > worst.0 {
                    worst = (d, name);
                }
            }
        }
        if files != 9 || worst.0 > 1e-12 {
            return Err(format!("{n} ranks: {files} files, max relative difference {:e} ({})", worst.0, worst.1));
        }
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(&out).join("report.json")).unwrap()).unwrap();
        if report["split"]["ranks"] != n || report["split"]["edge_split"] != split {
            return Err(format!("report.json says {}", report["split"]));
        }
        notes.push(format!("{n} ranks by {split} {:.1e} ({})", worst.0, worst.1));
    }
    Ok(format!("lib_build distributed: Lambda, gram_eigvals, E_hat vs one process: {}", notes.join(", ")))
}

/// `llc` with `"distributed": true` under `mpirun -n N` writes the single-process traces bit for bit.
fn llc_under_mpirun(exe: &Path, ranks: &[usize]) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let case = common::fixtures().join("llc_dln");
    let config = |out: &str, distributed: bool| {
        let v = serde_json::json!({
            "model": abs(case.join("model.safetensors")), "bias": false, "activation": "identity",
            "inputs": abs(case.join("inputs.npy")), "targets": abs(case.join("targets.npy")), "loss": "mse",
            "lr": 1e-4, "batch_size": 500, "num_chains": 5, "num_draws": 100, "seed": 1, "out_dir": out,
            "distributed": distributed,
        });
        let path = dir.path().join(format!("{out}.json"));
        std::fs::write(&path, v.to_string()).unwrap();
        path
    };
    run_plain(exe, &config("single", false))?;
    let single = dir.path().join("single");
    let summary = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("summary.json")).unwrap()).unwrap()
    };
    for &n in ranks {
        let out = format!("ranks_{n}");
        mpirun(n, exe, &[config(&out, true).to_str().unwrap()], &[])?;
        let d = dir.path().join(&out);
        for f in ["loss_trace.npy", "llc_trace_instantaneous.npy", "llc_trace_running_mean.npy", "llc_per_chain.npy"] {
            if std::fs::read(d.join(f)).unwrap() != std::fs::read(single.join(f)).unwrap() {
                return Err(format!("{n} ranks: {f} differs from one process's"));
            }
        }
        let (a, b) = (summary(&d), summary(&single));
        for key in ["llc_mean", "llc_std", "llc_per_chain", "init_loss_per_chain", "diagnostics", "warnings"] {
            if a[key] != b[key] {
                return Err(format!("{n} ranks: summary.json `{key}` differs: {} vs {}", a[key], b[key]));
            }
        }
    }
    Ok(format!("llc distributed on {ranks:?} ranks: traces and summary identical to one process (5 chains)"))
}

fn main_checks() -> Vec<(String, Result<String, String>)> {
    let single = pipeline(None);
    let mut checks: Vec<(String, Result<String, String>)> =
        [1, 2, 4].iter().map(|&n| (format!("pipeline_mpirun_{n}"), pipeline_under_mpirun(n, &single))).collect();
    match build_examples(&["lib_build", "llc"]) {
        Ok(exes) => {
            checks.push(("lib_build_distributed".into(), lib_build_under_mpirun(&exes[0], &[2, 4])));
            checks.push(("llc_distributed".into(), llc_under_mpirun(&exes[1], &[2, 4])));
        }
        Err(e) => checks.push(("build_examples".into(), Err(e))),
    }
    checks
}

fn driver() {
    let checks = main_checks();
    let mut failed = 0;
    for (name, result) in &checks {
        match result {
            Ok(note) => println!("test {name} ... ok\n    {note}"),
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED\n{e}");
            }
        }
    }
    println!("\nmpi: {} passed, {failed} failed", checks.len() - failed);
    if failed > 0 {
        std::process::exit(1);
    }
}
