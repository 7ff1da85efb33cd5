//! The Q4_K matmul for CPUs with AVX-512 VNNI, on weights held as compactly as the GGUF file holds them.
//!
//! A 7B Q4_K_M model on a CPU is bound by how fast its 4.4 GB of weights stream from memory at batch 1. candle's
//! own x86 repack of Q4_K unpacks every sub-block's scale and min into f32 (a third more bytes to read per token)
//! and keeps the file's copy beside it (twice the memory); here the weights are repacked once into tiles of 16
//! rows that keep the 4-bit values packed and the 6-bit scales and mins as bytes (1.03× the file's bytes, the only
//! copy kept).
//!
//! A Q4_K super-block holds 256 values of one row: eight sub-blocks of 32, each value `d·sc·q − dmin·m` with `q`
//! in 0..16 and a 6-bit `sc` and `m` per sub-block. Activations are quantized to Q8_0 blocks of 32 (the sub-blocks'
//! width: [`super::q8::quantize_rows`]), so for activation block `j` with scale `dx` and values `x`:
//!
//! `Σ w·x ≈ d · Σ_j sc_j · dx_j · Σ q·x  −  dmin · Σ_j m_j · dx_j · Σ x`
//!
//! where `Σ q·x` is an exact integer sum: `vpdpbusd` multiplies the unsigned 4-bit values of 16 rows by four signed
//! activation bytes at a time. Each row's arithmetic is the same whatever else is in the batch, so a sequence's
//! logits do not depend on the batch.

use super::q8::BLOCK;
#[cfg(target_arch = "x86_64")]
use crate::kernel::store_tile;
use crate::kernel::{for_each_tile, row_groups, SharedOut, TILE};
use half::f16;

/// Values per super-block.
pub const QK_K: usize = 256;
/// Bytes of one GGUF Q4_K super-block: `d`, `dmin` (f16), 12 bytes of packed scales and mins, 128 of values.
pub const BLOCK_BYTES: usize = 2 + 2 + 12 + QK_K / 2;
/// Sub-blocks per super-block.
const SUBS: usize = QK_K / BLOCK;
/// Bytes of one tile's super-block of values: `[32 groups of 8 values][16 rows][4 bytes]`, byte `j` of a group
/// holding value `j` in its low nibble and value `j + 4` in its high one.
const TILE_QS: usize = QK_K / 2 * TILE;

/// A Q4_K matrix `[n, k]` repacked for the kernel.
#[derive(Debug)]
pub struct Q4kWeights {
    n: usize,
    /// Super-blocks per row.
    kb: usize,
    /// Per tile and super-block: [`TILE_QS`] bytes of values.
    qs: Vec<u8>,
    /// Per tile and super-block: `[8 sub-blocks][16 rows]` scales, then as many mins (0 for padding rows).
    scales: Vec<u8>,
    /// Per tile and super-block: the 16 rows' `d`, then their `dmin`.
    d: Vec<f16>,
}

/// Sub-block `j`'s 6-bit scale and min from a super-block's 12 packed bytes (ggml's `get_scale_min_k4`).
fn scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// The 256 4-bit values of a super-block's 128 bytes, in order: chunk `c` of 32 bytes holds values
/// `64c..64c + 32` in its low nibbles and `64c + 32..64c + 64` in its high ones.
fn values(qs: &[u8]) -> [u8; QK_K] {
    let mut v = [0u8; QK_K];
    for c in 0..4 {
        for l in 0..32 {
            v[c * 64 + l] = qs[c * 32 + l] & 0x0F;
            v[c * 64 + 32 + l] = qs[c * 32 + l] >> 4;
        }
    }
    v
}

