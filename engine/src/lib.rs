//! LoRA Land's inference engine: Llama/Mistral-family models on candle, with many PEFT LoRA adapters served from one
//! shared base model, in one batch. No HTTP and no SQL here: the server crate drives it.

pub mod adapter;
pub mod config;
pub mod constraint;
pub mod error;
pub mod handle;
mod kernel;
pub mod kv_cache;
pub mod model;
pub mod model_files;
pub mod module;
pub mod output;
pub mod registry;
pub mod request;
pub mod sampling;
mod scheduler;
pub mod stats;
pub mod tokenizer;
pub mod train;

pub use adapter::{AdapterBank, LoraAdapter};
pub use config::{EngineConfig, Faults, ModelConfig, ModelInfo, RandomWeights, RopeStyle};
pub use error::{Error, Result};
pub use handle::{Engine, EngineHandle, GenerationStream, Health, Prepared};
pub use kv_cache::KvCache;
pub use model::{memory_bandwidth, LoadOptions, Logits, Model, QuantMode, SeqInput};
pub use model_files::{ModelFiles, ModelFormat};
pub use module::Module;
pub use output::{Piece, TextOutput};
pub use registry::{AdapterId, Catalog};
pub use request::{
    Constraint, Event, Field, FinishReason, Finished, GenerateRequest, Limits, MergedAdapters, Prompt, PromptPart,
    SourceChoice, Timings, TokenEvent,
};
pub use sampling::{Sampler, SamplingParams};
pub use stats::{AdapterActivity, EngineStats};
pub use tokenizer::{ChatMessage, TokenStream, Tokenizer};
