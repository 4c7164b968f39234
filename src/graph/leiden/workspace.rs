//! Buffers shared by every phase, sized once for the original graph.

use std::collections::VecDeque;

/// Buffers sized for the original graph and reused by every level and iteration.
pub(super) struct Workspace {
    /// Edge weight from the current node to each community (zero outside `touched`).
    pub(super) acc: Vec<f64>,
    /// Communities with a non-zero entry in `acc`, in discovery order.
    pub(super) touched: Vec<usize>,
    /// Scratch for relabelling; all `usize::MAX` between uses.
    pub(super) map: Vec<usize>,
    pub(super) cluster_mass: Vec<f64>,
    pub(super) cluster_count: Vec<usize>,
    pub(super) stable: Vec<bool>,
    pub(super) order: Vec<usize>,
    pub(super) unused: Vec<usize>,
    pub(super) queue: VecDeque<usize>,
    /// Refinement candidates and their cumulative selection weights.
    pub(super) candidates: Vec<(usize, f64)>,
    pub(super) cumulative: Vec<f64>,
    /// Nodes grouped by community (refinement, aggregation).
    pub(super) members: Vec<usize>,
    /// Refinement state per refined community: mass, weight to the rest of its community, and
    /// whether it has absorbed another node.
    pub(super) refined_mass: Vec<f64>,
    pub(super) external: Vec<f64>,
    pub(super) non_singleton: Vec<bool>,
}

impl Workspace {
    pub(super) fn new(n: usize) -> Self {
        Workspace {
            acc: vec![0.0; n],
            touched: Vec::with_capacity(n),
            map: vec![usize::MAX; n],
            cluster_mass: vec![0.0; n],
            cluster_count: vec![0; n],
            stable: vec![false; n],
            order: Vec::with_capacity(n),
            unused: Vec::with_capacity(n),
            queue: VecDeque::with_capacity(n),
            candidates: Vec::new(),
            cumulative: Vec::new(),
            members: vec![0; n],
            refined_mass: vec![0.0; n],
            external: vec![0.0; n],
            non_singleton: vec![false; n],
        }
    }

    /// Adds `w` to community `c`'s accumulator, remembering `c` for the reset.
    #[inline]
    pub(super) fn add(&mut self, c: usize, w: f64) {
        // Edge weights are > 0 (the constructor drops zeros, aggregation only adds), so an
        // untouched accumulator is exactly 0.
        if self.acc[c] == 0.0 {
            self.touched.push(c);
        }
        self.acc[c] += w;
    }

    pub(super) fn reset_acc(&mut self) {
        for &c in &self.touched {
            self.acc[c] = 0.0;
        }
        self.touched.clear();
    }
}
