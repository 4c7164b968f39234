//! A LIB build split over workers without MPI: two stages (statistics, then edges), each run
//! by `K` workers on their shard of the rows, writing shard files, then merged.

use super::files::{Fingerprint, ShardHeader, merge_shard_files, read_shard_file, write_shard_file};
use super::shard::Shard;
use crate::basis::{LibConfig, NodeBasis, build_bases};
use crate::data::ActivationSampler;
use crate::error::{Error, Result};
use crate::estimate::NodeStatistics;
use crate::graph::{EdgeAccumulator, EdgeConfig, Edges, accumulate_edges};
use crate::nn::Network;
use std::path::{Path, PathBuf};

const STATISTICS: &str = "lib_build/statistics";
const BASES: &str = "lib_build/bases";
const EDGES: &str = "lib_build/edges";

/// The bases (and edges) of a network built from shard files: on each of `K` workers
/// [`StagedBuild::statistics_shard`], then once [`StagedBuild::merge_statistics`] (the bases,
/// and the file the edge workers read them from); with edges, on each worker
/// [`StagedBuild::edges_shard`], then [`StagedBuild::merge_edges`]. Every file carries a
/// fingerprint of the run (the caller's `fingerprint` of model and data, the configs and the
/// stage), so a file of another run, a stage's file given to the other stage, a missing,
/// duplicated or truncated shard are refused by name. The merged results equal a single
/// process's up to the order of the merges.
///
/// A basis whose `M'` needs a data pass per node layer (the `(1-alpha)^2` formula, sections
/// without a closed form) cannot be split this way: [`StagedBuild::new`] refuses it (use an MPI
/// [`crate::distributed::Communicator`] or one process).
///
/// ```
/// use degeneracy::basis::{LibConfig, fit_bases};
/// use degeneracy::distributed::{Fingerprint, StagedBuild};
/// use degeneracy::graph::{EdgeConfig, compute_edges};
/// use degeneracy::{Activation, Matrix, Mlp};
/// let mlp = Mlp::init(&[3, 6, 2], Activation::Relu, true, 0)?;
/// let x = Matrix::from_fn(600, 3, |i, j| ((i * 7 + j * 3) % 11) as f64 - 5.0);
/// let dir = std::env::temp_dir().join(format!("staged-doc-{}", std::process::id()));
/// let run = Fingerprint::new("my run").bytes("data", b"x v1").finish();
/// let build = StagedBuild::new(&mlp, LibConfig::default(), Some(EdgeConfig::default()), &run, &dir)?;
/// let stats: Vec<_> = (0..3).map(|i| build.statistics_shard(&x, i, 3)).collect::<Result<_, _>>()?;
/// let bases = build.merge_statistics(&x, &stats)?;
/// let parts: Vec<_> = (0..3).map(|i| build.edges_shard(&x, i, 3)).collect::<Result<_, _>>()?;
/// let edges = build.merge_edges(&parts)?;
/// assert_eq!(bases.len(), 3);
/// let one = compute_edges(&mlp, &x, &fit_bases(&mlp, &x, &LibConfig::default())?, &EdgeConfig::default())?;
/// assert!((edges[0].e_hat[(1, 1)] - one[0].e_hat[(1, 1)]).abs() <= 1e-12 * one[0].e_hat.max_abs());
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), degeneracy::Error>(())
/// ```
pub struct StagedBuild<'a> {
    net: &'a dyn Network,
    config: LibConfig,
    edges: Option<EdgeConfig>,
    run: String,
    dir: PathBuf,
}

impl<'a> StagedBuild<'a> {
    /// A build of `net`'s bases (`config`) and, if given, edges, whose shard files live in `dir`
    /// (created); `run` is the caller's fingerprint of what the configs do not say (the model
    /// and data files, e.g. a [`Fingerprint`] of their contents).
    pub fn new(
        net: &'a dyn Network,
        config: LibConfig,
        edges: Option<EdgeConfig>,
        run: &str,
        dir: impl AsRef<Path>,
    ) -> Result<Self> {
        config.validate()?;
        if let Some(e) = &edges {
            e.validate()?;
        }
        let passes = config.extra_passes(net)?;
        if passes > 0 {
            return Err(Error::invalid(
                "basis_formula",
                config.basis_formula.name(),
                format!(
                    "on these node layers it needs {passes} more data pass(es) after the statistics; file-based \
                     shards support one pass per stage (jacobian on sections with a closed form, svd, neuron): \
                     use an MPI communicator or one process"
                ),
            ));
        }
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(StagedBuild { net, config, edges, run: run.to_string(), dir })
    }

