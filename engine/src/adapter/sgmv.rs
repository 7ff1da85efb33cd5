//! SGMV: the LoRA delta of a heterogeneous batch in two launches whatever the number of adapters (Punica, LoRAX).
//! Rows are grouped into segments that share an adapter; `shrink` computes `v = x A^T` and `expand` `delta = v (sB)^T`,
//! every segment with its own adapter's factors.
//!
//! On CUDA the two steps are our kernels (`engine/kernels/sgmv.cu`, compiled to PTX by nvcc at build time and
//! launched through cudarc), reading the factors from stacks of all resident adapters (see [`super::bank`]). On the
//! CPU the same op runs [`cpu`]: the same arithmetic, row by row in f32, the rows split across candle's workers (a
//! few thousand multiply-adds per row and module, where a matmul per segment costs more in call overhead than in
//! arithmetic), reading each adapter's own factors, so that a change of the resident set copies nothing. Tests
//! compare it with each row's own adapter, and the GPU test compares the kernels with it.

use super::plan::Sgmv;
#[cfg(feature = "cuda")]
use super::plan::SgmvDims;
use super::LoraWeights;
use crate::Result;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor, WithDType};
use half::bf16;
use std::sync::Mutex;

/// A factor value as the CPU op reads it: f32, or bf16 widened exactly (a shift into the high half).
pub trait Factor: Copy + Send + Sync {
    /// The value as f32.
    fn widen(self) -> f32;
}

impl Factor for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Factor for bf16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
}

/// One adapter's factors for one module, as the CPU op reads them.
#[derive(Clone, Copy, Debug)]
pub struct HostFactors<'a, T> {
    /// `A^T`, `[fan_in, r]`.
    pub a_t: &'a [T],
    /// `B^T`, `[r, fan_out]`.
    pub b_t: &'a [T],
    /// The rank.
    pub r: usize,
    /// The scale `s`.
    pub scale: f32,
}

/// A slot's factors, in the dtype the adapter holds them in.
#[derive(Clone, Copy, Debug)]
pub enum SlotFactors<'a> {
    /// Held in f32.
    F32(HostFactors<'a, f32>),
    /// Held in bf16.
    Bf16(HostFactors<'a, bf16>),
}

impl SlotFactors<'_> {
    fn rank(&self) -> usize {
        match self {
            Self::F32(f) => f.r,
            Self::Bf16(f) => f.r,
        }
    }
}

