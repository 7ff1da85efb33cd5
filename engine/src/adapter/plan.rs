//! How one forward pass applies adapters, computed once per batch and read by every layer: the batch's rows grouped
//! into segments that share an adapter, and the strategy ([`LoraPlan`]); for SGMV the segment table the op reads
//! ([`Sgmv`], on the host and on a GPU). The op itself is [`super::sgmv`]; the bank of adapters is [`super::bank`].

use crate::Result;
use candle_core::{Device, Tensor};

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
    /// Rank every adapter is zero-padded to (the GPU's stacks; the CPU reads each adapter at its own rank).
    pub r_max: usize,
}

/// The SGMV op over `(x, a, b)`, producing the delta `[rows, fan_out]`.
#[derive(Debug)]
pub struct Sgmv {
    /// The segment table on the host (CPU path) ...
    pub(crate) host: Vec<u32>,
    /// Which adapter slots the table uses, by slot index (the CPU reads only their factors).
    pub(crate) used: Vec<bool>,
    /// ... and on the GPU, the kernels' argument (`None` on the CPU).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) table: Option<Tensor>,
}

impl Sgmv {
    /// The op for a batch's segments; on a GPU, uploads the table once for every layer and module to share.
    pub fn new(segments: &[Segment], device: &Device) -> Result<Self> {
        let host = segment_table(segments);
        let table = if device.is_cpu() { None } else { Some(Tensor::new(host.as_slice(), device)?) };
        let mut used = Vec::new();
        for slot in segments.iter().filter_map(|s| s.slot) {
            if used.len() <= slot {
                used.resize(slot + 1, false);
            }
            used[slot] = true;
        }
        Ok(Self { host, used, table })
    }
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
pub(crate) enum PlanMode {
    /// No row uses an adapter.
    None,
    /// Per-segment matmuls.
    Segments,
    /// One SGMV op over all segments.
    Sgmv(Sgmv),
}

/// How one forward pass applies adapters, computed once per batch and reused by every layer.
#[derive(Debug)]
pub struct LoraPlan {
    pub(crate) segments: Vec<Segment>,
    pub(crate) mode: PlanMode,
}

impl LoraPlan {
    /// Plans a batch whose token rows carry `row_slots` (one entry per row): SGMV if any row has an adapter.
    pub fn new(row_slots: &[Option<usize>], device: &Device) -> Result<Self> {
        let mut segments: Vec<Segment> = Vec::new();
        for (row, slot) in row_slots.iter().enumerate() {
            match segments.last_mut() {
                Some(seg) if seg.slot == *slot => seg.len += 1,
                _ => segments.push(Segment { start: row, len: 1, slot: *slot }),
            }
        }
        let mode = if segments.iter().all(|s| s.slot.is_none()) {
            PlanMode::None
        } else {
            PlanMode::Sgmv(Sgmv::new(&segments, device)?)
        };
        Ok(Self { segments, mode })
    }

    /// The segments of the batch.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Which strategy the plan uses: `"none"`, `"segments"` or `"sgmv"`.
    pub fn strategy(&self) -> &'static str {
        match self.mode {
            PlanMode::None => "none",
            PlanMode::Segments => "segments",
            PlanMode::Sgmv(_) => "sgmv",
        }
    }

    /// The same plan with another strategy, for tests that compare strategies on one batch.
    #[doc(hidden)]
    pub fn with_strategy(mut self, strategy: &str, device: &Device) -> Result<Self> {
        self.mode = match strategy {
            "segments" => PlanMode::Segments,
            "sgmv" => PlanMode::Sgmv(Sgmv::new(&self.segments, device)?),
            _ => PlanMode::None,
        };
        Ok(self)
    }
}
