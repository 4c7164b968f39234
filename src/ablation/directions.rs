//! The ordered directions a node ablation keeps a prefix of, and the ablation's projection.

use super::node_activations;
use crate::basis::{Basis, NodeBasis};
use crate::data::{ActivationSampler, map_batches};
use crate::error::{Error, Result};
use crate::matrix::Matrix;
use crate::nn::Network;

/// Directions of a node layer in the order a node ablation keeps them: `C` (`[orig, dim]`,
/// coordinates `f C`) and `C⁺` (`[dim, orig]`), like a [`Basis`].
///
/// A [`NodeBasis`] can be passed to the ablations directly (its `C`, e.g. the LIB sorted by Λ or
/// PCA by variance); this type provides the other orders: the orthogonal PCA frame `W` of a
/// basis, and the neurons ordered by power with the constant coordinate first.
#[derive(Clone, Debug, PartialEq)]
pub struct Directions {
    c: Matrix,
    c_pinv: Matrix,
}

impl Directions {
    /// Directions from `C` (`[orig, dim]`) and `C⁺` (`[dim, orig]`); they must be finite.
    pub fn new(c: Matrix, c_pinv: Matrix) -> Result<Self> {
        if c_pinv.shape() != (c.ncols(), c.nrows()) {
            return Err(Error::shape(
                "Directions: C⁺ must be [dim, orig]",
                &[c.ncols(), c.nrows()],
                &[c_pinv.nrows(), c_pinv.ncols()],
            ));
        }
        if c.ncols() == 0 {
            return Err(Error::Empty { what: "Directions: no direction".into() });
        }
        c.check_finite("Directions C")?;
        c_pinv.check_finite("Directions C⁺")?;
        Ok(Directions { c, c_pinv })
    }

    /// The orthogonal frame `W = Y U`, `W⁺` of a LIB or PCA basis (the reference's
    /// `orthogonal` ablation): PCA directions by variance, the constant direction first when
    /// centred. For a LIB basis this is the PCA basis of the same node layer.
    pub fn orthogonal(basis: &NodeBasis) -> Result<Self> {
        let (w, w_pinv) = basis.w.as_ref().ok_or_else(|| {
            Error::invalid("orthogonal directions", &basis.node, "this basis has no PCA frame W (neuron or identity)")
        })?;
        Self::new(w.clone(), w_pinv.clone())
    }

    /// The neuron basis in the order a node ablation keeps it: the constant coordinate first
    /// (when `folded`; it carries the biases, as the centred bases' constant direction does), then
    /// the neurons by decreasing `second_moments` (`E[h_i²]`; equal values by index). `C` is a
    /// permutation matrix and `C⁺ = Cᵀ`.
    pub fn neurons(second_moments: &[f64], folded: bool) -> Result<Self> {
        let d = second_moments.len();
        if d == 0 {
            return Err(Error::Empty { what: "Directions::neurons: no neuron".into() });
        }
        if let Some(k) = second_moments.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: "neuron second moments".into(),
                row: 0,
                col: k,
                value: second_moments[k],
            });
        }
        let mut order: Vec<usize> = (0..d).collect();
        order.sort_by(|&a, &b| second_moments[b].total_cmp(&second_moments[a]));
        if folded {
            order.insert(0, d);
        }
        let orig = order.len();
        let c = Matrix::from_fn(orig, orig, |i, j| f64::from(u8::from(order[j] == i)));
        let c_pinv = c.transpose();
        Ok(Directions { c, c_pinv })
    }

    /// [`Directions::neurons`] with the second moments of node `node`'s activations over the
    /// network inputs streamed by `sampler` (rows = samples × positions).
    pub fn neurons_by_power(net: &dyn Network, sampler: &dyn ActivationSampler, node: usize) -> Result<Self> {
        let Some(layer) = net.node_layers().get(node) else {
            return Err(Error::UnknownNode { name: format!("node {node}"), available: net.node_names() });
        };
        let d = layer.units();
        let (sums, n) = map_batches(
            sampler,
            1024,
            || (vec![0.0; d], 0_usize),
            |(sums, n), first, x| {
                let f = node_activations(net, x, node, first)?;
                for i in 0..f.nrows() {
                    for (s, v) in sums.iter_mut().zip(f.row(i)) {
                        *s += v * v;
                    }
                }
                *n += f.nrows();
                Ok(())
            },
            |(sa, na), (sb, nb)| {
                sa.iter_mut().zip(&sb).for_each(|(a, b)| *a += b);
                *na += nb;
                Ok(())
            },
        )?;
        let moments: Vec<f64> = sums.iter().map(|s| s / n as f64).collect();
        Self::neurons(&moments, layer.constant)
    }
}

impl Basis for Directions {
    fn c(&self) -> &Matrix {
        &self.c
    }

    fn c_pinv(&self) -> &Matrix {
        &self.c_pinv
    }
}

/// The node-ablation map `R_n` with `f ↦ f R_n` (`[orig, orig]`, the reference's
/// `calc_rotation_matrix`): `C_n C⁺_n` with `C_n` = `C` with columns `n..` zeroed, the identity
/// for `n = dim` (everything kept, also what a truncated basis dropped) and zero for `n = 0`.
///
/// ```
/// use degeneracy::Matrix;
/// use degeneracy::ablation::{Directions, rotation_matrix};
/// let d = Directions::new(Matrix::identity(3), Matrix::identity(3))?;
/// let r = rotation_matrix(&d, 2)?;
/// assert_eq!(r.as_slice(), &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
/// # Ok::<(), degeneracy::Error>(())
/// ```
pub fn rotation_matrix(directions: &dyn Basis, n: usize) -> Result<Matrix> {
    let (orig, dim) = (directions.orig_dim(), directions.dim());
    if n > dim {
        return Err(Error::invalid("kept directions", n, format!("the basis has {dim} directions")));
    }
    if n == dim {
        return Ok(Matrix::identity(orig));
    }
    let (c, c_pinv) = (directions.c(), directions.c_pinv());
    Ok(Matrix::from_fn(orig, orig, |i, j| (0..n).map(|t| c[(i, t)] * c_pinv[(t, j)]).sum()))
}
