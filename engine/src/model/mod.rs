//! A Llama/Mistral-family decoder (Llama 2/3, Mistral with sliding-window attention, SmolLM2) with LoRA hooks on
//! every linear layer of every decoder layer, run over a batch of sequences that each carry their own KV cache,
//! position and adapter. Follows the structure of candle-transformers' `llama`/`mistral`/`quantized_llama`.

mod attention;
mod batch;
mod dense;
mod kquant;
mod layer;
mod linear;
mod load;
mod q8;
mod random;
mod rope;

pub(crate) use attention::causal_mask;
pub use batch::{Logits, SeqInput};
pub(crate) use dense::DenseModel;
pub use load::{LoadOptions, QuantMode};
pub use random::memory_bandwidth;
pub use rope::{Rope, RopeStyle};

use crate::adapter::{AdapterBank, AdapterTarget, LoraPlan};
use crate::{Error, KvCache, ModelConfig, Result};
use candle_core::{DType, Device, Tensor};
use layer::{DecoderLayer, StepContext};

/// A loaded base model.
#[derive(Debug)]
pub struct Model {
    config: ModelConfig,
    embed: Tensor,
    layers: Vec<DecoderLayer>,
    norm: Tensor,
    lm_head: linear::Linear,
    rope: Rope,
    device: Device,
    dtype: DType,
}

impl Model {
    /// The model's architecture.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The activation dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// What adapters for this model must fit.
    pub fn adapter_target(&self) -> AdapterTarget {
        AdapterTarget {
            config: self.config.clone(),
            rope_style: self.rope.style(),
            device: self.device.clone(),
            dtype: self.dtype,
        }
    }

    /// A fresh KV cache for one sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.num_hidden_layers)
    }

    /// Runs one step for a batch of sequences: every sequence's new tokens are packed into one matrix so that each
    /// base weight is applied once for the whole batch; LoRA deltas are added per adapter group (see
    /// [`AdapterBank`]); attention runs per sequence against its own cache, which is extended.
    pub fn forward(&self, seqs: &mut [SeqInput<'_>], bank: &AdapterBank, logits: Logits) -> Result<Tensor> {
        let mut ids = Vec::new();
        let mut row_slots = Vec::new();
        for s in seqs.iter() {
            self.check(s, bank)?;
            ids.extend_from_slice(s.tokens);
            row_slots.extend(std::iter::repeat_n(s.adapter, s.tokens.len()));
        }
        let plan = LoraPlan::new(&row_slots, &self.device)?;
        let ids = Tensor::new(ids, &self.device)?;
        let mut xs = self.embed.index_select(&ids, 0)?;
        let step = StepContext { rope: &self.rope, bank, plan: &plan, cfg: &self.config };
        for (i, layer) in self.layers.iter().enumerate() {
            xs = layer.forward(&xs, i, seqs, &step)?;
        }
        if logits == Logits::Last {
            let mut last = Vec::with_capacity(seqs.len());
            let mut end = 0u32;
            for s in seqs.iter() {
                end += s.tokens.len() as u32;
                last.push(end - 1);
            }
            xs = xs.index_select(&Tensor::new(last, &self.device)?, 0)?;
        }
        let xs = candle_nn::ops::rms_norm(&xs, &self.norm, self.config.rms_norm_eps as f32)?;
        Ok(self.lm_head.forward(&xs)?.to_dtype(DType::F32)?)
    }

    fn check(&self, s: &SeqInput<'_>, bank: &AdapterBank) -> Result<()> {
        if s.tokens.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let vocab_size = self.config.vocab_size;
        if let Some(&id) = s.tokens.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(Error::TokenOutOfRange { id, vocab_size });
        }
        let len = s.cache.len() + s.tokens.len();
        if len > self.config.max_position_embeddings {
            return Err(Error::SequenceTooLong { len, max: self.config.max_position_embeddings });
        }
        if let Some(slot) = s.adapter.filter(|&slot| slot >= bank.len()) {
            return Err(Error::UnknownAdapterSlot(slot));
        }
        Ok(())
    }
}