/// The op on the CPU: `x` is `[rows, fan_in]`, `slots[s]` the factors of the adapter in slot `s` (`None` where it
/// lacks the module); adds each row's delta to `out`, `[rows, fan_out]` (rows outside the table's segments are left
/// as they are). Each row: `r` dot products over `fan_in`, then a sum over the rank per output column, vectorisable
/// loops.
pub fn cpu(x: &[f32], slots: &[Option<SlotFactors<'_>>], table: &[u32], fan_in: usize, out: &mut [f32]) {
    let rows = x.len().checked_div(fan_in).unwrap_or(0);
    let n_seg = table.len() / 3;
    let (starts, lens, seg_slots) = (&table[..n_seg], &table[n_seg..2 * n_seg], &table[2 * n_seg..]);
    let Some(fan_out) = out.len().checked_div(rows).filter(|&f| f > 0) else { return };
    let mut factors_of = vec![None; rows];
    for s in 0..n_seg {
        let (start, len) = (starts[s] as usize, lens[s] as usize);
        let factors = slots.get(seg_slots[s] as usize).copied().flatten();
        factors_of[start..start + len].iter_mut().for_each(|f| *f = factors);
    }
    let r_max = slots.iter().flatten().map(SlotFactors::rank).max().unwrap_or(0);
    // Each row writes only its own slice of `out`; the locks are never contended.
    let outs: Vec<Mutex<&mut [f32]>> = out.chunks_mut(fan_out).map(Mutex::new).collect();
    candle_core::utils::barrier_pool().execute_chunked(rows, |range| {
        let mut v = vec![0f32; r_max];
        for n in range {
            let Some(f) = factors_of[n] else { continue };
            let x_row = &x[n * fan_in..][..fan_in];
            let mut out = outs[n].lock().expect("not poisoned");
            match f {
                SlotFactors::F32(f) => add_delta(x_row, &f, &mut v, &mut out),
                SlotFactors::Bf16(f) => add_delta(x_row, &f, &mut v, &mut out),
            }
        }
    });
}

/// `out += s · x A^T B^T` for one row.
fn add_delta<T: Factor>(x: &[f32], f: &HostFactors<'_, T>, v: &mut [f32], out: &mut [f32]) {
    let v = &mut v[..f.r];
    shrink(x, f.a_t, v);
    for (&vj, b_row) in v.iter().zip(f.b_t.chunks_exact(out.len())) {
        let vj = vj * f.scale;
        for (o, &bj) in out.iter_mut().zip(b_row) {
            *o += vj * bj.widen();
        }
    }
}

/// `v = x A^T` from `A^T` (`[fan_in, r]`, one row of `r` values per input feature): for ranks that are multiples of
/// eight, eight accumulators side by side (one vector register), two of them over alternate inputs.
fn shrink<T: Factor>(x: &[f32], a_t: &[T], v: &mut [f32]) {
    let r = v.len();
    if !r.is_multiple_of(8) {
        v.fill(0.0);
        for (&xi, a_row) in x.iter().zip(a_t.chunks_exact(r)) {
            for (vj, &a) in v.iter_mut().zip(a_row) {
                *vj += xi * a.widen();
            }
        }
        return;
    }
    for j0 in (0..r).step_by(8) {
        let (mut even, mut odd) = ([0f32; 8], [0f32; 8]);
        let lanes = |i: usize| -> &[T; 8] { a_t[i * r + j0..][..8].try_into().expect("eight lanes") };
        let pairs = x.len() / 2;
        for p in 0..pairs {
            let (x0, x1) = (x[2 * p], x[2 * p + 1]);
            let (a0, a1) = (lanes(2 * p), lanes(2 * p + 1));
            for k in 0..8 {
                even[k] += x0 * a0[k].widen();
                odd[k] += x1 * a1[k].widen();
            }
        }
        if x.len() % 2 == 1 {
            let (xl, al) = (x[x.len() - 1], lanes(x.len() - 1));
            for k in 0..8 {
                even[k] += xl * al[k].widen();
            }
        }
        for k in 0..8 {
            v[j0 + k] = even[k] + odd[k];
        }
    }
}

impl Sgmv {
    /// `delta = SGMV(x, a, b)` on a GPU, from the stacks of every adapter's factors (see [`super::bank`]).
    pub fn delta(&self, xs: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok(xs.contiguous()?.apply_op3_no_bwd(a, b, self)?)
    }

    /// `base + delta` on the CPU (one pass, no separate delta), from each adapter's own factors: `slots[s]` holds the
    /// module's factors of the adapter in slot `s`, `None` where it lacks the module. In the dtype of `base`,
    /// computed in f32 from factors in f32 or bf16 as held (other dtypes are converted).
    pub fn add_host(&self, xs: &Tensor, base: Tensor, slots: &[Option<&LoraWeights>]) -> Result<Tensor> {
        let Some(first) = slots.iter().flatten().next() else { return Ok(base) };
        let (rows, fan_in) = xs.dims2()?;
        let fan_out = first.b_t.dims2()?.1;
        let misfit = |what: String| -> Result<Tensor> { Err(candle_core::Error::Msg(format!("sgmv: {what}")).into()) };
        if base.dims() != [rows, fan_out] {
            return misfit(format!("base output {:?} for x [{rows}, {fan_in}] and {fan_out} outputs", base.dims()));
        }
        // The factors of the slots this batch uses, in f32 or bf16 as held (other dtypes converted to f32).
        let mut held = Vec::with_capacity(slots.len());
        for (s, w) in slots.iter().enumerate() {
            let Some(w) = w.filter(|_| self.used.get(s).copied().unwrap_or(false)) else {
                held.push(None);
                continue;
            };
            let r = w.a_t.dims2()?.1;
            if w.a_t.dims() != [fan_in, r] || w.b_t.dims() != [r, fan_out] {
                let (a, b) = (w.a_t.dims(), w.b_t.dims());
                return misfit(format!("x [{rows}, {fan_in}], A^T {a:?}, B^T {b:?} do not fit"));
            }
            let both_bf16 = w.a_t.dtype() == DType::BF16 && w.b_t.dtype() == DType::BF16;
            let dtype = if both_bf16 { DType::BF16 } else { DType::F32 };
            let as_held = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(dtype)?.contiguous()?) };
            held.push(Some((as_held(&w.a_t)?, as_held(&w.b_t)?, w.scale)));
        }
        let guards: Vec<_> = held
            .iter()
            .map(|h| h.as_ref().map(|(a, b, scale)| (a.storage_and_layout(), b.storage_and_layout(), *scale)))
            .collect();
        let factors = guards
            .iter()
            .map(|g| g.as_ref().map(|((sa, la), (sb, lb), scale)| slot_factors((sa, la), (sb, lb), *scale)).transpose())
            .collect::<Result<Vec<_>>>()?;
        let x = xs.to_dtype(DType::F32)?.contiguous()?;
        let (x_storage, x_layout) = x.storage_and_layout();
        let mut out = base.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        cpu(host(&x_storage, x_layout)?, &factors, &self.host, fan_in, &mut out);
        Ok(Tensor::from_vec(out, (rows, fan_out), base.device())?.to_dtype(base.dtype())?)
    }

    #[cfg(feature = "cuda")]
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

