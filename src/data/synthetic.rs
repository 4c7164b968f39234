//! Small datasets generated in code, so examples and tests need no files.

use super::{Dataset, Targets};
use crate::error::{Error, Result};
use crate::matrix::Matrix;

/// Modular addition: every pair `(a, b)` in `0..p`, input `one_hot(a) ⊕ one_hot(b)` (width
/// `2p`), label `(a + b) mod p`; sample `a·p + b`.
///
/// ```
/// let data = degeneracy::data::modular_addition(5)?;
/// assert_eq!((data.len(), data.input_dim()), (25, 10));
/// assert_eq!(data.labels().unwrap()[7], (1 + 2) % 5);
/// # Ok::<(), degeneracy::Error>(())
/// ```
pub fn modular_addition(p: usize) -> Result<Dataset> {
    if p < 2 {
        return Err(Error::invalid("p", p, "modulus must be at least 2"));
    }
    let inputs = Matrix::from_fn(p * p, 2 * p, |s, j| {
        let (a, b) = (s / p, s % p);
        f64::from(u8::from(j == a || j == p + b))
    });
    let labels = (0..p * p).map(|s| (s / p + s % p) % p).collect();
    Dataset::new(inputs, Targets::Labels(labels))
}
