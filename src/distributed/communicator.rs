//! The one thing the estimators need from a process group: send bytes to a rank, receive bytes
//! from a rank, broadcast bytes from a root.

use crate::error::{Error, Result};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};

/// A group of `size` processes (ranks `0..size`) that exchange byte messages.
///
/// Messages between a pair of ranks arrive in the order they were sent. Every method is called
/// on the thread that runs the computation (never from inside a parallel loop), so an
/// implementation over a library that only allows its initialising thread to communicate (MPI
/// with `MPI_THREAD_FUNNELED`) is fine; `Sync` only lets samplers hold a reference.
///
/// Implement it to run the estimators over another transport; [`SingleProcess`],
/// [`LocalCommunicator`] (ranks as threads) and, with the `mpi` feature, `MpiCommunicator` are
/// provided.
pub trait Communicator: Sync {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn size(&self) -> usize;

    /// Sends `bytes` to rank `dest` (returns once the bytes may be reused).
    fn send_bytes(&self, dest: usize, bytes: &[u8]) -> Result<()>;

    /// Receives the next message rank `source` sent to this rank.
    fn receive_bytes(&self, source: usize) -> Result<Vec<u8>>;

    /// Returns `bytes` of rank `root` on every rank (`bytes` is ignored on the other ranks).
    ///
    /// The default is a binomial tree of [`Communicator::send_bytes`] /
    /// [`Communicator::receive_bytes`] (`⌈log₂ size⌉` rounds); transports with a native
    /// broadcast override it.
    fn broadcast_bytes(&self, root: usize, bytes: Vec<u8>) -> Result<Vec<u8>> {
        let (size, rank) = (self.size(), self.rank());
        check_rank("broadcast root", root, size)?;
        let relative = (rank + size - root) % size;
        let absolute = |r: usize| (r + root) % size;
        let mut data = (relative == 0).then_some(bytes);
        let mut mask = 1;
        while mask < size {
            if relative < mask {
                if relative + mask < size {
                    let d = data.as_deref().expect("ranks below mask hold the data");
                    self.send_bytes(absolute(relative + mask), d)?;
                }
            } else if relative < 2 * mask {
                data = Some(self.receive_bytes(absolute(relative - mask))?);
            }
            mask *= 2;
        }
        Ok(data.expect("every rank received in some round"))
    }
}

pub(crate) fn check_rank(what: &'static str, rank: usize, size: usize) -> Result<()> {
    if rank < size {
        Ok(())
    } else {
        Err(Error::Communication { op: what, reason: format!("rank {rank} does not exist in a group of {size}") })
    }
}

/// A group of one: rank 0 of size 1. Distributed code paths run unchanged and communicate nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn send_bytes(&self, dest: usize, _bytes: &[u8]) -> Result<()> {
        Err(Error::Communication { op: "send", reason: format!("a single process has no rank {dest} to send to") })
    }

    fn receive_bytes(&self, source: usize) -> Result<Vec<u8>> {
        Err(Error::Communication {
            op: "receive",
            reason: format!("a single process has no rank {source} to receive from"),
        })
    }
}

/// One rank of a group whose ranks are threads of this process, connected by channels.
///
/// For tests and for checking that a computation does not depend on the number of ranks without
/// MPI. If a rank's thread ends (or panics), receiving from it fails instead of waiting forever.
///
/// ```
/// use degeneracy::distributed::{Communicator, LocalCommunicator};
/// let sums: Vec<usize> = std::thread::scope(|s| {
///     let handles: Vec<_> = LocalCommunicator::group(3)
///         .into_iter()
///         .map(|c| s.spawn(move || {
///             let b = c.broadcast_bytes(0, vec![7; 4]).unwrap();
///             b.iter().map(|&x| x as usize).sum::<usize>() + c.rank()
///         }))
///         .collect();
///     handles.into_iter().map(|h| h.join().unwrap()).collect()
/// });
/// assert_eq!(sums, [28, 29, 30]);
/// ```
#[derive(Debug)]
pub struct LocalCommunicator {
    rank: usize,
    /// `senders[dest]`.
    senders: Vec<Sender<Vec<u8>>>,
    /// `receivers[source]`.
    receivers: Vec<Mutex<Receiver<Vec<u8>>>>,
}

impl LocalCommunicator {
    /// The ranks `0..size` of a new group (give each to its own thread).
    pub fn group(size: usize) -> Vec<LocalCommunicator> {
        // channels[src][dst]
        let mut senders: Vec<Vec<Sender<Vec<u8>>>> = (0..size).map(|_| Vec::with_capacity(size)).collect();
        let mut receivers: Vec<Vec<Mutex<Receiver<Vec<u8>>>>> = (0..size).map(|_| Vec::with_capacity(size)).collect();
        for src_senders in senders.iter_mut() {
            for dst_receivers in receivers.iter_mut() {
                let (tx, rx) = channel();
                src_senders.push(tx);
                dst_receivers.push(Mutex::new(rx));
            }
        }
        senders
            .into_iter()
            .zip(receivers)
            .enumerate()
            .map(|(rank, (senders, receivers))| LocalCommunicator { rank, senders, receivers })
            .collect()
    }
}

impl Communicator for LocalCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.senders.len()
    }

    fn send_bytes(&self, dest: usize, bytes: &[u8]) -> Result<()> {
        check_rank("send", dest, self.size())?;
        self.senders[dest]
            .send(bytes.to_vec())
            .map_err(|_| Error::Communication { op: "send", reason: format!("rank {dest} has ended") })
    }

    fn receive_bytes(&self, source: usize) -> Result<Vec<u8>> {
        check_rank("receive", source, self.size())?;
        let receiver = self.receivers[source]
            .lock()
            .map_err(|_| Error::Communication { op: "receive", reason: "a receiving thread panicked".into() })?;
        receiver
            .recv()
            .map_err(|_| Error::Communication { op: "receive", reason: format!("rank {source} ended without sending") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_from_every_root_and_point_to_point_order() {
        for size in 1..=5 {
            for root in 0..size {
                let got: Vec<Vec<u8>> = std::thread::scope(|s| {
                    let hs: Vec<_> = LocalCommunicator::group(size)
                        .into_iter()
                        .map(|c| {
                            s.spawn(move || {
                                let mine = if c.rank() == root { vec![root as u8, 1, 2] } else { vec![99] };
                                c.broadcast_bytes(root, mine).unwrap()
                            })
                        })
                        .collect();
                    hs.into_iter().map(|h| h.join().unwrap()).collect()
                });
                assert!(got.iter().all(|b| b == &[root as u8, 1, 2]), "size {size} root {root}");
            }
        }
        let group = LocalCommunicator::group(2);
        group[0].send_bytes(1, b"a").unwrap();
        group[0].send_bytes(1, b"b").unwrap();
        assert_eq!(group[1].receive_bytes(0).unwrap(), b"a");
        assert_eq!(group[1].receive_bytes(0).unwrap(), b"b");
        assert!(matches!(group[0].send_bytes(2, b"x"), Err(Error::Communication { .. })));
        let (a, b) = {
            let mut g = group.into_iter();
            (g.next().unwrap(), g.next().unwrap())
        };
        drop(a);
        assert!(matches!(b.receive_bytes(0), Err(Error::Communication { .. })), "no hang on an ended rank");
        assert!(SingleProcess.send_bytes(0, b"").is_err());
        assert_eq!(SingleProcess.broadcast_bytes(0, vec![5]).unwrap(), [5]);
    }
}
