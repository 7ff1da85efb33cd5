//! The Q6_K matmul for CPUs with AVX-512 VNNI, on weights repacked into tiles of 16 rows that take exactly the
//! file's bytes (the only copy kept). In a Q4_K_M file Q6_K holds `output`, and `attn_v` and `ffn_down` of about
//! half the layers: a fifth of the bytes a decode step reads, which candle's Q6_K dot product read at about half the
//! rate our Q4_K kernel ([`super::q4k`]) reads the rest.
//!
//! A Q6_K super-block holds 256 values of one row: sixteen sub-blocks of 16, each value `d·sc·(q − 32)` with `q` in
//! 0..64 and a signed 8-bit `sc` per sub-block. The low four bits of `q` are packed as Q4_K's values are, the high
//! two of two groups of eight values share a byte per four values; with Q8_0 activations (scale `dx` per 32):
//!
//! `Σ w·x ≈ d · Σ_j sc_j · dx_(j/2) · (Σ q·x − 32 · Σ x)`
//!
//! per sub-block `j` of 16, the bracket an exact integer (`vpdpbusd` on the unsigned 6-bit values). Each row's
//! arithmetic is the same whatever else is in the batch.

use super::q4k::QK_K;
use super::q8::BLOCK;
use crate::kernel::{for_each_tile, SharedOut, TILE};
#[cfg(target_arch = "x86_64")]
use crate::kernel::{row_groups, store_tile};
use half::f16;

/// Bytes of one GGUF Q6_K super-block: 128 bytes of low four bits, 64 of high two, 16 signed scales, `d` (f16).
pub const BLOCK_BYTES: usize = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;
/// Values per sub-block (one scale).
const SUB: usize = 16;
/// Sub-blocks per super-block.
const SUBS: usize = QK_K / SUB;
/// Per tile and super-block: `[32 groups of 8][16 rows][4 bytes]`, byte `i` holding the low four bits of value
/// `i` of the group and of value `i + 4` in its high nibble.
const TILE_QL: usize = QK_K / 2 * TILE;
/// Per tile and super-block: `[16 sub-blocks][16 rows][4 bytes]`, byte `i` holding the high two bits of values `i`
/// and `i + 4` of the sub-block's first group (bits 0-1, 2-3), then of its second (bits 4-5, 6-7).
const TILE_QH: usize = QK_K / 4 * TILE;

/// A Q6_K matrix `[n, k]` repacked for the kernel.
#[derive(Debug)]
pub struct Q6kWeights {
    n: usize,
    /// Super-blocks per row.
    kb: usize,
    ql: Vec<u8>,
    qh: Vec<u8>,
    /// Per tile and super-block: `[16 sub-blocks][16 rows]` (0 for padding rows).
    scales: Vec<i8>,
    /// Per tile and super-block: the 16 rows' `d`.
    d: Vec<f16>,
}

