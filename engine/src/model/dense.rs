//! The model's weights as plain dense tensors, for the LoRA trainer: its forward pass needs every op to have a
//! gradient, which candle's quantized matmuls and fused kernels do not.

use super::Model;
use crate::config::RopeStyle;
use crate::Result;
use candle_core::{DType, Tensor};

/// One decoder layer's weights, dense.
#[derive(Debug)]
pub(crate) struct DenseLayer {
    pub attn_norm: Tensor,
    pub ffn_norm: Tensor,
    /// The seven projections `[out, in]`, indexed by [`crate::Module::index`].
    pub proj: [Tensor; 7],
}

/// Every weight of a model, dense, in one dtype.
#[derive(Debug)]
pub(crate) struct DenseModel {
    pub embed: Tensor,
    pub layers: Vec<DenseLayer>,
    pub norm: Tensor,
    pub lm_head: Tensor,
    /// RoPE tables `[max_positions, head_dim / 2]` and how they pair a head's dimensions.
    pub cos: Tensor,
    pub sin: Tensor,
    pub rope_style: RopeStyle,
}

impl Model {
    /// The weights in `dtype`, dequantizing the quantized ones.
    pub(crate) fn dense(&self, dtype: DType) -> Result<DenseModel> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let proj: Vec<Tensor> = l.proj.iter().map(|p| Ok(p.dense(dtype)?)).collect::<Result<_>>()?;
                Ok(DenseLayer {
                    attn_norm: l.attn_norm.to_dtype(dtype)?,
                    ffn_norm: l.ffn_norm.to_dtype(dtype)?,
                    proj: proj.try_into().map_err(|_| crate::Error::Config("expected seven projections".into()))?,
                })
            })
            .collect::<Result<_>>()?;
        let (cos, sin) = self.rope.tables();
        Ok(DenseModel {
            embed: self.embed.to_dtype(dtype)?,
            layers,
            norm: self.norm.to_dtype(dtype)?,
            lm_head: self.lm_head.dense(dtype)?,
            cos: cos.to_dtype(dtype)?,
            sin: sin.to_dtype(dtype)?,
            rope_style: self.rope.style(),
        })
    }
}
