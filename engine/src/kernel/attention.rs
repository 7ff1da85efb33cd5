//! The fused CPU attention's inner loop: one query row against a sequence's visible keys and values, the scores four
//! keys at a time and the weighted sum of values held in registers with AVX2 (a scalar path elsewhere).

use super::vector::{dot, exp_shifted};

/// One query row against `keys` and `values` (`[n, head_dim]` each): `out = softmax(keys · q) · values`.
pub fn attend(q: &[f32], keys: &[f32], values: &[f32], scores: &mut Vec<f32>, out: &mut [f32]) {
    let hd = q.len();
    scores.clear();
    #[cfg(target_arch = "x86_64")]
    if hd.is_multiple_of(8) && super::has_avx2() {
        // SAFETY: AVX2 and FMA are present (checked above); every slice is a whole number of head_dim rows.
        unsafe {
            scores_avx2(q, keys, scores);
            let sum = exp_from_max(scores);
            weighted_sum_avx2(scores, values, 1.0 / sum, out);
        }
        return;
    }
    scores.extend(keys.chunks_exact(hd).map(|k| dot(q, k)));
    let sum = exp_from_max(scores);
    for (&p, v) in scores.iter().zip(values.chunks_exact(hd)) {
        for (o, &x) in out.iter_mut().zip(v) {
            *o += p * x;
        }
    }
    out.iter_mut().for_each(|x| *x /= sum);
}

/// `scores[j] = exp(scores[j] - max)`; returns their sum (the softmax's denominator).
fn exp_from_max(scores: &mut [f32]) -> f32 {
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    exp_shifted(scores, max)
}

/// `scores[j] = q · keys[j]`, four keys at a time (the query chunk loaded once for four, one reduction for four).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scores_avx2(q: &[f32], keys: &[f32], scores: &mut Vec<f32>) {
    use std::arch::x86_64::*;
    let hd = q.len();
    let n = keys.len() / hd;
    scores.resize(n, 0.0);
    let (qp, kp) = (q.as_ptr(), keys.as_ptr());
    let mut j = 0;
    // SAFETY (pointer reads): `keys` holds `n` rows of `hd` values and `q` one; `hd` is a multiple of 8.
    while j + 4 <= n {
        let mut acc = [_mm256_setzero_ps(); 4];
        for l in (0..hd).step_by(8) {
            let qc = unsafe { _mm256_loadu_ps(qp.add(l)) };
            for (kk, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(qc, unsafe { _mm256_loadu_ps(kp.add((j + kk) * hd + l)) }, *a);
            }
        }
        // [k0 k1 k0 k1 | ..], then [k0 k1 k2 k3 | k0 k1 k2 k3]: add the halves.
        let h = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
        let four = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        unsafe { _mm_storeu_ps(scores.as_mut_ptr().add(j), four) };
        j += 4;
    }
    for (jj, s) in scores.iter_mut().enumerate().skip(j) {
        *s = dot(q, &keys[jj * hd..][..hd]);
    }
}

/// `out = scale · Σ_j weights[j] · values[j]`, eight columns of `out` held in registers across all rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_sum_avx2(weights: &[f32], values: &[f32], scale: f32, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let hd = out.len();
    let vp = values.as_ptr();
    // SAFETY (pointer reads and writes): `values` holds `weights.len()` rows of `hd` values; `hd` is a multiple of 8.
    for col in (0..hd).step_by(64) {
        let lanes = ((hd - col) / 8).min(8);
        let mut acc = [_mm256_setzero_ps(); 8];
        for (j, &w) in weights.iter().enumerate() {
            let wv = _mm256_set1_ps(w);
            for (l, a) in acc.iter_mut().enumerate().take(lanes) {
                *a = _mm256_fmadd_ps(wv, unsafe { _mm256_loadu_ps(vp.add(j * hd + col + l * 8)) }, *a);
            }
        }
        let sv = _mm256_set1_ps(scale);
        for (l, a) in acc.iter().enumerate().take(lanes) {
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(col + l * 8), _mm256_mul_ps(*a, sv)) };
        }
    }
}
