//! Grouped-query attention of a batch of sequences, each against its own KV cache, with RoPE, the causal mask and
//! Mistral's sliding window.
//!
//! RoPE, the score scale and the head split run once for the whole batch. What reads each sequence's own cache runs
//! either with candle's operations per sequence (any device and dtype), or, for f32 on the CPU, in one fused pass
//! over every (sequence, KV head) pair split across candle's worker pool: in a decode step the per-sequence candle
//! operations (a dozen per sequence per layer, each a small allocation and dispatch) cost more than the attention
//! arithmetic, and ran on one core while the other waited.

use super::batch::SeqInput;
use super::rope::Rope;
use crate::kv_cache::HostRows;
use crate::ModelConfig;
use candle_core::{DType, Result, Tensor};
use std::sync::Mutex;

/// Attention output `[rows, heads * head_dim]` for `q`, `k`, `v` packed as rows `[tokens, heads * head_dim]` of the
/// sequences in `seqs`, one after the other; each sequence's keys and values are appended to its cache.
pub(super) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layer: usize,
    seqs: &mut [SeqInput<'_>],
    rope: &Rope,
    cfg: &ModelConfig,
) -> Result<Tensor> {
    let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
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
    if q.device().is_cpu() && q.dtype() == DType::F32 {
        fused_cpu(&qs, &ks, &vs, layer, seqs, cfg)
    } else {
        per_sequence(&qs, &ks, &vs, layer, seqs, cfg)
    }
}

