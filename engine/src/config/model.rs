//! The architecture of a Llama/Mistral-family model ([`ModelConfig`]), read from a Hugging Face `config.json` or
//! from GGUF metadata, and how its rotary embeddings pair a head's halves ([`RopeStyle`]).

use crate::{Error, Result};
use candle_core::quantized::gguf_file;
use serde::Deserialize;

/// How the two halves of each head are paired by rotary position embeddings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Hugging Face: rotate the first half of the head against the second (`rotate_half`).
    Half,
    /// llama.cpp/GGUF: rotate adjacent pairs. GGUF stores q/k rows permuted so that this equals [`RopeStyle::Half`].
    Interleaved,
}

/// Hyper-parameters of a Llama-family decoder (Llama, Mistral, SmolLM2, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Width of one head (may differ from hidden / heads).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// Longest sequence the rotary tables cover.
    pub max_position_embeddings: usize,
    /// Whether the LM head reuses the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Mistral's sliding-window attention: a token sees at most this many positions (itself included).
    pub sliding_window: Option<usize>,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens.
    pub eos_token_ids: Vec<u32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
}

/// The fields of a Hugging Face `config.json` that matter here.
#[derive(Deserialize)]
struct HfConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    tie_word_embeddings: bool,
    sliding_window: Option<usize>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
    rope_scaling: Option<serde_json::Value>,
}

impl ModelConfig {
    /// Parses a Hugging Face `config.json`.
    pub fn from_hf_json(json: &str) -> Result<Self> {
        let c: HfConfig = serde_json::from_str(json).map_err(|e| Error::Config(format!("config.json: {e}")))?;
        if let Some(scaling) = c.rope_scaling.filter(|v| !v.is_null()) {
            return Err(Error::Config(format!("config.json: rope_scaling {scaling} is not supported")));
        }
        let rope_theta = c.rope_theta.or(c.rope_parameters.and_then(|p| p.rope_theta)).unwrap_or(10_000.0);
        let eos_token_ids = match c.eos_token_id {
            Some(OneOrMany::One(id)) => vec![id],
            Some(OneOrMany::Many(ids)) => ids,
            None => vec![],
        };
        Self {
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            num_key_value_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
            head_dim: c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads),
            rms_norm_eps: c.rms_norm_eps,
            rope_theta,
            max_position_embeddings: c.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: c.tie_word_embeddings,
            sliding_window: c.sliding_window,
            bos_token_id: c.bos_token_id,
            eos_token_ids,
        }
        .validated()
    }

    /// Reads the architecture from GGUF metadata (`llama.*` keys, as llama.cpp writes them).
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let md = &content.metadata;
        let arch = md.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
        if arch != "llama" {
            return Err(Error::Config(format!("GGUF architecture {arch:?} is not supported (expected \"llama\")")));
        }
        let get_u = |k: &str| -> Result<usize> {
            md.get(k)
                .and_then(|v| v.to_u32().ok().map(|x| x as usize).or_else(|| v.to_u64().ok().map(|x| x as usize)))
                .ok_or_else(|| Error::Config(format!("GGUF metadata {k} is missing")))
        };
        let get_f = |k: &str| md.get(k).and_then(|v| v.to_f32().ok());
        let hidden_size = get_u("llama.embedding_length")?;
        let num_attention_heads = get_u("llama.attention.head_count")?;
        let head_dim = get_u("llama.attention.key_length").unwrap_or(hidden_size / num_attention_heads);
        let embd = content
            .tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| Error::Config("GGUF has no token_embd.weight".into()))?;
        let vocab_size = embd.shape.dims()[0];
        let eos = get_u("tokenizer.ggml.eos_token_id").ok().map(|x| x as u32);
        Self {
            vocab_size,
            hidden_size,
            intermediate_size: get_u("llama.feed_forward_length")?,
            num_hidden_layers: get_u("llama.block_count")?,
            num_attention_heads,
            num_key_value_heads: get_u("llama.attention.head_count_kv").unwrap_or(num_attention_heads),
            head_dim,
            rms_norm_eps: f64::from(get_f("llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5)),
            rope_theta: f64::from(get_f("llama.rope.freq_base").unwrap_or(10_000.0)),
            max_position_embeddings: get_u("llama.context_length").unwrap_or(4096),
            tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
            sliding_window: None,
            bos_token_id: get_u("tokenizer.ggml.bos_token_id").ok().map(|x| x as u32),
            eos_token_ids: eos.into_iter().collect(),
        }
        .validated()
    }

    /// Names accepted by [`ModelConfig::preset`].
    pub const PRESETS: &'static [&'static str] = &["mistral-7b", "mistral-tiny"];

    /// A known architecture by name, for models with random weights (benchmarks without a download):
    /// `mistral-7b` is Mistral-7B-v0.1's config.json (the LoRA Land base); `mistral-tiny` keeps its vocabulary and
    /// head layout at a size a CPU runs in seconds.
    pub fn preset(name: &str) -> Result<Self> {
        let mistral = Self {
            vocab_size: 32_000,
            hidden_size: 4096,
            intermediate_size: 14_336,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            head_dim: 128,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 32_768,
            tie_word_embeddings: false,
            sliding_window: Some(4096),
            bos_token_id: Some(1),
            // No EOS: a random model would stop at random; benchmarks want every stream to run its full length.
            eos_token_ids: Vec::new(),
        };
        match name {
            "mistral-7b" => Ok(mistral),
            "mistral-tiny" => Ok(Self {
                hidden_size: 256,
                intermediate_size: 896,
                num_hidden_layers: 4,
                num_attention_heads: 8,
                num_key_value_heads: 2,
                head_dim: 32,
                ..mistral
            }),
            _ => Err(Error::Config(format!("unknown model preset {name:?} (known: {})", Self::PRESETS.join(", ")))),
        }
    }

    fn validated(self) -> Result<Self> {
        if self.num_attention_heads == 0 || self.num_key_value_heads == 0 {
            return Err(Error::Config("head counts must be positive".into()));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(Error::Config(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::Config(format!("head_dim {} must be even for RoPE", self.head_dim)));
        }
        Ok(self)
    }

    /// Output width of a target module, given the input width it reads.
    pub fn module_shape(&self, module: crate::Module) -> (usize, usize) {
        use crate::Module::*;
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        // (in, out)
        match module {
            Q => (h, q),
            K | V => (h, kv),
            O => (q, h),
            Gate | Up => (h, i),
            Down => (i, h),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_transformers_5_config_with_rope_parameters() {
        let json = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/fixtures/tiny-mistral/base/config.json"
        ))
        .unwrap();
        let c = ModelConfig::from_hf_json(&json).unwrap();
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.num_attention_heads, 6);
        assert_eq!(c.num_key_value_heads, 2);
        assert_eq!(c.sliding_window, Some(16));
        assert!(!c.tie_word_embeddings);
    }

    #[test]
    fn bad_head_counts_are_rejected() {
        let json = r#"{"vocab_size":10,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,
            "num_attention_heads":3,"num_key_value_heads":2,"rms_norm_eps":1e-5}"#;
        let err = ModelConfig::from_hf_json(json).unwrap_err().to_string();
        assert!(err.contains("num_attention_heads 3 is not a multiple of num_key_value_heads 2"), "{err}");
    }
}