/// The 256 6-bit values (0..64) of a super-block, in order, as ggml's `dequantize_row_q6_K` reads them.
fn values(ql: &[u8], qh: &[u8]) -> [u8; QK_K] {
    let mut v = [0u8; QK_K];
    for half in 0..2 {
        let (ql, qh, v) = (&ql[half * 64..], &qh[half * 32..], &mut v[half * 128..]);
        for l in 0..32 {
            v[l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
            v[l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
            v[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            v[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    v
}

impl Q6kWeights {
    /// Repacks the GGUF Q6_K super-blocks of an `[n, k]` matrix (`k` a multiple of 256).
    pub fn pack(data: &[u8], n: usize, k: usize) -> Self {
        assert!(k.is_multiple_of(QK_K) && data.len() == n * (k / QK_K) * BLOCK_BYTES, "a Q6_K matrix {n}x{k}");
        let kb = k / QK_K;
        let tiles = n.div_ceil(TILE);
        let mut ql = vec![0u8; tiles * kb * TILE_QL];
        let mut qh = vec![0u8; tiles * kb * TILE_QH];
        let mut scales = vec![0i8; tiles * kb * SUBS * TILE];
        let mut d = vec![f16::ZERO; tiles * kb * TILE];
        for row in 0..n {
            let (t, lane) = (row / TILE, row % TILE);
            for b in 0..kb {
                let blk = &data[(row * kb + b) * BLOCK_BYTES..][..BLOCK_BYTES];
                let tb = t * kb + b;
                let v = values(&blk[..128], &blk[128..192]);
                for j in 0..SUBS {
                    scales[tb * SUBS * TILE + j * TILE + lane] = blk[192 + j] as i8;
                }
                d[tb * TILE + lane] = f16::from_le_bytes([blk[208], blk[209]]);
                for g in 0..QK_K / 8 {
                    for i in 0..4 {
                        let (a, c) = (v[8 * g + i], v[8 * g + i + 4]);
                        ql[tb * TILE_QL + g * TILE * 4 + lane * 4 + i] = (a & 0x0F) | ((c & 0x0F) << 4);
                        let shift = 4 * (g % 2);
                        qh[tb * TILE_QH + (g / 2) * TILE * 4 + lane * 4 + i] |= ((a >> 4) | ((c >> 4) << 2)) << shift;
                    }
                }
            }
        }
        Self { n, kb, ql, qh, scales, d }
    }

    /// Row `row`'s super-block `b` as `(d, scales, values)`.
    fn block(&self, row: usize, b: usize) -> (f32, [i8; SUBS], [u8; QK_K]) {
        let (t, lane) = (row / TILE, row % TILE);
        let tb = t * self.kb + b;
        let sc = std::array::from_fn(|j| self.scales[tb * SUBS * TILE + j * TILE + lane]);
        let v = std::array::from_fn(|x| {
            let (g, i) = (x / 8, x % 8);
            let low = self.ql[tb * TILE_QL + g * TILE * 4 + lane * 4 + i % 4];
            let high = self.qh[tb * TILE_QH + (g / 2) * TILE * 4 + lane * 4 + i % 4] >> (4 * (g % 2));
            if i < 4 {
                (low & 0x0F) | ((high & 3) << 4)
            } else {
                (low >> 4) | (((high >> 2) & 3) << 4)
            }
        });
        (self.d[tb * TILE + lane].to_f32(), sc, v)
    }

    /// The weights as dense f32 `[n, k]`, row-major: the same values as candle's Q6_K dequantization.
    pub fn dequantize(&self) -> Vec<f32> {
        let k = self.kb * QK_K;
        let mut out = vec![0f32; self.n * k];
        for (row, values) in out.chunks_exact_mut(k).enumerate() {
            for (b, block) in values.chunks_exact_mut(QK_K).enumerate() {
                let (d, sc, v) = self.block(row, b);
                for (i, x) in block.iter_mut().enumerate() {
                    *x = d * sc[i / SUB] as f32 * (v[i] as i32 - 32) as f32;
                }
            }
        }
        out
    }

    /// Bytes of the repacked copy (the file's bytes, and the padding of the last tile).
    pub fn bytes(&self) -> usize {
        self.ql.len() + self.qh.len() + self.scales.len() + self.d.len() * std::mem::size_of::<f16>()
    }

    /// `out[m, n] = x · Wᵀ` for Q8_0 activations `xq` (`m` rows of `k / 32` blocks) with scales `xd`, tiles split
    /// across candle's workers.
    pub fn matmul(&self, m: usize, xq: &[i8], xd: &[f32], out: &mut [f32]) {
        assert!(crate::kernel::has_vnni(), "the VNNI kernel needs AVX-512 VNNI");
        let blocks = self.kb * QK_K / BLOCK;
        assert!(xq.len() >= m * blocks * BLOCK && xd.len() >= m * blocks && out.len() >= m * self.n);
        let xs = activation_terms(m * blocks, xq, xd);
        let out_ptr = SharedOut::new(out);
        // SAFETY: the CPU has the instructions (asserted above); the bounds above and the packing make every read
        // valid, and tile `t` writes only its own output columns.
        for_each_tile(self.n.div_ceil(TILE), |t| unsafe { tile(self, t, m, xq, &xs, out_ptr) });
    }
}

/// Per 16 activations: the scale of their Q8_0 block and `32 · Σx` (the correction of the values' offset).
fn activation_terms(blocks: usize, xq: &[i8], xd: &[f32]) -> Vec<(f32, i32)> {
    (0..blocks * BLOCK / SUB)
        .map(|i| (xd[i / 2], 32 * xq[i * SUB..][..SUB].iter().map(|&x| x as i32).sum::<i32>()))
        .collect()
}

/// Every activation row against tile `t`, four rows at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile(w: &Q6kWeights, t: usize, m: usize, xq: &[i8], xs: &[(f32, i32)], out: SharedOut) {
    let out = out.ptr();
    row_groups!(m, r, R => unsafe { rows_x_tile::<R>(w, t, r, xq, xs, out) });
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile(_: &Q6kWeights, _: usize, _: usize, _: &[i8], _: &[(f32, i32)], _: SharedOut) {
    unreachable!("Q6kWeights are only multiplied where the kernel is supported")
}

/// Activation rows `r0..r0 + R` against the 16 weight rows of tile `t`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
#[allow(clippy::needless_range_loop)] // the fixed-size row loops index several arrays at once
unsafe fn rows_x_tile<const R: usize>(
    w: &Q6kWeights,
    t: usize,
    r0: usize,
    xq: &[i8],
    xs: &[(f32, i32)],
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    let kb = w.kb;
    let row_values = kb * QK_K;
    let (nibble, high) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x30));
    let mut acc = [_mm512_setzero_ps(); R];
    // SAFETY (pointer arithmetic below): `matmul` checked the activation and output lengths, the packing holds
    // `tiles * kb` super-blocks, and the caller keeps `r0 + R <= m`, `t < tiles`.
    for b in 0..kb {
        let tb = t * kb + b;
        let ql = unsafe { w.ql.as_ptr().add(tb * TILE_QL) };
        let qh = unsafe { w.qh.as_ptr().add(tb * TILE_QH) };
        let scales = unsafe { w.scales.as_ptr().add(tb * SUBS * TILE) };
        let mut scaled = [_mm512_setzero_ps(); R];
        for j in 0..SUBS {
            let hv = unsafe { _mm512_loadu_si512(qh.add(j * TILE * 4) as *const _) };
            // The high two bits of the two groups' low and high halves, moved to bits 4-5 of each byte.
            let highs = [(_mm512_slli_epi16(hv, 4), _mm512_slli_epi16(hv, 2)), (hv, _mm512_srli_epi16(hv, 2))];
            let mut sums = [_mm512_setzero_si512(); R];
            for (half, (h_lo, h_hi)) in highs.into_iter().enumerate() {
                let g = 2 * j + half;
                let lv = unsafe { _mm512_loadu_si512(ql.add(g * TILE * 4) as *const _) };
                let lo = _mm512_or_si512(_mm512_and_si512(lv, nibble), _mm512_and_si512(h_lo, high));
                let hi =
                    _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(lv, 4), nibble), _mm512_and_si512(h_hi, high));
                for r in 0..R {
                    let x = unsafe { xq.as_ptr().add((r0 + r) * row_values + b * QK_K + 8 * g) };
                    let x_lo = unsafe { (x as *const i32).read_unaligned() };
                    let x_hi = unsafe { (x.add(4) as *const i32).read_unaligned() };
                    sums[r] = _mm512_dpbusd_epi32(sums[r], lo, _mm512_set1_epi32(x_lo));
                    sums[r] = _mm512_dpbusd_epi32(sums[r], hi, _mm512_set1_epi32(x_hi));
                }
            }
            let sc =
                unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(scales.add(j * TILE) as *const _))) };
            for r in 0..R {
                let (dx, offset) = xs[((r0 + r) * row_values + b * QK_K) / SUB + j];
                let exact = _mm512_sub_epi32(sums[r], _mm512_set1_epi32(offset));
                scaled[r] =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), _mm512_mul_ps(sc, _mm512_set1_ps(dx)), scaled[r]);
            }
        }
        let d = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(w.d.as_ptr().add(tb * TILE) as *const _)) };
        for r in 0..R {
            acc[r] = _mm512_fmadd_ps(d, scaled[r], acc[r]);
        }
    }
    for r in 0..R {
        unsafe { store_tile(acc[r], out, r0 + r, t, w.n) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's arithmetic for one output, in the same order with the same fused operations.
    fn reference(w: &Q6kWeights, row: usize, xq: &[i8], xs: &[(f32, i32)]) -> f32 {
        let mut acc = 0f32;
        for b in 0..w.kb {
            let (d, sc, v) = w.block(row, b);
            let mut scaled = 0f32;
            for j in 0..SUBS {
                let sum: i32 = (0..SUB).map(|i| v[j * SUB + i] as i32 * xq[b * QK_K + j * SUB + i] as i32).sum();
                let (dx, offset) = xs[b * SUBS + j];
                scaled = ((sum - offset) as f32).mul_add(sc[j] as f32 * dx, scaled);
            }
            acc = d.mul_add(scaled, acc);
        }
        acc
    }

    #[test]
    fn the_kernel_computes_its_reference_arithmetic_for_every_batch() {
        if !crate::kernel::has_vnni() {
            eprintln!("skipped: no AVX-512 VNNI on this CPU");
            return;
        }
        let (n, k) = (37, 512);
        let mut s = 11u64;
        let mut byte = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 56) as u8
        };
        let mut data = vec![0u8; n * (k / QK_K) * BLOCK_BYTES];
        for (i, blk) in data.chunks_exact_mut(BLOCK_BYTES).enumerate() {
            blk[..208].iter_mut().for_each(|b| *b = byte());
            blk[208..].copy_from_slice(&f16::from_f32(0.001 + (i % 5) as f32 * 1e-4).to_le_bytes());
        }
        let w = Q6kWeights::pack(&data, n, k);
        for row in [0, 17, 36] {
            for b in 0..k / QK_K {
                let blk = &data[(row * (k / QK_K) + b) * BLOCK_BYTES..][..BLOCK_BYTES];
                assert_eq!(w.block(row, b).2, values(&blk[..128], &blk[128..192]), "row {row} block {b}");
            }
        }
        let m = 6;
        let xq: Vec<i8> = (0..m * k).map(|_| byte() as i8).collect();
        let xd: Vec<f32> = (0..m * k / BLOCK).map(|i| 0.01 + i as f32 * 1e-4).collect();
        let xs = activation_terms(m * k / BLOCK, &xq, &xd);
        let mut batch = vec![0f32; m * n];
        w.matmul(m, &xq, &xd, &mut batch);
        let per_row = k / BLOCK;
        for r in 0..m {
            let (rq, rd) = (&xq[r * k..][..k], &xd[r * per_row..][..per_row]);
            let mut alone = vec![0f32; n];
            w.matmul(1, rq, rd, &mut alone);
            assert_eq!(alone, batch[r * n..][..n], "row {r} alone vs in a batch of {m}");
            for c in 0..n {
                assert_eq!(batch[r * n + c], reference(&w, c, rq, &xs[r * k / SUB..]), "row {r} col {c}");
            }
        }
    }
}
