//! LoRA Land's inference engine: Llama/Mistral-family models on candle, with many PEFT LoRA adapters served from one
//! shared base model, in one batch. No HTTP and no SQL here: the server crate drives it.

pub mod adapter;
pub mod config;
pub mod error;
pub mod generate;
pub mod kv_cache;
pub mod model;
pub mod model_files;
pub mod module;
pub mod sampling;
pub mod tokenizer;

pub use adapter::{AdapterBank, LoraAdapter};
pub use config::ModelConfig;
pub use error::{Error, Result};
pub use generate::{generate_batch, FinishReason, GenOutput, GenRequest};
pub use kv_cache::KvCache;
pub use model::{LoadOptions, Logits, Model, QuantMode, SeqInput};
pub use model_files::{ModelFiles, ModelFormat};
pub use module::Module;
pub use sampling::{Sampler, SamplingParams};
pub use tokenizer::{ChatMessage, TokenStream, Tokenizer};
