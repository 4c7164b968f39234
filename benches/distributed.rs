//! Strong scaling of the Gram and edge stages on one machine: `mpirun -n 1` vs `-n 2`, one
//! rayon thread per rank, on a synthetic 64 → 128 → 128 → 10 ReLU MLP and 32 768 rows.
//!
//! `cargo bench --features mpi --bench distributed` (runs `mpirun` on itself; as root set
//! `OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1`). Each stage is timed as users run
//! it (passes over `Shard::of_rank`, ending in the all-merge), and split into the local pass and
//! the all-merge (encode, tree, broadcast, decode) of its state. Medians of 3 runs on rank 0.

use degeneracy::basis::{LibConfig, build_bases};
use degeneracy::data::ActivationSampler;
use degeneracy::distributed::{Communicator, MpiCommunicator, Shard, all_merge, compute_edges_by_outputs};
use degeneracy::estimate::NodeStatistics;
use degeneracy::graph::{EdgeAccumulator, EdgeConfig, accumulate_edges, compute_edges};
use degeneracy::{Activation, Matrix, Mlp};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use std::process::Command;
use std::time::Instant;

const ROLE: &str = "DEGENERACY_BENCH_RANK";
const WIDTHS: [usize; 4] = [64, 128, 128, 10];
const ROWS: usize = 32_768;

fn main() {
    if std::env::var_os(ROLE).is_some() {
        rank();
    } else {
        driver();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed().as_secs_f64())
}

fn rank() {
    let comm = MpiCommunicator::init().unwrap();
    let mlp = Mlp::init(&WIDTHS, Activation::Relu, true, 0).unwrap();
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(1);
    let x = Matrix::from_fn(ROWS, WIDTHS[0], |_, _| StandardNormal.sample(&mut rng));
    let config = LibConfig::default();
    let nodes = config.node_indices(&mlp).unwrap();
    let q = config.statistics_quadrature();
    let edge_config = EdgeConfig::default();
    let rows = Shard::of_rank(&x, &comm).unwrap();
    let local_rows = Shard::new(&x, comm.rank(), comm.size()).unwrap();
    let stats = NodeStatistics::collect(&mlp, &rows, &nodes, q, 1024).unwrap();
    let bases = build_bases(&mlp, &rows, &stats, &config).unwrap();

    let (mut grams, mut grams_local, mut grams_merge) = (Vec::new(), Vec::new(), Vec::new());
    let (mut edges, mut edges_local, mut edges_merge) = (Vec::new(), Vec::new(), Vec::new());
    let mut edges_by_outputs = Vec::new();
    let (mut stats_bytes, mut edge_bytes) = (0, 0);
    for _ in 0..3 {
        grams.push(time(|| NodeStatistics::collect(&mlp, &rows, &nodes, q, 1024).unwrap()).1);
        let (local, t) = time(|| NodeStatistics::collect(&mlp, &local_rows, &nodes, q, 1024).unwrap());
        stats_bytes = rmp_size(&local);
        grams_local.push(t);
        grams_merge.push(time(|| all_merge(&comm, Ok(local), |a, b| a.merge(&b)).unwrap()).1);

        edges.push(time(|| compute_edges(&mlp, &rows, &bases, &edge_config).unwrap()).1);
        let (local, t) = time(|| accumulate_edges(&mlp, &local_rows, &bases, &edge_config).unwrap());
        edge_bytes = rmp_size(&local);
        edges_local.push(t);
        let merge = |a: &mut Vec<EdgeAccumulator>, b: Vec<EdgeAccumulator>| {
            a.iter_mut().zip(&b).try_for_each(|(a, b)| a.merge(b))
        };
        edges_merge.push(time(|| all_merge(&comm, Ok(local), merge).unwrap()).1);
        edges_by_outputs.push(time(|| compute_edges_by_outputs(&comm, &mlp, &x, &bases, &edge_config).unwrap()).1);
    }
    if comm.rank() == 0 {
        println!(
            "{}",
            serde_json::json!({
                "ranks": comm.size(), "threads": rayon::current_num_threads(), "rows": rows.total_samples(),
                "grams": median(grams), "grams_local": median(grams_local), "grams_merge": median(grams_merge),
                "edges": median(edges), "edges_local": median(edges_local), "edges_merge": median(edges_merge),
                "edges_by_outputs": median(edges_by_outputs),
                "statistics_state_bytes": stats_bytes, "edge_state_bytes": edge_bytes,
            })
        );
    }
}

/// The size of a state as the all-merge sends it (MessagePack with field names).
fn rmp_size<S: serde::Serialize>(s: &S) -> usize {
    rmp_serde::to_vec_named(s).unwrap().len()
}

fn driver() {
    let exe = std::env::current_exe().unwrap();
    let run = |ranks: usize, threads: usize| -> serde_json::Value {
        let out = Command::new("mpirun")
            .args(["--oversubscribe", "--bind-to", "none", "-n", &ranks.to_string()])
            .arg(&exe)
            .env(ROLE, "1")
            .env("RAYON_NUM_THREADS", threads.to_string())
            .output()
            .expect("mpirun runs (install openmpi-bin)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.lines().last().unwrap()).unwrap()
    };
    println!("{WIDTHS:?} ReLU MLP, {ROWS} rows, batch 1024; medians of 3 (seconds)");
    let results = [run(1, 1), run(2, 1), run(1, 2)];
    println!(
        "{:<24} {:>8} {:>10} {:>10} {:>8} {:>10} {:>10}",
        "", "grams", "local", "merge", "edges", "local", "merge"
    );
    for r in &results {
        let f = |k: &str| r[k].as_f64().unwrap();
        println!(
            "{:<24} {:>8.3} {:>10.3} {:>10.4} {:>8.3} {:>10.3} {:>10.4}",
            format!("{} rank(s) × {} thread(s)", r["ranks"], r["threads"]),
            f("grams"),
            f("grams_local"),
            f("grams_merge"),
            f("edges"),
            f("edges_local"),
            f("edges_merge")
        );
    }
    let t = |i: usize, k: &str| results[i][k].as_f64().unwrap();
    println!(
        "strong scaling, 2 ranks vs 1 (one thread each): Gram stage {:.2}×, edge stage {:.2}× (ideal 2), \
         edges split over output directions {:.2}×; 1 rank × 2 threads: {:.2}×, {:.2}×",
        t(0, "grams") / t(1, "grams"),
        t(0, "edges") / t(1, "edges"),
        t(0, "edges_by_outputs") / t(1, "edges_by_outputs"),
        t(0, "grams") / t(2, "grams"),
        t(0, "edges") / t(2, "edges"),
    );
    println!(
        "state sent per rank: statistics {} bytes, edges {} bytes",
        results[1]["statistics_state_bytes"], results[1]["edge_state_bytes"]
    );
}
