//! One decoder layer: RMSNorm, grouped-query attention with RoPE (and Mistral's sliding window), RMSNorm, SwiGLU
//! MLP, each linear layer with its LoRA hook.

use super::attention::attention;
use super::linear::Linear;
use super::{Rope, SeqInput};
use crate::adapter::{AdapterBank, LoraPlan};
use crate::{ModelConfig, Module};
use candle_core::Tensor;

/// Weights of one decoder layer.
#[derive(Debug)]
pub(super) struct DecoderLayer {
    pub attn_norm: Tensor,
    pub ffn_norm: Tensor,
    /// The seven projections, indexed by [`Module::index`].
    pub proj: [Linear; 7],
}

impl DecoderLayer {
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        xs: &Tensor,
        layer: usize,
        seqs: &mut [SeqInput<'_>],
        rope: &Rope,
        bank: &AdapterBank,
        plan: &LoraPlan,
        cfg: &ModelConfig,
    ) -> crate::Result<Tensor> {
        let eps = cfg.rms_norm_eps as f32;
        let linear = |m: Module, x: &Tensor| -> crate::Result<Tensor> {
            let base = self.proj[m.index()].forward(x)?;
            bank.apply(plan, layer, m, x, base)
        };
        let h = candle_nn::ops::rms_norm(xs, &self.attn_norm, eps)?;
        let q = linear(Module::Q, &h)?;
        let k = linear(Module::K, &h)?;
        let v = linear(Module::V, &h)?;
        let attn = attention(&q, &k, &v, layer, seqs, rope, cfg)?;
        let xs = (xs + linear(Module::O, &attn)?)?;
        let h = candle_nn::ops::rms_norm(&xs, &self.ffn_norm, eps)?;
        let gate = linear(Module::Gate, &h)?;
        let up = linear(Module::Up, &h)?;
        let act = (candle_nn::ops::silu(&gate)? * up)?;
        Ok((&xs + linear(Module::Down, &act)?)?)
    }
}
