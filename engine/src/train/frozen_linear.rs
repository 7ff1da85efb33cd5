//! `x · Wᵀ` for a frozen `W`, as a custom op whose backward pass computes only the input's gradient. candle's own
//! matmul backward also computes the gradient of its right-hand side, which for a frozen base weight is a full
//! weight-sized product (and a weight-sized allocation) per layer per step, thrown away; on the LM head it is the
//! size of the whole vocabulary. Skipping it halves the backward pass of LoRA training.

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Storage, Tensor};

/// The op; holds the frozen weight `[out, in]`.
#[derive(Debug)]
pub(crate) struct FrozenLinear {
    weight: Tensor,
}

fn cpu_tensor(storage: &CpuStorage, layout: &Layout) -> Result<Tensor> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("frozen linear: the input must be contiguous");
    };
    let shape = layout.shape().clone();
    match storage {
        CpuStorage::F32(v) => Tensor::from_slice(&v[start..end], shape, &Device::Cpu),
        CpuStorage::F64(v) => Tensor::from_slice(&v[start..end], shape, &Device::Cpu),
        _ => candle_core::bail!("frozen linear: only f32 and f64 are supported"),
    }
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_tensor(storage, layout)?;
        let y = x.matmul(&self.weight.t()?)?;
        let (s, l) = y.storage_and_layout();
        match &*s {
            Storage::Cpu(c) if l.is_contiguous() && l.start_offset() == 0 => Ok((c.clone(), l.shape().clone())),
            _ => candle_core::bail!("frozen linear: unexpected matmul output layout"),
        }
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.matmul(&self.weight)?))
    }
}

/// `x · Wᵀ` with `x` `[n, in]`; differentiable in `x` only.
pub(crate) fn frozen_linear(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        // Other devices: the plain matmul (its extra weight gradient only costs time).
        return x.matmul(&weight.t()?);
    }
    x.contiguous()?.apply_op1(FrozenLinear { weight: weight.clone() })
}
