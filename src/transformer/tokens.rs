//! Token-id inputs: integer `.npy` arrays `[n, positions]` as the `f64` rows a
//! [`crate::transformer::Transformer`] reads.

use crate::error::{Error, Result};
use crate::io::{NpyData, read_npy};
use crate::matrix::Matrix;
use std::path::Path;

/// Reads token ids from an integer `.npy` array `[n, positions]` (any integer type; a float
/// array is accepted when every value is a non-negative integer). Range checks against a
/// vocabulary happen in the model, which names the sequence and position.
///
/// ```no_run
/// let tokens = degeneracy::transformer::read_tokens("tokens.npy")?;
/// assert_eq!(tokens.ncols(), 3);
/// # Ok::<(), degeneracy::Error>(())
/// ```
pub fn read_tokens(path: impl AsRef<Path>) -> Result<Matrix> {
    let path = path.as_ref();
    let array = read_npy(path)?;
    let [n, p] = array.shape[..] else {
        return Err(Error::malformed(
            path,
            "npy",
            format!("token ids must be 2-D [n, positions], found shape {:?}", array.shape),
        ));
    };
    let values: Vec<f64> = match array.data {
        NpyData::Int(v) => {
            if let Some(k) = v.iter().position(|&t| t < 0) {
                return Err(Error::invalid(
                    format!("{}: token id at sequence {}, position {}", path.display(), k / p.max(1), k % p.max(1)),
                    v[k],
                    "must be ≥ 0",
                ));
            }
            v.into_iter().map(|t| t as f64).collect()
        }
        NpyData::Float(v) => {
            if let Some(k) = v.iter().position(|&t| !(t >= 0.0 && t.fract() == 0.0)) {
                return Err(Error::invalid(
                    format!("{}: token id at sequence {}, position {}", path.display(), k / p.max(1), k % p.max(1)),
                    v[k],
                    "must be a non-negative integer",
                ));
            }
            v
        }
    };
    Matrix::from_vec(n, p, values)
}
