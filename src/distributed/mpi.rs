//! [`MpiCommunicator`]: the [`Communicator`] over MPI (the `mpi` crate, i.e. the system's MPI
//! library; Open MPI on Debian: `libopenmpi-dev`).

use super::communicator::{Communicator, check_rank};
use crate::error::{Error, Result};
use mpi::Threading;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator as _, Destination, Root, Source};
use std::thread::ThreadId;

/// MPI counts are C `int`s: messages go in pieces of at most this many bytes.
const PIECE: usize = 1 << 30;

/// One rank of an MPI communicator (normally `MPI_COMM_WORLD`).
///
/// Messages of any length (an 8-byte length, then pieces of at most 1 GiB, MPI counts being
/// `int`s); broadcasts use `MPI_Bcast`. MPI is initialised with `MPI_THREAD_FUNNELED`: the
/// estimators' worker threads never call MPI, only the thread that created this value does.
/// Using it from another thread is an [`Error::Communication`], never a call into MPI.
///
/// ```no_run
/// use degeneracy::basis::{LibConfig, fit_bases};
/// use degeneracy::distributed::{Communicator, MpiCommunicator, Shard};
/// # fn main() -> degeneracy::Result<()> {
/// # let (mlp, inputs): (degeneracy::Mlp, degeneracy::Matrix) = todo!();
/// let comm = MpiCommunicator::init()?; // under `mpirun -n K`
/// let rows = Shard::of_rank(&inputs, &comm)?;
/// let bases = fit_bases(&mlp, &rows, &LibConfig::default())?; // the same on every rank
/// if comm.rank() == 0 { /* write */ }
/// # Ok(()) }
/// ```
pub struct MpiCommunicator {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    owner: ThreadId,
    /// Finalises MPI when dropped (if this value initialised it).
    _universe: Option<Universe>,
}

impl std::fmt::Debug for MpiCommunicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiCommunicator").field("rank", &self.rank).field("size", &self.size).finish()
    }
}

// SAFETY: the MPI handle is a pointer into the MPI library, which is why `SimpleCommunicator`
// is neither `Send` nor `Sync`. Every method that touches it first checks that it runs on the
// thread that created this value (the thread MPI was initialised on, as `MPI_THREAD_FUNNELED`
// requires) and returns an error otherwise; `rank` and `size` are plain copies. So other threads
// can hold a reference (samplers are `Sync`) or move the value, but never use the handle.
unsafe impl Sync for MpiCommunicator {}
unsafe impl Send for MpiCommunicator {}

impl MpiCommunicator {
    /// Initialises MPI (`MPI_THREAD_FUNNELED`) and returns this process's rank of
    /// `MPI_COMM_WORLD`; MPI is finalised when the value is dropped. Errors if MPI was already
    /// initialised (use [`MpiCommunicator::from_world`] then).
    pub fn init() -> Result<Self> {
        let (universe, provided) = mpi::initialize_with_threading(Threading::Funneled).ok_or_else(|| {
            Error::Communication { op: "MPI init", reason: "MPI is already initialised in this process".into() }
        })?;
        if provided < Threading::Funneled {
            return Err(Error::Communication {
                op: "MPI init",
                reason: format!("the MPI library provides thread level {provided:?}, at least Funneled is needed"),
            });
        }
        let world = universe.world();
        let mut comm = Self::from_world(world);
        comm._universe = Some(universe);
        Ok(comm)
    }

    /// Wraps a communicator of an application that initialised MPI itself (it keeps the
    /// universe and finalises MPI). Create it on the thread that makes the MPI calls.
    pub fn from_world(world: SimpleCommunicator) -> Self {
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        MpiCommunicator { world, rank, size, owner: std::thread::current().id(), _universe: None }
    }

    fn on_owner(&self, op: &'static str) -> Result<()> {
        if std::thread::current().id() == self.owner {
            Ok(())
        } else {
            Err(Error::Communication {
                op,
                reason: "MPI is called only from the thread that created the communicator".into(),
            })
        }
    }
}

impl Communicator for MpiCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn send_bytes(&self, dest: usize, bytes: &[u8]) -> Result<()> {
        self.on_owner("send")?;
        check_rank("send", dest, self.size)?;
        let p = self.world.process_at_rank(dest as i32);
        p.send(&(bytes.len() as u64));
        for piece in bytes.chunks(PIECE) {
            p.send(piece);
        }
        Ok(())
    }

    fn receive_bytes(&self, source: usize) -> Result<Vec<u8>> {
        self.on_owner("receive")?;
        check_rank("receive", source, self.size)?;
        let p = self.world.process_at_rank(source as i32);
        let mut len = 0u64;
        p.receive_into(&mut len);
        let mut bytes = vec![0u8; len as usize];
        for piece in bytes.chunks_mut(PIECE) {
            p.receive_into(piece);
        }
        Ok(bytes)
    }

    fn broadcast_bytes(&self, root: usize, mut bytes: Vec<u8>) -> Result<Vec<u8>> {
        self.on_owner("broadcast")?;
        check_rank("broadcast root", root, self.size)?;
        let r = self.world.process_at_rank(root as i32);
        let mut len = bytes.len() as u64;
        r.broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        for piece in bytes.chunks_mut(PIECE) {
            r.broadcast_into(piece);
        }
        Ok(bytes)
    }
}
