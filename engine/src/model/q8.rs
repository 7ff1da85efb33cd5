//! Q8_0 weights for batched CPU matmuls: [`Q8Matrix`] takes a Q8_0 tensor and multiplies it with one of the kernels
//! of `kernel::q8` (AVX-512 VNNI on a repacked copy where the CPU has it, else AVX2 on candle's storage).
//!
//! candle's Q8_0 matmul computes one dot product per (activation row, weight row) with a kernel that reloads both
//! blocks and converts both f16 scales for every pair, so a decode step of 16 rows costs about 14 times a step of
//! one. This kernel computes a tile of activation rows against a pair of weight rows at once: each weight block is
//! loaded and its absolute value taken once per tile, each activation block once per pair, and the scales are f32
//! arrays. The arithmetic is candle's, operation for operation (activations quantized to Q8_0 the same way, the same
//! per-block multiply-add into eight f32 lanes, the same horizontal sum), so the results are bit-identical to
//! `QMatMul` on the same weights; only the loop order and the loads differ.

use crate::kernel::q8::vnni::VnniWeights;
use crate::kernel::q8::{self, quantize_rows, BLOCK, BLOCK_BYTES};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module as _, Result, Tensor};
use std::sync::Arc;

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
        Self::build(q, crate::kernel::has_vnni())
    }

    /// As [`Q8Matrix::from_qtensor`], with the VNNI kernel if `vnni` and the CPU has it.
    fn build(q: &Arc<QTensor>, vnni: bool) -> Result<Option<Self>> {
        let vnni = vnni && crate::kernel::has_vnni();
        if !crate::kernel::has_avx2() || q.dtype() != GgmlDType::Q8_0 || !q.device().is_cpu() || q.shape().rank() != 2 {
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

    /// `out[m, n] = xq[m, k] · Wᵀ` on quantized activations.
    fn matmul(&self, q: &QTensor, m: usize, xq: &[i8], xd: &[f32], out: &mut [f32]) {
        let data = q.data().expect("CPU storage");
        q8::avx2::matmul(&data, self.n, self.k, m, xq, xd, out);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use half::f16;

    /// A matrix of values uniform in [-0.5, 0.5) from a fixed seed.
    pub(crate) fn random(shape: (usize, usize), seed: u64) -> Tensor {
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
        if !crate::kernel::has_avx2() {
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
        if !crate::kernel::has_vnni() {
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
    fn dequantizes_like_candle() {
        if !crate::kernel::has_avx2() {
            return;
        }
        // 20 rows: a VNNI tile and a padded one.
        let q = Arc::new(QTensor::quantize(&random((20, 64), 2), GgmlDType::Q8_0).unwrap());
        let theirs = q.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        for vnni in [false, crate::kernel::has_vnni()] {
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
