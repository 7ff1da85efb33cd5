//! The differentiable forward pass of the trainer: the same decoder as [`crate::Model`], run over a padded batch
//! of whole sequences with no KV cache, built only from ops that candle can differentiate (composed RMSNorm, RoPE
//! and softmax instead of the fused kernels), with the LoRA factors as the only variables.

use super::data::Batch;
use super::frozen_linear::frozen_linear;
use super::lora::LoraParams;
use crate::model::{causal_mask, DenseModel, RopeStyle};
use crate::{ModelConfig, Module, Result};
use candle_core::{DType, Device, Tensor, D};

/// A frozen base model for training.
#[derive(Debug)]
pub struct FrozenModel {
    pub(crate) config: ModelConfig,
    pub(crate) weights: DenseModel,
    pub(crate) device: Device,
    pub(crate) dtype: DType,
}

impl FrozenModel {
    /// The dense, frozen weights of `model` in `dtype` (f32 for training; f64 for gradient checks).
    pub fn new(model: &crate::Model, dtype: DType) -> Result<Self> {
        Ok(Self { config: model.config().clone(), weights: model.dense(dtype)?, device: model.device().clone(), dtype })
    }

    /// The model's architecture.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The row layout of q/k (GGUF bases are permuted for interleaved RoPE).
    pub fn rope_style(&self) -> RopeStyle {
        self.weights.rope_style
    }

    /// The device of the weights.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype of the weights and activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Hidden states after the last layer, `[batch * len, hidden]`, for `ids` `[batch, len]`.
    pub fn hidden(&self, ids: &Tensor, lora: &LoraParams) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let cfg = &self.config;
        let w = &self.weights;
        let mut xs = w.embed.index_select(&ids.flatten_all()?, 0)?;
        let mask = match causal_mask(t, 0, t, cfg.sliding_window, &self.device)? {
            Some(m) => Some(m.to_dtype(self.dtype)?),
            None => None,
        };
        let eps = cfg.rms_norm_eps as f32;
        for (l, layer) in w.layers.iter().enumerate() {
            let linear = |m: Module, x: &Tensor| -> Result<Tensor> {
                let base = frozen_linear(x, &layer.proj[m.index()])?;
                Ok(match lora.delta(l, m, x)? {
                    Some(d) => (base + d)?,
                    None => base,
                })
            };
            let h = candle_nn::ops::rms_norm_slow(&xs, &layer.attn_norm, eps)?;
            let q = linear(Module::Q, &h)?;
            let k = linear(Module::K, &h)?;
            let v = linear(Module::V, &h)?;
            let attn = self.attention(&q, &k, &v, b, t, mask.as_ref())?;
            xs = (xs + linear(Module::O, &attn)?)?;
            let h = candle_nn::ops::rms_norm_slow(&xs, &layer.ffn_norm, eps)?;
            let act = (linear(Module::Gate, &h)?.silu()? * linear(Module::Up, &h)?)?;
            xs = (&xs + linear(Module::Down, &act)?)?;
        }
        Ok(xs)
    }

    /// Causal self-attention of `b` sequences of `t` rows each; `q`, `k`, `v` are `[b * t, heads * head_dim]`.
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        b: usize,
        t: usize,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let heads =
            |x: &Tensor, n: usize| -> Result<Tensor> { Ok(x.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?) };
        let cos = self.weights.cos.narrow(0, 0, t)?;
        let sin = self.weights.sin.narrow(0, 0, t)?;
        let rope = |x: Tensor| -> Result<Tensor> {
            Ok(match self.weights.rope_style {
                RopeStyle::Half => candle_nn::rotary_emb::rope_slow(&x, &cos, &sin)?,
                RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i_slow(&x, &cos, &sin)?,
            })
        };
        let q = (rope(heads(q, nh)?)? * (1.0 / (hd as f64).sqrt()))?;
        let k = repeat_kv(rope(heads(k, nkv)?)?, nh / nkv)?;
        let v = repeat_kv(heads(v, nkv)?, nh / nkv)?;
        let att = q.matmul(&k.t()?)?; // [b, nh, t, t]
        let att = match mask {
            Some(m) => att.broadcast_add(m)?,
            None => att,
        };
        let att = candle_nn::ops::softmax(&att, D::Minus1)?;
        let out = att.matmul(&v)?; // [b, nh, t, hd]
        Ok(out.transpose(1, 2)?.reshape((b * t, nh * hd))?)
    }

    /// Logits `[rows, vocab]` at the given rows of `hidden` (`[n, hidden]`).
    pub fn logits_at(&self, hidden: &Tensor, rows: &Tensor) -> Result<Tensor> {
        let xs = hidden.index_select(rows, 0)?;
        let xs = candle_nn::ops::rms_norm_slow(&xs, &self.weights.norm, self.config.rms_norm_eps as f32)?;
        Ok(frozen_linear(&xs, &self.weights.lm_head)?)
    }

    /// Mean cross-entropy of the batch's completion tokens (the prompt is context only).
    pub fn loss(&self, batch: &Batch, lora: &LoraParams) -> Result<Tensor> {
        let hidden = self.hidden(&batch.ids, lora)?;
        let logits = self.logits_at(&hidden, &batch.loss_rows)?;
        Ok(candle_nn::loss::cross_entropy(&logits, &batch.targets)?)
    }
}

/// Repeats each KV head `n` times so grouped-query attention lines up with the query heads.
fn repeat_kv(x: Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x);
    }
    let (b, nkv, t, hd) = x.dims4()?;
    Ok(Tensor::cat(&vec![&x; n], 2)?.reshape((b, nkv * n, t, hd))?)
}
