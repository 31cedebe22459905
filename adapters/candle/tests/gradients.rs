//! What is candle's own (the op's value and input gradient against the reference, on the
//! suite's cases, are in `conformance.rs`): a small model's parameter gradients through
//! candle's backward against central differences (f64, and f32), and the errors of tensors
//! that do not fit together.

use candle_core::{DType, Device, Tensor, Var};
use msloss_candle::MsLoss;
use msloss_core::rng::SplitMix64;
use msloss_core::{LengthKind, Params, Reduction};

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

/// Tensors that do not fit together are errors that say what is wrong (bad values are the
/// suite's `bad_input`).
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
}
