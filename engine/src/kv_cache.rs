//! One sequence's key/value cache: for each layer, the keys and values of every position seen so far.
//!
//! Each sequence owns its cache, so a batch can mix sequences of any length and any position; the continuous
//! batcher frees a sequence's memory by dropping its cache.

use candle_core::{Result, Tensor};

/// Keys and values per layer, each `[kv_heads, positions, head_dim]`.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// An empty cache for a model with `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self { layers: vec![None; num_layers], len: 0 }
    }

    /// Positions already cached (the offset of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `k`, `v` (`[kv_heads, new, head_dim]`) to `layer` and returns the whole keys and values.
    /// The sequence length advances when the last layer is appended.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = match &self.layers[layer] {
            None => (k.clone(), v.clone()),
            Some((pk, pv)) => (Tensor::cat(&[pk, k], 1)?, Tensor::cat(&[pv, v], 1)?),
        };
        if layer + 1 == self.layers.len() {
            self.len = k.dim(1)?;
        }
        self.layers[layer] = Some((k.clone(), v.clone()));
        Ok((k, v))
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        self.layers.iter().flatten().map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes()).sum()
    }
}