impl Q4kWeights {
    /// Repacks the GGUF Q4_K super-blocks of an `[n, k]` matrix (`k` a multiple of 256).
    pub fn pack(data: &[u8], n: usize, k: usize) -> Self {
        assert!(k.is_multiple_of(QK_K) && data.len() == n * (k / QK_K) * BLOCK_BYTES, "a Q4_K matrix {n}x{k}");
        let kb = k / QK_K;
        let tiles = n.div_ceil(TILE);
        let mut qs = vec![0u8; tiles * kb * TILE_QS];
        let mut scales = vec![0u8; tiles * kb * 2 * SUBS * TILE];
        let mut d = vec![f16::ZERO; tiles * kb * 2 * TILE];
        for row in 0..n {
            let (t, lane) = (row / TILE, row % TILE);
            for b in 0..kb {
                let blk = &data[(row * kb + b) * BLOCK_BYTES..][..BLOCK_BYTES];
                let tb = t * kb + b;
                d[tb * 2 * TILE + lane] = f16::from_le_bytes([blk[0], blk[1]]);
                d[tb * 2 * TILE + TILE + lane] = f16::from_le_bytes([blk[2], blk[3]]);
                for j in 0..SUBS {
                    let (sc, m) = scale_min(j, &blk[4..16]);
                    scales[tb * 2 * SUBS * TILE + j * TILE + lane] = sc;
                    scales[tb * 2 * SUBS * TILE + (SUBS + j) * TILE + lane] = m;
                }
                let v = values(&blk[16..]);
                let tile = &mut qs[tb * TILE_QS..][..TILE_QS];
                for g in 0..QK_K / 8 {
                    for j in 0..4 {
                        tile[g * TILE * 4 + lane * 4 + j] = v[8 * g + j] | (v[8 * g + j + 4] << 4);
                    }
                }
            }
        }
        Self { n, kb, qs, scales, d }
    }

    /// Row `row`'s super-block `b` as `(d, dmin, scales, mins, values)`.
    fn block(&self, row: usize, b: usize) -> (f32, f32, [u8; SUBS], [u8; SUBS], [u8; QK_K]) {
        let (t, lane) = (row / TILE, row % TILE);
        let tb = t * self.kb + b;
        let d = self.d[tb * 2 * TILE + lane].to_f32();
        let dmin = self.d[tb * 2 * TILE + TILE + lane].to_f32();
        let s = &self.scales[tb * 2 * SUBS * TILE..];
        let sc = std::array::from_fn(|j| s[j * TILE + lane]);
        let m = std::array::from_fn(|j| s[(SUBS + j) * TILE + lane]);
        let tile = &self.qs[tb * TILE_QS..];
        let v = std::array::from_fn(|i| {
            let (g, j) = (i / 8, i % 8);
            let byte = tile[g * TILE * 4 + lane * 4 + j % 4];
            if j < 4 {
                byte & 0x0F
            } else {
                byte >> 4
            }
        });
        (d, dmin, sc, m, v)
    }

    /// The weights as dense f32 `[n, k]`, row-major: the same values as candle's Q4_K dequantization.
    pub fn dequantize(&self) -> Vec<f32> {
        let k = self.kb * QK_K;
        let mut out = vec![0f32; self.n * k];
        for (row, values) in out.chunks_exact_mut(k).enumerate() {
            for (b, block) in values.chunks_exact_mut(QK_K).enumerate() {
                let (d, dmin, sc, m, v) = self.block(row, b);
                for (i, x) in block.iter_mut().enumerate() {
                    let j = i / BLOCK;
                    *x = d * sc[j] as f32 * v[i] as f32 - dmin * m[j] as f32;
                }
            }
        }
        out
    }

    /// Bytes of the repacked copy.
    pub fn bytes(&self) -> usize {
        self.qs.len() + self.scales.len() + self.d.len() * std::mem::size_of::<f16>()
    }

    /// `out[m, n] = x · Wᵀ` for Q8_0 activations `xq` (`m` rows of `k / 32` blocks) with scales `xd`, tiles split
    /// across candle's workers.
    pub fn matmul(&self, m: usize, xq: &[i8], xd: &[f32], out: &mut [f32]) {
        assert!(crate::kernel::has_vnni(), "the VNNI kernel needs AVX-512 VNNI");
        let blocks = self.kb * SUBS;
        assert!(xq.len() >= m * blocks * BLOCK && xd.len() >= m * blocks && out.len() >= m * self.n);
        let xs = activation_terms(m * blocks, xq, xd);
        let out_ptr = SharedOut::new(out);
        // SAFETY: the CPU has the instructions (asserted above); the bounds above and the packing make every read
        // valid, and tile `t` writes only its own output columns.
        for_each_tile(self.n.div_ceil(TILE), |t| unsafe { tile(self, t, m, xq, &xs, out_ptr) });
    }
}

