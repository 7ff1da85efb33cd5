//! The Q8_0 matmul for CPUs with AVX-512 VNNI: weights repacked once into tiles of 16 rows so that one `vpdpbusd`
//! multiplies four values of an activation row with four values of 16 weight rows and adds them to 16 sums: about
//! 3× the arithmetic rate of the AVX2 kernel ([`super::avx2`]), which needs six instructions per 32 products of one
//! pair.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes, so weights are stored offset by +128 and each block's integer sum
//! is corrected by `128 · Σx` of its activation block: the sums are exact integers. Per block the sum is converted to
//! f32, scaled by the weight's and the activation's Q8_0 scales and added up, the same per-row arithmetic whether a
//! row runs alone or in a batch of any size, so a sequence's logits never depend on what else is in the batch.

use super::BLOCK;
use crate::kernel::{for_each_tile, SharedOut, TILE};
#[cfg(target_arch = "x86_64")]
use crate::kernel::{row_groups, store_tile};
use half::f16;

/// Bytes of one tile's block: 32 values of 16 rows.
const TILE_BLOCK_BYTES: usize = BLOCK * TILE;

/// A Q8_0 matrix `[n, k]` repacked for the kernel.
#[derive(Debug)]
pub struct VnniWeights {
    n: usize,
    kb: usize,
    /// Per tile and block: `[8 groups of 4 values][16 rows][4 bytes]`, each byte the weight + 128.
    qs: Vec<u8>,
    /// Per tile and block: the 16 rows' scales (0 for the rows that pad the last tile).
    scales: Vec<f32>,
}

impl VnniWeights {
    /// Repacks GGUF Q8_0 blocks (an f16 scale and 32 signed bytes each) of an `[n, k]` matrix.
    pub fn pack(data: &[u8], n: usize, k: usize) -> Self {
        let kb = k / BLOCK;
        let tiles = n.div_ceil(TILE);
        let mut qs = vec![128u8; tiles * kb * TILE_BLOCK_BYTES];
        let mut scales = vec![0f32; tiles * kb * TILE];
        for row in 0..n {
            let (t, lane) = (row / TILE, row % TILE);
            for b in 0..kb {
                let blk = &data[(row * kb + b) * (2 + BLOCK)..][..2 + BLOCK];
                scales[(t * kb + b) * TILE + lane] = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                let tile = &mut qs[(t * kb + b) * TILE_BLOCK_BYTES..][..TILE_BLOCK_BYTES];
                for (i, &w) in blk[2..].iter().enumerate() {
                    let (group, j) = (i / 4, i % 4);
                    tile[group * TILE * 4 + lane * 4 + j] = (w as i8 as i16 + 128) as u8;
                }
            }
        }
        Self { n, kb, qs, scales }
    }

    /// The weights as dense f32 `[n, k]`, row-major: the same values as candle's Q8_0 dequantization.
    pub fn dequantize(&self) -> Vec<f32> {
        let k = self.kb * BLOCK;
        let mut out = vec![0f32; self.n * k];
        for (row, values) in out.chunks_exact_mut(k).enumerate() {
            let (t, lane) = (row / TILE, row % TILE);
            for (b, block) in values.chunks_exact_mut(BLOCK).enumerate() {
                let scale = self.scales[(t * self.kb + b) * TILE + lane];
                let tile = &self.qs[(t * self.kb + b) * TILE_BLOCK_BYTES..][..TILE_BLOCK_BYTES];
                for (i, v) in block.iter_mut().enumerate() {
                    let q = tile[(i / 4) * TILE * 4 + lane * 4 + i % 4] as i16 - 128;
                    *v = q as f32 * scale;
                }
            }
        }
        out
    }

    /// Bytes of the repacked copy.
    pub fn bytes(&self) -> usize {
        self.qs.len() + self.scales.len() * std::mem::size_of::<f32>()
    }

    /// `out[m, n] = x · Wᵀ` for Q8_0 activations `xq` (`m` rows of `kb` blocks) with scales `xd`, tiles split across
    /// candle's workers.
    pub fn matmul(&self, m: usize, xq: &[i8], xd: &[f32], out: &mut [f32]) {
        assert!(crate::kernel::has_vnni(), "the VNNI kernel needs AVX-512 VNNI");
        assert!(xq.len() >= m * self.kb * BLOCK && xd.len() >= m * self.kb && out.len() >= m * self.n);
        // 128 · Σx per activation block: the correction of the +128 weight offset.
        let corr: Vec<i32> = xq.chunks_exact(BLOCK).map(|b| 128 * b.iter().map(|&x| x as i32).sum::<i32>()).collect();
        let out_ptr = SharedOut::new(out);
        // SAFETY: the CPU has the instructions (asserted above); the bounds above and the packing make every read
        // valid, and tile `t` writes only its own output columns.
        for_each_tile(self.n.div_ceil(TILE), |t| unsafe { tile(self, t, m, xq, xd, &corr, out_ptr) });
    }
}

/// Every activation row against tile `t`, four rows at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile(w: &VnniWeights, t: usize, m: usize, xq: &[i8], xd: &[f32], corr: &[i32], out: SharedOut) {
    let out = out.ptr();
    row_groups!(m, r, R => unsafe { rows_x_tile::<R>(w, t, r, xq, xd, corr, out) });
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile(_: &VnniWeights, _: usize, _: usize, _: &[i8], _: &[f32], _: &[i32], _: SharedOut) {
    unreachable!("VnniWeights are only built where the kernel is supported")
}

/// Activation rows `r0..r0 + R` against the 16 weight rows of tile `t`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
#[allow(clippy::needless_range_loop)] // the fixed-size row loops index several arrays at once
unsafe fn rows_x_tile<const R: usize>(
    w: &VnniWeights,
    t: usize,
    r0: usize,
    xq: &[i8],
    xd: &[f32],
    corr: &[i32],
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    let kb = w.kb;
    let mut acc = [_mm512_setzero_ps(); R];
    // SAFETY (pointer arithmetic below): `matmul` checked the activation and output lengths, the packing holds
    // `tiles * kb` blocks, and the caller keeps `r0 + R <= m`, `t < tiles`.
    let qs = unsafe { w.qs.as_ptr().add(t * kb * TILE_BLOCK_BYTES) };
    let scales = unsafe { w.scales.as_ptr().add(t * kb * TILE) };
    for b in 0..kb {
        let mut sums = [_mm512_setzero_si512(); R];
        let tile = unsafe { qs.add(b * TILE_BLOCK_BYTES) };
        for group in 0..BLOCK / 4 {
            let wv = unsafe { _mm512_loadu_si512(tile.add(group * TILE * 4) as *const _) };
            for r in 0..R {
                let at = ((r0 + r) * kb + b) * BLOCK + group * 4;
                let x4 = unsafe { (xq.as_ptr().add(at) as *const i32).read_unaligned() };
                sums[r] = _mm512_dpbusd_epi32(sums[r], wv, _mm512_set1_epi32(x4));
            }
        }
        let dw = unsafe { _mm512_loadu_ps(scales.add(b * TILE)) };
        for r in 0..R {
            let i = (r0 + r) * kb + b;
            let exact = _mm512_sub_epi32(sums[r], _mm512_set1_epi32(corr[i]));
            let d = _mm512_mul_ps(dw, _mm512_set1_ps(xd[i]));
            acc[r] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(exact), acc[r]);
        }
    }
    for r in 0..R {
        unsafe { store_tile(acc[r], out, r0 + r, t, w.n) };
    }
}
