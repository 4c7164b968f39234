//! The estimators on the fixtures, in one process or as one rank of a group: what the
//! distributed tests (threads, MPI, shard files) compare against a single process.

pub use crate::common::fixture_config;
use crate::common::{dln_model, fixtures};
use degeneracy::basis::{Basis, LibConfig, NodeBasis, build_bases};
use degeneracy::data::ActivationSampler;
use degeneracy::diagnostics::{DegeneracyStatistics, diagnose_from};
use degeneracy::distributed::{Communicator, Shard, compute_edges_by_outputs};
use degeneracy::estimate::NodeStatistics;
use degeneracy::graph::{EdgeConfig, EdgeFormula, Edges, compute_edges};
use degeneracy::llc::{LlcConfig, LlcEstimator, MlpLoss};
use degeneracy::{Activation, Matrix, Mlp, io};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Named results: arrays compared to a relative tolerance, texts compared exactly.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub arrays: BTreeMap<String, Vec<f64>>,
    pub exact: BTreeMap<String, String>,
}

impl Results {
    fn array(&mut self, name: String, v: &[f64]) {
        self.arrays.insert(name, v.to_vec());
    }

    fn text(&mut self, name: String, v: impl std::fmt::Debug) {
        self.exact.insert(name, format!("{v:?}"));
    }

    /// `max |a − b| / max |b|` over the arrays (each relative to its own largest entry), after
    /// checking that the same names are present, the shapes and the exact entries agree.
    pub fn max_rel_diff(&self, reference: &Results) -> Result<(f64, String), String> {
        if self.exact != reference.exact {
            let bad: Vec<_> = reference.exact.iter().filter(|(k, v)| self.exact.get(*k) != Some(v)).collect();
            let first = bad.first().map(|(k, v)| format!("{k}: {:?} vs reference {v}", self.exact.get(*k)));
            return Err(format!("exact entries differ: {first:?}"));
        }
        let names: Vec<&String> = reference.arrays.keys().collect();
        if self.arrays.keys().collect::<Vec<_>>() != names {
            return Err("different arrays".into());
        }
        let mut worst = (0.0, String::new());
        for (name, b) in &reference.arrays {
            let a = &self.arrays[name];
            if a.len() != b.len() {
                return Err(format!("{name}: length {} vs {}", a.len(), b.len()));
            }
            let scale = b.iter().fold(0.0_f64, |m, x| m.max(x.abs())).max(f64::MIN_POSITIVE);
            let d = a.iter().zip(b).fold(0.0_f64, |m, (x, y)| m.max((x - y).abs())) / scale;
            // NaN counts as the worst.
            if d.is_nan() || d > worst.0 {
                worst = (d, name.clone());
            }
        }
        Ok(worst)
    }
}

pub fn load_mlp(case: &str) -> (Mlp, Matrix) {
    let dir = fixtures().join(case);
    (
        io::load_mlp(dir.join("model.safetensors"), Activation::Relu).unwrap(),
        io::read_matrix(dir.join("inputs.npy")).unwrap(),
    )
}

pub fn edge_config(formula: &str, config: &LibConfig) -> EdgeConfig {
    EdgeConfig {
        formula: EdgeFormula::from_name(formula).unwrap(),
        quadrature: config.quadrature,
        batch_size: config.batch_size,
        ..EdgeConfig::default()
    }
}

/// `f(rows)` with `rows` = all of `x` (no communicator) or this rank's shard of it.
pub fn with_rows<T>(
    x: &dyn ActivationSampler,
    comm: Option<&dyn Communicator>,
    f: impl FnOnce(&dyn ActivationSampler) -> T,
) -> T {
    match comm {
        None => f(x),
        Some(c) => f(&Shard::of_rank(x, c).unwrap()),
    }
}

