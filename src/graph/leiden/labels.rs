//! Community labels: compact, first-appearance and canonical orders.

/// Relabels arbitrary ids to `0..k` (in increasing id order).
pub(super) fn compact_any(membership: &[usize]) -> (Vec<usize>, usize) {
    let mut uniq = membership.to_vec();
    uniq.sort_unstable();
    uniq.dedup();
    let labels = membership.iter().map(|l| uniq.partition_point(|x| x < l)).collect();
    (labels, uniq.len())
}

/// Relabels ids `< membership.len()` to `0..k` in order of first appearance (i.e. by smallest
/// node), in place; `map` is scratch of length ≥ `membership.len()`, returned filled with MAX.
pub(super) fn compact_dense(membership: &mut [usize], map: &mut [usize]) -> usize {
    let mut old_ids = Vec::new();
    for c in membership.iter_mut() {
        let old = *c;
        if map[old] == usize::MAX {
            map[old] = old_ids.len();
            old_ids.push(old);
        }
        *c = map[old];
    }
    for &old in &old_ids {
        map[old] = usize::MAX;
    }
    old_ids.len()
}

/// Canonical labels: ids by decreasing community size, ties by smallest node index.
pub(super) fn canonical(membership: &[usize]) -> (Vec<usize>, usize) {
    let n = membership.len();
    let mut labels = membership.to_vec();
    let mut map = vec![usize::MAX; n.max(membership.iter().copied().max().map_or(0, |m| m + 1))];
    let k = compact_dense(&mut labels, &mut map);
    let mut sizes = vec![0usize; k];
    for &c in &labels {
        sizes[c] += 1;
    }
    // Labels are already ordered by smallest node; a stable sort by size keeps that as tie-break.
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by_key(|&c| std::cmp::Reverse(sizes[c]));
    let mut rank = vec![0usize; k];
    for (i, &c) in order.iter().enumerate() {
        rank[c] = i;
    }
    labels.iter_mut().for_each(|c| *c = rank[*c]);
    (labels, k)
}
