//! What is burn's own (the op's value and input gradient against the reference, on the suite's
//! cases, are in `conformance.rs`): a small model's parameter gradients through burn's backward
//! against central finite differences (f64), the op on a device without autodiff, tensors
//! whose shapes do not fit together, and the semi-supervised objective.

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Device, Tensor, TensorData};
use msloss_burn::{Error, MsLoss, SemiSupervised, masked_cross_entropy};
use msloss_core::rng::{RandomInputs, SplitMix64};
use msloss_core::{Backend as _, LengthKind, Params, Reduction, Reference, Shape};

fn f64_tensor<const D: usize>(values: &[f64], dims: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values.to_vec(), dims), (device, DType::F64))
}

fn to_f64<const D: usize>(t: &Tensor<D>) -> Vec<f64> {
    t.to_data().try_into_vec_as::<f64>().expect("float tensor")
}

/// Asserts `|a − b| <= abs + rel·|b|` elementwise, printing the first failure.
fn assert_close(what: &str, got: &[f64], want: &[f64], rel: f64, abs: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= abs + rel * w.abs(), "{what}[{i}]: got {g}, want {w}, diff {:e}", (g - w).abs());
    }
}

/// A 3×3 convolution producing the logits from the image: burn's backward (through the conv and
/// the op) equals central differences of the loss wrt some weights and a bias, in f64.
#[test]
fn model_parameter_gradients_match_finite_differences() {
    let device = Device::flex().autodiff();
    let (b, c, n, h, w) = (2, 1, 3, 6, 7);
    let mut rng = SplitMix64::new(42);
    let image: Vec<f64> = (0..b * c * h * w).map(|_| rng.uniform()).collect();
    let weight: Vec<f64> = (0..n * c * 9).map(|_| rng.normal()).collect();
    let bias: Vec<f64> = (0..n).map(|_| 0.3 * rng.normal()).collect();
    // Smooth length (Charbonnier) so that no finite-difference step crosses a kink of |d|.
    let params =
        Params::default().with_lambda(0.1).with_length(LengthKind::Charbonnier).with_reduction(Reduction::Mean);
    let loss = MsLoss::new(params);
    let x = f64_tensor(&image, [b, c, h, w], &device);
    let opts = || ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let eval = |wv: &[f64], bv: &[f64], track: bool| {
        let mut wt = f64_tensor(wv, [n, c, 3, 3], &device);
        let mut bt = f64_tensor(bv, [n], &device);
        if track {
            wt = wt.require_grad();
            bt = bt.require_grad();
        }
        let z = conv2d(x.clone(), wt.clone(), Some(bt.clone()), opts());
        (loss.forward(z, x.clone(), None).unwrap(), wt, bt)
    };
    let (e, wt, bt) = eval(&weight, &bias, true);
    let grads = e.backward();
    let gw = to_f64(&wt.grad(&grads).unwrap());
    let gb = to_f64(&bt.grad(&grads).unwrap());

    let value = |wv: &[f64], bv: &[f64]| to_f64(&eval(wv, bv, false).0)[0];
    let step = 1e-5;
    for &k in &[0usize, 4, 13, 26] {
        let (mut plus, mut minus) = (weight.clone(), weight.clone());
        plus[k] += step;
        minus[k] -= step;
        let fd = (value(&plus, &bias) - value(&minus, &bias)) / (2.0 * step);
        assert_close(&format!("d/dweight[{k}]"), &[gw[k]], &[fd], 1e-6, 1e-9);
    }
    for k in 0..n {
        let (mut plus, mut minus) = (bias.clone(), bias.clone());
        plus[k] += step;
        minus[k] -= step;
        let fd = (value(&weight, &plus) - value(&weight, &minus)) / (2.0 * step);
        assert_close(&format!("d/dbias[{k}]"), &[gb[k]], &[fd], 1e-6, 1e-9);
    }
    // The bias gradient of a softmax-invariant loss sums to zero over the classes.
    assert!(gb.iter().sum::<f64>().abs() < 1e-9, "bias gradient {gb:?}");
}