/// Per activation block: `dx` and `dx · Σx` (the scale of the integer sums and the min's term).
fn activation_terms(blocks: usize, xq: &[i8], xd: &[f32]) -> Vec<[f32; 2]> {
    (0..blocks)
        .map(|i| {
            let sum: i32 = xq[i * BLOCK..][..BLOCK].iter().map(|&x| x as i32).sum();
            [xd[i], xd[i] * sum as f32]
        })
        .collect()
}

/// Every activation row against tile `t`, four rows at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile(w: &Q4kWeights, t: usize, m: usize, xq: &[i8], xs: &[[f32; 2]], out: SharedOut) {
    let out = out.ptr();
    row_groups!(m, r, R => unsafe { rows_x_tile::<R>(w, t, r, xq, xs, out) });
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile(_: &Q4kWeights, _: usize, _: usize, _: &[i8], _: &[[f32; 2]], _: SharedOut) {
    unreachable!("Q4kWeights are only multiplied where the kernel is supported")
}

/// Activation rows `r0..r0 + R` against the 16 weight rows of tile `t`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
#[allow(clippy::needless_range_loop)] // the fixed-size row loops index several arrays at once
unsafe fn rows_x_tile<const R: usize>(w: &Q4kWeights, t: usize, r0: usize, xq: &[i8], xs: &[[f32; 2]], out: *mut f32) {
    use std::arch::x86_64::*;
    let (kb, blocks) = (w.kb, w.kb * SUBS);
    let nibble = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); R];
    // SAFETY (pointer arithmetic below): `matmul` checked the activation and output lengths, the packing holds
    // `tiles * kb` super-blocks, and the caller keeps `r0 + R <= m`, `t < tiles`.
    for b in 0..kb {
        let tb = t * kb + b;
        let qs = unsafe { w.qs.as_ptr().add(tb * TILE_QS) };
        let scales = unsafe { w.scales.as_ptr().add(tb * 2 * SUBS * TILE) };
        let mut scaled = [_mm512_setzero_ps(); R];
        let mut mins = [_mm512_setzero_ps(); R];
        for j in 0..SUBS {
            let mut sums = [_mm512_setzero_si512(); R];
            for g in 4 * j..4 * j + 4 {
                let packed = unsafe { _mm512_loadu_si512(qs.add(g * TILE * 4) as *const _) };
                let lo = _mm512_and_si512(packed, nibble);
                let hi = _mm512_and_si512(_mm512_srli_epi16(packed, 4), nibble);
                for r in 0..R {
                    let x = unsafe { xq.as_ptr().add(((r0 + r) * blocks + b * SUBS) * BLOCK + 8 * g) };
                    let x_lo = unsafe { (x as *const i32).read_unaligned() };
                    let x_hi = unsafe { (x.add(4) as *const i32).read_unaligned() };
                    sums[r] = _mm512_dpbusd_epi32(sums[r], lo, _mm512_set1_epi32(x_lo));
                    sums[r] = _mm512_dpbusd_epi32(sums[r], hi, _mm512_set1_epi32(x_hi));
                }
            }
            let sc =
                unsafe { _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(scales.add(j * TILE) as *const _))) };
            let mn = unsafe {
                _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(scales.add((SUBS + j) * TILE) as *const _)))
            };
            for r in 0..R {
                let [dx, dx_sum] = xs[(r0 + r) * blocks + b * SUBS + j];
                let s = _mm512_mul_ps(sc, _mm512_set1_ps(dx));
                scaled[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[r]), s, scaled[r]);
                mins[r] = _mm512_fmadd_ps(mn, _mm512_set1_ps(dx_sum), mins[r]);
            }
        }
        let d = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(w.d.as_ptr().add(tb * 2 * TILE) as *const _)) };
        let dmin = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(w.d.as_ptr().add(tb * 2 * TILE + TILE) as *const _)) };
        for r in 0..R {
            acc[r] = _mm512_fmadd_ps(d, scaled[r], acc[r]);
            acc[r] = _mm512_fnmadd_ps(dmin, mins[r], acc[r]);
        }
    }
    for r in 0..R {
        unsafe { store_tile(acc[r], out, r0 + r, t, w.n) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's arithmetic for one output, lane by lane in the same order with the same fused operations.
    fn reference(w: &Q4kWeights, row: usize, xq: &[i8], xs: &[[f32; 2]]) -> f32 {
        let mut acc = 0f32;
        for b in 0..w.kb {
            let (d, dmin, sc, m, v) = w.block(row, b);
            let (mut scaled, mut mins) = (0f32, 0f32);
            for j in 0..SUBS {
                let sum: i32 =
                    (0..BLOCK).map(|i| v[j * BLOCK + i] as i32 * xq[(b * SUBS + j) * BLOCK + i] as i32).sum();
                let [dx, dx_sum] = xs[b * SUBS + j];
                scaled = (sum as f32).mul_add(sc[j] as f32 * dx, scaled);
                mins = (m[j] as f32).mul_add(dx_sum, mins);
            }
            acc = d.mul_add(scaled, acc);
            acc = (-dmin).mul_add(mins, acc);
        }
        acc
    }

    #[test]
    fn scales_and_values_unpack_as_ggml_lays_them_out() {
        // Scales 0..8 and mins 10..18 packed as ggml's quantizer packs them (6 bits, the high two of sub-blocks 4..8
        // in the top bits of the first eight bytes).
        let (sc, mn): ([u8; 8], [u8; 8]) =
            (std::array::from_fn(|j| 40 + j as u8), std::array::from_fn(|j| 50 + j as u8));
        let mut s = [0u8; 12];
        for j in 0..8 {
            if j < 4 {
                s[j] = sc[j];
                s[j + 4] = mn[j];
            } else {
                s[j + 4] = (sc[j] & 0x0F) | ((mn[j] & 0x0F) << 4);
                s[j - 4] |= (sc[j] >> 4) << 6;
                s[j] |= (mn[j] >> 4) << 6;
            }
        }
        for j in 0..8 {
            assert_eq!(scale_min(j, &s), (sc[j], mn[j]), "sub-block {j}");
        }
        let qs: Vec<u8> = (0..128).map(|i| (i % 16) as u8 | (((i / 3) % 16) as u8) << 4).collect();
        let v = values(&qs);
        assert_eq!((v[0], v[31], v[32], v[64 + 5], v[64 + 32 + 5]), (0, 15, 0, 37 % 16, 37 / 3));
    }

    #[test]
    fn the_kernel_computes_its_reference_arithmetic_for_every_batch() {
        if !crate::kernel::has_vnni() {
            eprintln!("skipped: no AVX-512 VNNI on this CPU");
            return;
        }
        // Random super-blocks (any bytes are a valid Q4_K block but for the f16 scales, kept small); 37 rows: two
        // full tiles and a padded one.
        let (n, k) = (37, 512);
        let mut s = 5u64;
        let mut byte = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 56) as u8
        };
        let mut data = vec![0u8; n * (k / QK_K) * BLOCK_BYTES];
        for (i, blk) in data.chunks_exact_mut(BLOCK_BYTES).enumerate() {
            blk[..2].copy_from_slice(&f16::from_f32(0.01 + (i % 7) as f32 * 1e-3).to_le_bytes());
            blk[2..4].copy_from_slice(&f16::from_f32(0.002 * (i % 3) as f32).to_le_bytes());
            blk[4..].iter_mut().for_each(|b| *b = byte());
        }
        let w = Q4kWeights::pack(&data, n, k);
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
                assert_eq!(batch[r * n + c], reference(&w, c, rq, &xs[r * per_row..]), "row {r} col {c}");
            }
        }
    }
}
