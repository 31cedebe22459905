//! Closed-form cases, invariances, extremes and bad input for the reference backend.

use msloss_core::rng::RandomInputs;
use msloss_core::{Backend, Energy, Error, Input, LengthKind, Outputs, Params, Reduction, Reference, Scores, Shape};

fn eval(
    shape: Shape,
    scores: Scores<'_, f64>,
    image: &[f64],
    mask: Option<&[f64]>,
    p: &Params,
) -> (Energy<f64>, Vec<f64>, Vec<f64>) {
    let input = Input::new(shape, scores, image, mask).unwrap();
    let mut g = vec![0.0; shape.scores_len()];
    let mut c = vec![0.0; shape.centroids_len()];
    let e = Reference
        .evaluate(&input, p, Outputs { grad: Some(&mut g), centroids: Some(&mut c) }, &mut Reference.workspace())
        .unwrap();
    (e, g, c)
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-300)
}

#[test]
fn hard_labels_on_a_two_region_image_have_zero_fidelity() {
    // x = 0.2 on the left half, 0.7 on the right; y = the indicator of each half. Then
    // c_0 = 0.2·A_0/(A_0+ε), c_1 = 0.7·A_1/(A_1+ε), so F = Σ_n A_n·(x_n·ε/(A_n+ε))² ≈ 1e-17.
    let shape = Shape::new_2d(1, 2, 1, 3, 4).unwrap();
    let image: Vec<f64> = (0..12).map(|i| if i % 4 < 2 { 0.2 } else { 0.7 }).collect();
    let y0: Vec<f64> = (0..12).map(|i| if i % 4 < 2 { 1.0 } else { 0.0 }).collect();
    let probs: Vec<f64> = y0.iter().copied().chain(y0.iter().map(|v| 1.0 - v)).collect();
    let (e, _, c) = eval(shape, Scores::Probs(&probs), &image, None, &Params::default());
    assert!(e.fidelity.abs() < 1e-12, "{e:?}");
    assert!(close(c[0], 0.2, 1e-8) && close(c[1], 0.7, 1e-8), "{c:?}");
    // Length: 3 rows, one vertical boundary each, |d| = 1 per class: Len = 2 classes · 3 = 6.
    assert!(close(e.length, 1e-3 * 6.0, 1e-12), "{e:?}");
}

#[test]
fn constant_probabilities_have_zero_length_and_gradient_of_length() {
    let shape = Shape::new(1, 3, 2, 2, 3, 4).unwrap();
    let data = RandomInputs::<f64>::new(shape, 1);
    let logits = vec![0.5; shape.scores_len()]; // y = 1/3 everywhere
    for kind in LengthKind::ALL {
        let p = Params { lambda: 1.0, length: kind, ..Params::default() };
        let (e, _, _) = eval(shape, Scores::Logits(&logits), &data.image, Some(&data.mask), &p);
        assert_eq!(e.length, 0.0, "{kind:?}");
    }
}

/// The 2×2 example: one sample, N = 2, C = 1,
/// y_0 = [[0.9, 0.6], [0.2, 0.0]], y_1 = 1 − y_0, x = [[0, 1], [2, 3]].
fn two_by_two() -> (Shape, Vec<f64>, Vec<f64>) {
    let shape = Shape::new_2d(1, 2, 1, 2, 2).unwrap();
    let y0 = [0.9, 0.6, 0.2, 0.0];
    let probs = y0.iter().copied().chain(y0.iter().map(|v| 1.0 - v)).collect();
    (shape, probs, vec![0.0, 1.0, 2.0, 3.0])
}

#[test]
fn hand_computed_two_by_two_fidelity() {
    let (shape, probs, image) = two_by_two();
    // A_0 = 0.9+0.6+0.2+0 = 1.7, S_0 = 0.6·1 + 0.2·2 = 1.0, c_0 = 1/(1.7+ε).
    // A_1 = 0.1+0.4+0.8+1 = 2.3, S_1 = 0.4·1 + 0.8·2 + 1·3 = 5.0, c_1 = 5/(2.3+ε).
    let eps: f64 = 1e-8;
    let c0: f64 = 1.0 / (1.7 + eps);
    let c1: f64 = 5.0 / (2.3 + eps);
    let f0 = 0.9 * c0 * c0 + 0.6 * (1.0 - c0).powi(2) + 0.2 * (2.0 - c0).powi(2);
    let f1 = 0.1 * c1 * c1 + 0.4 * (1.0 - c1).powi(2) + 0.8 * (2.0 - c1).powi(2) + 1.0 * (3.0 - c1).powi(2);
    let p = Params { lambda: 0.0, ..Params::default() };
    let (e, _, c) = eval(shape, Scores::Probs(&probs), &image, None, &p);
    assert!(close(e.fidelity, f0 + f1, 1e-14), "{} vs {}", e.fidelity, f0 + f1);
    assert!(close(c[0], c0, 1e-15) && close(c[1], c1, 1e-15));
    assert_eq!(e.length, 0.0);
}

