//! The CPU backend computes in `f32` and `f64` (the kernels are compiled for those two in this
//! crate); a `Real` of the caller's own gets a typed error, while the generic reference backend
//! takes it. The type here is `f64` in a wrapper, every operation passed through.

use core::num::FpCategory;
use core::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Rem, RemAssign, Sub, SubAssign};

use msloss_core::rng::RandomInputs;
use msloss_core::{Backend, Error, Input, Params, Real, Reference, Scores, Shape};
use msloss_cpu::CpuBackend;
use num_traits::{Float, FromPrimitive, Num, NumCast, One, ToPrimitive, Zero};

/// An `f64` that is not `f64`.
#[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd)]
struct Wrapped(f64);

impl core::fmt::Display for Wrapped {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0.fmt(f)
    }
}

/// The binary operators and their assigning forms, on the wrapped values.
macro_rules! ops {
    ($($op:ident $f:ident $assign:ident $fa:ident),*) => {$(
        impl $op for Wrapped {
            type Output = Self;
            fn $f(self, o: Self) -> Self {
                Self(self.0.$f(o.0))
            }
        }
        impl $assign for Wrapped {
            fn $fa(&mut self, o: Self) {
                self.0.$fa(o.0);
            }
        }
    )*};
}

ops!(Add add AddAssign add_assign, Sub sub SubAssign sub_assign, Mul mul MulAssign mul_assign,
     Div div DivAssign div_assign, Rem rem RemAssign rem_assign);

impl Neg for Wrapped {
    type Output = Self;
    fn neg(self) -> Self {
        Self(-self.0)
    }
}

impl Zero for Wrapped {
    fn zero() -> Self {
        Self(0.0)
    }
    fn is_zero(&self) -> bool {
        self.0 == 0.0
    }
}

impl One for Wrapped {
    fn one() -> Self {
        Self(1.0)
    }
}

impl Num for Wrapped {
    type FromStrRadixErr = <f64 as Num>::FromStrRadixErr;
    fn from_str_radix(s: &str, radix: u32) -> Result<Self, Self::FromStrRadixErr> {
        f64::from_str_radix(s, radix).map(Self)
    }
}

impl ToPrimitive for Wrapped {
    fn to_i64(&self) -> Option<i64> {
        self.0.to_i64()
    }
    fn to_u64(&self) -> Option<u64> {
        self.0.to_u64()
    }
    fn to_f64(&self) -> Option<f64> {
        Some(self.0)
    }
}

impl FromPrimitive for Wrapped {
    fn from_i64(n: i64) -> Option<Self> {
        f64::from_i64(n).map(Self)
    }
    fn from_u64(n: u64) -> Option<Self> {
        f64::from_u64(n).map(Self)
    }
    fn from_f64(n: f64) -> Option<Self> {
        Some(Self(n))
    }
}

impl NumCast for Wrapped {
    fn from<N: ToPrimitive>(n: N) -> Option<Self> {
        n.to_f64().map(Self)
    }
}

/// `Float`'s methods on the wrapped value: those that take and give `Self`, with any more
/// arguments of `Self` (`self_args`), those that give something else (`to`), and constants.
macro_rules! float {
    (self_args: $($f:ident($($a:ident),*)),*; to: $($g:ident -> $t:ty),*; consts: $($c:ident),*) => {
        $(fn $f(self $(, $a: Self)*) -> Self { Self(self.0.$f($($a.0),*)) })*
        $(fn $g(self) -> $t { self.0.$g() })*
        $(fn $c() -> Self { Self(f64::$c()) })*
    };
}

impl Float for Wrapped {
    float!(
        self_args: floor(), ceil(), round(), trunc(), fract(), abs(), signum(), recip(), sqrt(), exp(), exp2(),
            ln(), log2(), log10(), cbrt(), sin(), cos(), tan(), asin(), acos(), atan(), exp_m1(), ln_1p(), sinh(),
            cosh(), tanh(), asinh(), acosh(), atanh(), mul_add(a, b), powf(n), log(base), max(o), min(o),
            hypot(o), atan2(o);
        to: is_nan -> bool, is_infinite -> bool, is_finite -> bool, is_normal -> bool, classify -> FpCategory,
            is_sign_positive -> bool, is_sign_negative -> bool, integer_decode -> (u64, i16, i8);
        consts: nan, infinity, neg_infinity, neg_zero, min_value, min_positive_value, max_value, epsilon
    );
    #[allow(deprecated, reason = "a required method of the trait")]
    fn abs_sub(self, o: Self) -> Self {
        Self((self.0 - o.0).max(0.0))
    }
    fn powi(self, n: i32) -> Self {
        Self(self.0.powi(n))
    }
    fn sin_cos(self) -> (Self, Self) {
        let (s, c) = self.0.sin_cos();
        (Self(s), Self(c))
    }
}

impl Real for Wrapped {
    const NAME: &'static str = "wrapped f64";
    fn from_f64_lossy(v: f64) -> Self {
        Self(v)
    }
    fn to_f64_lossless(self) -> f64 {
        self.0
    }
}

#[test]
fn another_real_type_is_refused_with_a_typed_error() {
    let shape = Shape::new_2d(1, 3, 2, 9, 21).expect("valid shape");
    let data = RandomInputs::<f64>::new(shape, 5);
    let wrap = |v: &[f64]| v.iter().map(|&x| Wrapped(x)).collect::<Vec<_>>();
    let (logits, image) = (wrap(&data.logits), wrap(&data.image));
    let input = Input::new(shape, Scores::Logits(&logits), &image, None).expect("inputs fit the shape");
    let params = Params::default();
    let mut grad = vec![Wrapped(f64::NAN); shape.scores_len()];

    // The type is a working `Real`: the reference computes with it, as it does in `f64`.
    let reference = Reference;
    let mut rws = Backend::<Wrapped>::workspace(&reference);
    let e = reference.energy_and_grad(&input, &params, &mut grad, &mut rws).expect("the reference takes any Real");
    let want = {
        let input = Input::new(shape, Scores::Logits(&data.logits), &data.image, None).expect("inputs fit the shape");
        let mut ws = Backend::<f64>::workspace(&reference);
        reference.energy(&input, &params, &mut ws).expect("valid input")
    };
    assert_eq!(e.total.0, want.total);

    // The CPU backend refuses it, and writes nothing.
    let cpu = CpuBackend::with_threads(2);
    let mut ws = cpu.workspace();
    let before: Vec<u64> = grad.iter().map(|g| g.0.to_bits()).collect();
    match cpu.energy_and_grad(&input, &params, &mut grad, &mut ws) {
        Err(Error::Unsupported { backend: "cpu", what }) => assert!(what.contains("f32 and f64"), "{what}"),
        other => panic!("expected Unsupported from the CPU backend, got {other:?}"),
    }
    assert!(grad.iter().map(|g| g.0.to_bits()).eq(before), "the gradient is untouched");
}
