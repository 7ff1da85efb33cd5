//! Q8_0 weights for batched CPU matmuls, and the AVX2 kernel that multiplies them (on CPUs with AVX-512 VNNI the
//! kernel of `q8_vnni.rs` runs instead).
//!
//! candle's Q8_0 matmul computes one dot product per (activation row, weight row) with a kernel that reloads both
//! blocks and converts both f16 scales for every pair, so a decode step of 16 rows costs about 14 times a step of
//! one. This kernel computes a tile of activation rows against a pair of weight rows at once: each weight block is
//! loaded and its absolute value taken once per tile, each activation block once per pair, and the scales are f32
//! arrays. The arithmetic is candle's, operation for operation (activations quantized to Q8_0 the same way, the same
//! per-block multiply-add into eight f32 lanes, the same horizontal sum), so the results are bit-identical to
//! `QMatMul` on the same weights; only the loop order and the loads differ.

use super::q8_vnni::{self, VnniWeights};
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

/// A Q8_0 weight matrix `[n, k]` (one row per output feature) in candle's storage: GGUF blocks of an f16 scale and
/// 32 signed bytes.
#[derive(Debug)]
pub(crate) struct Q8Matrix {
    n: usize,
    k: usize,
    kernel: Kernel,
}

/// Which kernel multiplies the matrix. A sequence's logits must not depend on the batch it runs in, so a matrix
/// keeps one arithmetic for every number of rows.
#[derive(Debug)]
enum Kernel {
    /// AVX2 tiles on candle's storage for several rows, candle's GEMV for one (same arithmetic, bit for bit; the
    /// GEMV is a little faster there).
    Avx2 { q: Arc<QTensor>, single_row: QMatMul },
    /// AVX-512 VNNI on a repacked copy, for any number of rows (candle's storage is let go: the weights are held
    /// once).
    Vnni(VnniWeights),
}

impl Q8Matrix {
    /// Takes `q` if a kernel here can run it: a 2-D Q8_0 tensor on the CPU, on a CPU with AVX-512 VNNI or with
    /// AVX2 and FMA.
    pub fn from_qtensor(q: &Arc<QTensor>) -> Result<Option<Self>> {
        Self::build(q, q8_vnni::supported())
    }

    /// As [`Q8Matrix::from_qtensor`], with the VNNI kernel if `vnni` and the CPU has it.
    fn build(q: &Arc<QTensor>, vnni: bool) -> Result<Option<Self>> {
        let vnni = vnni && q8_vnni::supported();
        if !supported() || q.dtype() != GgmlDType::Q8_0 || !q.device().is_cpu() || q.shape().rank() != 2 {
            return Ok(None);
        }
        let (n, k) = q.shape().dims2()?;
        if k % BLOCK != 0 {
            return Ok(None);
        }
        let data = q.data()?;
        if data.len() != n * (k / BLOCK) * BLOCK_BYTES {
            candle_core::bail!("Q8_0 tensor {n}x{k}: {} bytes, expected {}", data.len(), n * (k / BLOCK) * BLOCK_BYTES);
        }
        let kernel = if vnni {
            Kernel::Vnni(VnniWeights::pack(&data, n, k))
        } else {
            Kernel::Avx2 { q: q.clone(), single_row: QMatMul::QTensor(q.clone()) }
        };
        Ok(Some(Self { n, k, kernel }))
    }

    /// Bytes of weights a matmul reads.
    pub fn weight_bytes(&self) -> usize {
        match &self.kernel {
            Kernel::Avx2 { q, .. } => q.storage_size_in_bytes(),
            Kernel::Vnni(w) => w.bytes(),
        }
    }

    /// The weights as a dense f32 tensor `[n, k]` (the same values as candle's dequantization).
    pub fn dequantize(&self) -> Result<Tensor> {
        match &self.kernel {
            Kernel::Avx2 { q, .. } => q.dequantize(&Device::Cpu),
            Kernel::Vnni(w) => Tensor::from_vec(w.dequantize(), (self.n, self.k), &Device::Cpu),
        }
    }

