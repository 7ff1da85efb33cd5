//! Q8_0 weights laid out for batched CPU matmuls, and the AVX2 kernel that multiplies them.
//!
//! candle's Q8_0 matmul computes one dot product per (activation row, weight row) with a kernel that reloads both
//! blocks and converts both f16 scales for every pair, so a decode step of 16 rows costs about 14 times a step of
//! one. This kernel computes a tile of activation rows against a pair of weight rows at once: each weight block is
//! loaded and its absolute value taken once per tile, each activation block once per pair, and the scales are f32
//! arrays. The arithmetic is candle's, operation for operation (activations quantized to Q8_0 the same way, the same
//! per-block multiply-add into eight f32 lanes, the same horizontal sum), so the results are bit-identical to
//! `QMatMul` on the same weights; only the loop order and the loads differ.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module as _, Result, Tensor};
use half::f16;
use std::sync::Arc;

/// Values per Q8_0 block.
const BLOCK: usize = 32;
/// Bytes of one GGUF Q8_0 block: an f16 scale and 32 signed bytes.
const BLOCK_BYTES: usize = 2 + BLOCK;
/// Weight rows per work item handed to a worker (a range of items at a time).
const COLS_PER_ITEM: usize = 16;

/// A Q8_0 weight matrix `[n, k]` (one row per output feature) in candle's storage, which this kernel reads in place:
/// GGUF blocks of an f16 scale and 32 signed bytes.
#[derive(Debug)]
pub(crate) struct Q8Matrix {
    n: usize,
    k: usize,
    q: Arc<QTensor>,
    /// candle's matmul on the same tensor, for single rows (its GEMV is a little faster there).
    single_row: QMatMul,
}

impl Q8Matrix {
    /// Takes `q` if this kernel can run it: a 2-D Q8_0 tensor on the CPU, on a CPU with AVX2 and FMA.
    pub fn from_qtensor(q: &Arc<QTensor>) -> Result<Option<Self>> {
        if !supported() || q.dtype() != GgmlDType::Q8_0 || !q.device().is_cpu() || q.shape().rank() != 2 {
            return Ok(None);
        }
        let (n, k) = q.shape().dims2()?;
        if k % BLOCK != 0 {
            return Ok(None);
        }
        let bytes = q.data()?.len();
        if bytes != n * (k / BLOCK) * BLOCK_BYTES {
            candle_core::bail!("Q8_0 tensor {n}x{k}: {bytes} bytes, expected {}", n * (k / BLOCK) * BLOCK_BYTES);
        }
        Ok(Some(Self { n, k, q: q.clone(), single_row: QMatMul::QTensor(q.clone()) }))
    }

    /// The weights as a dense f32 tensor `[n, k]`.
    pub fn weight_bytes(&self) -> usize {
        self.q.storage_size_in_bytes()
    }

    pub fn dequantize(&self) -> Result<Tensor> {
        self.q.dequantize(&Device::Cpu)
    }

    /// `x · Wᵀ` for `x` of shape `[.., k]` (f32, CPU): the output has shape `[.., n]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut out_dims = x.dims().to_vec();
        let k = out_dims.pop().unwrap_or(0);
        if k != self.k {
            candle_core::bail!("Q8_0 matmul: input width {k}, weights expect {}", self.k);
        }
        let m: usize = out_dims.iter().product();
        if m == 1 {
            return self.single_row.forward(x);
        }
        out_dims.push(self.n);
        let xs = x.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let (xq, xd) = quantize_rows(&xs);
        let mut out = vec![0f32; m * self.n];
        self.matmul(m, &xq, &xd, &mut out);
        Tensor::from_vec(out, out_dims, x.device())?.to_dtype(x.dtype())
    }

    /// `out[m, n] = xq[m, k] · Wᵀ` on quantized activations, weight rows split across the workers.
    fn matmul(&self, m: usize, xq: &[i8], xd: &[f32], out: &mut [f32]) {
        let n = self.n;
        let data = self.q.data().expect("CPU storage");
        let out_ptr = SendPtr(out.as_mut_ptr());
        let items = n.div_ceil(COLS_PER_ITEM);
        let args = TileArgs { kb: self.k / BLOCK, xq, xd, w: &data, n, out: out_ptr };
        // candle's own worker pool, the one its quantized matmuls use, so the two never compete for the cores.
        candle_core::utils::barrier_pool().execute_chunked(items, |range| {
            let cols = range.start * COLS_PER_ITEM..n.min(range.end * COLS_PER_ITEM);
            // SAFETY: `supported()` was checked when this matrix was built; each range of items writes only its own
            // output columns, which no other range touches, and every index stays inside `out` (m * n values).
            #[allow(unsafe_code)]
            unsafe {
                run_tiles(&args, m, cols)
            };
        });
    }
}