/// One slot's factors as the CPU op reads them, from `A^T` and `B^T` held in host memory in f32 or bf16.
fn slot_factors<'a>(a: (&'a Storage, &Layout), b: (&'a Storage, &Layout), scale: f32) -> Result<SlotFactors<'a>> {
    let r = a.1.dims()[1];
    Ok(match a.0.dtype() {
        DType::BF16 => SlotFactors::Bf16(HostFactors { a_t: host(a.0, a.1)?, b_t: host(b.0, b.1)?, r, scale }),
        _ => SlotFactors::F32(HostFactors { a_t: host(a.0, a.1)?, b_t: host(b.0, b.1)?, r, scale }),
    })
}

/// The values of a contiguous tensor in host memory.
fn host<'a, T: WithDType>(storage: &'a Storage, layout: &Layout) -> Result<&'a [T]> {
    match (storage, layout.contiguous_offsets()) {
        (Storage::Cpu(cpu), Some((start, end))) => Ok(&cpu.as_slice::<T>()?[start..end]),
        _ => Err(candle_core::Error::Msg("sgmv: expected a contiguous tensor in host memory".into()).into()),
    }
}

impl CustomOp3 for Sgmv {
    fn name(&self) -> &'static str {
        "sgmv"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("sgmv: stacked factors are for GPUs; on the CPU use Sgmv::add_host")
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
    use crate::adapter::plan::{segment_table, Segment};
    use candle_core::Device;

    fn seg(start: usize, len: usize, slot: Option<usize>) -> Segment {
        Segment { start, len, slot }
    }

    #[test]
    fn table_lists_adapter_segments_only() {
        let segs = [seg(0, 3, Some(2)), seg(3, 2, None), seg(5, 1, Some(0)), seg(6, 4, Some(2))];
        assert_eq!(segment_table(&segs), vec![0, 5, 6, 3, 1, 4, 2, 0, 2]);
        assert!(segment_table(&[seg(0, 4, None)]).is_empty());
    }

