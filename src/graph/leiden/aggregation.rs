//! Phase 3: aggregation of the refined partition.

use super::*;
/// Collapses each community of `labels` (ids `0..k`) into one node; internal edges vanish (they
/// do not affect moves), node masses add up.
///
/// Each edge is read once, in node order, and appended to the buckets of both its aggregate
/// endpoints; summing a bucket therefore adds the weights between `a` and `b` in the same order
/// on both sides, so the aggregate is exactly symmetric (rows are in first-touch order).
pub(super) fn aggregate(adj: &Csr, mass: &[f64], labels: &[usize], k: usize, ws: &mut Workspace) -> (Csr, Vec<f64>) {
    let n = adj.n();
    let mut agg_mass = vec![0.0; k];
    for v in 0..n {
        agg_mass[labels[v]] += mass[v];
    }
    // Every undirected edge once: from its lower endpoint.
    let upper = |v: usize| {
        let (ts, wts) = adj.neighbours(v);
        ts.iter().zip(wts).filter(move |&(&u, _)| u > v)
    };
    let mut bucket_offsets = vec![0usize; k + 1];
    for v in 0..n {
        let a = labels[v];
        for (&u, _) in upper(v) {
            let b = labels[u];
            if a != b {
                bucket_offsets[a + 1] += 1;
                bucket_offsets[b + 1] += 1;
            }
        }
    }
    for c in 0..k {
        bucket_offsets[c + 1] += bucket_offsets[c];
    }
    let mut bucket = vec![(0usize, 0.0f64); bucket_offsets[k]];
    {
        let mut next = bucket_offsets[..k].to_vec();
        for v in 0..n {
            let a = labels[v];
            for (&u, &w) in upper(v) {
                let b = labels[u];
                if a != b {
                    bucket[next[a]] = (b, w);
                    next[a] += 1;
                    bucket[next[b]] = (a, w);
                    next[b] += 1;
                }
            }
        }
    }
    let mut offsets = Vec::with_capacity(k + 1);
    offsets.push(0);
    let mut targets = Vec::with_capacity(bucket.len());
    let mut weights = Vec::with_capacity(bucket.len());
    for a in 0..k {
        for &(b, w) in &bucket[bucket_offsets[a]..bucket_offsets[a + 1]] {
            ws.add(b, w);
        }
        for &b in &ws.touched {
            targets.push(b);
            weights.push(ws.acc[b]);
        }
        ws.reset_acc();
        offsets.push(targets.len());
    }
    (Csr { offsets, targets, weights }, agg_mass)
}
