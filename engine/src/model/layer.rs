//! One decoder layer: RMSNorm, grouped-query attention with RoPE (and Mistral's sliding window), RMSNorm, SwiGLU
//! MLP, each linear layer with its LoRA hook.

use super::attention::attention;
use super::batch::SeqInput;
use super::linear::Linear;
use super::rope::Rope;
use crate::adapter::{AdapterBank, LoraPlan};
use crate::{ModelConfig, Module};
use candle_core::{DType, Tensor};

/// Weights of one decoder layer.
#[derive(Debug)]
pub(super) struct DecoderLayer {
    pub attn_norm: Tensor,
    pub ffn_norm: Tensor,
    /// The seven projections, indexed by [`Module::index`].
    pub proj: [Linear; 7],
}

/// What every layer of one forward step reads: the rotary tables, the resident adapters with the step's plan of
/// which rows use which, and the model's config.
pub(super) struct StepContext<'a> {
    pub rope: &'a Rope,
    pub bank: &'a AdapterBank,
    pub plan: &'a LoraPlan,
    pub cfg: &'a ModelConfig,
}

impl DecoderLayer {
    pub fn forward(
        &self,
        xs: &Tensor,
        layer: usize,
        seqs: &mut [SeqInput<'_>],
        step: &StepContext<'_>,
    ) -> crate::Result<Tensor> {
        let StepContext { rope, bank, plan, cfg } = *step;
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
        let act = silu_mul(&gate, &up)?;
        Ok((&xs + linear(Module::Down, &act)?)?)
    }
}

/// SwiGLU's `silu(gate) · up`: one vectorised pass for f32 on the CPU, candle's two operations otherwise.
fn silu_mul(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    if !gate.device().is_cpu() || gate.dtype() != DType::F32 || up.dtype() != DType::F32 {
        return candle_nn::ops::silu(gate)? * up;
    }
    let (g, u) = (gate.flatten_all()?.to_vec1::<f32>()?, up.flatten_all()?.to_vec1::<f32>()?);
    if g.len() != u.len() {
        candle_core::bail!("silu_mul: gate {:?} and up {:?} differ", gate.shape(), up.shape());
    }
    let mut out = vec![0f32; g.len()];
    crate::kernel::silu_mul(&g, &u, &mut out);
    Tensor::from_vec(out, gate.shape(), gate.device())
}