    /// Activations in bf16 on the CPU go through the f32 path and come back in bf16; factors held in bf16 are read
    /// as they are, exactly as their f32 values.
    #[test]
    fn cpu_op_accepts_half_precision() {
        let dev = Device::Cpu;
        let x =
            Tensor::arange(0f32, 24., &dev).unwrap().reshape((2, 12)).unwrap().affine(0.1, 0.0).unwrap().sin().unwrap();
        let bf16 = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        // Values that bf16 holds exactly.
        let a_t = bf16(
            &Tensor::arange(0f32, 24., &dev)
                .unwrap()
                .reshape((12, 2))
                .unwrap()
                .affine(0.37, 0.0)
                .unwrap()
                .cos()
                .unwrap(),
        );
        let b_t = bf16(&Tensor::arange(0f32, 10., &dev).unwrap().reshape((2, 5)).unwrap().sin().unwrap());
        let f32w =
            LoraWeights { a_t: a_t.to_dtype(DType::F32).unwrap(), b_t: b_t.to_dtype(DType::F32).unwrap(), scale: 0.75 };
        let bf16w = LoraWeights { a_t, b_t, scale: 0.75 };
        let op = Sgmv::new(&[seg(0, 2, Some(0))], &dev).unwrap();
        let base = x.narrow(1, 0, 5).unwrap().cos().unwrap();
        let want = op.add_host(&x, base.clone(), &[Some(&f32w)]).unwrap();
        let held = op.add_host(&x, base.clone(), &[Some(&bf16w)]).unwrap();
        assert_eq!(held.to_vec2::<f32>().unwrap(), want.to_vec2::<f32>().unwrap(), "bf16 factors read exactly");
        let got = op.add_host(&bf16(&x), bf16(&base), &[Some(&f32w)]).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let err = (got.to_dtype(DType::F32).unwrap() - want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(err.to_scalar::<f32>().unwrap() < 0.05);
        // Factors that do not fit the activations are an error, not a silent short read.
        let narrow = LoraWeights { a_t: Tensor::ones((11, 2), DType::F32, &dev).unwrap(), ..f32w.clone() };
        assert!(op.add_host(&x, base.clone(), &[Some(&narrow)]).is_err());
        assert!(op.add_host(&x, x.clone(), &[Some(&f32w)]).is_err(), "a base output of the wrong width");
    }

    /// The CPU op against the plain formula per row: `s_n x_n A_s^T B_s^T`, with adapters of different ranks
    /// (multiples of eight and not) in f32 and bf16, a slot without the module, and base rows left at zero.
    #[test]
    fn cpu_op_equals_each_rows_own_adapter() {
        let (rows, fan_in, fan_out) = (9, 13, 10);
        let ranks = [16, 3, 8, 0, 8];
        let scales = [0.5, 2.0, 1.25, 1.0, 0.3];
        let f = |i: usize, k: f32| ((i as f32) * k).sin();
        let x: Vec<f32> = (0..rows * fan_in).map(|i| f(i, 0.37)).collect();
        // Slot 4 is held in bf16; its reference uses the same values widened.
        let round = |s: usize, v: f32| if s == 4 { bf16::from_f32(v).to_f32() } else { v };
        let a: Vec<Vec<f32>> =
            (0..ranks.len()).map(|s| (0..fan_in * ranks[s]).map(|i| round(s, f(i + s, 0.11))).collect()).collect();
        let b: Vec<Vec<f32>> =
            (0..ranks.len()).map(|s| (0..ranks[s] * fan_out).map(|i| round(s, f(i + s, 0.23))).collect()).collect();
        let half = |v: &[f32]| v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>();
        let (a4, b4) = (half(&a[4]), half(&b[4]));
        let slots: Vec<Option<SlotFactors<'_>>> = (0..ranks.len())
            .map(|s| {
                let (r, scale) = (ranks[s], scales[s]);
                match s {
                    3 => None,
                    4 => Some(SlotFactors::Bf16(HostFactors { a_t: &a4, b_t: &b4, r, scale })),
                    _ => Some(SlotFactors::F32(HostFactors { a_t: &a[s], b_t: &b[s], r, scale })),
                }
            })
            .collect();
        let row_slots = [Some(0), Some(0), None, Some(1), Some(2), Some(4), None, Some(3), Some(0)];
        let segs = [
            seg(0, 2, Some(0)),
            seg(2, 1, None),
            seg(3, 1, Some(1)),
            seg(4, 1, Some(2)),
            seg(5, 1, Some(4)),
            seg(6, 1, None),
            seg(7, 1, Some(3)),
            seg(8, 1, Some(0)),
        ];
        // Onto a base output, which rows without an adapter keep.
        let base: Vec<f32> = (0..rows * fan_out).map(|i| f(i, 0.71)).collect();
        let mut got = base.clone();
        cpu(&x, &slots, &segment_table(&segs), fan_in, &mut got);
        for (n, slot) in row_slots.iter().enumerate() {
            for o in 0..fan_out {
                let want: f32 = slot.filter(|&s| ranks[s] > 0 && s != 3).map_or(0.0, |s| {
                    let r = ranks[s];
                    let sum: f32 = (0..r)
                        .map(|j| {
                            let xa: f32 = (0..fan_in).map(|i| x[n * fan_in + i] * a[s][i * r + j]).sum();
                            xa * b[s][j * fan_out + o]
                        })
                        .sum();
                    scales[s] * sum
                });
                let got = got[n * fan_out + o] - base[n * fan_out + o];
                assert!((got - want).abs() < 1e-5, "row {n} col {o}: {got} vs {want}");
            }
        }
    }
}
