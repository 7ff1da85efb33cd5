//! Configuration: how to run an engine ([`EngineConfig`], its defaults and limits, [`ModelInfo`]) in [`engine`],
//! and the architecture of the model ([`ModelConfig`], [`RopeStyle`]) in [`model`].

pub mod engine;
pub mod model;

pub use engine::*;
pub use model::{ModelConfig, RopeStyle};
