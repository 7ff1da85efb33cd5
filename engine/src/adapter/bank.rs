//! Many adapters in one batch. The base matmul runs once for every row; the LoRA delta is added per group of rows
//! that share an adapter, in one of two ways (after Punica/S-LoRA):
//! - SGMV (segmented): rows are grouped into contiguous segments by adapter and each segment does two small matmuls
//!   with its own adapter's factors. Best for prefill, where segments are long.
//! - BGMV (gathered): each row gathers its adapter's factors from a stack of all adapters (`index_select`), and two
//!   batched matmuls compute every row's delta at once. Best for decode with many different adapters, where a loop
//!   over segments would pay per-adapter overhead.
//!
//! Rows without an adapter (the base model) get no delta, so their output is bit-for-bit the base output.

use super::LoraAdapter;
use crate::{Module, Result};
use candle_core::{Device, Tensor};
use std::sync::Arc;

/// The adapters available to a batch, addressed by slot index.
#[derive(Debug, Default)]
pub struct AdapterBank {
    adapters: Vec<Arc<LoraAdapter>>,
    /// Per layer, per module: `A^T` stacked `[slots + 1, in, r_max]` and `(sB)^T` stacked `[slots + 1, r_max, out]`,
    /// zero-padded to the largest rank; the extra last slot is all zeros (rows on the base model).
    stacks: Vec<[Option<(Tensor, Tensor)>; 7]>,
}

impl AdapterBank {
    /// A bank holding `adapters`, in slot order.
    pub fn new(adapters: Vec<Arc<LoraAdapter>>, num_layers: usize) -> Result<Self> {
        let mut stacks = Vec::with_capacity(num_layers);
        for layer in 0..num_layers {
            let mut mods: [Option<(Tensor, Tensor)>; 7] = Default::default();
            for module in Module::ALL {
                mods[module.index()] = stack_module(&adapters, layer, module)?;
            }
            stacks.push(mods);
        }
        Ok(Self { adapters, stacks })
    }

    /// Number of adapter slots.
    pub fn len(&self) -> usize {
        self.adapters.len()
    }

    /// Whether the bank has no adapters.
    pub fn is_empty(&self) -> bool {
        self.adapters.is_empty()
    }

    /// The adapter in `slot`.
    pub fn get(&self, slot: usize) -> Option<&Arc<LoraAdapter>> {
        self.adapters.get(slot)
    }

    /// `base` (= `x W^T`, `[rows, out]`) plus each row's LoRA delta for `module` of `layer`, as `plan` says.
    pub fn apply(&self, plan: &LoraPlan, layer: usize, module: Module, xs: &Tensor, base: Tensor) -> Result<Tensor> {
        match &plan.mode {
            PlanMode::None => Ok(base),
            PlanMode::Gather(ids) => {
                let Some((a, b)) = &self.stacks[layer][module.index()] else { return Ok(base) };
                let rows = xs.dim(0)?;
                let a_rows = a.index_select(ids, 0)?; // [rows, in, r]
                let b_rows = b.index_select(ids, 0)?; // [rows, r, out]
                let delta = xs.unsqueeze(1)?.matmul(&a_rows)?.matmul(&b_rows)?.reshape((rows, ()))?;
                Ok((base + delta)?)
            }
            PlanMode::Segments => {
                let mut pieces = Vec::with_capacity(plan.segments.len());
                let mut any = false;
                for seg in &plan.segments {
                    let out = base.narrow(0, seg.start, seg.len)?;
                    let weights = seg.slot.and_then(|s| self.adapters[s].weights(layer, module));
                    match weights {
                        Some(w) => {
                            any = true;
                            let x = xs.narrow(0, seg.start, seg.len)?;
                            pieces.push((out + x.matmul(&w.a_t)?.matmul(&w.b_t)?)?);
                        }
                        None => pieces.push(out),
                    }
                }
                if !any {
                    return Ok(base);
                }
                Ok(Tensor::cat(&pieces, 0)?)
            }
        }
    }
}

fn stack_module(adapters: &[Arc<LoraAdapter>], layer: usize, module: Module) -> Result<Option<(Tensor, Tensor)>> {
    let present: Vec<_> = adapters.iter().map(|a| a.weights(layer, module)).collect();
    let Some(first) = present.iter().flatten().next() else { return Ok(None) };
    let (fan_in, _) = first.a_t.dims2()?;
    let (_, fan_out) = first.b_t.dims2()?;
    let (device, dtype) = (first.a_t.device().clone(), first.a_t.dtype());
    let r_max = present.iter().flatten().map(|w| w.a_t.dims()[1]).max().unwrap_or(1);
    let mut a_list = Vec::with_capacity(adapters.len() + 1);
    let mut b_list = Vec::with_capacity(adapters.len() + 1);
    for w in present.iter().map(|w| w.cloned()).chain(std::iter::once(None)) {
        match w {
            Some(w) => {
                let r = w.a_t.dims()[1];
                a_list.push(w.a_t.pad_with_zeros(1, 0, r_max - r)?);
                b_list.push(w.b_t.pad_with_zeros(0, 0, r_max - r)?);
            }
            None => {
                a_list.push(Tensor::zeros((fan_in, r_max), dtype, &device)?);
                b_list.push(Tensor::zeros((r_max, fan_out), dtype, &device)?);
            }
        }
    }
    Ok(Some((Tensor::stack(&a_list, 0)?, Tensor::stack(&b_list, 0)?)))
}

/// A run of consecutive token rows that share one adapter (or none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// First row.
    pub start: usize,
    /// Number of rows.
    pub len: usize,
    /// Adapter slot, `None` for the base model.
    pub slot: Option<usize>,
}

#[derive(Debug)]
enum PlanMode {
    /// No row uses an adapter.
    None,
    /// Per-segment matmuls.
    Segments,
    /// Per-row gather of stacked factors; the tensor holds each row's slot (the zero slot for base rows).
    Gather(Tensor),
}

/// How one forward pass applies adapters, computed once per batch and reused by every layer.
#[derive(Debug)]
pub struct LoraPlan {
    segments: Vec<Segment>,
    mode: PlanMode,
}

impl LoraPlan {
    /// Plans a batch whose token rows carry `row_slots` (one entry per row). `decode_only` says every sequence
    /// contributes one row, which makes gathering pay off when several adapters are present.
    pub fn new(row_slots: &[Option<usize>], bank: &AdapterBank, decode_only: bool, device: &Device) -> Result<Self> {
        let mut segments: Vec<Segment> = Vec::new();
        for (row, slot) in row_slots.iter().enumerate() {
            match segments.last_mut() {
                Some(seg) if seg.slot == *slot => seg.len += 1,
                _ => segments.push(Segment { start: row, len: 1, slot: *slot }),
            }
        }
        let adapter_segments = segments.iter().filter(|s| s.slot.is_some()).count();
        let mode = if adapter_segments == 0 {
            PlanMode::None
        } else if decode_only && adapter_segments > 1 {
            let zero_slot = bank.len() as u32;
            let ids: Vec<u32> = row_slots.iter().map(|s| s.map_or(zero_slot, |s| s as u32)).collect();
            PlanMode::Gather(Tensor::new(ids, device)?)
        } else {
            PlanMode::Segments
        };
        Ok(Self { segments, mode })
    }

    /// The segments of the batch.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Whether rows gather their factors (BGMV) rather than going segment by segment (SGMV).
    pub fn is_gather(&self) -> bool {
        matches!(self.mode, PlanMode::Gather(_))
    }
}