/// Candle's operations, sequence by sequence. `qs`, `ks`, `vs`: `[heads, rows, head_dim]`, RoPE applied.
fn per_sequence(
    qs: &Tensor,
    ks: &Tensor,
    vs: &Tensor,
    layer: usize,
    seqs: &mut [SeqInput<'_>],
    cfg: &ModelConfig,
) -> Result<Tensor> {
    let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    let n_rep = nh / nkv;
    let rows = qs.dim(1)?;
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
        let att = match causal_mask(t, offset, total, cfg.sliding_window, qs.device())? {
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

/// Where one sequence's rows are in the batch and where its queries start.
#[derive(Clone, Copy)]
struct Span {
    /// First row of the sequence in the batch.
    start: usize,
    /// Its new tokens.
    len: usize,
    /// Position of its first new token.
    offset: usize,
}

/// One pass on the host for f32 on the CPU: keys and values are appended to host-memory caches, then every
/// (sequence, KV head) pair computes the scores, softmax and weighted values of its query heads directly.
fn fused_cpu(
    qs: &Tensor,
    ks: &Tensor,
    vs: &Tensor,
    layer: usize,
    seqs: &mut [SeqInput<'_>],
    cfg: &ModelConfig,
) -> Result<Tensor> {
    let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    let n_rep = nh / nkv;
    let rows = qs.dim(1)?;
    let q = qs.flatten_all()?.to_vec1::<f32>()?;
    let k = ks.flatten_all()?.to_vec1::<f32>()?;
    let v = vs.flatten_all()?.to_vec1::<f32>()?;
    let mut spans = Vec::with_capacity(seqs.len());
    let mut start = 0;
    let batch = HostRows { k: &k, v: &v, heads: nkv, head_dim: hd, rows };
    for s in seqs.iter_mut() {
        let len = s.tokens.len();
        spans.push(Span { start, len, offset: s.cache.len() });
        s.cache.append_host(layer, &batch, start, len)?;
        start += len;
    }
    let caches: Vec<_> = seqs.iter().map(|s| s.cache.host_layer(layer).expect("appended above")).collect();
    if let Some((c, s)) = caches.iter().zip(&spans).find(|(c, s)| c.len != s.offset + s.len) {
        candle_core::bail!("KV cache of layer {layer} holds {} positions, expected {}", c.len, s.offset + s.len);
    }
    // One task per (sequence, KV head); each writes its own block of rows and heads into `outs`.
    let tasks = seqs.len() * nkv;
    let outs: Vec<Mutex<Vec<f32>>> = (0..tasks).map(|_| Mutex::new(Vec::new())).collect();
    candle_core::utils::barrier_pool().execute_chunked(tasks, |range| {
        let mut scores = Vec::new();
        for task in range {
            let (s, g) = (task / nkv, task % nkv);
            let span = spans[s];
            let cache = caches[s];
            let mut out = vec![0f32; span.len * n_rep * hd];
            for r in 0..n_rep {
                let h = g * n_rep + r;
                for i in 0..span.len {
                    let pos = span.offset + i;
                    let first = cfg.sliding_window.map_or(0, |w| (pos + 1).saturating_sub(w));
                    let qrow = &q[(h * rows + span.start + i) * hd..][..hd];
                    // The visible keys and values, `first..=pos`, are contiguous in the cache.
                    let visible = (g * cache.capacity + first) * hd..(g * cache.capacity + pos + 1) * hd;
                    let o = &mut out[(i * n_rep + r) * hd..][..hd];
                    crate::kernel::attend(qrow, &cache.k[visible.clone()], &cache.v[visible], &mut scores, o);
                }
            }
            *outs[task].lock().expect("not poisoned") = out;
        }
    });
    // Scatter each task's block to `[rows, heads * head_dim]`: sequence rows, its KV head's query heads.
    let width = nh * hd;
    let group = n_rep * hd;
    let mut result = vec![0f32; rows * width];
    for (task, out) in outs.into_iter().enumerate() {
        let (s, g) = (task / nkv, task % nkv);
        let out = out.into_inner().expect("not poisoned");
        for (i, block) in out.chunks_exact(group).enumerate() {
            let at = (spans[s].start + i) * width + g * group;
            result[at..at + group].copy_from_slice(block);
        }
    }
    Tensor::from_vec(result, (rows, width), qs.device())
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

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn the_fused_cpu_pass_equals_candles_operations() {
        // head_dim 12 runs the portable loops, 64 and 128 the vector ones (with the remainder of four keys).
        for (window, hd) in [(None, 12), (Some(5), 12), (None, 64), (Some(5), 64), (None, 128)] {
            let cfg = ModelConfig {
                vocab_size: 8,
                hidden_size: 24,
                intermediate_size: 8,
                num_hidden_layers: 1,
                num_attention_heads: 6,
                num_key_value_heads: 2,
                head_dim: hd,
                rms_norm_eps: 1e-5,
                rope_theta: 10000.0,
                max_position_embeddings: 256,
                tie_word_embeddings: false,
                sliding_window: window,
                bos_token_id: None,
                eos_token_ids: vec![],
            };
            let (nh, nkv) = (6, 2);
            let dev = candle_core::Device::Cpu;
            let (mut fused, mut reference) = (vec![], vec![]);
            for _ in 0..3 {
                fused.push(crate::KvCache::new(1));
                reference.push(crate::KvCache::new(1));
            }
            // Steps mixing prompt chunks and single tokens; the second step crosses the caches' first growth (64).
            for (step, lens) in [[9usize, 1, 3], [70, 2, 1], [1, 1, 6]].iter().enumerate() {
                let rows: usize = lens.iter().sum();
                let t = |n: usize, salt: u64| {
                    Tensor::from_vec(random(n * rows * hd, step as u64 * 10 + salt), (n, rows, hd), &dev).unwrap()
                };
                // Queries scaled by 1/sqrt(head_dim) as the model scales them.
                let (qs, ks, vs) = ((t(nh, 1) / (hd as f64).sqrt()).unwrap(), t(nkv, 2), t(nkv, 3));
                let tokens: Vec<Vec<u32>> = lens.iter().map(|&n| vec![0; n]).collect();
                let run = |caches: &mut Vec<crate::KvCache>, fused_path: bool| {
                    let mut seqs: Vec<SeqInput<'_>> = caches
                        .iter_mut()
                        .zip(&tokens)
                        .map(|(cache, tokens)| SeqInput { tokens, cache, adapter: None })
                        .collect();
                    let out = if fused_path {
                        fused_cpu(&qs, &ks, &vs, 0, &mut seqs, &cfg)
                    } else {
                        per_sequence(&qs, &ks, &vs, 0, &mut seqs, &cfg)
                    };
                    out.unwrap().to_vec2::<f32>().unwrap()
                };
                let (a, b) = (run(&mut fused, true), run(&mut reference, false));
                assert_eq!((a.len(), a[0].len()), (rows, nh * hd));
                for (r, (x, y)) in a.iter().zip(&b).enumerate() {
                    for (x, y) in x.iter().zip(y) {
                        assert!((x - y).abs() < 1e-5, "window {window:?}, hd {hd}, step {step}, row {r}: {x} vs {y}");
                    }
                }
            }
            assert_eq!(fused[0].len(), 80);
        }
    }
}
