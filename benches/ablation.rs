//! A whole node-ablation curve against evaluating the network at each of its points one by one
//! (the ratio is printed from this run's estimates), and bisect edge ablation on the digits MLP
//! (target: all three layer pairs in < 1 s).

mod common;

use criterion::Criterion;
use degeneracy::ablation::{EdgeAblation, Eval, Midpoint, node_ablation_curve, rotation_matrix};
use degeneracy::basis::{Basis, LibConfig, NodeBasis, fit_bases, fold};
use degeneracy::graph::{EdgeConfig, Edges, compute_edges};
use degeneracy::{Activation, Dataset, Layer, Matrix, Mlp, Network, Targets, io, nn};
use std::hint::black_box;
use std::path::PathBuf;

fn digits() -> (Mlp, Dataset, Vec<NodeBasis>, Vec<Edges>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/digits_mlp");
    let mlp = io::load_mlp(dir.join("model.safetensors"), Activation::Relu).unwrap();
    let x = io::read_matrix(dir.join("inputs.npy")).unwrap();
    let labels = io::read_labels(dir.join("labels.npy")).unwrap();
    let data = Dataset::new(x, Targets::Labels(labels)).unwrap();
    let bases = fit_bases(&mlp, &data, &LibConfig::default()).unwrap();
    let edges = compute_edges(&mlp, &data, &bases, &EdgeConfig::default()).unwrap();
    (mlp, data, bases, edges)
}

/// What a hooked forward pass per point costs: the whole network on the whole dataset, with
/// `f ↦ f R_n` applied at the node.
fn one_by_one(mlp: &Mlp, data: &Dataset, basis: &NodeBasis, points: &[usize]) -> Vec<f64> {
    let k = mlp.node_index(&basis.node).unwrap();
    let section = mlp.section(k, mlp.n_layers()).unwrap();
    points
        .iter()
        .map(|&n| {
            let r = rotation_matrix(basis, n).unwrap();
            let mut h = data.inputs().clone();
            let mut z = Matrix::default();
            for (lin, act) in mlp.linears().iter().zip(mlp.activations()).take(k) {
                lin.forward(h.view(), &mut z).unwrap();
                z.as_mut_slice().iter_mut().for_each(|v| *v = act.value(*v));
                std::mem::swap(&mut h, &mut z);
            }
            let f = fold(h.view()).matmul(&r).unwrap();
            let mut y = Matrix::default();
            section.forward(f.view(), &mut y).unwrap();
            nn::accuracy(y.view(), data.labels().unwrap()).unwrap()
        })
        .collect()
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let (mlp, data, bases, edges) = digits();
    let mut group = c.benchmark_group("node_curve");
    group.sample_size(10);
    for b in bases.iter().filter(|b| b.is_rotated()) {
        let points: Vec<usize> = (0..=b.dim()).collect();
        let k = mlp.node_index(&b.node).unwrap();
        group.bench_function(format!("batched_layers.{k}"), |bench| {
            bench.iter(|| black_box(node_ablation_curve(&mlp, &data, k, b, &points, Eval::Accuracy).unwrap()))
        });
        group.bench_function(format!("one_by_one_layers.{k}"), |bench| {
            bench.iter(|| black_box(one_by_one(&mlp, &data, b, &points)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("edge_bisect");
    group.sample_size(10);
    for (name, midpoint) in [("linear", Midpoint::Linear), ("log", Midpoint::Log)] {
        group.bench_function(format!("digits_all_pairs_{name}"), |bench| {
            bench.iter(|| {
                let found: Vec<usize> = bases
                    .windows(2)
                    .zip(&edges)
                    .map(|(pair, e)| {
                        let abl = EdgeAblation::new(&mlp, &data, &pair[0], &pair[1], e, Eval::Accuracy).unwrap();
                        abl.bisect(0.001, midpoint).unwrap().n_edges_required
                    })
                    .collect();
                black_box(found)
            })
        });
    }
    group.finish();
    c.final_summary();

    println!("\nnode-ablation curve (every n in 0..=dim, accuracy, 1024 digits): batched vs one by one");
    for b in bases.iter().filter(|b| b.is_rotated()) {
        let k = mlp.node_index(&b.node).unwrap();
        let (batched, single) = (format!("batched_layers.{k}"), format!("one_by_one_layers.{k}"));
        if let (Some(t), Some(t1)) =
            (common::median_ns("node_curve", &batched), common::median_ns("node_curve", &single))
        {
            println!(
                "  layers.{k} ({:>2} points) {:8.2} ms vs {:8.2} ms   speed-up {:5.1}×",
                b.dim() + 1,
                t / 1e6,
                t1 / 1e6,
                t1 / t
            );
        }
    }
    for name in ["linear", "log"] {
        if let Some(t) = common::median_ns("edge_bisect", &format!("digits_all_pairs_{name}")) {
            println!("  edge bisect, 3 layer pairs, {name} midpoint: {:.1} ms (target < 1 s)", t / 1e6);
        }
    }
}
