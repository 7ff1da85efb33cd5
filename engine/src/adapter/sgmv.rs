//! SGMV: the LoRA delta of a heterogeneous batch in two launches whatever the number of adapters (Punica, LoRAX).
//! Rows are grouped into segments that share an adapter; `shrink` computes `v = x A^T` and `expand` `delta = v (sB)^T`,
//! every segment with its own adapter's factors gathered from stacks of all resident adapters.
//!
//! On CUDA the two steps are our kernels (`engine/kernels/sgmv.cu`, compiled to PTX by nvcc at build time and
//! launched through cudarc). On the CPU the same op runs [`cpu`]: the same arithmetic, row by row in f32, the rows
//! split across candle's workers (a few thousand multiply-adds per row and module, where a matmul per segment
//! costs more in call overhead than in arithmetic). Tests compare it with each row's own adapter, so the
//! segment table and the arithmetic the GPU runs are checked on any machine, and the GPU test compares the kernels
//! with it.

use super::bank::Segment;
use crate::vector::dot;
use crate::Result;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor};
use std::sync::Mutex;

/// The adapter segments of a batch as the kernels read them: first rows, then row counts, then adapter slots
/// (`3 * segments` entries). Segments of base-model rows are left out: their delta stays zero.
pub fn segment_table(segments: &[Segment]) -> Vec<u32> {
    let with_adapter: Vec<(&Segment, usize)> = segments.iter().filter_map(|s| s.slot.map(|slot| (s, slot))).collect();
    let mut table = Vec::with_capacity(3 * with_adapter.len());
    table.extend(with_adapter.iter().map(|(s, _)| s.start as u32));
    table.extend(with_adapter.iter().map(|(s, _)| s.len as u32));
    table.extend(with_adapter.iter().map(|&(_, slot)| slot as u32));
    table
}

/// Sizes of one SGMV call.
#[derive(Clone, Copy, Debug)]
pub struct SgmvDims {
    /// Rows of `x`.
    pub rows: usize,
    /// Input features.
    pub fan_in: usize,
    /// Output features.
    pub fan_out: usize,
    /// Rank every adapter is zero-padded to.
    pub r_max: usize,
}

/// The same op on the CPU: `x` is `[rows, fan_in]`, `a` is `[slots, r_max, fan_in]`, `b` is `[slots, r_max,
/// fan_out]`; returns `delta`, `[rows, fan_out]`, zero outside the table's segments. The kernels' arithmetic (f32
/// dot products over `fan_in`, then a sum over the rank per output column), row by row, vectorisable loops.
pub fn cpu(x: &[f32], a: &[f32], b: &[f32], table: &[u32], d: SgmvDims) -> Vec<f32> {
    let n_seg = table.len() / 3;
    let (starts, lens, slots) = (&table[..n_seg], &table[n_seg..2 * n_seg], &table[2 * n_seg..]);
    let mut delta = vec![0f32; d.rows * d.fan_out];
    if d.fan_out == 0 {
        return delta;
    }
    let mut slot_of = vec![None; d.rows];
    for s in 0..n_seg {
        let (start, len) = (starts[s] as usize, lens[s] as usize);
        slot_of[start..start + len].iter_mut().for_each(|slot| *slot = Some(slots[s] as usize));
    }
    // Each row writes only its own slice of `delta`; the locks are never contended.
    let outs: Vec<Mutex<&mut [f32]>> = delta.chunks_mut(d.fan_out).map(Mutex::new).collect();
    candle_core::utils::barrier_pool().execute_chunked(d.rows, |range| {
        let mut v = vec![0f32; d.r_max];
        for n in range {
            let Some(slot) = slot_of[n] else { continue };
            let a_slot = &a[slot * d.r_max * d.fan_in..][..d.r_max * d.fan_in];
            let b_slot = &b[slot * d.r_max * d.fan_out..][..d.r_max * d.fan_out];
            // shrink
            let x_row = &x[n * d.fan_in..][..d.fan_in];
            for (j, vj) in v.iter_mut().enumerate() {
                *vj = dot(x_row, &a_slot[j * d.fan_in..][..d.fan_in]);
            }
            // expand; rank rows past this adapter's rank are zero padding
            let mut out = outs[n].lock().expect("not poisoned");
            for (j, &vj) in v.iter().enumerate().filter(|(_, &vj)| vj != 0.0) {
                for (o, &bj) in out.iter_mut().zip(&b_slot[j * d.fan_out..][..d.fan_out]) {
                    *o += vj * bj;
                }
            }
        }
    });
    drop(outs);
    delta
}

/// The SGMV op over `(x, a, b)`, producing the delta `[rows, fan_out]`.
#[derive(Debug)]
pub struct Sgmv {
    /// The segment table on the host (CPU path) ...
    host: Vec<u32>,
    /// ... and on the GPU, the kernels' argument (`None` on the CPU).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    table: Option<Tensor>,
}

impl Sgmv {
    /// The op for a batch's segments; on a GPU, uploads the table once for every layer and module to share.
    pub fn new(segments: &[Segment], device: &Device) -> Result<Self> {
        let host = segment_table(segments);
        let table = if device.is_cpu() { None } else { Some(Tensor::new(host.as_slice(), device)?) };
        Ok(Self { host, table })
    }

    /// `delta = SGMV(x, a, b)`, in the dtype of `xs` (the CPU computes in f32).
    pub fn delta(&self, xs: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let xs = xs.contiguous()?;
        if xs.device().is_cpu() && xs.dtype() != DType::F32 {
            let f32 = |t: &Tensor| t.to_dtype(DType::F32);
            let delta = f32(&xs)?.apply_op3_no_bwd(&f32(a)?, &f32(b)?, self)?;
            return Ok(delta.to_dtype(xs.dtype())?);
        }
        Ok(xs.apply_op3_no_bwd(a, b, self)?)
    }

