//! Random streams and minibatch order.
//!
//! Every stream is a ChaCha8 generator whose 256-bit key is a hash of `(seed, lane)` and whose
//! 64-bit ChaCha stream id is the stream's purpose. Lane = chain index for a chain's own
//! streams, a fixed tag for the stream shared by all chains. Hashing (rather than
//! `seed + chain`, devinterp's rule) means chain `c + 1` of seed `s` is unrelated to chain `c`
//! of seed `s + 1` (devinterp PR #98), and since each chain owns its streams, results do not
//! depend on which thread runs which chain. (Each step's normals come from a Xoshiro256++ keyed
//! by 256 bits of the chain's noise stream, see [`super::Chain`].)

use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use rand::seq::SliceRandom;

/// The purpose of a stream (its ChaCha stream id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Langevin noise (and SGNHT's initial momentum).
    Noise = 0,
    /// Minibatch order.
    Data = 1,
}

/// Lane tag of the minibatch stream shared by all chains.
pub(crate) const SHARED_LANE: u64 = u64::MAX;

/// SplitMix64's finaliser: a bijection on `u64` with full avalanche.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The stream for `(seed, lane, purpose)`. Stable across platforms and crate versions (the
/// hash is defined here, not taken from `std`).
pub(crate) fn stream(seed: u64, lane: u64, purpose: Purpose) -> ChaCha8Rng {
    const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
    let h = mix64(mix64(seed ^ 0x6465_6765_6e65_7261) ^ mix64(lane.wrapping_add(GOLDEN)));
    let mut key = [0u8; 32];
    for (i, chunk) in key.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&mix64(h.wrapping_add(GOLDEN.wrapping_mul(i as u64 + 1))).to_le_bytes());
    }
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(purpose as u64);
    rng
}

/// Minibatches of `batch_size` indices drawn without replacement: a permutation of `0..n`
/// reshuffled at the start of every epoch, the incomplete tail dropped (`drop_last`). With
/// `batch_size == n` the order is never shuffled (full batch, fixed summation order).
#[derive(Debug)]
pub(crate) struct BatchOrder {
    order: Vec<usize>,
    pos: usize,
    batch_size: usize,
    rng: ChaCha8Rng,
}

impl BatchOrder {
    pub(crate) fn new(n: usize, batch_size: usize, rng: ChaCha8Rng) -> Self {
        debug_assert!(batch_size >= 1 && batch_size <= n);
        BatchOrder { order: (0..n).collect(), pos: n, batch_size, rng }
    }

    /// The next minibatch (no allocation).
    pub(crate) fn next_batch(&mut self) -> &[usize] {
        if self.pos + self.batch_size > self.order.len() {
            if self.batch_size < self.order.len() {
                self.order.shuffle(&mut self.rng);
            }
            self.pos = 0;
        }
        let start = self.pos;
        self.pos += self.batch_size;
        &self.order[start..self.pos]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    #[test]
    fn streams_differ_by_seed_lane_and_purpose() {
        let first = |s, l, p| stream(s, l, p).random::<u64>();
        let a = first(0, 1, Purpose::Noise);
        assert_ne!(a, first(1, 0, Purpose::Noise)); // no seed + chain overlap
        assert_ne!(a, first(0, 1, Purpose::Data));
        assert_ne!(a, first(0, 2, Purpose::Noise));
        assert_eq!(a, first(0, 1, Purpose::Noise));
    }

    #[test]
    fn epochs_cover_every_sample_once() {
        let mut b = BatchOrder::new(10, 3, stream(0, 0, Purpose::Data));
        let mut seen: Vec<usize> = (0..3).flat_map(|_| b.next_batch().to_vec()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 9); // one epoch of 3 batches, the 10th sample dropped
        let mut full = BatchOrder::new(4, 4, stream(0, 0, Purpose::Data));
        assert_eq!(full.next_batch(), &[0, 1, 2, 3]);
        assert_eq!(full.next_batch(), &[0, 1, 2, 3]);
    }
}
