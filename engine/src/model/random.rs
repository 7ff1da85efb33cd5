//! A model with random weights for a known architecture ([`ModelConfig::preset`]): benchmarks of Mistral-7B-sized
//! batches on any device without downloading 14 GB of weights. Initialised like transformers' `_init_weights`
//! (normal, std 0.02; norms at one), generated on the target device one tensor at a time.

use super::layer::DecoderLayer;
use super::linear::Linear;
use super::Model;
use crate::config::RopeStyle;
use crate::{LoadOptions, ModelConfig, Module, Result};
use candle_core::quantized::QMatMul;
use candle_core::{Device, Tensor};

const INIT_STD: f64 = 0.02;

fn normal(shape: (usize, usize), opts: &LoadOptions) -> candle_core::Result<Tensor> {
    Tensor::randn(0f32, INIT_STD as f32, shape, &opts.device)?.to_dtype(opts.dtype)
}

impl Model {
    /// `config`'s architecture with random weights on `opts.device` in `opts.dtype` (dense; `opts.quant` is
    /// ignored). `seed` seeds a GPU's generator; candle's CPU generator cannot be seeded (benchmarks do not care).
    pub fn random(config: ModelConfig, opts: &LoadOptions, seed: u64) -> Result<Self> {
        if !opts.device.is_cpu() {
            opts.device.set_seed(seed)?;
        }
        let h = config.hidden_size;
        let ones = || -> Result<Tensor> { Ok(Tensor::ones(h, opts.dtype, &opts.device)?) };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for _ in 0..config.num_hidden_layers {
            let proj = super::load::collect_array(Module::ALL.map(|m| {
                let (fan_in, fan_out) = config.module_shape(m);
                Ok(Linear::Candle(QMatMul::Tensor(normal((fan_out, fan_in), opts)?)))
            }))?;
            layers.push(DecoderLayer { attn_norm: ones()?, ffn_norm: ones()?, proj });
        }
        let embed = normal((config.vocab_size, h), opts)?;
        let lm_head = if config.tie_word_embeddings { embed.clone() } else { normal((config.vocab_size, h), opts)? };
        let lm_head = Linear::Candle(QMatMul::Tensor(lm_head));
        Model::from_parts(config, embed, layers, ones()?, lm_head, RopeStyle::Half, opts)
    }

    /// Bytes of weights one decode step reads: every layer's projections and norms, the final norm and the LM head
    /// (the embedding is only gathered, one row per token). The floor of a decode step is this over memory bandwidth.
    pub fn decode_weight_bytes(&self) -> usize {
        let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let layers: usize = self
            .layers
            .iter()
            .map(|l| bytes(&l.attn_norm) + bytes(&l.ffn_norm) + l.proj.iter().map(Linear::weight_bytes).sum::<usize>())
            .sum();
        layers + bytes(&self.norm) + self.lm_head.weight_bytes()
    }
}

/// Measured memory bandwidth of `device`, in bytes per second: the best of five copies of a 256 MiB buffer (each
/// reads and writes it), after one warm-up copy. On the CPU, between two buffers already in memory.
pub fn memory_bandwidth(device: &Device) -> Result<f64> {
    const BYTES: usize = 256 << 20;
    let mut best = f64::INFINITY;
    if device.is_cpu() {
        let src = vec![1u8; BYTES];
        let mut dst = vec![0u8; BYTES];
        for _ in 0..6 {
            let t = std::time::Instant::now();
            dst.copy_from_slice(std::hint::black_box(&src));
            best = best.min(t.elapsed().as_secs_f64());
            std::hint::black_box(&dst);
        }
    } else {
        let src = Tensor::ones(BYTES / 4, candle_core::DType::F32, device)?;
        for i in 0..6 {
            device.synchronize()?;
            let t = std::time::Instant::now();
            let dst = src.copy()?;
            device.synchronize()?;
            if i > 0 {
                best = best.min(t.elapsed().as_secs_f64());
            }
            drop(dst);
        }
    }
    Ok((2 * BYTES) as f64 / best)
}
