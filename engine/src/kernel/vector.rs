//! Vectorised f32 helpers. `exp` over slices, eight values at a time with AVX2: the softmaxes of attention and
//! sampling take an exponential per score, tens of thousands per sequence per step, and libm's scalar `expf` was a
//! tenth of a batched decode step; the SwiGLU activation (`silu(gate) · up`) takes one per MLP feature.
//!
//! Cephes' single-precision algorithm: `x = n·ln 2 + r` with `|r| <= ln 2 / 2` (ln 2 in two parts, so `r` is exact
//! to f32), a degree-6 polynomial for `e^r`, and `2^n` put into the exponent bits. Relative error within 2e-7 of
//! libm's over the range used here (inputs <= 0 after subtracting the maximum; below -87.3 the result is 0).

/// `Σ exp(xs[i] - shift)` through a small stack buffer, without copying `xs` to the heap.
pub fn sum_exp_shifted(xs: &[f32], shift: f32) -> f32 {
    let mut buf = [0f32; 1024];
    xs.chunks(buf.len())
        .map(|c| {
            let chunk = &mut buf[..c.len()];
            chunk.copy_from_slice(c);
            exp_shifted(chunk, shift)
        })
        .sum()
}

/// `xs[i] = exp(xs[i] - shift)`; returns the sum of the results.
pub fn exp_shifted(xs: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { exp_shifted_avx2(xs, shift) };
    }
    xs.iter_mut().fold(0.0, |sum, x| {
        *x = (*x - shift).exp();
        sum + *x
    })
}

/// `out[i] = silu(gate[i]) · up[i]` with `silu(x) = x / (1 + e^-x)`.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && up.len() == out.len());
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked above); the three slices have one length (asserted).
        unsafe { silu_mul_avx2(gate, up, out) };
        return;
    }
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = gate.len();
    let one = _mm256_set1_ps(1.0);
    let mut i = 0;
    // SAFETY: every access is below `n`, the length of all three slices.
    while i + 8 <= n {
        let g = unsafe { _mm256_loadu_ps(gate.as_ptr().add(i)) };
        let u = unsafe { _mm256_loadu_ps(up.as_ptr().add(i)) };
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
        let silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(silu, u)) };
        i += 8;
    }
    for j in i..n {
        out[j] = gate[j] / (1.0 + (-gate[j]).exp()) * up[j];
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shifted_avx2(xs: &mut [f32], shift: f32) -> f32 {
    use std::arch::x86_64::*;
    let mut sum = _mm256_setzero_ps();
    let shift_v = _mm256_set1_ps(shift);
    let mut chunks = xs.chunks_exact_mut(8);
    for chunk in &mut chunks {
        // SAFETY: each chunk holds 8 values.
        let x = unsafe { _mm256_loadu_ps(chunk.as_ptr()) };
        let e = exp8(_mm256_sub_ps(x, shift_v));
        unsafe { _mm256_storeu_ps(chunk.as_mut_ptr(), e) };
        sum = _mm256_add_ps(sum, e);
    }
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds 8 values.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
    let mut total: f32 = lanes.iter().sum();
    for x in chunks.into_remainder() {
        let mut v = [0f32; 8];
        v[0] = *x - shift;
        // SAFETY: `v` holds 8 values.
        unsafe { _mm256_storeu_ps(v.as_mut_ptr(), exp8(_mm256_loadu_ps(v.as_ptr()))) };
        *x = v[0];
        total += v[0];
    }
    total
}

/// `e^x` for eight values (see the module documentation).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn exp8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 = C1 + C2, C1 exact in a few bits so that n·C1 is exact.
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let lo = _mm256_set1_ps(-87.3);
    let underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    let x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.3));
    let n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(C1), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(C2), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let r2 = _mm256_mul_ps(r, r);
    let y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
    let pow2n =
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
    _mm256_andnot_ps(underflow, _mm256_mul_ps(y, pow2n))
}

/// `a · b` in eight independent lanes, which the compiler keeps in one vector register.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_libm_within_2e_7() {
        let xs: Vec<f32> = (0..20_000).map(|i| -90.0 + i as f32 * 0.0045 + 1e-4 * (i % 7) as f32).collect();
        let mut ours = xs.clone();
        // An odd length runs the scalar tail too.
        let sum = exp_shifted(&mut ours[..19_999], -1.5);
        let mut expected_sum = 0f64;
        for (x, e) in xs.iter().zip(&ours).take(19_999) {
            let want = ((x + 1.5) as f64).exp();
            expected_sum += want;
            if x + 1.5 < -87.3 {
                assert_eq!(*e, 0.0);
            } else {
                assert!(((*e as f64) - want).abs() <= 2e-7 * want, "exp({}) = {e}, expected {want}", x + 1.5);
            }
        }
        assert!(((sum as f64) - expected_sum).abs() <= 1e-6 * expected_sum);
    }

    #[test]
    fn silu_mul_matches_the_definition() {
        let gate: Vec<f32> = (0..1001).map(|i| (i as f32 - 500.0) * 0.23).collect();
        let up: Vec<f32> = (0..1001).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
        let mut out = vec![0f32; gate.len()];
        silu_mul(&gate, &up, &mut out);
        for ((&g, &u), &o) in gate.iter().zip(&up).zip(&out) {
            let want = g as f64 / (1.0 + (-g as f64).exp()) * u as f64;
            assert!((o as f64 - want).abs() <= 1e-6 * want.abs() + 1e-30, "silu({g}) * {u} = {o}, expected {want}");
        }
    }
}
