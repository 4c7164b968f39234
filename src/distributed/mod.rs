//! Beyond one machine: the same estimators over several processes.
//!
//! Every streaming pass of the crate maps work units of rows to mergeable states (Gram
//! accumulators, node and degeneracy statistics, edge sums) and merges them in row order. Over
//! processes the design stays the same:
//!
//! * a [`Communicator`] (rank, size, bytes to a rank, bytes from a rank, broadcast):
//!   [`SingleProcess`], [`LocalCommunicator`] (ranks as threads, for tests) and, with the cargo
//!   feature `mpi`, `MpiCommunicator`;
//! * a [`Shard`]: this process's contiguous rows of a sampler (dataset row indices kept).
//!   Every pass over a [`Shard::of_rank`] ends with [`all_merge`]: the ranks' states are merged
//!   in rank order along a binomial tree and the total is broadcast, so every rank holds the
//!   result over all rows and the bases, edges and diagnostics are built as in one process (no
//!   API change; results depend on the number of ranks only at rounding level);
//! * edges of wide layers split over output directions instead of rows
//!   ([`compute_edges_by_outputs`]): each rank computes its rows of every edge matrix;
//! * LLC chains, split over ranks by chain index ([`crate::LlcEstimator::estimate_distributed`]);
//!   each chain owns its random streams, so the report is identical for any number of ranks;
//! * shard files for clusters without MPI: each worker writes its shard's state
//!   ([`write_shard_file`]) with a [`ShardHeader`] and a [`Fingerprint`] of configuration,
//!   model and data; [`merge_shard_files`] refuses truncated, foreign, duplicated, missing or
//!   overlapping shards by name and merges the rest with the same merge code; [`StagedBuild`]
//!   runs a whole LIB build (statistics, then edges) this way.
//!
//! Protocols, costs and the communication model are in `docs/distributed.md`.

mod communicator;
mod files;
mod merge;
#[cfg(feature = "mpi")]
mod mpi;
mod outputs;
mod shard;
mod staged;

pub use communicator::{Communicator, LocalCommunicator, SingleProcess};
pub use files::{Fingerprint, SHARD_FORMAT_VERSION, ShardHeader, merge_shard_files, read_shard_file, write_shard_file};
pub use merge::all_merge;
#[cfg(feature = "mpi")]
pub use mpi::MpiCommunicator;
pub use outputs::compute_edges_by_outputs;
pub use shard::{ROW_GRID, Shard, shard_range};
pub use staged::StagedBuild;
