//! LoRA Land's inference engine: Llama/Mistral-family models on candle, with many PEFT LoRA adapters served from one
//! shared base model. No HTTP and no SQL here: the server crate drives it.

pub mod error;
pub mod model_files;

pub use error::{Error, Result};
pub use model_files::{ModelFiles, ModelFormat};
