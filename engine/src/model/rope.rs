//! Rotary position embeddings (RoPE, Su et al. 2021): cos/sin tables shared by every layer.

use candle_core::{DType, Device, Result, Tensor};

pub use crate::config::RopeStyle;

/// Precomputed cos/sin tables, `[max_positions, head_dim / 2]`.
#[derive(Clone, Debug)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    style: RopeStyle,
}

impl Rope {
    /// Builds the tables for `head_dim` and base `theta` up to `max_positions`.
    pub fn new(head_dim: usize, theta: f64, max_positions: usize, style: RopeStyle, device: &Device) -> Result<Self> {
        let inv_freq: Vec<f32> =
            (0..head_dim).step_by(2).map(|i| (1.0 / theta.powf(i as f64 / head_dim as f64)) as f32).collect();
        let n = inv_freq.len();
        let inv_freq = Tensor::from_vec(inv_freq, (1, n), device)?;
        let t =
            Tensor::arange(0u32, max_positions as u32, device)?.to_dtype(DType::F32)?.reshape((max_positions, 1))?;
        let freqs = t.matmul(&inv_freq)?;
        Ok(Self { cos: freqs.cos()?, sin: freqs.sin()?, style })
    }

    /// Applies the rotation to `xs` (`[1, heads, rows, head_dim]`) where row `i` is at position `positions[i]`, so
    /// that the rows of many sequences at different positions are rotated in one operation.
    pub fn apply_at(&self, xs: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let cos = self.cos.index_select(positions, 0)?.to_dtype(xs.dtype())?;
        let sin = self.sin.index_select(positions, 0)?.to_dtype(xs.dtype())?;
        match self.style {
            RopeStyle::Half => candle_nn::rotary_emb::rope(&xs.contiguous()?, &cos, &sin),
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&xs.contiguous()?, &cos, &sin),
        }
    }

    /// The cos and sin tables, `[max_positions, head_dim / 2]`.
    pub(crate) fn tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }

    /// The weight layout this RoPE expects.
    pub fn style(&self) -> RopeStyle {
        self.style
    }
}