#[test]
fn hand_computed_two_by_two_length_per_kind() {
    let (shape, probs, image) = two_by_two();
    // Class 0 differences: along W (row 0) 0.6−0.9 = −0.3, (row 1) 0.0−0.2 = −0.2;
    // along H (col 0) 0.2−0.9 = −0.7, (col 1) 0.0−0.6 = −0.6. Class 1's are their negatives.
    // L1: 2·(0.3+0.2+0.7+0.6) = 3.6.  L2: 2·(0.09+0.04+0.49+0.36) = 1.96.
    // Charbonnier per pixel (d_W, d_H): (0,0): (−0.3, −0.7); (0,1): (—, −0.6); (1,0): (−0.2, —); (1,1): none.
    let delta: f64 = 0.05;
    let ch = |q: f64| (q + delta * delta).sqrt() - delta;
    let charb = 2.0 * (ch(0.09 + 0.49) + ch(0.36) + ch(0.04) + ch(0.0));
    for (kind, want) in [(LengthKind::L1, 3.6), (LengthKind::L2, 1.96), (LengthKind::Charbonnier, charb)] {
        let p = Params { lambda: 1.0, fidelity_weight: 0.0, length: kind, delta, ..Params::default() };
        let (e, _, _) = eval(shape, Scores::Probs(&probs), &image, None, &p);
        assert!(close(e.length, want, 1e-14), "{kind:?}: {} vs {want}", e.length);
        assert_eq!(e.fidelity, 0.0);
        // Mean reduction divides by the 4 valid pixels.
        let (em, _, _) = eval(shape, Scores::Probs(&probs), &image, None, &p.with_reduction(Reduction::Mean));
        assert!(close(em.length, want / 4.0, 1e-14));
    }
    // With the top-right pixel masked out, only pairs with both pixels valid count:
    // L1 keeps (0,0)-(1,0) |−0.7| and (1,0)-(1,1) |−0.2| per class: 2·0.9 = 1.8.
    let mask = [1.0, 0.0, 1.0, 1.0];
    let p = Params { lambda: 1.0, fidelity_weight: 0.0, ..Params::default() };
    let (e, _, _) = eval(shape, Scores::Probs(&probs), &image, Some(&mask), &p);
    assert!(close(e.length, 1.8, 1e-14), "{}", e.length);
}

#[test]
fn invariances() {
    let shape = Shape::new(2, 3, 2, 2, 5, 6).unwrap();
    let d = RandomInputs::<f64>::new(shape, 4);
    let p = Params { lambda: 0.05, ..Params::default() };
    let (e, g, _) = eval(shape, Scores::Logits(&d.logits), &d.image, Some(&d.mask), &p);

    // Adding a constant to x leaves E unchanged (exactly so as ε_c → 0).
    let shifted: Vec<f64> = d.image.iter().map(|v| v + 3.0).collect();
    let (e2, _, _) = eval(shape, Scores::Logits(&d.logits), &shifted, Some(&d.mask), &p);
    assert!(close(e.total, e2.total, 1e-8), "{e:?} vs {e2:?}");

    // Scaling x by s scales F by s² and leaves the length alone.
    let s = 2.5;
    let scaled: Vec<f64> = d.image.iter().map(|v| v * s).collect();
    let (e3, _, _) = eval(shape, Scores::Logits(&d.logits), &scaled, Some(&d.mask), &p);
    assert!(close(e3.fidelity, s * s * e.fidelity, 1e-8) && e3.length == e.length);

    // Permuting classes permutes the gradient.
    let sp = shape.spatial();
    let perm = [2usize, 0, 1];
    let mut permuted = d.logits.clone();
    for b in 0..2 {
        for (n, &pn) in perm.iter().enumerate() {
            permuted[(b * 3 + n) * sp..(b * 3 + n + 1) * sp]
                .copy_from_slice(&d.logits[(b * 3 + pn) * sp..(b * 3 + pn + 1) * sp]);
        }
    }
    let (e4, g4, _) = eval(shape, Scores::Logits(&permuted), &d.image, Some(&d.mask), &p);
    assert!(close(e4.total, e.total, 1e-12));
    for b in 0..2 {
        for (n, &pn) in perm.iter().enumerate() {
            for s in 0..sp {
                let (a, bb) = (g4[(b * 3 + n) * sp + s], g[(b * 3 + pn) * sp + s]);
                assert!((a - bb).abs() <= 1e-12 * (1.0 + a.abs()), "{a} vs {bb}");
            }
        }
    }

    // A batch's E is the sum of its samples' E (sum reduction).
    let one = shape.with_batch(1).unwrap();
    let mut total = 0.0;
    for b in 0..2 {
        let sc = &d.logits[b * one.scores_len()..(b + 1) * one.scores_len()];
        let im = &d.image[b * one.image_len()..(b + 1) * one.image_len()];
        let m = &d.mask[b * one.mask_len()..(b + 1) * one.mask_len()];
        total += eval(one, Scores::Logits(sc), im, Some(m), &p).0.total;
    }
    assert!(close(total, e.total, 1e-12));
}