    fn dims(&self, x: &Layout, a: &Layout, b: &Layout) -> candle_core::Result<SgmvDims> {
        let (rows, fan_in) = x.shape().dims2()?;
        let (_, r_max, a_in) = a.shape().dims3()?;
        let (_, b_r, fan_out) = b.shape().dims3()?;
        if a_in != fan_in || b_r != r_max {
            candle_core::bail!("sgmv: x {:?}, a {:?}, b {:?} do not fit", x.shape(), a.shape(), b.shape())
        }
        Ok(SgmvDims { rows, fan_in, fan_out, r_max })
    }
}

fn contiguous<'a, T>(data: &'a [T], l: &Layout, what: &str) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("sgmv: {what} must be contiguous"),
    }
}

impl CustomOp3 for Sgmv {
    fn name(&self) -> &'static str {
        "sgmv"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        a: &CpuStorage,
        la: &Layout,
        b: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = self.dims(lx, la, lb)?;
        let (CpuStorage::F32(x), CpuStorage::F32(a), CpuStorage::F32(b)) = (x, a, b) else {
            candle_core::bail!("sgmv: the CPU path runs in f32 only")
        };
        let (x, a, b) = (contiguous(x, lx, "x")?, contiguous(a, la, "a")?, contiguous(b, lb, "b")?);
        Ok((CpuStorage::F32(cpu(x, a, b, &self.host, d)), Shape::from((d.rows, d.fan_out))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        a: &candle_core::CudaStorage,
        la: &Layout,
        b: &candle_core::CudaStorage,
        lb: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let d = self.dims(lx, la, lb)?;
        let Some(table) = &self.table else { candle_core::bail!("sgmv: no segment table on the GPU") };
        let (table, _) = table.storage_and_layout();
        let candle_core::Storage::Cuda(table) = &*table else {
            candle_core::bail!("sgmv: the segment table is not on the GPU")
        };
        let slice =
            super::sgmv_cuda::launch(x, lx, a, la, b, lb, table.as_cuda_slice::<u32>()?, self.host.len() / 3, d)?;
        Ok((candle_core::CudaStorage { slice, device: x.device.clone() }, Shape::from((d.rows, d.fan_out))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start: usize, len: usize, slot: Option<usize>) -> Segment {
        Segment { start, len, slot }
    }

    #[test]
    fn table_lists_adapter_segments_only() {
        let segs = [seg(0, 3, Some(2)), seg(3, 2, None), seg(5, 1, Some(0)), seg(6, 4, Some(2))];
        assert_eq!(segment_table(&segs), vec![0, 5, 6, 3, 1, 4, 2, 0, 2]);
        assert!(segment_table(&[seg(0, 4, None)]).is_empty());
    }

    /// Activations in bf16 on the CPU go through the f32 path and come back in bf16.
    #[test]
    fn cpu_op_accepts_half_precision() {
        let dev = Device::Cpu;
        let x =
            Tensor::arange(0f32, 24., &dev).unwrap().reshape((2, 12)).unwrap().affine(0.1, 0.0).unwrap().sin().unwrap();
        let a = Tensor::ones((1, 2, 12), DType::F32, &dev).unwrap();
        let b = Tensor::ones((1, 2, 5), DType::F32, &dev).unwrap();
        let op = Sgmv::new(&[seg(0, 2, Some(0))], &dev).unwrap();
        let want = op.delta(&x, &a, &b).unwrap();
        let bf16 = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let got = op.delta(&bf16(&x), &bf16(&a), &bf16(&b)).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let err = (got.to_dtype(DType::F32).unwrap() - want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(err.to_scalar::<f32>().unwrap() < 0.05);
    }

    /// The CPU op against the plain formula per row: `x_n A_s^T (sB_s)^T`, with adapters of different ranks
    /// zero-padded into the stacks and base rows left at zero.
    #[test]
    fn cpu_op_equals_each_rows_own_adapter() {
        let d = SgmvDims { rows: 7, fan_in: 12, fan_out: 10, r_max: 4 };
        let slots = 3;
        let f = |i: usize, k: f32| ((i as f32) * k).sin();
        let x: Vec<f32> = (0..d.rows * d.fan_in).map(|i| f(i, 0.37)).collect();
        let mut a: Vec<f32> = (0..slots * d.r_max * d.fan_in).map(|i| f(i, 0.11)).collect();
        let b: Vec<f32> = (0..slots * d.r_max * d.fan_out).map(|i| f(i, 0.23)).collect();
        // Slot 1 has rank 2: its padded rank rows of A are zero.
        for j in 2..d.r_max {
            a[(d.r_max + j) * d.fan_in..][..d.fan_in].fill(0.0);
        }
        let row_slots = [Some(0), Some(0), None, Some(1), Some(2), Some(2), None];
        let segs = [seg(0, 2, Some(0)), seg(2, 1, None), seg(3, 1, Some(1)), seg(4, 2, Some(2)), seg(6, 1, None)];
        let got = cpu(&x, &a, &b, &segment_table(&segs), d);
        for (n, slot) in row_slots.iter().enumerate() {
            for o in 0..d.fan_out {
                let want = slot.map_or(0.0, |s| {
                    (0..d.r_max)
                        .map(|j| {
                            let xa: f32 =
                                (0..d.fan_in).map(|i| x[n * d.fan_in + i] * a[(s * d.r_max + j) * d.fan_in + i]).sum();
                            xa * b[(s * d.r_max + j) * d.fan_out + o]
                        })
                        .sum()
                });
                assert!((got[n * d.fan_out + o] - want).abs() < 1e-5, "row {n} col {o}");
            }
        }
    }
}
