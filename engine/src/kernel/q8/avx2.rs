//! The AVX2 Q8_0 matmul on candle's storage: a tile of four activation rows by two weight rows at once, each weight
//! block loaded once per tile and each activation block once per pair, the scales as f32. The arithmetic is
//! candle's, operation for operation (the same per-block multiply-add into eight f32 lanes, the same horizontal
//! sum), so the results are bit-identical to `QMatMul` on the same weights; only the loop order and the loads differ.

use super::{BLOCK, BLOCK_BYTES};
use crate::kernel::SharedOut;
use half::f16;

/// Weight rows per work item handed to a worker (a range of items at a time).
const COLS_PER_ITEM: usize = 16;

/// `out[m, n] = xq[m, k] · Wᵀ` for Q8_0 activations `xq` (with block scales `xd`) and the GGUF Q8_0 blocks `w` of
/// an `[n, k]` matrix, weight rows split across candle's workers.
///
/// # Panics
/// Without AVX2 and FMA, or when a slice is shorter than the shapes say.
pub fn matmul(w: &[u8], n: usize, k: usize, m: usize, xq: &[i8], xd: &[f32], out: &mut [f32]) {
    assert!(crate::kernel::has_avx2(), "the AVX2 Q8_0 kernel needs AVX2 and FMA");
    let kb = k / BLOCK;
    assert!(k.is_multiple_of(BLOCK) && w.len() >= n * kb * BLOCK_BYTES && out.len() >= m * n);
    assert!(xq.len() >= m * kb * BLOCK && xd.len() >= m * kb);
    let items = n.div_ceil(COLS_PER_ITEM);
    let args = TileArgs { kb, xq, xd, w, n, out: SharedOut::new(out) };
    // candle's own worker pool, the one its quantized matmuls use, so the two never compete for the cores.
    candle_core::utils::barrier_pool().execute_chunked(items, |range| {
        let cols = range.start * COLS_PER_ITEM..n.min(range.end * COLS_PER_ITEM);
        // SAFETY: AVX2 is present (asserted); each range of items writes only its own output columns, which no
        // other range touches, and every index stays inside `out` (m * n values, asserted).
        unsafe { run_tiles(&args, m, cols) };
    });
}

struct TileArgs<'a> {
    kb: usize,
    xq: &'a [i8],
    xd: &'a [f32],
    /// The weights' GGUF blocks.
    w: &'a [u8],
    n: usize,
    out: SharedOut,
}

/// Every activation row against the weight rows `cols`: tiles of four activation rows by two weight rows, then the
/// remainders.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_tiles(a: &TileArgs<'_>, m: usize, cols: std::ops::Range<usize>) {
    // The tiles read through raw pointers: these bounds make every one of their reads valid.
    assert!(cols.end <= a.n && a.w.len() >= a.n * a.kb * BLOCK_BYTES);
    assert!(a.xq.len() >= m * a.kb * BLOCK && a.xd.len() >= m * a.kb);
    // Column blocks of 32 weight rows (18 KB at width 576) stay in L1 while every activation row passes over them.
    let mut start = cols.start;
    while start < cols.end {
        let end = cols.end.min(start + 32);
        let pairs_end = start + ((end - start) / 2) * 2;
        let mut r = 0;
        while r < m {
            let rows = (m - r).min(4);
            let mut c = start;
            while c < pairs_end {
                unsafe { tile_rows::<2>(a, rows, r, c) };
                c += 2;
            }
            if c < end {
                unsafe { tile_rows::<1>(a, rows, r, c) };
            }
            r += rows;
        }
        start = end;
    }
}

/// One tile of `rows` (1 to 4) activation rows from `r` by `C` weight rows from `c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile_rows<const C: usize>(a: &TileArgs<'_>, rows: usize, r: usize, c: usize) {
    unsafe {
        match rows {
            4 => tile::<4, C>(a, r, c),
            3 => tile::<3, C>(a, r, c),
            2 => tile::<2, C>(a, r, c),
            _ => tile::<1, C>(a, r, c),
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn run_tiles(_: &TileArgs<'_>, _: usize, _: std::ops::Range<usize>) {
    unreachable!("Q8Matrix is only built where the kernel is supported")
}

/// Dot products of activation rows `r0..r0 + R` with weight rows `c0..c0 + C`, written to `out[r, c]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::needless_range_loop)] // the fixed-size tile loops index several arrays at once
unsafe fn tile<const R: usize, const C: usize>(a: &TileArgs<'_>, r0: usize, c0: usize) {
    use std::arch::x86_64::*;
    let kb = a.kb;
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    // SAFETY (all pointer arithmetic below): `run_tiles` checked that `w` holds `n * kb` blocks of BLOCK_BYTES and
    // `xq`/`xd` hold `m * kb` blocks, and the caller keeps `c0 + C <= n`, `r0 + R <= m`, `b < kb`.
    let w_rows: [*const u8; C] = std::array::from_fn(|c| unsafe { a.w.as_ptr().add((c0 + c) * kb * BLOCK_BYTES) });
    let x_rows: [*const i8; R] = std::array::from_fn(|r| unsafe { a.xq.as_ptr().add((r0 + r) * kb * BLOCK) });
    let d_rows: [*const f32; R] = std::array::from_fn(|r| unsafe { a.xd.as_ptr().add((r0 + r) * kb) });
    for b in 0..kb {
        let mut w = [_mm256_setzero_si256(); C];
        let mut aw = [_mm256_setzero_si256(); C];
        let mut dw = [_mm256_setzero_ps(); C];
        for c in 0..C {
            let blk = unsafe { w_rows[c].add(b * BLOCK_BYTES) };
            w[c] = unsafe { _mm256_loadu_si256(blk.add(2) as *const __m256i) };
            aw[c] = _mm256_sign_epi8(w[c], w[c]);
            let scale = f16::from_bits(u16::from_le(unsafe { (blk as *const u16).read_unaligned() }));
            dw[c] = _mm256_set1_ps(scale.to_f32());
        }
        for r in 0..R {
            let x = unsafe { _mm256_loadu_si256(x_rows[r].add(b * BLOCK) as *const __m256i) };
            let dx = _mm256_set1_ps(unsafe { *d_rows[r].add(b) });
            for c in 0..C {
                let sy = _mm256_sign_epi8(x, w[c]);
                let dot = _mm256_maddubs_epi16(aw[c], sy);
                let q = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, dot));
                // The scale product rounds exactly as candle's scalar `dw * dx`.
                acc[r][c] = _mm256_fmadd_ps(_mm256_mul_ps(dw[c], dx), q, acc[r][c]);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            let hi = _mm256_extractf128_ps(*v, 1);
            let s = _mm_add_ps(hi, _mm256_castps256_ps128(*v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            // SAFETY: `(r0 + r) < m` and `(c0 + c) < n`; this task owns column `c0 + c`.
            unsafe { *a.out.ptr().add((r0 + r) * a.n + c0 + c) = _mm_cvtss_f32(s) };
        }
    }
}
