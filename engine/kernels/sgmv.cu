// Multi-LoRA delta of a heterogeneous batch (SGMV, after Punica and LoRAX): rows are grouped into segments that share
// an adapter, and each segment is multiplied by its own adapter's factors, all segments in one launch.
//
//   shrink: v[n, j]     = sum_i x[n, i] * A[slot, j, i]        (j < r_max; v in f32)
//   expand: delta[n, o] = sum_j v[n, j] * B[slot, j, o]        (written in the activation dtype)
//
// Layouts (row-major, contiguous): x [rows, in]; A [slots, r_max, in] (PEFT's lora_A, zero-padded to r_max);
// B [slots, r_max, out] ((scale * lora_B)^T, zero-padded); segments: three u32 arrays of n_seg entries (first row,
// row count, adapter slot) stored one after the other. Rows outside every segment are not touched (delta is
// zero-initialised by the caller). The same arithmetic on the CPU: `engine::adapter::sgmv::cpu`.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

// Grid: (r_max, n_seg). Block: SHRINK_THREADS threads reduce one (row, j) dot product over `in`, row after row of
// the segment, so A's row j is read from cache after the segment's first row.
#define SHRINK_THREADS 256
template <typename T>
__device__ void sgmv_shrink(const T* __restrict__ x, const T* __restrict__ a, const uint32_t* __restrict__ seg,
                            float* __restrict__ v, uint32_t n_seg, uint32_t in_dim, uint32_t r_max) {
  const uint32_t j = blockIdx.x, s = blockIdx.y;
  const uint32_t start = seg[s], len = seg[n_seg + s], slot = seg[2 * n_seg + s];
  const T* a_row = a + ((size_t)slot * r_max + j) * in_dim;
  __shared__ float warp_sums[SHRINK_THREADS / 32];
  for (uint32_t n = start; n < start + len; ++n) {
    const T* x_row = x + (size_t)n * in_dim;
    float acc = 0.f;
    for (uint32_t i = threadIdx.x; i < in_dim; i += SHRINK_THREADS) acc += to_f32(x_row[i]) * to_f32(a_row[i]);
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffff, acc, off);
    if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = acc;
    __syncthreads();
    if (threadIdx.x < 32) {
      acc = threadIdx.x < SHRINK_THREADS / 32 ? warp_sums[threadIdx.x] : 0.f;
      for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffff, acc, off);
      if (threadIdx.x == 0) v[(size_t)n * r_max + j] = acc;
    }
    __syncthreads();
  }
}

// Grid: (ceil(out / EXPAND_THREADS), n_seg). Each thread owns one output column of every row of its segment.
#define EXPAND_THREADS 256
template <typename T>
__device__ void sgmv_expand(const float* __restrict__ v, const T* __restrict__ b, const uint32_t* __restrict__ seg,
                            T* __restrict__ delta, uint32_t n_seg, uint32_t out_dim, uint32_t r_max) {
  const uint32_t o = blockIdx.x * EXPAND_THREADS + threadIdx.x, s = blockIdx.y;
  if (o >= out_dim) return;
  const uint32_t start = seg[s], len = seg[n_seg + s], slot = seg[2 * n_seg + s];
  const T* b_slot = b + (size_t)slot * r_max * out_dim;
  for (uint32_t n = start; n < start + len; ++n) {
    float acc = 0.f;
    for (uint32_t j = 0; j < r_max; ++j) acc += v[(size_t)n * r_max + j] * to_f32(b_slot[(size_t)j * out_dim + o]);
    delta[(size_t)n * out_dim + o] = from_f32<T>(acc);
  }
}

#define SGMV_KERNELS(T, SUFFIX)                                                                                    \
  extern "C" __global__ void sgmv_shrink_##SUFFIX(const T* x, const T* a, const uint32_t* seg, float* v,          \
                                                  uint32_t n_seg, uint32_t in_dim, uint32_t r_max) {              \
    sgmv_shrink<T>(x, a, seg, v, n_seg, in_dim, r_max);                                                            \
  }                                                                                                                \
  extern "C" __global__ void sgmv_expand_##SUFFIX(const float* v, const T* b, const uint32_t* seg, T* delta,      \
                                                  uint32_t n_seg, uint32_t out_dim, uint32_t r_max) {             \
    sgmv_expand<T>(v, b, seg, delta, n_seg, out_dim, r_max);                                                       \
  }

SGMV_KERNELS(float, f32)
SGMV_KERNELS(__half, f16)
SGMV_KERNELS(__nv_bfloat16, bf16)
