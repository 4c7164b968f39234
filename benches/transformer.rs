//! The modular-addition transformer of `../shared/fixtures/modadd_transformer`: the build phases
//! of `lib_build` (statistics, bases, edges) against rib's recorded times, the attention
//! section's batched VJP per cotangent against its forward pass, and the whole `lib_build`
//! process (build it first: `cargo build --release --example lib_build`).

mod common;

use criterion::Criterion;
use degeneracy::basis::{BasisFormula, JacobianPath, LibConfig, build_bases};
use degeneracy::estimate::{NodeStatistics, Quadrature};
use degeneracy::graph::{EdgeConfig, compute_edges};
use degeneracy::transformer::{LastPosModule, Transformer, read_tokens};
use degeneracy::{Matrix, Network};
use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;

/// rib's recorded `rib_build` of this model on 2 threads (fixture README): bases, edges, whole.
const RIB_BASES_S: f64 = 14.4;
const RIB_EDGES_S: f64 = 13.5;
const RIB_TOTAL_MIN_S: f64 = 24.8;

fn fixture() -> PathBuf {
    std::env::var_os("DEGENERACY_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"))
        .join("modadd_transformer")
}

fn config() -> LibConfig {
    LibConfig {
        basis_formula: BasisFormula::Jacobian,
        center: true,
        truncation_threshold: 1e-15,
        rotate_final_node_layer: false,
        quadrature: Quadrature::Gradient,
        batch_size: 256,
        node_layers: Some(["ln1.0", "ln2.0", "unembed", "output"].map(String::from).to_vec()),
        jacobian_path: JacobianPath::Auto,
    }
}

fn build_phases(c: &mut Criterion, model: &Transformer, tokens: &Matrix) {
    let lib = config();
    let nodes = lib.node_indices(model).unwrap();
    let q = lib.statistics_quadrature();
    let stats = NodeStatistics::collect(model, tokens, &nodes, q, lib.batch_size).unwrap();
    let bases = build_bases(model, tokens, &stats, &lib).unwrap();
    let edge_config = EdgeConfig { batch_size: lib.batch_size, ..EdgeConfig::default() };
    let mut group = c.benchmark_group("transformer_build");
    group.sample_size(10);
    group.bench_function("statistics", |b| {
        b.iter(|| NodeStatistics::collect(model, tokens, &nodes, q, lib.batch_size).unwrap())
    });
    group.bench_function("bases", |b| b.iter(|| build_bases(model, tokens, black_box(&stats), &lib).unwrap()));
    group
        .bench_function("edges", |b| b.iter(|| compute_edges(model, tokens, black_box(&bases), &edge_config).unwrap()));
    group.finish();
}

/// The attention section `ln1.0 → ln2.0` on 256 samples: its linearisation (the forward pass
/// and what the VJPs keep) and the VJP of the 111 cotangents of the fixture's `ln2.0` basis
/// (one cotangent block per output direction, the same for every sample, as the estimators
/// apply them).
fn attention_vjp(c: &mut Criterion, model: &Transformer, tokens: &Matrix) -> usize {
    let (k, next) = (model.node_index("ln1.0").unwrap(), model.node_index("ln2.0").unwrap());
    let section = model.section(k, next).unwrap();
    let x = tokens.rows(0..256).to_owned();
    let mut acts = vec![Matrix::default()];
    model.forward_nodes(x.view(), &[k], &mut acts).unwrap();
    let f = acts.pop().unwrap();
    let dirs = 111;
    let width = section.output().width;
    // Cotangent block i: direction i of a fixed pseudo-random basis, at the output position.
    let dir = |i: usize, o: usize| (((i * 131 + o * 31) % 61) as f64 - 30.0) / 30.0;
    let cot = Matrix::from_fn(dirs * 256, width, |r, o| dir(r / 256, o));
    let mut group = c.benchmark_group("transformer_attention");
    group.sample_size(20);
    group.bench_function("linearize_256", |b| b.iter(|| section.linearize(black_box(f.view())).unwrap()));
    let lin = section.linearize(f.view()).unwrap();
    let mut gx = Matrix::default();
    lin.vjp(cot.rows(0..256), &mut gx).unwrap(); // warm the precomputed vectors
    group.bench_function("vjp_256x111", |b| b.iter(|| lin.vjp(black_box(cot.view()), &mut gx).unwrap()));
    group.finish();
    dirs
}