#[test]
fn extremes_are_finite_and_correct() {
    let shape = Shape::new_2d(1, 3, 2, 4, 5).unwrap();
    let d = RandomInputs::<f64>::new(shape, 8);
    let sp = shape.spatial();
    // An empty class: y_2 = 0 everywhere. Its centroid is 0/(0+ε) = 0 and everything stays finite.
    let mut probs = d.probs.clone();
    for s in 0..sp {
        let (a, b) = (probs[s], probs[sp + s]);
        probs[s] = a / (a + b);
        probs[sp + s] = b / (a + b);
        probs[2 * sp + s] = 0.0;
    }
    let (e, g, c) = eval(shape, Scores::Probs(&probs), &d.image, None, &Params::default());
    assert!(e.total.is_finite() && g.iter().all(|v| v.is_finite()));
    assert_eq!(&c[4..6], &[0.0, 0.0]);
    // Without the length term, the empty class's gradient is ‖x − 0‖² − 2·ε/(0+ε)·⟨0, x⟩ = ‖x‖².
    let (_, g, _) = eval(shape, Scores::Probs(&probs), &d.image, None, &Params::default().with_lambda(0.0));
    let x2: f64 = d.image[0] * d.image[0] + d.image[sp] * d.image[sp];
    assert!(close(g[2 * sp], x2, 1e-12), "{} vs {x2}", g[2 * sp]);

    // A constant image: every centroid equals it, F ≈ 0.
    let flat = vec![0.4; shape.image_len()];
    let (e, _, _) = eval(shape, Scores::Logits(&d.logits), &flat, None, &Params::default());
    assert!(e.fidelity.abs() < 1e-12);

    // Logits ±1e4: the softmax saturates without overflow.
    let big: Vec<f64> = d.logits.iter().map(|v| if *v > 0.0 { 1e4 } else { -1e4 }).collect();
    let (e, g, _) = eval(shape, Scores::Logits(&big), &d.image, None, &Params::default());
    assert!(e.total.is_finite() && g.iter().all(|v| v.is_finite()));

    // N = 1: y ≡ 1, so F = Σ ‖x − mean‖² (up to ε), Len = 0, ∂E/∂z = 0.
    let one = Shape::new_2d(1, 1, 1, 3, 3).unwrap();
    let x: Vec<f64> = (0..9).map(|i| i as f64).collect();
    let (e, g, c) = eval(one, Scores::Logits(&[0.3; 9]), &x, None, &Params::default());
    assert!(close(c[0], 4.0, 1e-8) && close(e.fidelity, 60.0, 1e-8) && e.length == 0.0, "{e:?}");
    assert!(g.iter().all(|v| *v == 0.0));
}

