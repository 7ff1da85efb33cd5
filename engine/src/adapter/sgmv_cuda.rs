//! Launching the SGMV kernels of `engine/kernels/sgmv.cu` through cudarc on candle's stream (only with `cuda`).

use super::plan::SgmvDims;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaDevice, CudaStorage, Layout, Result};

/// The kernels, compiled to PTX by nvcc in `build.rs`.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/sgmv.ptx"));
const MODULE: &str = "loraland_sgmv";
/// Threads per block; must match `SHRINK_THREADS` / `EXPAND_THREADS` in the kernel source.
const SHRINK_THREADS: u32 = 256;
const EXPAND_THREADS: u32 = 256;

fn view<'a, T>(
    s: &'a CudaSlice<T>,
    l: &Layout,
    what: &str,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(s.slice(start..end)),
        None => candle_core::bail!("sgmv: {what} must be contiguous"),
    }
}

#[allow(clippy::too_many_arguments)]
fn run<T: DeviceRepr + ValidAsZeroBits>(
    dev: &CudaDevice,
    suffix: &str,
    x: &CudaSlice<T>,
    lx: &Layout,
    a: &CudaSlice<T>,
    la: &Layout,
    b: &CudaSlice<T>,
    lb: &Layout,
    table: &CudaSlice<u32>,
    n_seg: usize,
    d: SgmvDims,
) -> Result<CudaSlice<T>> {
    let delta = dev.alloc_zeros::<T>(d.rows * d.fan_out)?;
    if n_seg == 0 || d.rows == 0 {
        return Ok(delta);
    }
    let (x, a, b) = (view(x, lx, "x")?, view(a, la, "a")?, view(b, lb, "b")?);
    let v = dev.alloc_zeros::<f32>(d.rows * d.r_max)?;
    let (n_seg_u, fan_in, fan_out, r_max) = (n_seg as u32, d.fan_in as u32, d.fan_out as u32, d.r_max as u32);

    let shrink = dev.get_or_load_custom_func(&format!("sgmv_shrink_{suffix}"), MODULE, PTX)?;
    let mut launch = shrink.builder();
    launch.arg(&x).arg(&a).arg(table).arg(&v).arg(&n_seg_u).arg(&fan_in).arg(&r_max);
    let cfg = LaunchConfig { grid_dim: (r_max, n_seg_u, 1), block_dim: (SHRINK_THREADS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: the kernel reads x [rows, fan_in], a [slots, r_max, fan_in] and the table (3 * n_seg u32), writes
    // v [rows, r_max]; all sizes are the ones checked in `Sgmv::dims` and the table's rows/slots come from the plan.
    #[allow(unsafe_code)]
    unsafe { launch.launch(cfg) }.w()?;

    let expand = dev.get_or_load_custom_func(&format!("sgmv_expand_{suffix}"), MODULE, PTX)?;
    let mut launch = expand.builder();
    launch.arg(&v).arg(&b).arg(table).arg(&delta).arg(&n_seg_u).arg(&fan_out).arg(&r_max);
    let blocks = fan_out.div_ceil(EXPAND_THREADS);
    let cfg = LaunchConfig { grid_dim: (blocks, n_seg_u, 1), block_dim: (EXPAND_THREADS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: reads v and b [slots, r_max, fan_out], writes delta [rows, fan_out]; same bounds as above.
    #[allow(unsafe_code)]
    unsafe { launch.launch(cfg) }.w()?;
    Ok(delta)
}

/// The delta `[rows, fan_out]` of the table's segments, in the activation dtype.
#[allow(clippy::too_many_arguments)]
pub(super) fn launch(
    x: &CudaStorage,
    lx: &Layout,
    a: &CudaStorage,
    la: &Layout,
    b: &CudaStorage,
    lb: &Layout,
    table: &CudaSlice<u32>,
    n_seg: usize,
    d: SgmvDims,
) -> Result<CudaStorageSlice> {
    let dev = &x.device;
    Ok(match (&x.slice, &a.slice, &b.slice) {
        (CudaStorageSlice::F32(x), CudaStorageSlice::F32(a), CudaStorageSlice::F32(b)) => {
            CudaStorageSlice::F32(run(dev, "f32", x, lx, a, la, b, lb, table, n_seg, d)?)
        }
        (CudaStorageSlice::F16(x), CudaStorageSlice::F16(a), CudaStorageSlice::F16(b)) => {
            CudaStorageSlice::F16(run(dev, "f16", x, lx, a, la, b, lb, table, n_seg, d)?)
        }
        (CudaStorageSlice::BF16(x), CudaStorageSlice::BF16(a), CudaStorageSlice::BF16(b)) => {
            CudaStorageSlice::BF16(run(dev, "bf16", x, lx, a, la, b, lb, table, n_seg, d)?)
        }
        _ => candle_core::bail!("sgmv: x, a and b must share one of f32, f16, bf16"),
    })
}