fn lib_build_process(c: &mut Criterion, config: &PathBuf, exe: &PathBuf) {
    let mut group = c.benchmark_group("transformer_process");
    group.sample_size(10);
    group.bench_function("lib_build_jacobian_squared", |b| {
        b.iter(|| assert!(Command::new(exe).arg(config).status().unwrap().success()))
    });
    group.finish();
}

fn main() {
    let dir = fixture();
    if !dir.is_dir() {
        println!("transformer benches skipped: no fixture at {} (set DEGENERACY_FIXTURES)", dir.display());
        return;
    }
    let model = Transformer::load(dir.join("model_config.json"), dir.join("model.safetensors"))
        .unwrap()
        .with_last_pos_module(Some(LastPosModule::AddResid1));
    let tokens = read_tokens(dir.join("tokens.npy")).unwrap();
    let mut c = Criterion::default().configure_from_args();
    build_phases(&mut c, &model, &tokens);
    let dirs = attention_vjp(&mut c, &model, &tokens);

    let exe = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/examples/lib_build");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("modadd.json");
    let job = serde_json::json!({
        "model": dir.join("model.safetensors"), "model_config": dir.join("model_config.json"),
        "inputs": dir.join("tokens.npy"), "last_pos_module_type": "add_resid1",
        "node_layers": ["ln1.0", "ln2.0", "unembed", "output"], "basis_formula": "jacobian",
        "edge_formula": "squared", "integration_method": "gradient", "center": true,
        "truncation_threshold": 1e-15, "batch_size": 256, "out_dir": tmp.path().join("out"),
    });
    std::fs::write(&cfg, job.to_string()).unwrap();
    let have_exe = exe.exists();
    if have_exe {
        lib_build_process(&mut c, &cfg, &exe);
    }
    c.final_summary();

    let ms = |g: &str, b: &str| common::median_ns(g, b).map(|t| t / 1e6);
    println!("\nmodadd transformer build vs rib's recorded phases (2 threads)");
    for (phase, rib) in [("statistics", None), ("bases", Some(RIB_BASES_S)), ("edges", Some(RIB_EDGES_S))] {
        if let Some(t) = ms("transformer_build", phase) {
            match rib {
                Some(r) => {
                    println!("  {phase:<11} {t:9.1} ms   rib {:7.0} ms   speed-up {:5.1}×", r * 1e3, r * 1e3 / t)
                }
                None => println!("  {phase:<11} {t:9.1} ms"),
            }
        }
    }
    if let (Some(fwd), Some(vjp)) =
        (ms("transformer_attention", "linearize_256"), ms("transformer_attention", "vjp_256x111"))
    {
        let per = vjp / dirs as f64;
        println!(
            "\nattention section ln1.0 → ln2.0, 256 samples: linearize {fwd:.2} ms, VJP {vjp:.2} ms for {dirs} \
             cotangents = {per:.3} ms each = {:.2}× the forward (target ≤ 2)",
            per / fwd
        );
    }
    match (have_exe, ms("transformer_process", "lib_build_jacobian_squared")) {
        (true, Some(t)) => println!(
            "\nlib_build whole process {:.2} s (target ≤ 2.5 s) vs rib {RIB_TOTAL_MIN_S} s: {:.1}×",
            t / 1e3,
            RIB_TOTAL_MIN_S * 1e3 / t
        ),
        _ => println!("\nlib_build process skipped: run `cargo build --release --example lib_build` first"),
    }
}
