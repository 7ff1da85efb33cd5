//! One sequence's key/value cache: for each layer, the keys and values of every position seen so far.
//!
//! Each sequence owns its cache, so a batch can mix sequences of any length and any position; the continuous
//! batcher frees a sequence's memory by dropping its cache. Buffers are preallocated and grow by doubling, and new
//! positions are written in place, so appending one token costs O(1) copies instead of O(length).

use candle_core::{Result, Tensor};

/// Positions reserved when a layer's buffer is first allocated.
const INITIAL_CAPACITY: usize = 64;

#[derive(Debug)]
struct LayerCache {
    /// `[kv_heads, capacity, head_dim]`; positions `0..len` are valid.
    k: Tensor,
    v: Tensor,
    len: usize,
}

/// Keys and values per layer, each `[kv_heads, positions, head_dim]`.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    len: usize,
}

impl KvCache {
    /// An empty cache for a model with `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self { layers: (0..num_layers).map(|_| None).collect(), len: 0 }
    }

    /// Positions already cached (the offset of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `k`, `v` (`[kv_heads, new, head_dim]`, contiguous) to `layer` and returns views of all keys and
    /// values so far. The sequence length advances when the last layer is appended.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let new = k.dim(1)?;
        let last_layer = layer + 1 == self.layers.len();
        let entry = &mut self.layers[layer];
        let len = entry.as_ref().map_or(0, |c| c.len);
        let capacity = entry.as_ref().map_or(0, |c| c.k.dim(1).unwrap_or(0));
        if len + new > capacity {
            let cap = (len + new).max(INITIAL_CAPACITY).next_power_of_two();
            let (h, d) = (k.dim(0)?, k.dim(2)?);
            let nk = Tensor::zeros((h, cap, d), k.dtype(), k.device())?;
            let nv = Tensor::zeros((h, cap, d), v.dtype(), v.device())?;
            if let Some(old) = entry.as_ref() {
                nk.slice_set(&old.k.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
                nv.slice_set(&old.v.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
            }
            *entry = Some(LayerCache { k: nk, v: nv, len });
        }
        let c = entry.as_mut().expect("allocated above");
        c.k.slice_set(&k.contiguous()?, 1, len)?;
        c.v.slice_set(&v.contiguous()?, 1, len)?;
        c.len = len + new;
        let (k_all, v_all) = (c.k.narrow(1, 0, c.len)?, c.v.narrow(1, 0, c.len)?);
        if last_layer {
            self.len = c.len;
        }
        Ok((k_all, v_all))
    }

    /// Bytes held by the cache (its allocated capacity).
    pub fn bytes(&self) -> usize {
        self.layers.iter().flatten().map(|c| (c.k.elem_count() + c.v.elem_count()) * c.k.dtype().size_in_bytes()).sum()
    }
}
