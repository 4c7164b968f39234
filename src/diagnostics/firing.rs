//! Which ReLU units fire on exactly the same samples, found by streaming partition refinement.
//!
//! Two units belong together iff their firing sets (`z > 0`) are equal on every sample seen.
//! Each batch refines the partition by the units' firing bits on that batch; merging shards
//! takes the common refinement. The state is `O(units)`, whatever the number of samples.

use crate::error::{Error, Result};
use crate::matrix::Matrix;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The firing-set partition of one layer's units.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FiringPartition {
    /// Group label of each unit (equal labels ⇔ equal firing sets so far).
    labels: Vec<usize>,
    /// Whether the unit fired on some sample.
    ever_on: Vec<bool>,
    /// Whether the unit was off on some sample.
    ever_off: Vec<bool>,
    samples: u64,
}

/// The firing structure of a ReLU layer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReluGroups {
    /// Units that never fire on the data.
    pub dead: Vec<usize>,
    /// Units that fire on every sample (they act linearly).
    pub always_on: Vec<usize>,
    /// Sets of ≥ 2 units with identical firing sets, dead and always-on units excluded.
    pub sync_groups: Vec<Vec<usize>>,
}

impl FiringPartition {
    /// All `units` in one group, nothing seen yet.
    pub fn new(units: usize) -> Self {
        FiringPartition {
            labels: vec![0; units],
            ever_on: vec![false; units],
            ever_off: vec![false; units],
            samples: 0,
        }
    }

    /// Refines by a batch of pre-activations (rows = samples, columns = units).
    pub fn update(&mut self, z: &Matrix) -> Result<()> {
        let d = self.labels.len();
        if z.ncols() != d {
            return Err(Error::shape("FiringPartition::update", &[z.nrows(), d], &[z.nrows(), z.ncols()]));
        }
        let words = z.nrows().div_ceil(64);
        let mut bits = vec![vec![0u64; words]; d];
        for i in 0..z.nrows() {
            for (j, &v) in z.row(i).iter().enumerate() {
                if v > 0.0 {
                    bits[j][i / 64] |= 1 << (i % 64);
                    self.ever_on[j] = true;
                } else {
                    self.ever_off[j] = true;
                }
            }
        }
        let keys: Vec<(usize, &[u64])> = self.labels.iter().zip(&bits).map(|(&l, b)| (l, b.as_slice())).collect();
        self.labels = relabel(&keys);
        self.samples += z.nrows() as u64;
        Ok(())
    }

    /// The common refinement with another shard's partition of the same units.
    pub fn merge(&mut self, other: &FiringPartition) -> Result<()> {
        if other.labels.len() != self.labels.len() {
            return Err(Error::shape("FiringPartition::merge", &[self.labels.len()], &[other.labels.len()]));
        }
        let keys: Vec<(usize, usize)> = self.labels.iter().copied().zip(other.labels.iter().copied()).collect();
        self.labels = relabel(&keys);
        for (a, b) in self.ever_on.iter_mut().zip(&other.ever_on) {
            *a |= b;
        }
        for (a, b) in self.ever_off.iter_mut().zip(&other.ever_off) {
            *a |= b;
        }
        self.samples += other.samples;
        Ok(())
    }

    /// Dead, always-on and synchronised units.
    pub fn groups(&self) -> ReluGroups {
        let d = self.labels.len();
        let dead: Vec<usize> = (0..d).filter(|&j| !self.ever_on[j]).collect();
        let always_on: Vec<usize> = (0..d).filter(|&j| self.ever_on[j] && !self.ever_off[j]).collect();
        let mut by_label: Vec<Vec<usize>> = Vec::new();
        let mut index: HashMap<usize, usize> = HashMap::new();
        for j in (0..d).filter(|&j| self.ever_on[j] && self.ever_off[j]) {
            let slot = *index.entry(self.labels[j]).or_insert_with(|| {
                by_label.push(Vec::new());
                by_label.len() - 1
            });
            by_label[slot].push(j);
        }
        let sync_groups = by_label.into_iter().filter(|g| g.len() > 1).collect();
        ReluGroups { dead, always_on, sync_groups }
    }
}

/// New labels `0, 1, …` in order of first appearance of each distinct key.
fn relabel<K: std::hash::Hash + Eq + Copy>(keys: &[K]) -> Vec<usize> {
    let mut seen: HashMap<K, usize> = HashMap::with_capacity(keys.len());
    keys.iter()
        .map(|k| {
            let next = seen.len();
            *seen.entry(*k).or_insert(next)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_from_streamed_and_merged_batches() {
        // Units: 0 dead, 1 always on, 2 and 4 identical, 3 differs from 2 only in the last row.
        let rows = [[-1.0, 2.0, 1.0, 1.0, 3.0], [0.0, 1.0, -1.0, -2.0, 0.0], [-3.0, 5.0, 2.0, -1.0, 1.0]];
        let z = Matrix::from_rows(&rows).unwrap();
        let mut whole = FiringPartition::new(5);
        whole.update(&z).unwrap();
        let expected = ReluGroups { dead: vec![0], always_on: vec![1], sync_groups: vec![vec![2, 4]] };
        assert_eq!(whole.groups(), expected);
        // Two shards (2 rows + 1 row) merged give the same groups.
        let (mut a, mut b) = (FiringPartition::new(5), FiringPartition::new(5));
        a.update(&z.rows(0..2).to_owned()).unwrap();
        b.update(&z.rows(2..3).to_owned()).unwrap();
        a.merge(&b).unwrap();
        assert_eq!(a.groups(), expected);
        // (Unit 0's zero pre-activation counts as "off": ReLU'(0) = 0.)
        assert!(a.merge(&FiringPartition::new(4)).is_err());
    }
}
