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

/// Weight rows per tile of the AVX-512 VNNI matmuls (`q8::vnni`, `q4k`, `q6k`): one 512-bit register of 16 sums.
pub(crate) const TILE: usize = 16;

/// Runs `tile(t)` for tiles `0..tiles`, split across candle's workers.
pub(crate) fn for_each_tile(tiles: usize, tile: impl Fn(usize) + Sync) {
    candle_core::utils::barrier_pool().execute_chunked(tiles, |range| range.for_each(&tile));
}

/// Runs `$call` for the activation rows `r..r + R` of `0..$m`, four rows at a time and then the three, two or one
/// left, with `R` a constant: the VNNI matmuls' rows-by-tile functions keep `R` rows' sums in registers.
macro_rules! row_groups {
    ($m:expr, $r:ident, $rows:ident => $call:expr) => {{
        let m = $m;
        let mut $r = 0;
        while $r < m {
            let left = (m - $r).min(4);
            match left {
                4 => {
                    const $rows: usize = 4;
                    $call
                }
                3 => {
                    const $rows: usize = 3;
                    $call
                }
                2 => {
                    const $rows: usize = 2;
                    $call
                }
                _ => {
                    const $rows: usize = 1;
                    $call
                }
            }
            $r += left;
        }
    }};
}
pub(crate) use row_groups;

/// Writes a tile's 16 sums for activation row `row` to columns `16t..` of `out` (`[.., n]`), leaving out the lanes
/// that pad the last tile.
///
/// # Safety
/// The CPU has AVX-512F; `out` holds `row + 1` rows of `n` values and `16t < n`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn store_tile(acc: std::arch::x86_64::__m512, out: *mut f32, row: usize, t: usize, n: usize) {
    use std::arch::x86_64::*;
    let c0 = t * TILE;
    let lanes = (n - c0).min(TILE);
    // SAFETY: the caller's `out` holds `row + 1` rows of `n`, and `c0 + lanes <= n`.
    let dst = unsafe { out.add(row * n + c0) };
    if lanes == TILE {
        unsafe { _mm512_storeu_ps(dst, acc) };
    } else {
        let mut tmp = [0f32; TILE];
        unsafe { _mm512_storeu_ps(tmp.as_mut_ptr(), acc) };
        for (l, &v) in tmp.iter().enumerate().take(lanes) {
            unsafe { *dst.add(l) = v };
        }
    }
}
