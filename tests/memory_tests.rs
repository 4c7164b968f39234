//! Memory of a pass is bounded by the batch, not by the data: one Gram pass over 4k and over
//! 32k rows of a 1024-wide node layer peaks within 10 % (heap measured by a counting allocator,
//! beyond the data themselves).

use degeneracy::estimate::NodeStatistics;
use degeneracy::{Activation, Matrix, Mlp};
#[path = "common/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{Counting, peak_during};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak heap (bytes) of one Gram pass over `rows` rows of the 1024-wide input node, beyond what
/// was allocated before it (the data).
fn peak_of_pass(rows: usize) -> usize {
    let mlp = Mlp::init(&[1024, 4], Activation::Relu, true, 0).unwrap();
    let x = Matrix::from_fn(rows, 1024, |i, j| ((i * 31 + j * 17) % 101) as f64 / 101.0);
    let (count, peak) =
        peak_during(|| NodeStatistics::collect(&mlp, &x, &[0], None, 1024).unwrap().activations(0).unwrap().count());
    assert_eq!(count, rows as u64);
    peak
}

#[test]
fn a_gram_pass_does_not_grow_with_the_rows() {
    // Warm the thread pools and per-thread buffers first, so both passes start alike. The warm
    // pass needs more rows than the width: fewer are kept as rows (`docs/math.md` §3.5) and do
    // not reach the d × d products, whose first run grows per-thread buffers (~75 MB, once).
    peak_of_pass(2048);
    let (small, large) = (peak_of_pass(4096), peak_of_pass(32768));
    eprintln!("peak heap of a Gram pass over 1024-wide rows: 4k rows {small} B, 32k rows {large} B");
    // One d × d state is 8.4 MB: the pass holds a few (a wave per thread and the total).
    assert!(small < 30 * 8 * 1025 * 1025, "{small}");
    let ratio = large as f64 / small as f64;
    assert!((0.9..1.1).contains(&ratio), "4k rows: {small} B, 32k rows: {large} B");
}
