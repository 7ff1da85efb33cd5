//! Q8_0 arithmetic on the CPU: quantizing activations to Q8_0 blocks exactly as candle does, and the two batched
//! matmuls over Q8_0 weights, [`avx2`] on candle's own storage (bit-identical to candle's `QMatMul`) and [`vnni`]
//! on a repacked copy for CPUs with AVX-512 VNNI. `model::q8::Q8Matrix` picks one per matrix.

pub mod avx2;
pub mod vnni;

use half::f16;

/// Values per Q8_0 block.
pub const BLOCK: usize = 32;
/// Bytes of one GGUF Q8_0 block: an f16 scale and 32 signed bytes.
pub const BLOCK_BYTES: usize = 2 + BLOCK;

/// Quantizes `xs` (rows whose width is a multiple of 32) to Q8_0 exactly as candle does for its matmul: per block, scale
/// `max|x| / 127` stored as f16, values `round(x / scale)` (halves away from zero).
pub fn quantize_rows(xs: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let mut q = vec![0i8; xs.len()];
    let mut d = vec![0f32; xs.len() / BLOCK];
    for ((block, qb), d) in xs.chunks_exact(BLOCK).zip(q.chunks_exact_mut(BLOCK)).zip(&mut d) {
        #[cfg(target_arch = "x86_64")]
        if super::has_avx2() {
            // SAFETY: AVX2 is present (checked above) and every slice is one block long.
            unsafe { *d = quantize_block_avx2(block, qb) };
            continue;
        }
        *d = quantize_block(block, qb);
    }
    (q, d)
}

/// One block, scalar: the reference of [`quantize_block_avx2`].
pub fn quantize_block(block: &[f32], qb: &mut [i8]) -> f32 {
    let amax = block.iter().fold(0f32, |a, &x| a.max(x.abs()));
    let scale = amax / 127.0;
    let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    for (y, &x) in qb.iter_mut().zip(block) {
        *y = (x * inv).round() as i8;
    }
    f16::from_f32(scale).to_f32()
}

/// One block with AVX2, the same results as [`quantize_block`] bit for bit: the products are the same IEEE
/// multiplications, and rounding half away from zero is `trunc(v) ± 1` where `|v - trunc(v)| >= 0.5` (exact).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_block_avx2(block: &[f32], qb: &mut [i8]) -> f32 {
    use std::arch::x86_64::*;
    assert!(block.len() == BLOCK && qb.len() == BLOCK);
    let sign = _mm256_set1_ps(-0.0);
    // SAFETY: both slices hold BLOCK values (asserted).
    let x: [__m256; 4] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(block.as_ptr().add(i * 8)) });
    let abs = x.map(|v| _mm256_andnot_ps(sign, v));
    let m = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
    let scale = amax / 127.0;
    let inv = _mm256_set1_ps(if scale != 0.0 { 1.0 / scale } else { 0.0 });
    let (half, one) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.0));
    let ints = x.map(|v| {
        let v = _mm256_mul_ps(v, inv);
        let t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        let away = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(v, t)), half, _CMP_GE_OQ);
        let step = _mm256_and_ps(away, _mm256_or_ps(one, _mm256_and_ps(sign, v)));
        _mm256_cvttps_epi32(_mm256_add_ps(t, step))
    });
    // i32 -> i16 -> i8 (values are within ±127), then undo the lane interleaving of the two packs.
    let p16a = _mm256_packs_epi32(ints[0], ints[1]);
    let p16b = _mm256_packs_epi32(ints[2], ints[3]);
    let p8 = _mm256_packs_epi16(p16a, p16b);
    let ordered = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    unsafe { _mm256_storeu_si256(qb.as_mut_ptr() as *mut __m256i, ordered) };
    f16::from_f32(scale).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_quantization_equals_the_scalar_one() {
        // Random blocks, blocks whose scaled values land exactly on halves (max 127: scale 1), zero blocks, negatives.
        let mut s = 9u64;
        let mut xs: Vec<f32> = (0..64 * 32)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        for (i, x) in xs[..64].iter_mut().enumerate() {
            *x = if i % 32 == 0 { 127.0 } else { (i as f32 - 40.0) / 2.0 };
        }
        xs[64..96].iter_mut().for_each(|x| *x = 0.0);
        xs[96..128].iter_mut().enumerate().for_each(|(i, x)| *x = -(i as f32) * 1e-3);
        let (q, d) = quantize_rows(&xs);
        for ((block, qb), &d) in xs.chunks_exact(BLOCK).zip(q.chunks_exact(BLOCK)).zip(&d) {
            let mut expected = [0i8; BLOCK];
            assert_eq!(quantize_block(block, &mut expected), d);
            assert_eq!(qb, expected);
        }
        assert_eq!(q[1], -20); // -19.5 rounds away from zero
    }
}
