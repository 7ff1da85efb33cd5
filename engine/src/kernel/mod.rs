//! The CPU kernels, and the only `unsafe` SIMD code of the engine: vectorised `exp`, SwiGLU and dot products
//! ([`vector`]), the fused attention's inner loop ([`attention`]), Q8_0 quantization and matmuls ([`q8`]: AVX2
//! on candle's storage, AVX-512 VNNI on a repacked copy), and the Q4_K and Q6_K matmuls for AVX-512 VNNI on
//! compact repacked copies ([`q4k`], [`q6k`]). Each function here is safe to call: it checks its slices and the
//! instruction set itself, and the instruction set is detected once, the first time any kernel asks ([`isa`]), like
//! vLLM's one kernel wrapper per backend. Everything outside this module is `unsafe`-free (but for the
//! memory-mapped weights and the CUDA kernel launches, each with its own `SAFETY`).
#![allow(unsafe_code)]

pub mod attention;
pub mod q4k;
pub mod q6k;
pub mod q8;
pub mod vector;

pub use attention::attend;
pub use vector::{exp_shifted, silu_mul, sum_exp_shifted};

use std::sync::OnceLock;

/// The instruction sets the kernels use, from least to most.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// No SIMD path: the scalar code.
    Scalar,
    /// AVX2 and FMA (x86-64-v3): every vectorised path.
    Avx2,
    /// AVX2 and AVX-512 with VNNI: also the VNNI Q8_0 matmul.
    Avx512Vnni,
}

/// The instruction set of this CPU, detected on first use.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            let vnni = std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vnni");
            match (avx2, vnni) {
                (true, true) => Isa::Avx512Vnni,
                (true, false) => Isa::Avx2,
                _ => Isa::Scalar,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Isa::Scalar
        }
    })
}

/// Whether the AVX2 paths run here.
pub fn has_avx2() -> bool {
    isa() >= Isa::Avx2
}

/// Whether the VNNI Q8_0 matmul runs here.
pub fn has_vnni() -> bool {
    isa() == Isa::Avx512Vnni
}

/// An output buffer the workers of one matmul write into at once, each at indices only it writes.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(*mut f32);

// SAFETY: the matmuls that share it (`q8::avx2::matmul`, `VnniWeights::matmul`, `Q4kWeights::matmul`,
// `Q6kWeights::matmul`) write through it only at indices that one task owns, while the buffer it came from is borrowed mutably for the whole matmul.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(crate) fn new(out: &mut [f32]) -> Self {
        Self(out.as_mut_ptr())
    }

    pub(crate) fn ptr(self) -> *mut f32 {
        self.0
    }
}
