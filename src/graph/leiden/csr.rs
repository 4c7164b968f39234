//! The adjacency of a weighted graph in compressed sparse rows.

/// Compressed sparse row adjacency without self-loops; each undirected edge is stored twice.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Csr {
    pub(super) offsets: Vec<usize>,
    pub(super) targets: Vec<usize>,
    pub(super) weights: Vec<f64>,
}

impl Csr {
    /// Builds a symmetric CSR from edges `(a, b, w)` with `a < b`, sorted by `(a, b)`, no duplicates.
    /// The counting fill keeps every neighbour list sorted by neighbour index.
    pub(super) fn from_sorted_pairs(n: usize, pairs: &[(usize, usize, f64)]) -> Self {
        let mut offsets = vec![0usize; n + 1];
        for &(a, b, _) in pairs {
            offsets[a + 1] += 1;
            offsets[b + 1] += 1;
        }
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        let mut next = offsets[..n].to_vec();
        let len = offsets[n];
        let mut targets = vec![0usize; len];
        let mut weights = vec![0.0f64; len];
        for &(a, b, w) in pairs {
            targets[next[a]] = b;
            weights[next[a]] = w;
            next[a] += 1;
            targets[next[b]] = a;
            weights[next[b]] = w;
            next[b] += 1;
        }
        Csr { offsets, targets, weights }
    }

    pub(super) fn n(&self) -> usize {
        self.offsets.len() - 1
    }

    pub(super) fn neighbours(&self, v: usize) -> (&[usize], &[f64]) {
        let (lo, hi) = (self.offsets[v], self.offsets[v + 1]);
        (&self.targets[lo..hi], &self.weights[lo..hi])
    }
}
