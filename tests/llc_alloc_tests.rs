//! The sampling loop does not allocate: a counting global allocator around `Chain::step`.
//! (A separate test binary, because the allocator is global.)

use degeneracy::llc::{
    BehaviouralLoss, LlcConfig, LlcEstimator, LossModel, MlpLoss, ParamLayout, ParamSubset, Sampler,
};
use degeneracy::{Activation, Dataset, Layer, Loss, Matrix, Mlp, Targets};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    /// Allocations made by this thread (the harness's other threads allocate at will).
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_per_100_steps<M: LossModel>(
    model: M,
    w: &[f64],
    sampler: Sampler,
    batch: usize,
    restriction: Option<ParamSubset>,
) -> usize {
    let config = LlcConfig::new(1e-5).sampler(sampler).batch_size(batch).num_init_loss_batches(2).seed(0);
    let mut estimator = LlcEstimator::new(config).unwrap();
    if let Some(s) = restriction {
        estimator = estimator.restrict(s);
    }
    let mut chain = estimator.chain(model, w, 0).unwrap();
    for _ in 0..3 {
        chain.step().unwrap(); // first calls size the buffers
    }
    let before = allocations();
    for _ in 0..100 {
        chain.step().unwrap();
    }
    allocations() - before
}

#[test]
fn steps_do_not_allocate() {
    // Classifier (cross-entropy), regression (MSE) and behavioural loss; every sampler.
    let data = degeneracy::data::modular_addition(5).unwrap();
    let mlp = Mlp::init(&[10, 12, 5], Activation::Relu, true, 0).unwrap();
    let ce = MlpLoss::new(&mlp, Loss::CrossEntropy, data.clone()).unwrap();
    let x = Matrix::from_fn(200, 4, |i, j| ((i * 3 + j) as f64 * 0.1).sin());
    let dln = Mlp::init(&[4, 4, 3], Activation::Identity, false, 1).unwrap();
    let mut y = Matrix::default();
    dln.forward(x.view(), &mut y).unwrap();
    let mse = MlpLoss::new(&dln, Loss::Mse, Dataset::new(x.clone(), Targets::Values(y)).unwrap()).unwrap();
    let beh = BehaviouralLoss::new(&mlp, data.inputs().clone()).unwrap();
    // Restricted chains too: one tensor of the classifier, an index set of the regression.
    let tensor = ParamLayout::mlp(&mlp).select(&["layers.1.weight"]).unwrap();
    let scattered = ParamSubset::new("every third", (0..mse.n_params()).step_by(3)).unwrap();
    for sampler in [Sampler::Sgld, Sampler::rmsprop_sgld(), Sampler::sgnht()] {
        assert_eq!(allocations_per_100_steps(ce.clone(), &ce.params(), sampler, 8, None), 0, "{sampler:?} CE");
        assert_eq!(allocations_per_100_steps(mse.clone(), &mse.params(), sampler, 50, None), 0, "{sampler:?} MSE");
        let b = allocations_per_100_steps(beh.clone(), &beh.params(), sampler, 25, None);
        assert_eq!(b, 0, "{sampler:?} behavioural");
        let r = allocations_per_100_steps(ce.clone(), &ce.params(), sampler, 8, Some(tensor.clone()));
        assert_eq!(r, 0, "{sampler:?} CE restricted to a tensor");
        let r = allocations_per_100_steps(mse.clone(), &mse.params(), sampler, 50, Some(scattered.clone()));
        assert_eq!(r, 0, "{sampler:?} MSE restricted to an index set");
    }
}
