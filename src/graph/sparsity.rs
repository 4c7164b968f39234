//! How concentrated the interaction strength of an edge matrix is: measures that compare bases
//! (not in the reference, which only compares ablation thresholds; `../shared/notes/modularity.md`
//! §8 lists them).

use super::edges::Edges;
use crate::basis::NodeBasis;
use serde::{Deserialize, Serialize};

/// Sparsity of one edge matrix, on `|E|` with the constant row and column excluded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sparsity {
    /// Input node layer.
    pub in_node: String,
    /// Number of edges considered.
    pub n_edges: usize,
    /// Total `Σ |E|`.
    pub total: f64,
    /// Gini coefficient `1 − 2 Σ_r (n − r + ½) e_(r) / (n Σ e)` (e ascending): 0 uniform, → 1 sparse.
    pub gini: f64,
    /// Fraction of the mass in the largest 10 % of the edges (at least one edge).
    pub top_decile_mass: f64,
    /// `exp(−Σ p ln p)`, `p = e / Σ e`: the number of equally strong edges with the same entropy.
    pub effective_edges: f64,
    /// The fewest edges that carry 90 % of the mass.
    pub edges_for_90_percent: usize,
}

impl Sparsity {
    /// Measures the edges out of `input` into `output` (the bases tell which column and row are
    /// the constant direction).
    pub fn between(edges: &Edges, input: &NodeBasis, output: &NodeBasis) -> Sparsity {
        Self::of(edges, input.has_constant_direction, output.has_constant_direction)
    }

    /// Measures an edge matrix, leaving out column 0 if `constant_in` and row 0 if `constant_out`.
    pub fn of(edges: &Edges, constant_in: bool, constant_out: bool) -> Sparsity {
        let (skip_in, skip_out) = (usize::from(constant_in), usize::from(constant_out));
        let e = &edges.e_hat;
        let mut values: Vec<f64> = (skip_out..e.nrows())
            .flat_map(|i| (skip_in..e.ncols()).map(move |j| (i, j)))
            .map(|(i, j)| e[(i, j)].abs())
            .collect();
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let total: f64 = values.iter().sum();
        let mut s = Sparsity {
            in_node: edges.in_node.clone(),
            n_edges: n,
            total,
            gini: 0.0,
            top_decile_mass: 0.0,
            effective_edges: 0.0,
            edges_for_90_percent: 0,
        };
        if n == 0 || total <= 0.0 {
            return s;
        }
        let nf = n as f64;
        s.gini = 1.0
            - 2.0 * values.iter().enumerate().map(|(r, e)| (nf - (r + 1) as f64 + 0.5) * e).sum::<f64>() / (nf * total);
        let top = n.div_ceil(10);
        s.top_decile_mass = values[n - top..].iter().sum::<f64>() / total;
        s.effective_edges =
            (-values.iter().filter(|&&e| e > 0.0).map(|e| e / total * (e / total).ln()).sum::<f64>()).exp();
        let mut acc = 0.0;
        s.edges_for_90_percent = values
            .iter()
            .rev()
            .position(|e| {
                acc += e;
                acc >= 0.9 * total
            })
            .map_or(n, |k| k + 1);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Matrix;

    fn edges(values: &[f64]) -> Edges {
        Edges {
            in_node: "a".into(),
            out_node: "b".into(),
            e_hat: Matrix::from_vec(1, values.len(), values.to_vec()).unwrap(),
        }
    }

    #[test]
    fn uniform_and_single_edge_extremes() {
        let u = Sparsity::of(&edges(&[1.0; 20]), false, false);
        assert!(u.gini.abs() < 1e-15);
        assert!((u.effective_edges - 20.0).abs() < 1e-12);
        assert_eq!(u.edges_for_90_percent, 18);
        assert!((u.top_decile_mass - 0.1).abs() < 1e-15);
        let mut one = vec![0.0; 20];
        one[7] = 3.0;
        let s = Sparsity::of(&edges(&one), false, false);
        assert!((s.gini - (1.0 - 1.0 / 20.0)).abs() < 1e-15, "{}", s.gini);
        assert!((s.effective_edges - 1.0).abs() < 1e-15);
        assert_eq!((s.edges_for_90_percent, s.top_decile_mass), (1, 1.0));
    }
}
