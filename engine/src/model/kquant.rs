//! K-quant weights for CPU matmuls: [`KQuantMatrix`] takes a Q4_K or Q6_K tensor (every matrix of a Q4_K_M file
//! but the embeddings) and multiplies it with `kernel::q4k`'s or `kernel::q6k`'s AVX-512 VNNI kernel on a repacked
//! copy as compact as the file, the only copy kept (see `kernel::q4k` for why candle's own repack is not used).
//! Elsewhere, and for the other K-quants, the weights stay with candle.

use crate::kernel::q4k::{self, Q4kWeights, QK_K};
use crate::kernel::q6k::{self, Q6kWeights};
use crate::kernel::q8::quantize_rows;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result, Tensor};

/// A Q4_K or Q6_K weight matrix `[n, k]` (one row per output feature), repacked.
#[derive(Debug)]
pub(crate) struct KQuantMatrix {
    n: usize,
    k: usize,
    weights: Weights,
}

#[derive(Debug)]
enum Weights {
    Q4k(Q4kWeights),
    Q6k(Q6kWeights),
}

impl KQuantMatrix {
    /// Takes `q` if a kernel here can run it: a 2-D Q4_K or Q6_K tensor on the CPU whose width is a multiple of
    /// 256, on a CPU with AVX-512 VNNI.
    pub fn from_qtensor(q: &QTensor) -> Result<Option<Self>> {
        type Pack = fn(&[u8], usize, usize) -> Weights;
        let (block_bytes, pack): (usize, Pack) = match q.dtype() {
            GgmlDType::Q4K => (q4k::BLOCK_BYTES, |data, n, k| Weights::Q4k(Q4kWeights::pack(data, n, k))),
            GgmlDType::Q6K => (q6k::BLOCK_BYTES, |data, n, k| Weights::Q6k(Q6kWeights::pack(data, n, k))),
            _ => return Ok(None),
        };
        if !crate::kernel::has_vnni() || !q.device().is_cpu() || q.shape().rank() != 2 {
            return Ok(None);
        }
        let (n, k) = q.shape().dims2()?;
        if k % QK_K != 0 {
            return Ok(None);
        }
        let data = q.data()?;
        let expected = n * (k / QK_K) * block_bytes;
        if data.len() != expected {
            candle_core::bail!("{:?} tensor {n}x{k}: {} bytes, expected {expected}", q.dtype(), data.len());
        }
        Ok(Some(Self { n, k, weights: pack(&data, n, k) }))
    }

    /// Bytes of weights a matmul reads.
    pub fn weight_bytes(&self) -> usize {
        match &self.weights {
            Weights::Q4k(w) => w.bytes(),
            Weights::Q6k(w) => w.bytes(),
        }
    }

    /// The weights as a dense f32 tensor `[n, k]` (the same values as candle's dequantization).
    pub fn dequantize(&self) -> Result<Tensor> {
        let values = match &self.weights {
            Weights::Q4k(w) => w.dequantize(),
            Weights::Q6k(w) => w.dequantize(),
        };
        Tensor::from_vec(values, (self.n, self.k), &Device::Cpu)
    }

    /// `x · Wᵀ` for `x` of shape `[.., k]` (CPU): the output has shape `[.., n]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut out_dims = x.dims().to_vec();
        let k = out_dims.pop().unwrap_or(0);
        if k != self.k {
            candle_core::bail!("K-quant matmul: input width {k}, weights expect {}", self.k);
        }
        let m: usize = out_dims.iter().product();
        out_dims.push(self.n);
        let xs = x.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let (xq, xd) = quantize_rows(&xs);
        let mut out = vec![0f32; m * self.n];
        match &self.weights {
            Weights::Q4k(w) => w.matmul(m, &xq, &xd, &mut out),
            Weights::Q6k(w) => w.matmul(m, &xq, &xd, &mut out),
        }
        Tensor::from_vec(out, out_dims, x.device())?.to_dtype(x.dtype())
    }
}

#[cfg(test)]
mod tests {
    use super::super::q8::tests::random;
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::Module as _;
    use std::sync::Arc;

    #[test]
    fn dequantizes_like_candle_and_multiplies_close_to_its_dense_weights() {
        if !crate::kernel::has_vnni() {
            eprintln!("skipped: no AVX-512 VNNI on this CPU");
            return;
        }
        // 40 rows: two tiles of 16 and a padded one, two super-blocks per row; 9 rows: one padded tile, three.
        for (n, k) in [(40, 512), (9, 768)] {
            for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
                same_as_candle(dtype, n, k);
            }
        }
    }

    fn same_as_candle(dtype: GgmlDType, n: usize, k: usize) {
        let q = QTensor::quantize(&random((n, k), 3), dtype).unwrap();
        let ours = KQuantMatrix::from_qtensor(&q).unwrap().expect("a K-quant on a VNNI CPU");
        let dense = q.dequantize(&Device::Cpu).unwrap();
        assert_eq!(ours.dequantize().unwrap().to_vec2::<f32>().unwrap(), dense.to_vec2::<f32>().unwrap());
        // Against the dequantized weights in f32 and against candle's own Q4_K matmul: only the activations'
        // quantization differs (Q8_0 blocks of 32 here, Q8_K of 256 there).
        let candle = QMatMul::from_arc(Arc::new(q)).unwrap();
        // Activations whose size changes from one block of 32 to the next (by up to 16x), so that a block given a
        // neighbour's scale or sum shows.
        let sizes: Vec<f32> = (0..k).map(|c| (1 << ((c / 32) % 5)) as f32 / 4.0).collect();
        let sizes = Tensor::from_vec(sizes, (1, k), &Device::Cpu).unwrap();
        for m in [1, 3, 8] {
            let x = random((m, k), 20 + m as u64).broadcast_mul(&sizes).unwrap();
            let got = ours.forward(&x).unwrap().to_vec2::<f32>().unwrap();
            let exact = x.matmul(&dense.t().unwrap()).unwrap().to_vec2::<f32>().unwrap();
            let theirs = candle.forward(&x).unwrap().to_vec2::<f32>().unwrap();
            let scale = exact.iter().flatten().fold(0f32, |a, v| a.max(v.abs()));
            let err = |a: &[Vec<f32>]| {
                a.iter().flatten().zip(exact.iter().flatten()).fold(0f32, |e, (a, b)| e.max((a - b).abs())) / scale
            };
            assert!(err(&got) < 1e-2, "{dtype:?} m = {m}: ours {} off the dense result", err(&got));
            assert!(
                err(&got) <= 2.0 * err(&theirs) + 1e-3,
                "{dtype:?} m = {m}: ours {} vs candle's {}",
                err(&got),
                err(&theirs)
            );
        }
        assert_eq!(ours.forward(&random((6, k), 7).reshape((2, 3, k)).unwrap()).unwrap().dims(), &[2, 3, n]);
        assert!(ours.forward(&random((1, k + 256), 3)).is_err());
    }

    #[test]
    fn other_formats_and_widths_stay_with_candle() {
        let q = QTensor::quantize(&random((16, 256), 2), GgmlDType::Q5K).unwrap();
        assert!(KQuantMatrix::from_qtensor(&q).unwrap().is_none());
    }
}
