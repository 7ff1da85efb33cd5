//! A frozen base projection: candle's `QMatMul` (dense or quantized weights), Q8_0 weights run by our batched
//! CPU kernels (see [`super::q8`]: AVX2, the same numbers as candle's; AVX-512 VNNI, exact block sums), which make
//! batched decode much cheaper, or Q4_K and Q6_K weights on our compact AVX-512 VNNI kernels (see [`super::kquant`]),
//! which stream a Q4_K_M file's bytes at batch 1.

use super::kquant::KQuantMatrix;
use super::q8::Q8Matrix;
use candle_core::quantized::QMatMul;
use candle_core::{DType, Module as _, Result, Tensor};

#[derive(Debug)]
pub(crate) enum Linear {
    Candle(QMatMul),
    /// Q8_0 weights on a CPU with AVX2 (our kernel for batches of rows, candle's for single rows) or AVX-512 VNNI
    /// (our kernel for every batch).
    Q8(Q8Matrix),
    /// Q4_K or Q6_K weights on a CPU with AVX-512 VNNI (our kernels for every batch).
    KQuant(KQuantMatrix),
}

impl Linear {
    /// Wraps `m`, moving Q8_0, Q4_K and Q6_K weights on a CPU that can run our kernels into their layouts.
    pub fn new(m: QMatMul) -> Result<Self> {
        if let QMatMul::QTensor(q) = &m {
            if let Some(q8) = Q8Matrix::from_qtensor(q)? {
                return Ok(Linear::Q8(q8));
            }
            if let Some(kq) = KQuantMatrix::from_qtensor(q)? {
                return Ok(Linear::KQuant(kq));
            }
        }
        Ok(Linear::Candle(m))
    }

    /// `x · Wᵀ`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Candle(m) => m.forward(x),
            Linear::Q8(q) => q.forward(x),
            Linear::KQuant(q) => q.forward(x),
        }
    }

    /// Bytes the weights take in memory.
    pub fn weight_bytes(&self) -> usize {
        match self {
            Linear::Candle(QMatMul::QTensor(q)) => q.storage_size_in_bytes(),
            Linear::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.elem_count() * t.dtype().size_in_bytes(),
            Linear::Q8(q) => q.weight_bytes(),
            Linear::KQuant(q) => q.weight_bytes(),
        }
    }

    /// The weights as a dense tensor in `dtype`.
    pub fn dense(&self, dtype: DType) -> Result<Tensor> {
        let t = match self {
            Linear::Candle(QMatMul::QTensor(q)) => q.dequantize(&q.device())?,
            Linear::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.clone(),
            Linear::Q8(q) => q.dequantize()?,
            Linear::KQuant(q) => q.dequantize()?,
        };
        t.to_dtype(dtype)
    }
}
