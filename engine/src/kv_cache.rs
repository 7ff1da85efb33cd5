//! One sequence's key/value cache: for each layer, the keys and values of every position seen so far.
//!
//! Each sequence owns its cache, so a batch can mix sequences of any length and any position; the continuous
//! batcher frees a sequence's memory by dropping its cache. Buffers are preallocated and grow by doubling, and new
//! positions are written in place, so appending one token costs O(1) copies instead of O(length).
//!
//! A layer's buffers are candle tensors (any device and dtype, read by candle's attention ops) or, for f32 on the
//! CPU, plain host vectors that the fused CPU attention reads and writes directly: there a tensor would cost a
//! few candle operations per sequence per layer, more than the attention itself in a decode step.

use candle_core::{Result, Tensor};

/// Positions reserved when a layer's buffer is first allocated.
const INITIAL_CAPACITY: usize = 64;

#[derive(Debug)]
enum Buffers {
    /// `[kv_heads, capacity, head_dim]` tensors.
    Tensor { k: Tensor, v: Tensor },
    /// The same layout in host memory (f32).
    Host { k: Vec<f32>, v: Vec<f32> },
}

#[derive(Debug)]
struct LayerCache {
    buffers: Buffers,
    /// Positions the buffers hold; `0..len` are valid.
    capacity: usize,
    len: usize,
}

/// The keys and values of one layer in host memory, `[kv_heads, capacity, head_dim]`, positions `0..len` valid.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HostLayer<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub capacity: usize,
    pub len: usize,
}

/// The keys and values of one step's batch in host memory, `[heads, rows, head_dim]` each: the rows of every
/// sequence in the step, one sequence after the other.
#[derive(Clone, Copy)]
pub(crate) struct HostRows<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub heads: usize,
    pub head_dim: usize,
    pub rows: usize,
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

    /// Appends `k`, `v` (`[kv_heads, new, head_dim]`) to `layer` and returns views of all keys and values so far.
    /// The sequence length advances when the last layer is appended.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let new = k.dim(1)?;
        let (len, capacity) = self.extent(layer);
        if len + new > capacity {
            let cap = grown(len + new);
            let (h, d) = (k.dim(0)?, k.dim(2)?);
            let nk = Tensor::zeros((h, cap, d), k.dtype(), k.device())?;
            let nv = Tensor::zeros((h, cap, d), v.dtype(), v.device())?;
            match self.layers[layer].as_ref().map(|c| &c.buffers) {
                Some(Buffers::Tensor { k: ok, v: ov }) => {
                    nk.slice_set(&ok.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
                    nv.slice_set(&ov.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
                }
                Some(Buffers::Host { .. }) => candle_core::bail!("KV cache layer {layer} is held in host memory"),
                None => {}
            }
            self.layers[layer] = Some(LayerCache { buffers: Buffers::Tensor { k: nk, v: nv }, capacity: cap, len });
        }
        let c = self.layers[layer].as_mut().expect("allocated above");
        let Buffers::Tensor { k: ck, v: cv } = &c.buffers else {
            candle_core::bail!("KV cache layer {layer} is held in host memory")
        };
        ck.slice_set(&k.contiguous()?, 1, len)?;
        cv.slice_set(&v.contiguous()?, 1, len)?;
        c.len = len + new;
        let views = (ck.narrow(1, 0, c.len)?, cv.narrow(1, 0, c.len)?);
        self.advance(layer);
        Ok(views)
    }

    /// Appends `new` positions to `layer` in host memory: rows `start..start + new` of each head of `batch`.
    pub(crate) fn append_host(&mut self, layer: usize, batch: &HostRows<'_>, start: usize, new: usize) -> Result<()> {
        let HostRows { k, v, heads, head_dim, rows } = *batch;
        let (len, capacity) = self.extent(layer);
        if len + new > capacity {
            let cap = grown(len + new);
            let (mut nk, mut nv) = (vec![0f32; heads * cap * head_dim], vec![0f32; heads * cap * head_dim]);
            match self.layers[layer].as_ref().map(|c| &c.buffers) {
                Some(Buffers::Host { k: ok, v: ov }) => {
                    for h in 0..heads {
                        let (from, to) = (h * capacity * head_dim, h * cap * head_dim);
                        nk[to..to + len * head_dim].copy_from_slice(&ok[from..from + len * head_dim]);
                        nv[to..to + len * head_dim].copy_from_slice(&ov[from..from + len * head_dim]);
                    }
                }
                Some(Buffers::Tensor { .. }) => candle_core::bail!("KV cache layer {layer} is held in tensors"),
                None => {}
            }
            self.layers[layer] = Some(LayerCache { buffers: Buffers::Host { k: nk, v: nv }, capacity: cap, len });
        }
        let c = self.layers[layer].as_mut().expect("allocated above");
        let Buffers::Host { k: ck, v: cv } = &mut c.buffers else {
            candle_core::bail!("KV cache layer {layer} is held in tensors")
        };
        let n = new * head_dim;
        for h in 0..heads {
            let (from, to) = ((h * rows + start) * head_dim, (h * c.capacity + len) * head_dim);
            ck[to..to + n].copy_from_slice(&k[from..from + n]);
            cv[to..to + n].copy_from_slice(&v[from..from + n]);
        }
        c.len = len + new;
        self.advance(layer);
        Ok(())
    }

    /// The keys and values of `layer` if they are held in host memory.
    pub(crate) fn host_layer(&self, layer: usize) -> Option<HostLayer<'_>> {
        let c = self.layers.get(layer)?.as_ref()?;
        match &c.buffers {
            Buffers::Host { k, v } => Some(HostLayer { k, v, capacity: c.capacity, len: c.len }),
            Buffers::Tensor { .. } => None,
        }
    }

    /// Forgets every position from `len` on, in every layer (what a failed step appended): the buffers stay, and
    /// the next append writes over them.
    pub fn truncate(&mut self, len: usize) {
        for c in self.layers.iter_mut().flatten() {
            c.len = c.len.min(len);
        }
        self.len = self.len.min(len);
    }

    /// A copy of the cache that grows on its own (another continuation of the same prompt): the buffers are
    /// copied, not shared, since positions are written in place.
    pub fn fork(&self) -> Result<Self> {
        let layers = (self.layers.iter())
            .map(|layer| {
                layer
                    .as_ref()
                    .map(|c| {
                        let buffers = match &c.buffers {
                            Buffers::Tensor { k, v } => Buffers::Tensor { k: k.copy()?, v: v.copy()? },
                            Buffers::Host { k, v } => Buffers::Host { k: k.clone(), v: v.clone() },
                        };
                        Ok(LayerCache { buffers, capacity: c.capacity, len: c.len })
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, len: self.len })
    }

    /// Bytes held by the cache (its allocated capacity).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|c| match &c.buffers {
                Buffers::Tensor { k, v } => (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes(),
                Buffers::Host { k, v } => (k.len() + v.len()) * std::mem::size_of::<f32>(),
            })
            .sum()
    }

    /// Positions held and allocated in `layer`.
    fn extent(&self, layer: usize) -> (usize, usize) {
        self.layers[layer].as_ref().map_or((0, 0), |c| (c.len, c.capacity))
    }

    /// After appending to `layer`: the sequence length advances with the last layer.
    fn advance(&mut self, layer: usize) {
        if layer + 1 == self.layers.len() {
            self.len = self.layers[layer].as_ref().map_or(0, |c| c.len);
        }
    }
}

