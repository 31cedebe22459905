//! The bytes each dispatch reads and writes, from the plan ([`Plan::traffic`]), against the
//! floor of the memory model, `(3N + 2C)·4` bytes per pixel, and the plan's own device
//! memory ([`Plan::scratch_bytes`]). No probability buffer: `class_sums` reads the scores and
//! the image once (checks, softmax, class sums), `loss_grad` reads them once more and writes the
//! gradient once (the softmax backward fused in): `3N + 2C` floats per pixel, plus the small
//! reductions. The test pins that count (so a kernel change that moves it must update it) and
//! prints the table BENCHMARKS.md quotes (`cargo test -p msloss-wgpu --test traffic --
//! --nocapture`).

mod common;

use common::backend;
use msloss_core::{Fidelity, Params, Shape};
use msloss_wgpu::{ClassSumsPath, Io, ScoresKind, Traffic};

/// Bytes a pixel of every dispatch together at 2,21,3,512,512, logits with the gradient: the
/// floor's 276 and the partials' and reductions' 0.40 (1.0014× the floor) with the workgroup
/// class sums; the strided ones add their 8·256 partials a row, written, read back and reduced
/// (1.03×).
const TRAIN_BYTES_PER_PIXEL_AT_S4: [(ClassSumsPath, f64); 2] =
    [(ClassSumsPath::Workgroup, 276.4), (ClassSumsPath::Strided, 284.5)];

#[test]
fn bytes_per_dispatch_at_s4() {
    let Some(b) = backend() else { return };
    let shape = Shape::new_2d(2, 21, 3, 512, 512).unwrap();
    let (n, c) = (shape.classes() as u64, shape.channels() as u64);
    let px = (shape.batch() * shape.spatial()) as u64;
    for (path, train_bytes) in TRAIN_BYTES_PER_PIXEL_AT_S4 {
        let b = b.clone().with_class_sums(path);
        for (io, per_pixel) in [
            // Logits with the gradient: class_sums N + C, loss_grad 2N + C.
            (Io::TRAIN, 3 * n + 2 * c),
            // Probabilities, no gradient: class_sums N + C, loss_grad N + C.
            (Io { kind: ScoresKind::Probs, mask: false, grad: false }, 2 * n + 2 * c),
        ] {
            let plan = b.plan(shape, &Params::default(), io).unwrap();
            let t = plan.traffic();
            let kernels: Vec<&str> = t.iter().map(|d| d.kernel).collect();
            assert!(!kernels.iter().any(|k| ["prepare", "jacobian"].contains(k)), "{kernels:?}");
            let big: u64 = t
                .iter()
                .filter(|d| [path.kernel().name(), "loss_grad"].contains(&d.kernel))
                .map(|d| d.read + d.written)
                .sum();
            let total: u64 = t.iter().map(|d| d.read + d.written).sum();
            // The per-pixel part of the two big kernels, exactly; the rest (partials,
            // reductions, centroids) is small against it: 1% with the workgroup class sums, 5%
            // with the strided ones.
            let part = if path == ClassSumsPath::Workgroup { 100 } else { 20 };
            assert!(big >= 4 * per_pixel * px && big - 4 * per_pixel * px < total / part, "{path:?} {io:?}: {t:?}");
            let small = total - 4 * per_pixel * px;
            assert!(small < total / part, "{path:?} {io:?}: the reductions move {small} of {total} bytes");
            let per_px = total as f64 / px as f64;
            if io.grad {
                let floor = Traffic::floor(shape, false) as f64 / px as f64;
                assert_eq!(floor, 276.0);
                assert!(per_px <= train_bytes, "{path:?}: {per_px} bytes per pixel");
                assert!(per_px <= 1.25 * floor, "{path:?}: {per_px} bytes per pixel");
                let times = per_px / floor;
                eprintln!("{shape} {path:?} {io:?}: {per_px:.2} bytes per pixel, {times:.3}× the floor {floor:.1}");
            } else {
                eprintln!("{shape} {path:?} {io:?}: {per_px:.2} bytes per pixel");
            }
            for d in &t {
                eprintln!("  {:<18} read {:>12} written {:>12}", d.kernel, d.read, d.written);
            }
        }
    }
}

