//! Phase 2: refinement into well-connected sub-communities.

use super::*;
/// The paper's RefinePartition: returns refined ids (`< n`, not compacted), each refined
/// community inside one community of `clustering` (ids `0..k`).
#[allow(clippy::too_many_arguments)]
pub(super) fn refine(
    adj: &Csr,
    mass: &[f64],
    r: f64,
    theta: f64,
    clustering: &[usize],
    k: usize,
    rng: &mut ChaCha8Rng,
    ws: &mut Workspace,
) -> Vec<usize> {
    let n = adj.n();
    // Members of each community, in node order (counting sort), and community masses.
    let mut offsets = vec![0usize; k + 1];
    let mut community_mass = vec![0.0; k];
    for v in 0..n {
        offsets[clustering[v] + 1] += 1;
        community_mass[clustering[v]] += mass[v];
    }
    for c in 0..k {
        offsets[c + 1] += offsets[c];
    }
    // Taken out of the workspace so `ws.add` can borrow it mutably alongside; put back at the end.
    let mut members = std::mem::take(&mut ws.members);
    let mut refined_mass = std::mem::take(&mut ws.refined_mass);
    let mut external = std::mem::take(&mut ws.external);
    let mut non_singleton = std::mem::take(&mut ws.non_singleton);
    {
        let mut next = offsets[..k].to_vec();
        for v in 0..n {
            members[next[clustering[v]]] = v;
            next[clustering[v]] += 1;
        }
    }
    let mut refined: Vec<usize> = (0..n).collect();
    refined_mass[..n].copy_from_slice(mass);
    non_singleton[..n].fill(false);
    // external[c] = weight between refined community c and the rest of its community.
    for v in 0..n {
        let (ts, wts) = adj.neighbours(v);
        let mut e = 0.0;
        for (&u, &w) in ts.iter().zip(wts) {
            if clustering[u] == clustering[v] {
                e += w;
            }
        }
        external[v] = e;
    }

    for s in 0..k {
        let ms = community_mass[s];
        let group = &mut members[offsets[s]..offsets[s + 1]];
        group.shuffle(rng);
        for &v in group.iter() {
            let mv = mass[v];
            // Only singletons that are well connected to their community move.
            if non_singleton[v] || external[v] < penalty(r, mv * (ms - mv)) {
                continue;
            }
            let strength_in = external[v];
            refined_mass[v] = 0.0;
            external[v] = 0.0;
            let (ts, wts) = adj.neighbours(v);
            for (&u, &w) in ts.iter().zip(wts) {
                if clustering[u] == s {
                    ws.add(refined[u], w);
                }
            }
            // Candidates: staying alone (gain 0) and well-connected refined communities with
            // non-negative gain.
            ws.candidates.clear();
            ws.candidates.push((v, 0.0));
            let mut max_gain = 0.0f64;
            for &c in &ws.touched {
                let mc = refined_mass[c];
                if external[c] >= penalty(r, mc * (ms - mc)) {
                    let gain = ws.acc[c] - penalty(r, mv * mc);
                    if gain >= 0.0 {
                        ws.candidates.push((c, gain));
                        max_gain = max_gain.max(gain);
                    }
                }
            }
            let pick = pick_boltzmann(&ws.candidates, max_gain, theta, &mut ws.cumulative, rng);
            let chosen = ws.candidates[pick].0;
            refined_mass[chosen] += mv;
            external[chosen] += strength_in - 2.0 * ws.acc[chosen];
            refined[v] = chosen;
            if chosen != v {
                non_singleton[chosen] = true;
            }
            ws.reset_acc();
        }
    }
    ws.members = members;
    ws.refined_mass = refined_mass;
    ws.external = external;
    ws.non_singleton = non_singleton;
    refined
}

/// Index of a candidate drawn with probability `∝ exp(gain/θ)`; the weights are shifted by
/// `max_gain` (the largest gain) so that nothing overflows. `cumulative` is scratch.
pub(super) fn pick_boltzmann(
    candidates: &[(usize, f64)],
    max_gain: f64,
    theta: f64,
    cumulative: &mut Vec<f64>,
    rng: &mut ChaCha8Rng,
) -> usize {
    cumulative.clear();
    let mut total = 0.0;
    for &(_, gain) in candidates {
        total += ((gain - max_gain) / theta).exp();
        cumulative.push(total);
    }
    let x = rng.random::<f64>() * total;
    cumulative.iter().position(|&cum| x < cum).unwrap_or(candidates.len() - 1)
}
