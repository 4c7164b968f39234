//! Memory of a pass is bounded by the batch, not by the data: one Gram pass over 4k and over
//! 32k rows of a 1024-wide node layer peaks within 10 % (heap measured by a counting allocator,
//! beyond the data themselves).

use degeneracy::estimate::NodeStatistics;
use degeneracy::{Activation, Matrix, Mlp};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded to the system allocator with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak heap (bytes) of one Gram pass over `rows` rows of the 1024-wide input node, beyond what
/// was allocated before it (the data).
fn peak_of_pass(rows: usize) -> usize {
    let mlp = Mlp::init(&[1024, 4], Activation::Relu, true, 0).unwrap();
    let x = Matrix::from_fn(rows, 1024, |i, j| ((i * 31 + j * 17) % 101) as f64 / 101.0);
    let before = CURRENT.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let stats = NodeStatistics::collect(&mlp, &x, &[0], None, 1024).unwrap();
    assert_eq!(stats.activations(0).unwrap().count(), rows as u64);
    drop(stats);
    PEAK.load(Ordering::SeqCst) - before
}

#[test]
fn a_gram_pass_does_not_grow_with_the_rows() {
    // Warm the thread pools and per-thread buffers first, so both passes start alike.
    peak_of_pass(512);
    let (small, large) = (peak_of_pass(4096), peak_of_pass(32768));
    eprintln!("peak heap of a Gram pass over 1024-wide rows: 4k rows {small} B, 32k rows {large} B");
    // One d × d state is 8.4 MB: the pass holds a few (a wave per thread and the total).
    assert!(small < 30 * 8 * 1025 * 1025, "{small}");
    assert!((large as f64) < 1.1 * small as f64, "4k rows: {small} B, 32k rows: {large} B");
}
