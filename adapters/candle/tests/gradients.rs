//! The candle op's value and gradients: against msloss's analytic gradient, and a small
//! model's parameter gradients through candle's backward against central differences (f64).

use candle_core::{DType, Device, Tensor, Var};
use msloss_candle::MsLoss;
use msloss_core::rng::{RandomInputs, SplitMix64};
use msloss_core::{Backend as _, LengthKind, Params, Reduction, Reference, Shape};

/// Asserts `|a − b| <= abs + rel·|b|` elementwise, printing the first failure.
fn assert_close(what: &str, got: &[f64], want: &[f64], rel: f64, abs: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= abs + rel * w.abs(), "{what}[{i}]: got {g}, want {w}, diff {:e}", (g - w).abs());
    }
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all().and_then(|t| t.to_dtype(DType::F64)).and_then(|t| t.to_vec1()).expect("a float tensor")
}

/// The op's input gradient is msloss's analytic gradient times the upstream gradient; its value
/// is the reference energy; 2D with a mask and 3D without, f64.
#[test]
fn input_gradient_is_mslosss_analytic_gradient() {
    let dev = Device::Cpu;
    let cases = [
        (Shape::new_2d(2, 3, 2, 5, 6).unwrap(), true, Params::default().with_lambda(0.05)),
        (Shape::new(1, 3, 1, 3, 4, 5).unwrap(), false, Params::default().with_reduction(Reduction::Mean)),
    ];
    for (case, (shape, masked, params)) in cases.into_iter().enumerate() {
        let r = RandomInputs::<f64>::new(shape, 200 + case as u64);
        let mask = masked.then_some(&r.mask[..]);
        let mut want_grad = vec![0.0; shape.scores_len()];
        let want = Reference
            .energy_grad_logits(shape, &r.logits, &r.image, mask, &params, &mut want_grad, &mut Reference.workspace())
            .unwrap();
        let (b, n, c, [d, h, w]) = (shape.batch(), shape.classes(), shape.channels(), shape.spatial_dims());
        let (zdims, xdims, mdims) = if d == 1 {
            (vec![b, n, h, w], vec![b, c, h, w], vec![b, 1, h, w])
        } else {
            (vec![b, n, d, h, w], vec![b, c, d, h, w], vec![b, 1, d, h, w])
        };
        let z = Var::from_tensor(&Tensor::from_vec(r.logits.clone(), zdims, &dev).unwrap()).unwrap();
        let x = Tensor::from_vec(r.image.clone(), xdims, &dev).unwrap();
        let m = masked.then(|| Tensor::from_vec(r.mask.clone(), mdims, &dev).unwrap());
        let e = MsLoss::new(params).forward(z.as_tensor(), &x, m.as_ref()).unwrap();
        assert_eq!(e.dims(), &[] as &[usize]);
        assert_close("energy", &flat(&e), &[want.total], 1e-12, 1e-14);
        let upstream = 1.5;
        let grads = (e * upstream).unwrap().backward().unwrap();
        let g = flat(grads.get(&z).unwrap());
        let scaled: Vec<f64> = want_grad.iter().map(|g| g * upstream).collect();
        assert_close("gradient", &g, &scaled, 1e-10, 1e-14);
    }
}

/// A 3×3 convolution producing logits from the image: candle's backward through the conv and
/// the op equals central differences of the loss wrt some weights, in f64; f32 agrees with it.
#[test]
fn model_parameter_gradients_match_finite_differences() {
    let dev = Device::Cpu;
    let (b, c, n, h, w) = (2, 1, 3, 6, 7);
    let mut rng = SplitMix64::new(43);
    let image: Vec<f64> = (0..b * c * h * w).map(|_| rng.uniform()).collect();
    let weight: Vec<f64> = (0..n * c * 9).map(|_| rng.normal()).collect();
    let params =
        Params::default().with_lambda(0.1).with_length(LengthKind::Charbonnier).with_reduction(Reduction::Mean);
    let loss = MsLoss::new(params);
    let x = Tensor::from_vec(image.clone(), (b, c, h, w), &dev).unwrap();
    let value = |wv: &[f64]| {
        let wt = Tensor::from_vec(wv.to_vec(), (n, c, 3, 3), &dev).unwrap();
        flat(&loss.forward(&x.conv2d(&wt, 1, 1, 1, 1).unwrap(), &x, None).unwrap())[0]
    };
    let wvar = Var::from_tensor(&Tensor::from_vec(weight.clone(), (n, c, 3, 3), &dev).unwrap()).unwrap();
    let e = loss.forward(&x.conv2d(wvar.as_tensor(), 1, 1, 1, 1).unwrap(), &x, None).unwrap();
    let gw = flat(e.backward().unwrap().get(&wvar).unwrap());
    let step = 1e-5;
    for &k in &[0usize, 5, 17, 26] {
        let (mut plus, mut minus) = (weight.clone(), weight.clone());
        plus[k] += step;
        minus[k] -= step;
        let fd = (value(&plus) - value(&minus)) / (2.0 * step);
        assert_close(&format!("d/dweight[{k}]"), &[gw[k]], &[fd], 1e-6, 1e-9);
    }

    // The same model in f32: the op's gradient comes back in f32 and agrees to f32 accuracy.
    let x32 = x.to_dtype(DType::F32).unwrap();
    let w32 = Var::from_tensor(&wvar.as_tensor().to_dtype(DType::F32).unwrap()).unwrap();
    let e32 = loss.forward(&x32.conv2d(w32.as_tensor(), 1, 1, 1, 1).unwrap(), &x32, None).unwrap();
    assert_eq!(e32.dtype(), DType::F32);
    let g32 = e32.backward().unwrap();
    let g32 = g32.get(&w32).unwrap();
    assert_eq!(g32.dtype(), DType::F32);
    assert_close("f32 weight gradient", &flat(g32), &gw, 1e-3, 1e-5);
}

/// Bad requests are errors that say what is wrong.
#[test]
fn errors() {
    let dev = Device::Cpu;
    let loss = MsLoss::new(Params::default());
    let z = Tensor::zeros((1, 2, 4, 4), DType::F32, &dev).unwrap();
    let x = Tensor::zeros((1, 1, 3, 4), DType::F32, &dev).unwrap();
    let err = loss.forward(&z, &x, None).unwrap_err().to_string();
    assert!(err.contains("H = 3") && err.contains("H = 4"), "{err}");

    let x = Tensor::zeros((1, 1, 4, 4), DType::F64, &dev).unwrap();
    let err = loss.forward(&z, &x, None).unwrap_err().to_string();
    assert!(err.contains("F64") && err.contains("F32"), "{err}");

    let x = Tensor::zeros((1, 1, 4, 4), DType::F32, &dev).unwrap();
    let mask = Tensor::full(0.5f32, (1, 1, 4, 4), &dev).unwrap();
    let err = loss.forward(&z, &x, Some(&mask)).unwrap_err().to_string();
    assert!(err.contains("mask values must be 0 or 1"), "{err}");

    let nan = Tensor::full(f32::NAN, (1, 2, 4, 4), &dev).unwrap();
    let err = loss.forward(&nan, &x, None).unwrap_err().to_string();
    assert!(err.contains("not finite"), "{err}");
}
