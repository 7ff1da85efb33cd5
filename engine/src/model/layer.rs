//! One decoder layer: RMSNorm, grouped-query attention with RoPE (and Mistral's sliding window), RMSNorm, SwiGLU
//! MLP, each linear layer with its LoRA hook.

use super::linear::Linear;
use super::{Rope, SeqInput};
use crate::adapter::{AdapterBank, LoraPlan};
use crate::{ModelConfig, Module};
use candle_core::{DType, Result, Tensor};

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

/// Attention for each sequence against its own cache. `q`, `k`, `v` are packed rows `[tokens, heads * head_dim]`.
/// RoPE, the score scale and the head split run once for the whole batch; only the part that reads each
/// sequence's own cache runs per sequence.
fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layer: usize,
    seqs: &mut [SeqInput<'_>],
    rope: &Rope,
    cfg: &ModelConfig,
) -> Result<Tensor> {
    let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    let n_rep = nh / nkv;
    let rows = q.dim(0)?;
    let mut positions = Vec::with_capacity(rows);
    for s in seqs.iter() {
        let offset = s.cache.len() as u32;
        positions.extend(offset..offset + s.tokens.len() as u32);
    }
    let positions = Tensor::new(positions, q.device())?;
    // [heads, rows, head_dim]
    let heads = |x: &Tensor, n: usize| -> Result<Tensor> { x.reshape((rows, n, hd))?.transpose(0, 1)?.contiguous() };
    let qs = (rope.apply_at(&heads(q, nh)?.unsqueeze(0)?, &positions)?.squeeze(0)? * (1.0 / (hd as f64).sqrt()))?;
    let ks = rope.apply_at(&heads(k, nkv)?.unsqueeze(0)?, &positions)?.squeeze(0)?;
    let vs = heads(v, nkv)?;
    let mut outs = Vec::with_capacity(seqs.len());
    let mut start = 0;
    for s in seqs.iter_mut() {
        let t = s.tokens.len();
        let offset = s.cache.len();
        let (k_all, v_all) = s.cache.append(layer, &ks.narrow(1, start, t)?, &vs.narrow(1, start, t)?)?;
        // k_all, v_all: [nkv, total, hd]
        let total = k_all.dim(1)?;
        // Group query heads by their KV head so K and V are read without being repeated.
        let q_seq = qs.narrow(1, start, t)?.contiguous()?.reshape((nkv, n_rep * t, hd))?;
        let att = q_seq.matmul(&k_all.t()?)?; // [nkv, n_rep * t, total]
        let att = match causal_mask(t, offset, total, cfg.sliding_window, q.device())? {
            Some(mask) => {
                att.reshape((nkv, n_rep, t, total))?.broadcast_add(&mask)?.reshape((nkv, n_rep * t, total))?
            }
            None => att,
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let out = att.matmul(&v_all)?; // [nkv, n_rep * t, hd]
        outs.push(out.reshape((nh, t, hd))?);
        start += t;
    }
    // [heads, rows, head_dim] -> [rows, heads * head_dim]
    let out = if outs.len() == 1 { outs.pop().expect("one") } else { Tensor::cat(&outs, 1)? };
    out.transpose(0, 1)?.reshape((rows, nh * hd))
}

/// Additive mask `[t, total]` for queries at positions `offset..offset + t` over keys `0..total`: a query sees keys
/// at or before its own position and, with a sliding window `w`, only the last `w` of them (itself included).
/// `None` when nothing is masked (one query without a window, or a window that covers everything).
pub(crate) fn causal_mask(
    t: usize,
    offset: usize,
    total: usize,
    window: Option<usize>,
    device: &candle_core::Device,
) -> Result<Option<Tensor>> {
    let window = window.filter(|&w| w < total);
    if t == 1 && window.is_none() {
        return Ok(None);
    }
    let mut mask = vec![0f32; t * total];
    for i in 0..t {
        let pos = offset + i;
        for j in 0..total {
            let hidden = j > pos || window.is_some_and(|w| pos - j >= w);
            if hidden {
                mask[i * total + j] = f32::NEG_INFINITY;
            }
        }
    }
    Tensor::from_vec(mask, (t, total), device)?.to_dtype(DType::F32).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_causal_and_windowed() {
        let dev = candle_core::Device::Cpu;
        let m = causal_mask(3, 2, 5, Some(2), &dev).unwrap().unwrap().to_vec2::<f32>().unwrap();
        let seen: Vec<Vec<bool>> = m.iter().map(|r| r.iter().map(|x| x.is_finite()).collect()).collect();
        assert_eq!(seen[0], [false, true, true, false, false]); // position 2 sees 1, 2
        assert_eq!(seen[2], [false, false, false, true, true]); // position 4 sees 3, 4
        assert!(causal_mask(1, 9, 10, None, &dev).unwrap().is_none());
    }
}