/// Capacity for `needed` positions: doubling, from [`INITIAL_CAPACITY`].
fn grown(needed: usize) -> usize {
    needed.max(INITIAL_CAPACITY).next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn host_and_tensor_buffers_hold_the_same_positions_across_growth() {
        let (heads, hd) = (2, 4);
        let mut host = KvCache::new(1);
        let mut tensor = KvCache::new(1);
        let mut at = 0f32;
        // 3 batches of rows; this sequence's rows are 1..1+new of each, so growth past 64 positions is crossed.
        for new in [40usize, 30, 1] {
            let rows = new + 2;
            let k: Vec<f32> = (0..heads * rows * hd).map(|i| at + i as f32).collect();
            let v: Vec<f32> = k.iter().map(|x| -x).collect();
            at += 1000.0;
            let batch = HostRows { k: &k, v: &v, heads, head_dim: hd, rows };
            host.append_host(0, &batch, 1, new).unwrap();
            let kt = Tensor::from_vec(k, (heads, rows, hd), &Device::Cpu).unwrap().narrow(1, 1, new).unwrap();
            let vt = Tensor::from_vec(v, (heads, rows, hd), &Device::Cpu).unwrap().narrow(1, 1, new).unwrap();
            let (k_all, v_all) = tensor.append(0, &kt, &vt).unwrap();
            let h = host.host_layer(0).unwrap();
            assert_eq!(h.len, k_all.dim(1).unwrap());
            let k_all = k_all.to_vec3::<f32>().unwrap();
            let v_all = v_all.to_vec3::<f32>().unwrap();
            for g in 0..heads {
                for p in 0..h.len {
                    let at = (g * h.capacity + p) * hd;
                    assert_eq!(&h.k[at..at + hd], &k_all[g][p][..]);
                    assert_eq!(&h.v[at..at + hd], &v_all[g][p][..]);
                }
            }
        }
        assert_eq!(host.len(), 71);
        assert_eq!(host.bytes(), tensor.bytes());
        // A step that failed after appending is rolled back: the next append lands where the rolled-back one did.
        let bytes = host.bytes();
        host.truncate(70);
        assert_eq!((host.len(), host.host_layer(0).unwrap().len, host.bytes()), (70, 70, bytes));
        assert!(host
            .append(
                0,
                &Tensor::zeros((2, 1, 4), candle_core::DType::F32, &Device::Cpu).unwrap(),
                &Tensor::zeros((2, 1, 4), candle_core::DType::F32, &Device::Cpu).unwrap()
            )
            .is_err());
    }
}