    fn fingerprint(&self, stage: &str) -> Result<Fingerprint> {
        Fingerprint::new(stage)
            .bytes("run", self.run.as_bytes())
            .json("config", &self.config)?
            .json("edges", &self.edges)
    }

    fn bases_path(&self) -> PathBuf {
        self.dir.join("bases.shard")
    }

    /// Worker `index` of `count`: the statistics of its rows of `sampler`, written to
    /// `dir/statistics_{index}_of_{count}.shard`; returns the file.
    pub fn statistics_shard(&self, sampler: &dyn ActivationSampler, index: usize, count: usize) -> Result<PathBuf> {
        let rows = Shard::new(sampler, index, count)?;
        let nodes = self.config.node_indices(self.net)?;
        let quadrature = self.config.statistics_quadrature();
        let stats = NodeStatistics::collect(self.net, &rows, &nodes, quadrature, self.config.batch_size)?;
        let header = ShardHeader::new(
            STATISTICS,
            self.fingerprint(STATISTICS)?.finish(),
            index,
            count,
            rows.rows(),
            sampler.n_samples(),
        );
        let path = self.dir.join(format!("statistics_{index}_of_{count}.shard"));
        write_shard_file(&path, &header, &stats)?;
        Ok(path)
    }

    /// Merges the statistics files (every shard exactly once) and builds the bases; with edges,
    /// also writes them to `dir/bases.shard` for the edge workers.
    pub fn merge_statistics(&self, sampler: &dyn ActivationSampler, files: &[PathBuf]) -> Result<Vec<NodeBasis>> {
        let fingerprint = self.fingerprint(STATISTICS)?.finish();
        let (stats, _) = merge_shard_files::<NodeStatistics>(files, STATISTICS, &fingerprint, |a, b| a.merge(&b))?;
        let bases = build_bases(self.net, sampler, &stats, &self.config)?;
        if self.edges.is_some() {
            let n = sampler.n_samples();
            let header = ShardHeader::new(BASES, self.fingerprint(BASES)?.finish(), 0, 1, 0..n, n);
            write_shard_file(self.bases_path(), &header, &bases)?;
        }
        Ok(bases)
    }

    /// The bases written by [`StagedBuild::merge_statistics`] for this run.
    pub fn bases(&self) -> Result<Vec<NodeBasis>> {
        let path = self.bases_path();
        read_shard_file::<Vec<NodeBasis>>(&path, BASES, &self.fingerprint(BASES)?.finish()).map(|(_, bases)| bases)
    }

    fn edges_fingerprint(&self) -> Result<String> {
        Ok(self.fingerprint(EDGES)?.file("bases", self.bases_path())?.finish())
    }

    fn edge_config(&self) -> Result<&EdgeConfig> {
        self.edges.as_ref().ok_or_else(|| Error::invalid("edges", "none", "this build was made without an edge config"))
    }

    /// Worker `index` of `count`: the edge sums over its rows, written to
    /// `dir/edges_{index}_of_{count}.shard`; returns the file.
    pub fn edges_shard(&self, sampler: &dyn ActivationSampler, index: usize, count: usize) -> Result<PathBuf> {
        let config = self.edge_config()?;
        let bases = self.bases()?;
        let rows = Shard::new(sampler, index, count)?;
        let sums = accumulate_edges(self.net, &rows, &bases, config)?;
        let header = ShardHeader::new(EDGES, self.edges_fingerprint()?, index, count, rows.rows(), sampler.n_samples());
        let path = self.dir.join(format!("edges_{index}_of_{count}.shard"));
        write_shard_file(&path, &header, &sums)?;
        Ok(path)
    }

    /// Merges the edge files (every shard exactly once) into the edges between consecutive bases.
    pub fn merge_edges(&self, files: &[PathBuf]) -> Result<Vec<Edges>> {
        self.edge_config()?;
        let bases = self.bases()?;
        let (sums, _) = merge_shard_files::<Vec<EdgeAccumulator>>(files, EDGES, &self.edges_fingerprint()?, |a, b| {
            if a.len() != b.len() {
                return Err(Error::shape("edge shards: edge matrices", &[a.len()], &[b.len()]));
            }
            a.iter_mut().zip(&b).try_for_each(|(a, b)| a.merge(b))
        })?;
        Edges::from_sums(&bases, &sums)
    }
}
