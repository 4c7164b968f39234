//! Edges split over output directions instead of rows.

use super::communicator::Communicator;
use super::merge::all_merge;
use super::shard::shard_range;
use crate::basis::{Basis, NodeBasis};
use crate::data::ActivationSampler;
use crate::error::{Error, Result};
use crate::graph::{EdgeConfig, Edges, accumulate_edge_outputs};
use crate::matrix::Matrix;
use crate::nn::Network;

/// The edges between consecutive bases (as [`crate::graph::compute_edges`]) with the work split
/// over **output directions**: rank `r` computes rows `shard_range(dim_out, r, size, 1)` of
/// every edge matrix over all rows of `sampler`, and the rows are gathered in rank order, so
/// every rank returns the whole matrices.
///
/// Against the split over rows (passes over [`super::Shard::of_rank`]) each rank streams the
/// whole dataset and repeats the forward pass, but sends only its `dim_out / size` rows of each
/// matrix instead of a full `dim_out × dim_in` partial sum: the better split when the edge
/// matrices are large and the data fits every rank (`docs/distributed.md`). Each entry is
/// computed exactly as in one process.
///
/// ```
/// use degeneracy::basis::{LibConfig, fit_bases};
/// use degeneracy::distributed::{SingleProcess, compute_edges_by_outputs};
/// use degeneracy::graph::{EdgeConfig, compute_edges};
/// use degeneracy::{Activation, Matrix, Mlp};
/// let mlp = Mlp::init(&[3, 8, 2], Activation::Relu, true, 0)?;
/// let x = Matrix::from_fn(64, 3, |i, j| ((i * 7 + j * 3) % 11) as f64 - 5.0);
/// let bases = fit_bases(&mlp, &x, &LibConfig::default())?;
/// let split = compute_edges_by_outputs(&SingleProcess, &mlp, &x, &bases, &EdgeConfig::default())?;
/// assert_eq!(split, compute_edges(&mlp, &x, &bases, &EdgeConfig::default())?);
/// # Ok::<(), degeneracy::Error>(())
/// ```
pub fn compute_edges_by_outputs(
    comm: &dyn Communicator,
    net: &dyn Network,
    sampler: &dyn ActivationSampler,
    bases: &[NodeBasis],
    config: &EdgeConfig,
) -> Result<Vec<Edges>> {
    let local = || -> Result<Vec<Edges>> {
        bases
            .windows(2)
            .map(|pair| {
                let (input, output) = (&pair[0], &pair[1]);
                let outputs = shard_range(output.dim(), comm.rank(), comm.size(), 1)?;
                let e_hat = if outputs.is_empty() {
                    Matrix::zeros(0, input.dim())
                } else {
                    accumulate_edge_outputs(net, sampler, input, output, outputs, config)?.finish()?
                };
                Ok(Edges { in_node: input.node.clone(), out_node: output.node.clone(), e_hat })
            })
            .collect()
    };
    all_merge(comm, local(), |ours: &mut Vec<Edges>, theirs| {
        for (a, b) in ours.iter_mut().zip(theirs) {
            if a.e_hat.ncols() != b.e_hat.ncols() || a.in_node != b.in_node || a.out_node != b.out_node {
                return Err(Error::shape(
                    "compute_edges_by_outputs: rows of another rank",
                    &[a.e_hat.nrows(), a.e_hat.ncols()],
                    &[b.e_hat.nrows(), b.e_hat.ncols()],
                ));
            }
            let rows = a.e_hat.nrows() + b.e_hat.nrows();
            let mut data = std::mem::take(&mut a.e_hat).into_vec();
            data.extend_from_slice(b.e_hat.as_slice());
            a.e_hat = Matrix::from_vec(rows, b.e_hat.ncols(), data)?;
        }
        Ok(())
    })
}