pub fn record_statistics(r: &mut Results, prefix: &str, stats: &NodeStatistics) {
    for &k in stats.nodes() {
        let a = stats.activations(k).unwrap().finish().unwrap();
        r.text(format!("{prefix}/stats/{k}/count"), a.count);
        r.array(format!("{prefix}/stats/{k}/mean"), &a.mean);
        r.array(format!("{prefix}/stats/{k}/gram"), a.covariance.as_slice());
        if let Some(d) = stats.derivatives(k) {
            let d = d.finish().unwrap();
            r.array(format!("{prefix}/stats/{k}/derivative_mean"), &d.mean);
            r.array(format!("{prefix}/stats/{k}/derivative_gram"), d.covariance.as_slice());
        }
    }
}

pub fn record_bases(r: &mut Results, prefix: &str, bases: &[NodeBasis]) {
    record_bases_above(r, prefix, bases, 0.0);
}

/// With `noise_floor > 0`, only Λ above `noise_floor ·` max Λ are recorded (and counted): below,
/// Λ is rounding noise whose kept/dropped side depends on the summation order (block_diag's
/// threshold of 1e-15, fixtures/INDEX.md).
pub fn record_bases_above(r: &mut Results, prefix: &str, bases: &[NodeBasis], noise_floor: f64) {
    for (k, b) in bases.iter().enumerate() {
        r.array(format!("{prefix}/basis/{k}/gram_eigenvalues"), &b.gram_eigenvalues);
        match &b.lambda {
            Some(l) if noise_floor > 0.0 => {
                let floor = noise_floor * l.iter().fold(0.0_f64, |m, &v| m.max(v));
                let above: Vec<f64> = l.iter().copied().filter(|&v| v >= floor).collect();
                r.text(format!("{prefix}/basis/{k}/directions_above_noise"), above.len());
                r.array(format!("{prefix}/basis/{k}/lambda"), &above);
            }
            Some(l) => {
                r.text(format!("{prefix}/basis/{k}/shape"), (b.orig_dim(), b.dim()));
                r.array(format!("{prefix}/basis/{k}/lambda"), l);
            }
            None => r.text(format!("{prefix}/basis/{k}/shape"), (b.orig_dim(), b.dim())),
        }
    }
}

pub fn record_edges(r: &mut Results, prefix: &str, edges: &[Edges]) {
    for (i, e) in edges.iter().enumerate() {
        r.text(format!("{prefix}/edges/{i}/shape"), e.e_hat.shape());
        r.array(format!("{prefix}/edges/{i}/{}__{}", e.in_node, e.out_node), e.e_hat.as_slice());
    }
}

/// A short run of the fixture's LLC (4 chains × 150 draws).
pub fn llc_dln() -> (LlcEstimator, MlpLoss, Vec<f64>) {
    let (model, w) = dln_model();
    let config = LlcConfig::new(1e-4).localization(1.0).batch_size(500).num_chains(4).num_draws(150).seed(3);
    (LlcEstimator::new(config).unwrap(), model, w)
}

