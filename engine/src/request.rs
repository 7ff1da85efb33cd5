//! What a caller sends to the engine and what comes back: requests, token events and the final summary.

use crate::registry::AdapterId;
use crate::sampling::SamplingParams;
use crate::FinishReason;
use std::time::Duration;

/// A prompt as text (tokenized with the model's tokenizer, BOS added if the model wants it) or as token ids.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    /// Text, already formatted (apply a chat template first for chat).
    Text(String),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
}

/// One generation request.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// The prompt.
    pub prompt: Prompt,
    /// The adapter, `None` for the base model.
    pub adapter: Option<AdapterId>,
    /// Token selection.
    pub sampling: SamplingParams,
    /// Most tokens to generate (1 ..= the engine's limit).
    pub max_new_tokens: usize,
    /// Stop sequences; generation ends before the first one and it is not returned.
    pub stop: Vec<String>,
}

/// One generated token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenEvent {
    /// Token id.
    pub id: u32,
    /// The text this token completes (may be empty: part of a character, a special token, or text held back
    /// because it could begin a stop sequence).
    pub text: String,
    /// Log-probability of the token under the model.
    pub logprob: f32,
    /// Whether the token is a special (control) token.
    pub special: bool,
}

/// Time spent by a request.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timings {
    /// From submission to joining the batch.
    pub queue: Duration,
    /// From submission to the first token.
    pub time_to_first_token: Duration,
    /// From submission to the end.
    pub total: Duration,
}

/// The end of a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    /// Why it ended.
    pub reason: FinishReason,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// The whole generated text (special tokens and any stop sequence excluded).
    pub text: String,
    /// Timings.
    pub timings: Timings,
}

/// What a generation stream yields: tokens, then one [`Event::Finished`].
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A token.
    Token(TokenEvent),
    /// The last event.
    Finished(Finished),
}
