//! The distributed paths without MPI: ranks as threads ([`LocalCommunicator`]) and shard files
//! give a single process's results (1e-12 relative; LLC reports identical), and bad shard files
//! are refused by name. The same pipeline runs under `mpirun` in `tests/mpi.rs`.

mod common;
#[path = "common/pipeline.rs"]
mod pipeline;

use degeneracy::basis::build_bases;
use degeneracy::data::{ActivationSampler, NpySampler};
use degeneracy::diagnostics::{DegeneracyStatistics, diagnose_from};
use degeneracy::distributed::{
    Communicator, Fingerprint, LocalCommunicator, Shard, ShardHeader, merge_shard_files, read_shard_file, shard_range,
    write_shard_file,
};
use degeneracy::estimate::NodeStatistics;
use degeneracy::graph::{EdgeAccumulator, Edges, accumulate_edges};
use degeneracy::llc::ChainRuns;
use degeneracy::{Error, Matrix, ShardProblem, io};
use pipeline::{
    Results, edge_config, fixture_config, load_mlp, pipeline, record_bases, record_edges, record_statistics,
};
use std::path::{Path, PathBuf};

/// Runs `f` on every rank of a group of `size` threads; results in rank order.
fn on_ranks<T: Send>(size: usize, f: impl Fn(&dyn Communicator) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = LocalCommunicator::group(size).into_iter().map(|c| s.spawn(move || f(&c))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn thread_ranks_give_the_single_process_results() {
    let single = pipeline(None);
    assert!(single.arrays.len() > 40, "{} arrays", single.arrays.len());
    for size in 1..=4 {
        let ranks = on_ranks(size, |c| pipeline(Some(c)));
        for (r, res) in ranks.iter().enumerate().skip(1) {
            assert!(res == &ranks[0], "rank {r} of {size} differs from rank 0");
        }
        let (worst, name) = ranks[0].max_rel_diff(&single).unwrap();
        println!("{size} thread ranks: max relative difference {worst:.2e} ({name})");
        assert!(worst <= 1e-12, "{size} ranks: {worst:e} at {name}");
    }
}

const FP: &str = "0123";

fn shard_path(dir: &Path, kind: &str, i: usize, k: usize) -> PathBuf {
    dir.join(format!("{kind}_{i}_of_{k}.shard"))
}

/// Writes one file per shard with `state(rows)`; returns the paths.
fn write_shards<S: serde::Serialize>(
    dir: &Path,
    kind: &str,
    x: &Matrix,
    k: usize,
    state: impl Fn(&Shard<'_>) -> S,
) -> Vec<PathBuf> {
    (0..k)
        .map(|i| {
            let shard = Shard::new(x, i, k).unwrap();
            let header = ShardHeader::new(kind, FP, i, k, shard.rows(), x.nrows());
            let path = shard_path(dir, kind, i, k);
            write_shard_file(&path, &header, &state(&shard)).unwrap();
            path
        })
        .collect()
}

#[test]
fn shard_files_give_the_single_process_results() {
    let (mlp, x) = load_mlp("digits_mlp");
    let config = fixture_config("digits_mlp/jacobian_squared");
    let nodes = config.node_indices(&mlp).unwrap();
    let q = config.statistics_quadrature();
    let edge_cfg = edge_config("squared", &config);
    let (estimator, model, w) = pipeline::llc_dln();

    let record = |stats: &NodeStatistics, edges: &[Edges], diag: &DegeneracyStatistics, llc: String| {
        let mut r = Results::default();
        record_statistics(&mut r, "digits", stats);
        let bases = build_bases(&mlp, &x, stats, &config).unwrap();
        record_bases(&mut r, "digits", &bases);
        record_edges(&mut r, "digits", edges);
        let d = diagnose_from(&mlp, diag, 1e-10).unwrap();
        for n in &d.nodes {
            r.arrays.insert(format!("{}/spectrum", n.name), n.jacobian.spectrum.clone());
            r.exact.insert(format!("{}/relu", n.name), format!("{:?}", n.relu));
        }
        r.exact.insert("llc".into(), llc);
        r
    };
    let stats = NodeStatistics::collect(&mlp, &x, &nodes, q, 1024).unwrap();
    let bases = build_bases(&mlp, &x, &stats, &config).unwrap();
    let edges = degeneracy::graph::compute_edges(&mlp, &x, &bases, &edge_cfg).unwrap();
    let diag = DegeneracyStatistics::collect(&mlp, &x, 1024).unwrap();
    let llc = serde_json::to_string(&estimator.estimate(&model, &w).unwrap()).unwrap();
    let single = record(&stats, &edges, &diag, llc);

    for k in 1..=4 {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let files = write_shards(d, "stats", &x, k, |s| NodeStatistics::collect(&mlp, s, &nodes, q, 1024).unwrap());
        let (merged, headers) = merge_shard_files::<NodeStatistics>(&files, "stats", FP, |a, b| a.merge(&b)).unwrap();
        assert_eq!(headers.iter().map(|h| h.index).collect::<Vec<_>>(), (0..k).collect::<Vec<_>>());

        // Edges with the merged statistics' bases (what the edges stage of lib_build does).
        let bases = build_bases(&mlp, &x, &merged, &config).unwrap();
        let files = write_shards(d, "edges", &x, k, |s| accumulate_edges(&mlp, s, &bases, &edge_cfg).unwrap());
        let (accs, _) = merge_shard_files::<Vec<EdgeAccumulator>>(&files, "edges", FP, |a, b| {
            a.iter_mut().zip(&b).try_for_each(|(a, b)| a.merge(b))
        })
        .unwrap();
        let merged_edges: Vec<Edges> = accs
            .iter()
            .zip(bases.windows(2))
            .map(|(acc, pair)| Edges {
                in_node: pair[0].node.clone(),
                out_node: pair[1].node.clone(),
                e_hat: acc.finish().unwrap(),
            })
            .collect();

        let files = write_shards(d, "diag", &x, k, |s| DegeneracyStatistics::collect(&mlp, s, 1024).unwrap());
        let (diag, _) = merge_shard_files::<DegeneracyStatistics>(&files, "diag", FP, |a, b| a.merge(&b)).unwrap();

        let chains = estimator.config().num_chains;
        let files: Vec<PathBuf> = (0..k)
            .map(|i| {
                let range = shard_range(chains, i, k, 1).unwrap();
                let runs = estimator.run_chains(&model, &w, range.clone()).unwrap();
                let path = shard_path(d, "chains", i, k);
                write_shard_file(&path, &ShardHeader::new("chains", FP, i, k, range, chains), &runs).unwrap();
                path
            })
            .collect();
        let (runs, _) = merge_shard_files::<ChainRuns>(&files, "chains", FP, |a, b| a.merge(b)).unwrap();
        let llc = serde_json::to_string(&runs.into_report().unwrap()).unwrap();

        let (worst, name) = record(&merged, &merged_edges, &diag, llc).max_rel_diff(&single).unwrap();
        println!("{k} shard files: max relative difference {worst:.2e} ({name})");
        assert!(worst <= 1e-12, "{k} shards: {worst:e} at {name}");
    }
}

/// The `ShardProblem` of an `Error::Shard` for `path`, or a panic naming what came instead.
fn problem_of(r: Result<(f64, Vec<ShardHeader>), Error>, path: &Path) -> ShardProblem {
    match r {
        Err(Error::Shard { path: p, problem }) => {
            assert_eq!(p, path, "the error names the offending file");
            problem
        }
        other => panic!("expected a shard error for {}, got {other:?}", path.display()),
    }
}

#[test]
fn bad_shard_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write = |name: &str, h: ShardHeader, v: f64| {
        let p = d.join(name);
        write_shard_file(&p, &h, &v).unwrap();
        p
    };
    let h = |i: usize, k: usize, r: std::ops::Range<usize>| ShardHeader::new("sum", FP, i, k, r, 30);
    let a = write("a", h(0, 3, 0..10), 1.0);
    let b = write("b", h(1, 3, 10..20), 2.0);
    let c = write("c", h(2, 3, 20..30), 3.0);
    let merge = |paths: &[&PathBuf]| {
        let paths: Vec<PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
        merge_shard_files::<f64>(&paths, "sum", FP, |x, y| {
            *x += y;
            Ok(())
        })
    };
    let (total, headers) = merge(&[&c, &a, &b]).unwrap();
    assert_eq!(total, 6.0, "any order of files, merged in shard order");
    assert_eq!(headers[2].range(), 20..30);

    // Truncated payload, and a file cut inside its header.
    let bytes = std::fs::read(&b).unwrap();
    let cut = d.join("b_cut");
    std::fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
    assert!(matches!(problem_of(merge(&[&a, &cut, &c]), &cut), ShardProblem::Truncated { .. }));
    std::fs::write(&cut, &bytes[..25]).unwrap();
    assert!(matches!(problem_of(merge(&[&a, &cut, &c]), &cut), ShardProblem::HeaderTruncated { found: 25 }));
    // A flipped payload byte.
    let mut flipped = bytes.clone();
    *flipped.last_mut().unwrap() ^= 1;
    std::fs::write(&cut, &flipped).unwrap();
    assert!(matches!(problem_of(merge(&[&a, &cut, &c]), &cut), ShardProblem::Checksum));
    // Not a shard file at all.
    std::fs::write(&cut, b"C_0_layers_0.npy\n").unwrap();
    assert!(matches!(problem_of(merge(&[&a, &cut, &c]), &cut), ShardProblem::NotAShard { .. }));

    // Another configuration (fingerprint), another kind of state.
    let foreign = write("foreign", ShardHeader::new("sum", "4567", 1, 3, 10..20, 30), 2.0);
    match problem_of(merge(&[&a, &foreign, &c]), &foreign) {
        ShardProblem::Fingerprint { expected, found } => assert_eq!((expected.as_str(), found.as_str()), (FP, "4567")),
        other => panic!("{other:?}"),
    }
    let kind = write("kind", ShardHeader::new("edges", FP, 1, 3, 10..20, 30), 2.0);
    assert!(matches!(problem_of(merge(&[&a, &kind, &c]), &kind), ShardProblem::Kind { .. }));

    // Duplicated and missing shards.
    let dup = write("dup", h(1, 3, 10..20), 2.0);
    match problem_of(merge(&[&a, &b, &dup, &c]), &dup) {
        ShardProblem::Duplicate { index: 1, count: 3, other } => assert_eq!(other, b),
        other => panic!("{other:?}"),
    }
    match merge(&[&a, &c]) {
        Err(Error::ShardsMissing { count: 3, missing }) => assert_eq!(missing, [1]),
        other => panic!("{other:?}"),
    }
    // Another split, another total, overlapping and short ranges.
    let other_split = write("split", h(1, 4, 10..20), 2.0);
    assert!(matches!(problem_of(merge(&[&a, &other_split, &c]), &other_split), ShardProblem::Count { .. }));
    let total = write("total", ShardHeader::new("sum", FP, 1, 3, 10..20, 31), 2.0);
    assert!(matches!(problem_of(merge(&[&a, &total, &c]), &total), ShardProblem::Total { .. }));
    let overlap = write("overlap", h(1, 3, 5..20), 2.0);
    match problem_of(merge(&[&a, &overlap, &c]), &overlap) {
        ShardProblem::Range { start: 5, expected_start: 10, .. } => {}
        other => panic!("{other:?}"),
    }
    let short = write("short", h(2, 3, 20..29), 3.0);
    assert!(matches!(problem_of(merge(&[&a, &b, &short]), &short), ShardProblem::End { end: 29, total: 30 }));
    // A state of another type.
    let text = d.join("text");
    write_shard_file(&text, &h(1, 3, 10..20), "two").unwrap();
    assert!(matches!(problem_of(merge(&[&a, &text, &c]), &text), ShardProblem::Payload { .. }));
    // The error message names the file.
    let msg = merge(&[&a, &foreign, &c]).unwrap_err().to_string();
    assert!(msg.contains("foreign") && msg.contains("fingerprint"), "{msg}");
    assert!(read_shard_file::<f64>(&a, "sum", FP).is_ok());
}

#[test]
fn shards_of_real_states_refuse_mismatches_too() {
    let (mlp, x) = load_mlp("digits_mlp");
    let dir = tempfile::tempdir().unwrap();
    let files = write_shards(dir.path(), "diag", &x, 3, |s| DegeneracyStatistics::collect(&mlp, s, 1024).unwrap());
    // Fingerprints differ with the data: the same shard from other inputs is refused.
    let fp = |m: &Matrix| Fingerprint::new("t").bytes("inputs", &serde_json::to_vec(m).unwrap()).finish();
    let mut y = x.clone();
    y[(0, 0)] += 1e-12;
    assert_ne!(fp(&x), fp(&y));
    let err = merge_shard_files::<DegeneracyStatistics>(&files[..2], "diag", FP, |a, b| a.merge(&b)).unwrap_err();
    assert!(matches!(err, Error::ShardsMissing { count: 3, .. }), "{err}");
}

#[test]
fn a_failing_rank_makes_every_rank_fail_with_its_row() {
    let (mlp, mut x) = load_mlp("digits_mlp");
    x[(700, 3)] = f64::NAN; // rank 1 of 2 holds rows 512..1024
    let out = on_ranks(2, |c| {
        let rows = Shard::of_rank(&x, c).unwrap();
        NodeStatistics::collect(&mlp, &rows, &[0, 1], None, 256)
    });
    assert!(matches!(&out[1], Err(Error::NonFinite { row: 700, col: 3, .. })), "{:?}", out[1]);
    match &out[0] {
        Err(Error::Remote { rank: 1, message }) => assert!(message.contains("row 700"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn npy_shards_seek_to_their_rows() {
    let (_, x) = load_mlp("digits_mlp");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.npy");
    io::write_matrix(&path, &x).unwrap();
    let npy = NpySampler::open(&path, 300).unwrap();
    let mut seen = Vec::new();
    for i in 0..3 {
        let shard = Shard::new(&npy, i, 3).unwrap();
        assert_eq!(shard.total_samples(), 1024);
        shard
            .for_each_chunk(&mut |first, rows| {
                for r in 0..rows.nrows() {
                    assert_eq!(rows.row(r), x.row(first + r), "row {}", first + r);
                }
                seen.push((first, rows.nrows()));
                Ok(())
            })
            .unwrap();
    }
    // Shard 0 = 0..256 (on the 256-row grid), chunks cut on the file's 300-row grid.
    assert_eq!(seen, [(0, 256), (256, 44), (300, 212), (512, 88), (600, 300), (900, 124)]);
    assert!(npy.for_each_chunk_in(10..2000, &mut |_, _| Ok(())).is_err());
}
