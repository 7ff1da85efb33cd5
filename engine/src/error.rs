//! The engine's error type: one enum, each variant naming what was wrong.

use std::path::PathBuf;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- models ----
    /// The model path does not exist.
    #[error("model not found at {}", .0.display())]
    ModelNotFound(PathBuf),
    /// The model path exists but is neither a GGUF file nor a Hugging Face model folder.
    #[error("{}: {reason}", .path.display())]
    UnsupportedModel {
        /// The offending path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The model's configuration is invalid or unsupported.
    #[error("model config: {0}")]
    Config(String),
    /// A training run cannot start with these examples or settings.
    #[error("training: {0}")]
    Training(String),
    /// No training example fits the run's sequence limit.
    #[error("training: all {examples} training examples are empty or longer than {seq_len} tokens")]
    NoExampleFits {
        /// Training examples given.
        examples: usize,
        /// The sequence limit, in tokens.
        seq_len: usize,
    },
    /// An I/O error on a named file.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    // ---- adapters ----
    /// The adapter folder has no `adapter_config.json`.
    #[error("adapter {}: adapter_config.json is missing", .0.display())]
    AdapterConfigMissing(PathBuf),
    /// `adapter_config.json` is malformed or has an invalid field.
    #[error("adapter {}: adapter_config.json field `{field}`: {reason}", .path.display())]
    AdapterConfig {
        /// The adapter folder.
        path: PathBuf,
        /// The field at fault.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A feature of PEFT that this engine does not implement (DoRA, modules_to_save, ...).
    #[error("adapter {}: `{field}` is not supported: {reason}", .path.display())]
    AdapterUnsupported {
        /// The adapter folder.
        path: PathBuf,
        /// The config field that asks for it.
        field: String,
        /// Details.
        reason: String,
    },
    /// `target_modules` names a module the base model does not have.
    #[error("adapter {}: unknown target module `{module}` (expected q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj or down_proj)", .path.display())]
    UnknownModule {
        /// The adapter folder.
        path: PathBuf,
        /// The unknown module name.
        module: String,
    },
    /// `adapter_model.safetensors` cannot be read.
    #[error("adapter {}: adapter_model.safetensors: {reason}", .path.display())]
    AdapterWeights {
        /// The adapter folder.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A LoRA tensor the config implies is absent.
    #[error("adapter {}: tensor `{tensor}` is missing", .path.display())]
    MissingTensor {
        /// The adapter folder.
        path: PathBuf,
        /// The missing tensor's name.
        tensor: String,
    },
    /// A tensor that no target module explains.
    #[error("adapter {}: unexpected tensor `{tensor}`", .path.display())]
    UnexpectedTensor {
        /// The adapter folder.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
    },
    /// A LoRA tensor whose shape does not fit the base model or the configured rank.
    #[error("adapter {}: tensor `{tensor}` has shape {got:?}, expected {expected:?}", .path.display())]
    ShapeMismatch {
        /// The adapter folder.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The shape the base model and config imply.
        expected: Vec<usize>,
        /// The shape found.
        got: Vec<usize>,
    },

    /// No adapter with this id in the catalog.
    #[error("unknown adapter {0}")]
    UnknownAdapter(crate::registry::AdapterId),
    /// A string that is not a valid adapter id (path-like, too long, ...).
    #[error(transparent)]
    InvalidAdapterId(#[from] crate::registry::InvalidAdapterId),
    /// Downloading an adapter from the hub failed.
    #[error("cannot fetch adapter {repo} from the hub: {reason}")]
    AdapterFetch {
        /// The repository.
        repo: String,
        /// What went wrong.
        reason: String,
    },
    /// Loading an adapter failed; every request for it fails with the cause, and the next request retries.
    #[error("adapter {id} failed to load: {reason}")]
    AdapterLoad {
        /// The adapter.
        id: crate::registry::AdapterId,
        /// The cause.
        reason: String,
    },
    /// A request waited longer than the engine's `adapter_load_timeout` for its adapter to become resident.
    #[error("adapter {id} was not ready after {waited_secs:.1} s ({state}); try again later")]
    AdapterLoadTimeout {
        /// The adapter.
        id: crate::registry::AdapterId,
        /// How long the request waited, in seconds.
        waited_secs: f64,
        /// What the adapter was doing (loading for how long, or waiting for room).
        state: String,
    },
    /// Adapters that cannot be merged (ranks that differ, a missing factor): see [`crate::adapter::merge`].
    #[error("cannot merge adapters: {0}")]
    AdapterMerge(String),
    /// An adapter whose rank exceeds the configured limit.
    #[error("adapter rank {rank} exceeds the limit of {max}")]
    RankLimit {
        /// The adapter's largest rank.
        rank: usize,
        /// The limit.
        max: usize,
    },
    /// An adapter larger than the whole adapter memory budget.
    #[error("adapter needs {bytes} bytes, more than the adapter budget of {max}")]
    AdapterTooLarge {
        /// The adapter's size.
        bytes: usize,
        /// The budget.
        max: usize,
    },

    // ---- requests ----
    /// A request field out of its range.
    #[error("`{field}` {reason}")]
    Invalid {
        /// The field.
        field: crate::request::Field,
        /// What is wrong with it, e.g. "must be > 0 and <= 1, got 2".
        reason: String,
    },
    /// Prompt text so long that it cannot fit the token limit, refused before tokenizing.
    #[error("prompt has {bytes} bytes, more than {max_tokens} tokens (the limit) can hold")]
    PromptTooLarge {
        /// Bytes of prompt text.
        bytes: usize,
        /// The prompt token limit.
        max_tokens: usize,
    },
    /// The prompt plus `max_new_tokens` does not fit the model's context.
    #[error("the prompt ({prompt} tokens) plus max_new_tokens ({max_new_tokens}) exceeds the model's context of {context} tokens")]
    ContextExceeded {
        /// Prompt tokens.
        prompt: usize,
        /// Tokens asked for.
        max_new_tokens: usize,
        /// The model's context.
        context: usize,
    },
    /// The engine's queue is full; retry later.
    #[error("the server is overloaded: {waiting} requests are already queued")]
    Overloaded {
        /// Requests waiting or running.
        waiting: usize,
    },
    /// The prompt has more tokens than allowed.
    #[error("prompt has {len} tokens, more than the limit of {max}")]
    PromptTooLong {
        /// Prompt tokens.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `max_new_tokens` above the limit (or zero).
    #[error("max_new_tokens must be between 1 and {max}, got {requested}")]
    MaxNewTokens {
        /// What was asked.
        requested: usize,
        /// The limit.
        max: usize,
    },
    /// A forward step failed; the requests in it end with this error.
    #[error("generation failed: {0}")]
    Generation(String),
    /// The engine thread has stopped (it panicked or was shut down).
    #[error("the inference engine has stopped")]
    EngineStopped,
    /// A prompt with no tokens.
    #[error("prompt is empty")]
    EmptyPrompt,
    /// A token id outside the vocabulary.
    #[error("token id {id} is out of range (vocabulary size {vocab_size})")]
    TokenOutOfRange {
        /// The offending id.
        id: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
    /// An adapter index that the bank does not hold.
    #[error("adapter slot {0} is not loaded")]
    UnknownAdapterSlot(usize),
    /// A sequence longer than the model's position tables.
    #[error("sequence of {len} tokens exceeds the model's maximum of {max}")]
    SequenceTooLong {
        /// Tokens in the sequence (cache + new).
        len: usize,
        /// The model's limit.
        max: usize,
    },

    // ---- tokenizer and templates ----
    /// Tokenizer construction or use failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Chat template rendering failed.
    #[error("chat template: {0}")]
    Template(String),

    /// A tensor library error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a caught panic says (its `&str` or `String` payload), for the log line of a thread that caught it (the
/// engine's and the loader's threads here, a pane's generation in the app).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    (panic.downcast_ref::<&str>().map(|m| m.to_string()))
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}
