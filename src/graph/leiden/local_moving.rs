//! Phase 1: fast local moving.

use super::*;
/// Queue-based local moving (the paper's MoveNodesFast). `clustering` holds ids `< n`.
pub(super) fn fast_local_moving(
    adj: &Csr,
    mass: &[f64],
    r: f64,
    clustering: &mut [usize],
    rng: &mut ChaCha8Rng,
    ws: &mut Workspace,
) {
    let n = adj.n();
    let mut total_mass = 0.0;
    ws.cluster_mass[..n].fill(0.0);
    ws.cluster_count[..n].fill(0);
    for v in 0..n {
        ws.cluster_mass[clustering[v]] += mass[v];
        ws.cluster_count[clustering[v]] += 1;
        total_mass += mass[v];
    }
    ws.unused.clear();
    for c in (0..n).rev() {
        if ws.cluster_count[c] == 0 {
            ws.unused.push(c);
        }
    }
    ws.order.clear();
    ws.order.extend(0..n);
    ws.order.shuffle(rng);
    ws.queue.clear();
    ws.queue.extend(ws.order.iter().copied());
    ws.stable[..n].fill(false);

    // Every accepted move raises the quality by more than the rounding tolerance, so the queue
    // empties; this cap (far above the ~15 visits per node seen on hard random graphs) only
    // guarantees termination should accumulated rounding in the community masses ever defeat
    // that argument. Stopping early still leaves a valid partition.
    let mut budget = 64 * (n + adj.targets.len());
    while let Some(v) = ws.queue.pop_front() {
        if budget == 0 {
            break;
        }
        budget -= 1;
        ws.stable[v] = true;
        let cur = clustering[v];
        let mv = mass[v];
        ws.cluster_mass[cur] -= mv;
        ws.cluster_count[cur] -= 1;
        if ws.cluster_count[cur] == 0 {
            // The emptied community must not keep a rounding residue as mass.
            ws.cluster_mass[cur] = 0.0;
            ws.unused.push(cur);
        }
        let (ts, wts) = adj.neighbours(v);
        let mut strength = 0.0;
        for (&u, &w) in ts.iter().zip(wts) {
            ws.add(clustering[u], w);
            strength += w;
        }
        let f_cur = ws.acc[cur] - penalty(r, mv * ws.cluster_mass[cur]);
        let (mut best, mut best_f) = (cur, f_cur);
        // An empty community is always a candidate, with gain exactly 0.
        if let Some(&e) = ws.unused.last()
            && e != cur
            && 0.0 > best_f
        {
            best = e;
            best_f = 0.0;
        }
        for &c in &ws.touched {
            if c != cur {
                let f = ws.acc[c] - penalty(r, mv * ws.cluster_mass[c]);
                if f > best_f {
                    best = c;
                    best_f = f;
                }
            }
        }
        ws.reset_acc();
        // Ignore improvements at rounding level: they are meaningless and could cycle.
        let tol = 1e-12 * (strength + penalty(r, mv * total_mass));
        if best != cur && best_f - f_cur <= tol {
            best = cur;
        }
        if ws.cluster_count[best] == 0 {
            // `best` is the top of the unused stack (either `cur` just emptied, or the empty
            // candidate).
            ws.unused.pop();
        }
        ws.cluster_mass[best] += mv;
        ws.cluster_count[best] += 1;
        if best != cur {
            clustering[v] = best;
            for &u in ts {
                if ws.stable[u] && clustering[u] != best {
                    ws.stable[u] = false;
                    ws.queue.push_back(u);
                }
            }
        }
    }
}