/// Whether this CPU can run the kernel.
fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Quantizes `xs` (rows whose width is a multiple of 32) to Q8_0 exactly as candle does for its matmul: per block, scale
/// `max|x| / 127` stored as f16, values `round(x / scale)`.
fn quantize_rows(xs: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let mut q = vec![0i8; xs.len()];
    let mut d = Vec::with_capacity(xs.len() / BLOCK);
    for (block, qb) in xs.chunks_exact(BLOCK).zip(q.chunks_exact_mut(BLOCK)) {
        let amax = block.iter().fold(0f32, |a, &x| a.max(x.abs()));
        let scale = amax / 127.0;
        let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        for (y, &x) in qb.iter_mut().zip(block) {
            *y = (x * inv).round() as i8;
        }
        d.push(f16::from_f32(scale).to_f32());
    }
    (q, d)
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the pointer is only written through at indices that one task owns (see `Q8Matrix::matmul`).
#[allow(unsafe_code)]
unsafe impl Send for SendPtr {}
#[allow(unsafe_code)]
unsafe impl Sync for SendPtr {}

struct TileArgs<'a> {
    kb: usize,
    xq: &'a [i8],
    xd: &'a [f32],
    /// The weights' GGUF blocks.
    w: &'a [u8],
    n: usize,
    out: SendPtr,
}

/// Every activation row against the weight rows `cols`: tiles of four activation rows by two weight rows, then the
/// remainders.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
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
#[allow(unsafe_code)]
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
#[allow(unsafe_code)]
unsafe fn run_tiles(_: &TileArgs<'_>, _: usize, _: std::ops::Range<usize>) {
    unreachable!("Q8Matrix is only built where the kernel is supported")
}

/// Dot products of activation rows `r0..r0 + R` with weight rows `c0..c0 + C`, written to `out[r, c]`.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
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
            unsafe { *a.out.0.add((r0 + r) * a.n + c0 + c) = _mm_cvtss_f32(s) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(shape: (usize, usize), seed: u64) -> Tensor {
        let mut s = seed;
        let values: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn equals_candles_q8_0_matmul_bit_for_bit() {
        if !supported() {
            eprintln!("skipped: no AVX2/FMA on this CPU");
            return;
        }
        // Odd sizes exercise every remainder of the 4x2 tiling and the task split.
        let (n, k) = (131, 96);
        let w = random((n, k), 1);
        let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap());
        let ours = Q8Matrix::from_qtensor(&q).unwrap().expect("Q8_0 on CPU");
        let theirs = QMatMul::from_arc(q).unwrap();
        for m in [1, 2, 3, 5, 16] {
            let x = random((m, k), 10 + m as u64);
            let a = ours.forward(&x).unwrap().to_vec2::<f32>().unwrap();
            let b = theirs.forward(&x).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(a, b, "m = {m}");
        }
        let batched = random((6, k), 7).reshape((2, 3, k)).unwrap();
        assert_eq!(ours.forward(&batched).unwrap().dims(), &[2, 3, n]);
        assert!(ours.forward(&random((1, k + 32), 3)).is_err());
    }

    #[test]
    fn dequantizes_like_candle() {
        if !supported() {
            return;
        }
        let q = Arc::new(QTensor::quantize(&random((8, 64), 2), GgmlDType::Q8_0).unwrap());
        let ours = Q8Matrix::from_qtensor(&q).unwrap().unwrap().dequantize().unwrap();
        let theirs = q.dequantize(&Device::Cpu).unwrap();
        assert_eq!(ours.to_vec2::<f32>().unwrap(), theirs.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn other_formats_stay_with_candle() {
        let q = Arc::new(QTensor::quantize(&random((8, 64), 2), GgmlDType::Q4_1).unwrap());
        assert!(Q8Matrix::from_qtensor(&q).unwrap().is_none());
    }
}
