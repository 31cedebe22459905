//! The bytes each dispatch reads and writes, from the plan ([`Plan::traffic`]), against the
//! floor of the memory model, `(3N + 2C)·4` bytes per pixel. Today's kernels keep a
//! `B·N·S` softmax buffer and a separate Jacobian pass: `8N + 3C` floats per pixel, plus the
//! small reductions. The test pins that count (so a kernel change that moves it must update it)
//! and prints the table BENCHMARKS.md quotes (`cargo test -p msloss-wgpu --test traffic --
//! --nocapture`).

mod common;

use common::backend;
use msloss_core::{Params, Shape};
use msloss_wgpu::{Io, ScoresKind, Traffic};

#[test]
fn bytes_per_dispatch_at_s4() {
    let Some(b) = backend() else { return };
    let shape = Shape::new_2d(2, 21, 3, 512, 512).unwrap();
    let (n, c) = (shape.classes() as u64, shape.channels() as u64);
    let px = (shape.batch() * shape.spatial()) as u64;
    for (io, per_pixel) in [
        // Logits with the gradient: prepare 2N + C, class_sums N + C, loss_grad 2N + C, jacobian 3N.
        (Io::TRAIN, 8 * n + 3 * c),
        // Probabilities, no gradient: prepare N + C, class_sums N + C, loss_grad N + C.
        (Io { kind: ScoresKind::Probs, mask: false, grad: false }, 3 * n + 3 * c),
    ] {
        let plan = b.plan(shape, &Params::default(), io).unwrap();
        let t = plan.traffic();
        let big: u64 = t
            .iter()
            .filter(|d| ["prepare", "class_sums", "loss_grad", "jacobian"].contains(&d.kernel))
            .map(|d| d.read + d.written)
            .sum();
        let total: u64 = t.iter().map(|d| d.read + d.written).sum();
        // The per-pixel part of the four big kernels, exactly; the rest (partials, reductions,
        // centroids) is small against it.
        let small = total - 4 * per_pixel * px;
        assert!(big >= 4 * per_pixel * px && big - 4 * per_pixel * px < total / 100, "{io:?}: {t:?}");
        assert!(small < total / 100, "{io:?}: the reductions move {small} of {total} bytes");
        let per_px = total as f64 / px as f64;
        if io.grad {
            let floor = Traffic::floor(shape, false) as f64 / px as f64;
            eprintln!("{shape} {io:?}: {per_px:.2} bytes per pixel, {:.2}× the floor {floor:.1}", per_px / floor);
        } else {
            eprintln!("{shape} {io:?}: {per_px:.2} bytes per pixel");
        }
        for d in &t {
            eprintln!("  {:<11} read {:>12} written {:>12}", d.kernel, d.read, d.written);
        }
    }
}