/// The plan allocates no buffer of `B·N·S` elements, for logits or probabilities: beyond the
/// caller's tensors (and the gradient the caller gives) it holds O(B·N·C) sums and the first
/// reduction level's partials, `B·(N·(C+1) + 1)` floats a tile of 2048 pixels (the workgroup
/// class sums) or an invocation of the strided ones' workgroups (8 a sample at these sizes, or
/// one a tile where a sample has fewer), and 2 floats a workgroup of 256 pixels, with the
/// reduction's ping and pong as large again at most.
#[test]
fn no_probability_buffer() {
    let Some(b) = backend() else { return };
    for (shape, path) in [
        Shape::new_2d(2, 21, 3, 512, 512).unwrap(),
        Shape::new_2d(1, 2, 1, 64, 64).unwrap(),
        Shape::new(3, 5, 2, 16, 32, 32).unwrap(),
    ]
    .into_iter()
    .flat_map(|s| [(s, ClassSumsPath::Workgroup), (s, ClassSumsPath::Strided)])
    {
        let b = b.clone().with_class_sums(path);
        let (bb, n, c, s) =
            (shape.batch() as u64, shape.classes() as u64, shape.channels() as u64, shape.spatial() as u64);
        let tiles = match path {
            ClassSumsPath::Workgroup => s.div_ceil(2048),
            ClassSumsPath::Strided => s.div_ceil(2048).min(8) * 256,
        };
        let rows = bb * (n * (c + 1) + 1);
        let loss_groups = (bb * s).div_ceil(256);
        // partials, sums, centroids, stats, loss partials, ping + pong, totals, status, and the
        // 64-byte uniform block.
        let bound = 4
            * (rows * tiles
                + rows
                + bb * n * c
                + bb * n
                + 1
                + 2 * loss_groups
                + 2 * (rows * tiles).max(2 * loss_groups)
                + 4)
            + 64;
        let mut sizes = Vec::new();
        for kind in [ScoresKind::Logits, ScoresKind::Probs] {
            for grad in [true, false] {
                let io = Io { kind, mask: true, grad };
                let plan = b.plan(shape, &Params::default(), io).unwrap();
                let bytes = plan.scratch_bytes();
                assert!(bytes <= bound, "{shape} {io:?}: {bytes} bytes, more than {bound}");
                // A B·N·S buffer alone would be 4·B·N·S bytes. The strided class sums (devices
                // that emulate a GPU on CPU cores) keep a partial a row per invocation, which at
                // 4,096 pixels is 16 pixels' worth.
                if path == ClassSumsPath::Workgroup {
                    assert!(bytes < 4 * bb * n * s / 8, "{shape} {io:?}: {bytes} bytes");
                }
                sizes.push(bytes);
            }
        }
        // Logits need nothing that probabilities do not.
        assert!(sizes.windows(2).all(|w| w[0] == w[1]), "{shape}: {sizes:?}");
        eprintln!(
            "{shape} {path:?}: the plan's own buffers {} bytes, {:.3} bytes a pixel",
            sizes[0],
            sizes[0] as f64 / (bb * s) as f64
        );
    }
    // The local fidelity keeps its two buffers of one sample's N·(C+1) planes, whatever B.
    let shape = Shape::new_2d(4, 3, 1, 32, 32).unwrap();
    let p = Params::default().with_fidelity(Fidelity::Local { sigma: 1.0 });
    let global = b.plan(shape, &Params::default(), Io::TRAIN).unwrap().scratch_bytes();
    let local = b.plan(shape, &p, Io::TRAIN).unwrap().scratch_bytes();
    assert!(local >= global + 2 * 3 * 2 * 32 * 32 * 4, "{local} vs {global}");
}