/// Without autodiff the op returns the same value; tensors whose shapes do not fit together
/// are a typed error (bad values are the suite's `bad_input`).
#[test]
fn plain_device_and_errors() {
    let device = Device::flex();
    let shape = Shape::new_2d(1, 2, 1, 4, 4).unwrap();
    let r = RandomInputs::<f64>::new(shape, 3);
    let params = Params::default();
    let want = Reference
        .energy(
            &msloss_core::Input::new(shape, msloss_core::Scores::Logits(&r.logits), &r.image, None).unwrap(),
            &params,
            &mut Reference.workspace(),
        )
        .unwrap();
    let loss = MsLoss::new(params);
    let z = f64_tensor(&r.logits, [1, 2, 4, 4], &device);
    let x = f64_tensor(&r.image, [1, 1, 4, 4], &device);
    let e = loss.forward(z.clone(), x.clone(), None).unwrap();
    assert_close("energy", &to_f64(&e), &[want.total], 1e-12, 1e-14);

    let wrong = f64_tensor(&r.image[..12], [1, 1, 3, 4], &device);
    let err = loss.forward(z.clone(), wrong, None).unwrap_err();
    assert!(matches!(err, Error::Loss(msloss_core::Error::DimMismatch { dim: "H", expected: 4, got: 3, .. })), "{err}");
}

/// `masked_cross_entropy` against a hand computation, and the semi-supervised objective's value
/// and gradient are `α·CE + β·MS` and `α·∇CE + β·∇MS`.
#[test]
fn semi_supervised_objective() {
    let device = Device::flex().autodiff();
    // One sample, two classes, 1×2 pixels; only the first pixel is labelled (class 1).
    let logits = [0.0, 1.0, /* class 1 */ 2.0, -1.0];
    let z = f64_tensor(&logits, [1, 2, 1, 2], &device);
    let one_hot = f64_tensor(&[0.0, 1.0, 1.0, 0.0], [1, 2, 1, 2], &device);
    let weight = f64_tensor(&[1.0, 0.0], [1, 1, 1, 2], &device);
    let ce = to_f64(&masked_cross_entropy(z, one_hot.clone(), weight.clone()))[0];
    // −log softmax((0, 2))_1 = log(1 + e^−2).
    assert_close("ce", &[ce], &[(1.0 + (-2.0f64).exp()).ln()], 1e-14, 1e-15);

    let shape = Shape::new_2d(1, 2, 1, 1, 2).unwrap();
    let image = [0.2, 0.9];
    let params = Params::default().with_lambda(0.1);
    let (alpha, beta) = (0.7, 3.0);
    let mut ms_grad = vec![0.0; 4];
    let ms = Reference
        .energy_grad_logits(shape, &logits, &image, None, &params, &mut ms_grad, &mut Reference.workspace())
        .unwrap();
    let z = f64_tensor(&logits, [1, 2, 1, 2], &device).require_grad();
    let x = f64_tensor(&image, [1, 1, 1, 2], &device);
    let semi = SemiSupervised::new(alpha, beta, MsLoss::new(params));
    let parts = semi.forward(z.clone(), x, None, Some((one_hot, weight))).unwrap();
    assert_close("total", &to_f64(&parts.total), &[alpha * ce + beta * ms.total], 1e-12, 1e-14);
    let g = to_f64(&z.grad(&parts.total.backward()).unwrap());
    // ∇CE at the labelled pixel: softmax − one_hot; zero at the unlabelled one.
    let p1 = 1.0 / (1.0 + (-2.0f64).exp()); // softmax((0, 2))_1
    let ce_grad = [1.0 - p1, 0.0, p1 - 1.0, 0.0];
    let want: Vec<f64> = (0..4).map(|i| alpha * ce_grad[i] + beta * ms_grad[i]).collect();
    assert_close("gradient", &g, &want, 1e-10, 1e-13);
}
