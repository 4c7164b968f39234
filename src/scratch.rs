//! Per-thread reusable buffers for temporaries in hot loops.
//!
//! Fresh multi-hundred-kilobyte allocations per batch cost more than the arithmetic (page
//! faults, `mmap`/`brk` churn); a small pool per thread keeps them warm. Each thread holds at
//! most the buffers of its largest batch.

use crate::matrix::Matrix;
use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

thread_local! {
    static POOL: RefCell<Vec<Matrix>> = const { RefCell::new(Vec::new()) };
}

/// A matrix borrowed from the calling thread's pool, returned to it on drop. Its contents are
/// unspecified: callers `resize` and overwrite.
pub(crate) struct ScratchMatrix(Option<Matrix>);

impl ScratchMatrix {
    /// A buffer from the pool (or a new, empty one).
    pub(crate) fn take() -> Self {
        ScratchMatrix(Some(POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default()))
    }
}

impl Deref for ScratchMatrix {
    type Target = Matrix;
    fn deref(&self) -> &Matrix {
        self.0.as_ref().expect("present until drop")
    }
}

impl DerefMut for ScratchMatrix {
    fn deref_mut(&mut self) -> &mut Matrix {
        self.0.as_mut().expect("present until drop")
    }
}

impl Drop for ScratchMatrix {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            // Ignore a pool that is already gone (thread teardown).
            let _ = POOL.try_with(|p| p.borrow_mut().push(m));
        }
    }
}

/// Several matrices from the calling thread's pool (one per node layer of a forward pass),
/// returned to it on drop.
pub(crate) struct ScratchMatrices(Vec<Matrix>);

impl ScratchMatrices {
    /// `n` buffers from the pool (or new, empty ones).
    pub(crate) fn take(n: usize) -> Self {
        ScratchMatrices((0..n).map(|_| POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default()).collect())
    }
}

impl Deref for ScratchMatrices {
    type Target = Vec<Matrix>;
    fn deref(&self) -> &Vec<Matrix> {
        &self.0
    }
}

impl DerefMut for ScratchMatrices {
    fn deref_mut(&mut self) -> &mut Vec<Matrix> {
        &mut self.0
    }
}

impl Drop for ScratchMatrices {
    fn drop(&mut self) {
        let buffers = std::mem::take(&mut self.0);
        let _ = POOL.try_with(|p| p.borrow_mut().extend(buffers));
    }
}
