//! The kernels' float types as native registers of an instruction set (pulp's `Simd`): the few
//! element-wise operations pass 2 uses, named once for `f32` and `f64`, and loads and stores
//! through `bytemuck` (safe, unaligned). Each operation rounds as the scalar one does, so every
//! register width gives the same bits.

use pulp::{Simd, bytemuck};

/// `f32` or `f64` with their registers; also seals [`crate::CpuFloat`] (implemented for the two
/// only, in a module no user can name). `vany` says whether a mask has a lane set.
pub trait Wide: Copy + bytemuck::Pod + PartialOrd {
    /// A register of this type under `S`.
    type R<S: Simd>: Copy + bytemuck::Pod;
    /// A lane mask of such a register.
    type M<S: Simd>: Copy;
    fn vsplat<S: Simd>(s: S, v: Self) -> Self::R<S>;
    fn vadd<S: Simd>(s: S, a: Self::R<S>, b: Self::R<S>) -> Self::R<S>;
    fn vsub<S: Simd>(s: S, a: Self::R<S>, b: Self::R<S>) -> Self::R<S>;
    fn vmul<S: Simd>(s: S, a: Self::R<S>, b: Self::R<S>) -> Self::R<S>;
    fn vdiv<S: Simd>(s: S, a: Self::R<S>, b: Self::R<S>) -> Self::R<S>;
    fn vsqrt<S: Simd>(s: S, a: Self::R<S>) -> Self::R<S>;
    fn vabs<S: Simd>(s: S, a: Self::R<S>) -> Self::R<S>;
    /// Lane `l` of `a` moved to lane `l + 1`, the last to lane 0.
    fn vshift<S: Simd>(s: S, a: Self::R<S>) -> Self::R<S>;
    fn vlt<S: Simd>(s: S, a: Self::R<S>, b: Self::R<S>) -> Self::M<S>;
    fn vgt<S: Simd>(s: S, a: Self::R<S>, b: Self::R<S>) -> Self::M<S>;
    fn vor<S: Simd>(s: S, a: Self::M<S>, b: Self::M<S>) -> Self::M<S>;
    fn vany<S: Simd>(s: S, m: Self::M<S>) -> bool;
    fn vselect<S: Simd>(s: S, m: Self::M<S>, a: Self::R<S>, b: Self::R<S>) -> Self::R<S>;
}

/// [`Wide`] for `$t` through pulp's methods of its registers `$r` and masks `$m`.
macro_rules! wide {
    ($t:ty, $r:ident, $m:ident, $lanes:ident, $splat:ident, $sqrt:ident, $abs:ident, $rot:ident, $or:ident, $first:ident,
     $select:ident, [$($bin:ident $bm:ident),*], [$($cmp:ident $cm:ident),*]) => {
        impl Wide for $t {
            type R<S: Simd> = S::$r;
            type M<S: Simd> = S::$m;
            #[inline(always)]
            fn vsplat<S: Simd>(s: S, v: Self) -> S::$r { s.$splat(v) }
            $(#[inline(always)] fn $bin<S: Simd>(s: S, a: S::$r, b: S::$r) -> S::$r { s.$bm(a, b) })*
            $(#[inline(always)] fn $cmp<S: Simd>(s: S, a: S::$r, b: S::$r) -> S::$m { s.$cm(a, b) })*
            #[inline(always)]
            fn vsqrt<S: Simd>(s: S, a: S::$r) -> S::$r { s.$sqrt(a) }
            #[inline(always)]
            fn vabs<S: Simd>(s: S, a: S::$r) -> S::$r { s.$abs(a) }
            #[inline(always)]
            fn vshift<S: Simd>(s: S, a: S::$r) -> S::$r { s.$rot(a, 1) }
            #[inline(always)]
            fn vor<S: Simd>(s: S, a: S::$m, b: S::$m) -> S::$m { s.$or(a, b) }
            #[inline(always)]
            fn vany<S: Simd>(s: S, m: S::$m) -> bool { s.$first(m) < S::$lanes }
            #[inline(always)]
            fn vselect<S: Simd>(s: S, m: S::$m, a: S::$r, b: S::$r) -> S::$r { s.$select(m, a, b) }
        }
    };
}

wide!(f32, f32s, m32s, F32_LANES, splat_f32s, sqrt_f32s, abs_f32s, rotate_right_f32s, or_m32s, first_true_m32s, select_f32s,
    [vadd add_f32s, vsub sub_f32s, vmul mul_f32s, vdiv div_f32s], [vlt less_than_f32s, vgt greater_than_f32s]);
wide!(f64, f64s, m64s, F64_LANES, splat_f64s, sqrt_f64s, abs_f64s, rotate_right_f64s, or_m64s, first_true_m64s, select_f64s,
    [vadd add_f64s, vsub sub_f64s, vmul mul_f64s, vdiv div_f64s], [vlt less_than_f64s, vgt greater_than_f64s]);

/// Lanes of a register of `T` under `S`.
#[inline(always)]
pub(crate) fn lanes<T: Wide, S: Simd>(_: S) -> usize {
    size_of::<T::R<S>>() / size_of::<T>()
}

/// The register of `src`'s first lanes (`src` must hold a register's worth).
#[inline(always)]
pub(crate) fn load<T: Wide, S: Simd>(s: S, src: &[T]) -> T::R<S> {
    bytemuck::pod_read_unaligned(bytemuck::cast_slice(&src[..lanes::<T, S>(s)]))
}

/// Stores `v` in `dst`'s first lanes.
#[inline(always)]
pub(crate) fn store<T: Wide, S: Simd>(s: S, dst: &mut [T], v: T::R<S>) {
    dst[..lanes::<T, S>(s)].copy_from_slice(bytemuck::cast_slice(core::slice::from_ref(&v)));
}

/// The lanes of `v` as values.
#[inline(always)]
pub(crate) fn values<T: Wide, S: Simd>(v: &T::R<S>) -> &[T] {
    bytemuck::cast_slice(core::slice::from_ref(v))
}