/// Every estimator on the fixtures, in one process (`comm = None`) or as a rank of `comm`.
///
/// Edges of the block_diag LIB/PCA runs depend on rounding (exactly-zero pre-activations meet
/// inputs rebuilt through `C C⁺`, fixtures/INDEX.md), so those edges are computed from the
/// single-process bases; everything else goes through the whole pipeline.
pub fn pipeline(comm: Option<&dyn Communicator>) -> Results {
    let mut r = Results::default();

    // digits: the closed-form LIB, squared edges.
    let (mlp, x) = load_mlp("digits_mlp");
    let config = fixture_config("digits_mlp/jacobian_squared");
    let nodes = config.node_indices(&mlp).unwrap();
    with_rows(&x, comm, |rows| {
        let stats = NodeStatistics::collect(&mlp, rows, &nodes, config.statistics_quadrature(), 1024).unwrap();
        record_statistics(&mut r, "digits", &stats);
        let bases = build_bases(&mlp, rows, &stats, &config).unwrap();
        record_bases(&mut r, "digits", &bases);
        let edges = compute_edges(&mlp, rows, &bases, &edge_config("squared", &config)).unwrap();
        record_edges(&mut r, "digits", &edges);

        // digits: the (1-alpha)^2 LIB (one generic pass per node layer), functional edges.
        let config = fixture_config("digits_mlp/alpha2_functional");
        let stats = NodeStatistics::collect(&mlp, rows, &nodes, config.statistics_quadrature(), 1024).unwrap();
        let bases = build_bases(&mlp, rows, &stats, &config).unwrap();
        record_bases(&mut r, "digits_alpha2", &bases);
        let edges = compute_edges(&mlp, rows, &bases, &edge_config("functional", &config)).unwrap();
        record_edges(&mut r, "digits_alpha2", &edges);
        // The same edges split over output directions (each rank streams all rows).
        for formula in ["functional", "squared"] {
            let edge_config = edge_config(formula, &config);
            let edges = match comm {
                Some(c) => compute_edges_by_outputs(c, &mlp, &x, &bases, &edge_config).unwrap(),
                None => compute_edges(&mlp, &x, &bases, &edge_config).unwrap(),
            };
            record_edges(&mut r, &format!("digits_alpha2_{formula}_by_outputs"), &edges);
        }

        // Diagnostics: one pass, ranks and firing groups exact, spectra to rounding.
        let d = diagnose_from(&mlp, &DegeneracyStatistics::collect(&mlp, rows, 1024).unwrap(), 1e-10).unwrap();
        for n in &d.nodes {
            r.text(format!("diagnostics/{}/ranks", n.name), (n.activation.rank, n.jacobian.rank, &n.relu));
            r.array(format!("diagnostics/{}/activation_spectrum", n.name), &n.activation.spectrum);
            r.array(format!("diagnostics/{}/jacobian_spectrum", n.name), &n.jacobian.spectrum);
            if let Some(p) = &n.preactivation_jacobian {
                r.array(format!("diagnostics/{}/preactivation_jacobian_spectrum", n.name), &p.spectrum);
            }
        }
    });

    // block_diag: LIB statistics and Λ; LIB edges from the single-process bases; neuron edges.
    let (mlp, x) = load_mlp("block_diag");
    let config = fixture_config("block_diag/rib");
    let nodes = config.node_indices(&mlp).unwrap();
    let single = {
        let stats = NodeStatistics::collect(&mlp, &x, &nodes, config.statistics_quadrature(), 1024).unwrap();
        build_bases(&mlp, &x, &stats, &config).unwrap()
    };
    with_rows(&x, comm, |rows| {
        let stats = NodeStatistics::collect(&mlp, rows, &nodes, config.statistics_quadrature(), 1024).unwrap();
        record_statistics(&mut r, "block_diag", &stats);
        record_bases_above(&mut r, "block_diag", &build_bases(&mlp, rows, &stats, &config).unwrap(), 1e-10);
        let edges = compute_edges(&mlp, rows, &single, &edge_config("squared", &config)).unwrap();
        record_edges(&mut r, "block_diag_given_bases", &edges);

        let neuron = fixture_config("block_diag/neuron");
        let stats = NodeStatistics::collect(&mlp, rows, &nodes, neuron.statistics_quadrature(), 1024).unwrap();
        let bases = build_bases(&mlp, rows, &stats, &neuron).unwrap();
        record_edges(
            &mut r,
            "block_diag_neuron",
            &compute_edges(&mlp, rows, &bases, &edge_config("squared", &neuron)).unwrap(),
        );
    });

    // LLC: chains split over the ranks; the report must be identical.
    let (estimator, model, w) = llc_dln();
    let report = match comm {
        None => estimator.estimate(&model, &w).unwrap(),
        Some(c) => estimator.estimate_distributed(&model, &w, c).unwrap(),
    };
    r.exact.insert("llc/report".into(), serde_json::to_string(&report).unwrap());
    r
}
