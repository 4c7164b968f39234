//! The all-merge: every rank's mergeable state combined in rank order, the total on every rank.

use super::communicator::Communicator;
use crate::error::{Error, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Encodes a state as MessagePack (field names kept, so every serde shape round-trips; `f64`s as
/// their 8 bytes, so exactly).
pub(crate) fn encode<S: Serialize + ?Sized>(state: &S) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(state).map_err(|e| Error::Communication { op: "encode", reason: e.to_string() })
}

/// Decodes what [`encode`] wrote.
pub(crate) fn decode<S: DeserializeOwned>(bytes: &[u8]) -> Result<S> {
    rmp_serde::from_slice(bytes).map_err(|e| Error::Communication { op: "decode", reason: e.to_string() })
}

/// What travels up the reduction tree: a partial total, or the first failure below.
#[derive(serde::Serialize, serde::Deserialize)]
enum Envelope<S> {
    Total(S),
    Failed { rank: usize, message: String },
}

/// Combines every rank's `local` state into the total over all ranks and returns it **on every
/// rank**. States merge in rank order (rank 0's rows first, as a single process would see
/// them), along a binomial tree: `⌈log₂ size⌉` rounds in which rank `r` receives the partial
/// total of ranks `r + 2ᵏ…` and merges it after its own, then one broadcast from rank 0. Each
/// rank sends one state and receives at most `⌈log₂ size⌉` plus the broadcast total.
///
/// Every rank must call it, also one whose local computation failed: pass the error as `local`.
/// Then every rank returns an error (the failing rank its own, the others [`Error::Remote`]
/// naming the lowest failing rank) instead of waiting forever for a state that never comes.
///
/// ```
/// use degeneracy::distributed::{Communicator, LocalCommunicator, all_merge};
/// let totals: Vec<Vec<u64>> = std::thread::scope(|s| {
///     let handles: Vec<_> = LocalCommunicator::group(3)
///         .into_iter()
///         .map(|c| s.spawn(move || {
///             let local: Vec<u64> = vec![c.rank() as u64];
///             all_merge(&c, Ok(local), |a: &mut Vec<u64>, b| { a.extend(b); Ok(()) }).unwrap()
///         }))
///         .collect();
///     handles.into_iter().map(|h| h.join().unwrap()).collect()
/// });
/// assert!(totals.iter().all(|t| t == &[0, 1, 2])); // rank order, on every rank
/// ```
pub fn all_merge<S: Serialize + DeserializeOwned>(
    comm: &dyn Communicator,
    local: Result<S>,
    mut merge: impl FnMut(&mut S, S) -> Result<()>,
) -> Result<S> {
    let (rank, size) = (comm.rank(), comm.size());
    if size <= 1 {
        return local;
    }
    let (mut acc, own_error) = match local {
        Ok(s) => (Envelope::Total(s), None),
        Err(e) => (Envelope::Failed { rank, message: e.to_string() }, Some(e)),
    };
    let mut step = 1;
    while step < size {
        if rank % (2 * step) == step {
            comm.send_bytes(rank - step, &encode(&acc)?)?;
            break;
        }
        if rank + step < size {
            let other: Envelope<S> = decode(&comm.receive_bytes(rank + step)?)?;
            acc = match (acc, other) {
                (Envelope::Total(mut a), Envelope::Total(b)) => match merge(&mut a, b) {
                    Ok(()) => Envelope::Total(a),
                    Err(e) => Envelope::Failed { rank, message: format!("merging the states of ranks: {e}") },
                },
                // The lower ranks' failure first.
                (failed @ Envelope::Failed { .. }, _) => failed,
                (Envelope::Total(_), failed) => failed,
            };
        }
        step *= 2;
    }
    let total = if rank == 0 {
        comm.broadcast_bytes(0, encode(&acc)?)?;
        acc
    } else {
        decode(&comm.broadcast_bytes(0, Vec::new())?)?
    };
    match total {
        Envelope::Total(s) => Ok(s),
        Envelope::Failed { rank: failed, message } => match own_error {
            Some(e) if failed == rank => Err(e),
            _ => Err(Error::Remote { rank: failed, message }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::LocalCommunicator;

    fn run<T: Send>(size: usize, f: impl Fn(LocalCommunicator) -> T + Sync) -> Vec<T> {
        std::thread::scope(|s| {
            let f = &f;
            let hs: Vec<_> = LocalCommunicator::group(size).into_iter().map(|c| s.spawn(move || f(c))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn merges_in_rank_order_for_any_size() {
        for size in 1..=7 {
            let out = run(size, |c| {
                all_merge(&c, Ok(vec![c.rank()]), |a: &mut Vec<usize>, b| {
                    a.extend(b);
                    Ok(())
                })
                .unwrap()
            });
            let expected: Vec<usize> = (0..size).collect();
            assert!(out.iter().all(|v| v == &expected), "size {size}: {out:?}");
        }
    }

    #[test]
    fn a_failing_rank_fails_every_rank_without_hanging() {
        for size in [2, 3, 5] {
            let out = run(size, |c| {
                let local =
                    if c.rank() >= 1 { Err(Error::invalid("row", c.rank(), "bad data")) } else { Ok(vec![c.rank()]) };
                all_merge(&c, local, |a: &mut Vec<usize>, b| {
                    a.extend(b);
                    Ok(())
                })
            });
            assert!(matches!(out[0], Err(Error::Remote { rank: 1, .. })), "{:?}", out[0]);
            assert!(matches!(out[1], Err(Error::InvalidParameter { .. })), "its own error");
            for r in out.iter().skip(2) {
                assert!(matches!(r, Err(Error::Remote { rank: 1, .. })), "{r:?}");
            }
        }
        // A merge that fails (mismatched states) fails everywhere too.
        let out = run(3, |c| {
            all_merge(&c, Ok(vec![0.0; 1 + c.rank()]), |a: &mut Vec<f64>, b| {
                if a.len() != b.len() {
                    return Err(Error::shape("merge", &[a.len()], &[b.len()]));
                }
                Ok(())
            })
        });
        assert!(out.iter().all(|r| matches!(r, Err(Error::Remote { .. }))), "{out:?}");
    }

    #[test]
    fn codec_is_exact() {
        let v = vec![0.1, -0.0, f64::MIN_POSITIVE, 1e300, std::f64::consts::PI, f64::NAN];
        let back: Vec<f64> = decode(&encode(&v).unwrap()).unwrap();
        assert!(v.iter().zip(&back).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
