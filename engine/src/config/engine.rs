//! How to run an engine: [`EngineConfig`] with its defaults (`DEFAULT_*`), the faults tests inject ([`Faults`]), a
//! model of random weights for benchmarks ([`RandomWeights`]), and the facts about the loaded model a handle
//! reports ([`ModelInfo`]).

use crate::registry::{AdapterId, Catalog, HubLimits, ResidencyLimits};
use crate::{Error, LoadOptions, Result};
use std::path::PathBuf;
use std::time::Duration;

/// Defaults of [`EngineConfig`].
pub const DEFAULT_MAX_BATCH_SIZE: usize = 32;
/// Default token budget of one step (prefill chunks + decode rows) on a GPU.
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 512;
/// Default token budget of one step on the CPU, where a step of 512 prompt tokens takes over a second for a
/// 135M-parameter model on two cores, and every running stream would wait that long for its next token.
pub const DEFAULT_MAX_BATCH_TOKENS_CPU: usize = 64;
/// Default KV budget in tokens (prompt + max_new_tokens of every running request).
pub const DEFAULT_MAX_KV_TOKENS: usize = 65_536;
/// Default bound on requests waiting or running.
pub const DEFAULT_MAX_QUEUE: usize = 256;
/// Default time a request may wait for its adapter to become resident (a hub download included) before it fails.
pub const DEFAULT_ADAPTER_LOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Default age of the batching loop's heartbeat past which the engine reports itself stalled: far above the longest
/// step (a 512-token prefill of a 7B model on a CPU takes seconds, not a minute).
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(60);
/// The longest the batching loop sleeps while idle: it wakes this often to expire deadlines and beat.
pub const TICK: Duration = Duration::from_secs(1);

/// How to run the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Base model: a GGUF file or a Hugging Face folder.
    pub model: PathBuf,
    /// Device, dtype and quantization.
    pub load: LoadOptions,
    /// Where adapters come from.
    pub catalog: Catalog,
    /// Resident adapter limits.
    pub limits: ResidencyLimits,
    /// Limits on adapter downloads from the hub.
    pub hub: HubLimits,
    /// Adapters loaded at start.
    pub preload: Vec<AdapterId>,
    /// Adapters loaded at start and never evicted.
    pub pinned: Vec<AdapterId>,
    /// Most sequences in one step.
    pub max_batch_size: usize,
    /// Most tokens in one step; long prompts are prefilled in chunks that fit. `None`: [`DEFAULT_MAX_BATCH_TOKENS`]
    /// on a GPU, [`DEFAULT_MAX_BATCH_TOKENS_CPU`] on the CPU (see [`EngineConfig::step_token_budget`]).
    pub max_batch_tokens: Option<usize>,
    /// KV budget: the sum of prompt + max_new_tokens over running requests.
    pub max_kv_tokens: usize,
    /// Most requests waiting or running; beyond it `generate` fails with [`Error::Overloaded`].
    pub max_queue: usize,
    /// Longest prompt, in tokens.
    pub max_input_tokens: usize,
    /// Largest `max_new_tokens`.
    pub max_new_tokens: usize,
    /// Build a model with random weights instead of loading `model` (which is then only its display name), with
    /// a synthetic tokenizer: benchmarks of a model's shape without its files.
    pub random_weights: Option<RandomWeights>,
    /// How long a request may wait for its adapter to become resident; past it the request fails with
    /// [`Error::AdapterLoadTimeout`], which says what the adapter was doing.
    pub adapter_load_timeout: Duration,
    /// Heartbeat age past which [`EngineHandle::health`] reports [`Health::Stalled`].
    pub stall_after: Duration,
    /// Faults to inject, for the tests of failure handling; none by default.
    #[doc(hidden)]
    pub faults: Faults,
}

/// Faults the engine injects on purpose, so that tests can check what the server does when the engine fails.
#[doc(hidden)]
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Panic the engine thread at the start of this step (counted from 0).
    pub panic_at_step: Option<u64>,
    /// Block the engine thread for this long at the start of this step.
    pub stall_at_step: Option<(u64, Duration)>,
    /// Fail every forward pass that holds a row of this adapter, after the model ran (so caches were written).
    pub forward_error_for: Option<AdapterId>,
    /// Give this adapter's rows NaN logits.
    pub nan_logits_for: Option<AdapterId>,
    /// Sleep this long in every step: a slow model, so that tests can act in the middle of a generation.
    pub step_delay: Option<Duration>,
    /// Make every output constraint allow no token once its sequence has this many tokens (a grammar that dead-ends).
    pub dead_end_after: Option<usize>,
    /// Panic the adapter loader while it loads this adapter.
    pub panic_loading: Option<AdapterId>,
    /// Hold each load of this adapter this long after its files were read, before it is reported.
    pub slow_loading: Option<(AdapterId, Duration)>,
}

/// An architecture and a seed for [`crate::Model::random`].
#[derive(Clone, Debug)]
pub struct RandomWeights {
    /// The architecture, e.g. [`crate::ModelConfig::preset`].
    pub config: crate::ModelConfig,
    /// Seed of the weights.
    pub seed: u64,
}

impl EngineConfig {
    /// Defaults for `model`.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            load: LoadOptions::default(),
            catalog: Catalog::default(),
            limits: ResidencyLimits::default(),
            hub: HubLimits::default(),
            preload: Vec::new(),
            pinned: Vec::new(),
            max_batch_size: DEFAULT_MAX_BATCH_SIZE,
            max_batch_tokens: None,
            max_kv_tokens: DEFAULT_MAX_KV_TOKENS,
            max_queue: DEFAULT_MAX_QUEUE,
            max_input_tokens: 2048,
            max_new_tokens: 512,
            random_weights: None,
            adapter_load_timeout: DEFAULT_ADAPTER_LOAD_TIMEOUT,
            stall_after: DEFAULT_STALL_AFTER,
            faults: Faults::default(),
        }
    }

    /// The token budget of one step: `max_batch_tokens`, else the default for the device.
    pub fn step_token_budget(&self) -> usize {
        self.max_batch_tokens.unwrap_or(if self.load.device.is_cpu() {
            DEFAULT_MAX_BATCH_TOKENS_CPU
        } else {
            DEFAULT_MAX_BATCH_TOKENS
        })
    }

    /// Checks the limits that would otherwise stall the batching loop.
    pub fn validate(&self) -> Result<()> {
        if self.max_batch_size == 0 {
            return Err(Error::Config("max_batch_size must be at least 1".into()));
        }
        if self.step_token_budget() == 0 {
            return Err(Error::Config("max_batch_tokens must be at least 1".into()));
        }
        if self.max_queue == 0 {
            return Err(Error::Config("max_queue must be at least 1".into()));
        }
        if self.adapter_load_timeout.is_zero() {
            return Err(Error::Config("adapter_load_timeout must be more than zero".into()));
        }
        Ok(())
    }
}

/// Facts about the loaded model.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// Display name.
    pub name: String,
    /// Context length.
    pub max_position_embeddings: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Activation dtype, e.g. `f32`.
    pub dtype: String,
    /// Device, e.g. `cpu`.
    pub device: String,
    /// Bytes of weights one decode step reads (see [`crate::Model::decode_weight_bytes`]).
    pub decode_weight_bytes: usize,
    /// The tokens that end a sequence (the config's and the tokenizer's).
    pub eos_token_ids: Vec<u32>,
}
