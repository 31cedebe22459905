//! After the first call with a shape, evaluations allocate nothing: a counting global allocator
//! (this test binary holds this one test only, so nothing else allocates meanwhile).
#![deny(clippy::undocumented_unsafe_blocks)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use msloss_core::rng::RandomInputs;
use msloss_core::{Backend, Fidelity, Input, LengthKind, Outputs, Params, Scores, Shape};
use msloss_cpu::CpuBackend;

/// The system allocator, counting allocations.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to `System`, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn repeated_calls_allocate_nothing() {
    let cpu = CpuBackend::with_threads(2);
    let local = Fidelity::Local { sigma: 1.5 };
    for (shape, logits, mask, length, fidelity) in [
        (Shape::new(2, 3, 2, 1, 17, 19), true, true, LengthKind::L1, Fidelity::Global),
        (Shape::new(1, 4, 1, 3, 6, 7), false, false, LengthKind::Charbonnier, Fidelity::Global),
        (Shape::new(2, 3, 2, 1, 17, 19), true, true, LengthKind::L1, local),
        (Shape::new(1, 2, 3, 3, 6, 7), false, false, LengthKind::L2, local),
    ] {
        let shape = shape.expect("valid shape");
        let data = RandomInputs::<f32>::new(shape, 3);
        let scores = if logits { Scores::Logits(&data.logits[..]) } else { Scores::Probs(&data.probs[..]) };
        let input = Input::new(shape, scores, &data.image, mask.then_some(&data.mask[..])).expect("fits");
        let params = Params::default().with_length(length).with_fidelity(fidelity);
        let mut grad = vec![0.0f32; shape.scores_len()];
        let mut cent = vec![0.0f32; shape.centroids_len()];
        let mut ws = cpu.workspace();
        let mut call = |grad: &mut [f32], cent: &mut [f32]| {
            let out = Outputs { grad: Some(grad), centroids: Some(cent) };
            cpu.evaluate(&input, &params, out, &mut ws).expect("valid input")
        };
        let fresh = ALLOCATIONS.load(Ordering::SeqCst);
        let first = call(&mut grad, &mut cent);
        // The counter works: the first call sizes the workspace.
        assert!(ALLOCATIONS.load(Ordering::SeqCst) > fresh, "the first call should allocate the workspace");
        // A second call lets the pool's workers settle (rayon allocates a job queue block lazily).
        assert_eq!(call(&mut grad, &mut cent), first);
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        for _ in 0..3 {
            assert_eq!(call(&mut grad, &mut cent), first);
        }
        let during = ALLOCATIONS.load(Ordering::SeqCst) - before;
        assert_eq!(during, 0, "{during} allocations in 3 calls with shape {shape}");
    }
}