    /// `x · Wᵀ` for `x` of shape `[.., k]` (f32, CPU): the output has shape `[.., n]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut out_dims = x.dims().to_vec();
        let k = out_dims.pop().unwrap_or(0);
        if k != self.k {
            candle_core::bail!("Q8_0 matmul: input width {k}, weights expect {}", self.k);
        }
        let m: usize = out_dims.iter().product();
        if let (1, Kernel::Avx2 { single_row, .. }) = (m, &self.kernel) {
            return single_row.forward(x);
        }
        out_dims.push(self.n);
        let xs = x.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let (xq, xd) = quantize_rows(&xs);
        let mut out = vec![0f32; m * self.n];
        match &self.kernel {
            Kernel::Avx2 { q, .. } => self.matmul(q, m, &xq, &xd, &mut out),
            Kernel::Vnni(w) => w.matmul(m, &xq, &xd, &mut out),
        }
        Tensor::from_vec(out, out_dims, x.device())?.to_dtype(x.dtype())
    }

    /// `out[m, n] = xq[m, k] · Wᵀ` on quantized activations, weight rows split across the workers.
    fn matmul(&self, q: &QTensor, m: usize, xq: &[i8], xd: &[f32], out: &mut [f32]) {
        let n = self.n;
        let data = q.data().expect("CPU storage");
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

/// Whether this CPU can run the AVX2 kernel.
fn supported() -> bool {
    crate::vector::has_avx2_fma()
}

/// Quantizes `xs` (rows whose width is a multiple of 32) to Q8_0 exactly as candle does for its matmul: per block, scale
/// `max|x| / 127` stored as f16, values `round(x / scale)` (halves away from zero).
fn quantize_rows(xs: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let mut q = vec![0i8; xs.len()];
    let mut d = vec![0f32; xs.len() / BLOCK];
    for ((block, qb), d) in xs.chunks_exact(BLOCK).zip(q.chunks_exact_mut(BLOCK)).zip(&mut d) {
        #[cfg(target_arch = "x86_64")]
        if supported() {
            // SAFETY: AVX2 is present (checked above) and every slice is one block long.
            #[allow(unsafe_code)]
            unsafe {
                *d = quantize_block_avx2(block, qb)
            };
            continue;
        }
        *d = quantize_block(block, qb);
    }
    (q, d)
}

/// One block, scalar: the reference of [`quantize_block_avx2`].
fn quantize_block(block: &[f32], qb: &mut [i8]) -> f32 {
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
#[allow(unsafe_code)]
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

/// An output pointer shared by the workers of a matmul.
#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub(super) *mut f32);
// SAFETY: the matmuls that share it (`Q8Matrix::matmul`, `VnniWeights::matmul`) write through it only at indices
// that one task owns.
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
        // Odd sizes exercise every remainder of the 4x2 tiling and the task split. (A width that is not a multiple
        // of 256 keeps candle on its Q8_0 dot product on CPUs where it has a VNNI path for the others.)
        let (n, k) = (131, 96);
        let w = random((n, k), 1);
        let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap());
        let ours = Q8Matrix::build(&q, false).unwrap().expect("Q8_0 on CPU");
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
    fn vnni_rows_are_exact_block_sums_and_do_not_depend_on_the_batch() {
        if !q8_vnni::supported() {
            eprintln!("skipped: no AVX-512 VNNI on this CPU");
            return;
        }
        // 131 rows: eight full tiles of 16 and a padded one.
        let (n, k) = (131, 96);
        let q = Arc::new(QTensor::quantize(&random((n, k), 1), GgmlDType::Q8_0).unwrap());
        let ours = Q8Matrix::build(&q, true).unwrap().expect("Q8_0 on CPU");
        assert!(matches!(ours.kernel, Kernel::Vnni(_)));
        let data = q.data().unwrap();
        let x = random((16, k), 5);
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (xq, xd) = quantize_rows(&xs);
        let kb = k / BLOCK;
        let batch = ours.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        for r in 0..16 {
            // Alone, and in batches of every size up to 5 that contain it: the same bits.
            let alone = ours.forward(&x.narrow(0, r, 1).unwrap()).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(alone[0], batch[r], "row {r} alone vs in 16");
            let from = r.saturating_sub(2);
            let some = ours.forward(&x.narrow(0, from, (16 - from).min(5)).unwrap()).unwrap();
            assert_eq!(some.to_vec2::<f32>().unwrap()[r - from], batch[r], "row {r} in a batch from {from}");
            for c in 0..n {
                // Σ over blocks of dw · dx · Σ w·x, in f64 from the quantized bytes.
                let (mut exact, mut size) = (0f64, 0f64);
                for b in 0..kb {
                    let blk = &data[(c * kb + b) * BLOCK_BYTES..][..BLOCK_BYTES];
                    let dw = f16::from_le_bytes([blk[0], blk[1]]).to_f64();
                    let dot: i32 =
                        (0..BLOCK).map(|i| blk[2 + i] as i8 as i32 * xq[(r * kb + b) * BLOCK + i] as i32).sum();
                    let term = dw * xd[r * kb + b] as f64 * dot as f64;
                    exact += term;
                    size += term.abs();
                }
                let got = batch[r][c] as f64;
                assert!((got - exact).abs() <= 1e-6 * size + 1e-12, "row {r} col {c}: {got} vs {exact}");
            }
        }
        // And close to the AVX2 kernel (the two only round differently).
        let avx2 = Q8Matrix::build(&q, false).unwrap().unwrap().forward(&x).unwrap().to_vec2::<f32>().unwrap();
        for (a, b) in avx2.iter().flatten().zip(batch.iter().flatten()) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    #[test]
    fn vector_quantization_equals_the_scalar_one() {
        // Random blocks, blocks whose scaled values land exactly on halves (max 127: scale 1), zero blocks, negatives.
        let mut xs = random((64, 32), 9).flatten_all().unwrap().to_vec1::<f32>().unwrap();
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

    #[test]
    fn dequantizes_like_candle() {
        if !supported() {
            return;
        }
        // 20 rows: a VNNI tile and a padded one.
        let q = Arc::new(QTensor::quantize(&random((20, 64), 2), GgmlDType::Q8_0).unwrap());
        let theirs = q.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        for vnni in [false, q8_vnni::supported()] {
            let ours = Q8Matrix::build(&q, vnni).unwrap().unwrap().dequantize().unwrap();
            assert_eq!(ours.to_vec2::<f32>().unwrap(), theirs, "vnni: {vnni}");
        }
    }

    #[test]
    fn other_formats_stay_with_candle() {
        let q = Arc::new(QTensor::quantize(&random((8, 64), 2), GgmlDType::Q4_1).unwrap());
        assert!(Q8Matrix::from_qtensor(&q).unwrap().is_none());
    }
}
