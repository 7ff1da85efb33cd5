//! OpenAI request and response shapes (chat completions, completions, models), as the `openai` SDKs send and
//! parse them. Fields this server does not implement are accepted when absent or neutral and refused by name
//! otherwise (see `super::refuse_unsupported`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One sequence.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Stop {
    /// As a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the token usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// A message's content: text, or a list of parts of which only `text` parts are supported.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts.
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Debug, Deserialize)]
pub struct ContentPart {
    /// `text`, `image_url`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    pub text: Option<String>,
}

/// An input chat message.
#[derive(Debug, Deserialize)]
pub struct Message {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    /// Its content.
    pub content: Option<Content>,
}

/// `prompt`: a string, or a list holding one string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    /// One prompt.
    One(String),
    /// A batch of prompts (only one is supported).
    Many(Vec<String>),
}

/// The body of `POST /v1/chat/completions` (`messages`) and `POST /v1/completions` (`prompt`). One struct, so
/// that serde names every field in its errors; each route refuses the other's fields.
#[derive(Debug, Default, Deserialize)]
#[allow(missing_docs)]
pub struct Request {
    pub model: String,
    pub messages: Option<Vec<Message>>,
    pub prompt: Option<PromptInput>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub n: Option<i64>,
    pub stop: Option<Stop>,
    pub seed: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<Value>,
    pub logprobs: Option<Value>,
    pub top_logprobs: Option<i64>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub response_format: Option<Value>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    pub best_of: Option<i64>,
    pub user: Option<String>,
    /// LoRAX extension: top-k sampling.
    pub top_k: Option<i64>,
    /// LoRAX extension: repetition penalty.
    pub repetition_penalty: Option<f32>,
}

/// Token counts.
#[derive(Clone, Copy, Debug, Serialize)]
#[allow(missing_docs)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    /// Usage of a prompt and its completion.
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens }
    }
}

/// An output chat message, or a streamed delta of one.
#[derive(Debug, Default, Serialize)]
#[allow(missing_docs)]
pub struct OutMessage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice of a chat completion or chunk.
#[derive(Debug, Serialize)]
#[allow(missing_docs)]
pub struct ChatChoice {
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<OutMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<OutMessage>,
    pub logprobs: Option<Value>,
    pub finish_reason: Option<&'static str>,
}

/// One choice of a text completion or chunk.
#[derive(Debug, Serialize)]
#[allow(missing_docs)]
pub struct TextChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<Value>,
    pub finish_reason: Option<&'static str>,
}

/// A completion or a streamed chunk of one (`object` tells which).
#[derive(Debug, Serialize)]
#[allow(missing_docs)]
pub struct Completion<C> {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: Option<String>,
    pub choices: Vec<C>,
    /// Absent from chunks unless `stream_options.include_usage` (then null on all but the last).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

/// An entry of `GET /v1/models`.
#[derive(Debug, Serialize)]
#[allow(missing_docs)]
pub struct Model {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// The base model an adapter applies to; null for the base itself.
    pub parent: Option<String>,
}

/// `GET /v1/models`.
#[derive(Debug, Serialize)]
#[allow(missing_docs)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<Model>,
}