#[test]
fn bad_input_gives_typed_errors() {
    let shape = Shape::new_2d(1, 2, 1, 2, 2).unwrap();
    let probs = [0.5; 8];
    let image = [0.0; 4];
    let p = Params::default();
    let run =
        |scores: Scores<'_, f64>, image: &[f64], mask: Option<&[f64]>, p: &Params| -> Result<Energy<f64>, Error> {
            let input = Input::new(shape, scores, image, mask)?;
            Reference.energy(&input, p, &mut Reference.workspace())
        };
    assert!(matches!(Shape::new_2d(1, 0, 1, 2, 2), Err(Error::EmptyDimension { .. })));
    assert!(matches!(Shape::new(usize::MAX, 2, 2, 2, 2, 2), Err(Error::TooLarge { .. })));
    assert!(matches!(
        Shape::from_dims(&[1, 2, 2, 2], &[2, 1, 2, 2], None),
        Err(Error::DimMismatch { what: "image", dim: "B", expected: 1, got: 2 })
    ));
    assert!(matches!(Shape::from_dims(&[1, 2, 2], &[1, 1, 2, 2], None), Err(Error::BadRank { rank: 3, .. })));
    assert!(matches!(
        Shape::from_dims(&[1, 2, 2, 2], &[1, 1, 2, 2], Some(&[1, 3, 2])),
        Err(Error::DimMismatch { what: "mask", dim: "H", .. })
    ));
    assert!(matches!(
        run(Scores::Probs(&probs[..7]), &image, None, &p),
        Err(Error::BufferLength { expected: 8, got: 7, .. })
    ));
    assert!(matches!(
        run(Scores::Probs(&probs), &image[..3], None, &p),
        Err(Error::BufferLength { what: "image", .. })
    ));
    let mut bad = probs;
    bad[3] = -0.1;
    assert!(matches!(run(Scores::Probs(&bad), &image, None, &p), Err(Error::NegativeProbability { index: 3, .. })));
    bad[3] = f64::NAN;
    assert!(matches!(
        run(Scores::Logits(&bad), &image, None, &p),
        Err(Error::NonFinite { what: "logits", index: 3, .. })
    ));
    let inf_image = [0.0, f64::INFINITY, 0.0, 0.0];
    assert!(matches!(
        run(Scores::Probs(&probs), &inf_image, None, &p),
        Err(Error::NonFinite { what: "image", index: 1, .. })
    ));
    assert!(matches!(
        run(Scores::Probs(&probs), &image, Some(&[1.0, 0.5, 1.0, 1.0]), &p),
        Err(Error::BadMask { index: 1, .. })
    ));
    let mean = p.with_reduction(Reduction::Mean);
    assert!(matches!(run(Scores::Probs(&probs), &image, Some(&[0.0; 4]), &mean), Err(Error::EmptyMask)));
    assert!(matches!(
        run(Scores::Probs(&probs), &image, None, &p.with_lambda(-1.0)),
        Err(Error::BadParam { name: "lambda", .. })
    ));
    let no_delta = Params { delta: 0.0, ..p };
    assert!(matches!(run(Scores::Probs(&probs), &image, None, &no_delta), Err(Error::BadParam { name: "delta", .. })));
    // Output buffers of the wrong length.
    let input = Input::new(shape, Scores::Probs(&probs), &image, None).unwrap();
    let mut short = [0.0; 5];
    let r =
        Reference.evaluate(&input, &p, Outputs { grad: Some(&mut short), centroids: None }, &mut Reference.workspace());
    assert!(matches!(r, Err(Error::BufferLength { what: "gradient", .. })));
    // Messages say what was expected and what came.
    let msg = Error::BufferLength { what: "image", shape, expected: 4, got: 3 }.to_string();
    assert!(msg.contains("3") && msg.contains("needs 4"), "{msg}");
}

/// `Gaussian::convolve` against the window sum written out, on planes whose extents are below
/// and above the radius, in 1D, 2D and 3D.
#[test]
fn the_separable_convolution_is_the_window_sum() {
    use msloss_core::Gaussian;
    for (sigma, dims) in [(0.5, [1, 1, 9]), (1.3, [1, 7, 5]), (2.0, [3, 4, 6]), (4.0, [2, 3, 2]), (0.9, [5, 1, 1])] {
        let g = Gaussian::new(sigma);
        let n: usize = dims.iter().product();
        let plane: Vec<f64> = (0..n).map(|i| ((i * 7919) % 23) as f64 / 7.0 - 1.0).collect();
        let [d, h, w] = dims;
        let tap =
            |a: usize, i: usize, j: usize| if dims[a] > 1 { g.tap(i.abs_diff(j)) } else { f64::from(u8::from(i == j)) };
        let mut want = vec![0.0; n];
        for (s, o) in want.iter_mut().enumerate() {
            let (si, sj, sk) = (s / (h * w), (s / w) % h, s % w);
            for (t, v) in plane.iter().enumerate() {
                let (ti, tj, tk) = (t / (h * w), (t / w) % h, t % w);
                *o += tap(0, si, ti) * tap(1, sj, tj) * tap(2, sk, tk) * v;
            }
        }
        let mut got = plane.clone();
        let mut scratch = vec![0.0; n + 2 * d.max(h).max(w)];
        g.convolve(&mut got, dims, &mut scratch);
        for (s, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-14, "σ {sigma}, {dims:?}, pixel {s}: {a} against {b}");
        }
    }
}
