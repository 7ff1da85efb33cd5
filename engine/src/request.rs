//! What a caller sends to the engine and what comes back: requests, token events and the final summary; and the
//! request contract ([`Limits::check`]): every check that could otherwise fail later, in one place, each failure
//! naming its field. The server's APIs and the web app parse their own wire formats into a [`GenerateRequest`] and
//! map the one [`crate::Error`] it can fail with; none of them checks a range of its own.

use crate::adapter::merge::{MergeParams, MergeStrategy};
use crate::registry::AdapterId;
use crate::sampling::SamplingParams;
use crate::{Error, Result};
use serde::Serialize;
use std::time::Duration;

/// Most stop sequences per request (as TGI).
pub const MAX_STOP_SEQUENCES: usize = 4;
/// Longest stop sequence, in bytes.
pub const MAX_STOP_BYTES: usize = 256;
/// Highest sampling temperature accepted.
pub const MAX_TEMPERATURE: f32 = 100.0;
/// Largest presence or frequency penalty, either way (OpenAI's range).
pub const MAX_PENALTY: f32 = 2.0;
/// Most tokens a logit bias may name.
pub const MAX_LOGIT_BIAS: usize = 1024;
/// Largest bias of one token, either way (OpenAI's range).
pub const MAX_LOGIT_BIAS_VALUE: f32 = 100.0;
/// Most alternatives reported per token (OpenAI's `top_logprobs` range).
pub const MAX_TOP_LOGPROBS: usize = 20;
/// Most continuations of one prompt ([`GenerateRequest::n`]), within the batch size.
pub const MAX_CHOICES: usize = 16;
/// Most adapters merged by one request ([`GenerateRequest::merged_adapters`]).
pub const MAX_MERGED_ADAPTERS: usize = 16;
/// Largest weight of a merged adapter, either way.
pub const MAX_MERGE_WEIGHT: f64 = 100.0;

/// A prompt as text (tokenized with the model's tokenizer, BOS added if the model wants it), as token ids, or as
/// parts whose text is either the prompt's own markup or content from someone else.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    /// Text, already formatted (apply a chat template first for chat). Special-token text in it (`<|im_start|>`)
    /// becomes control tokens: the caller owns the whole prompt.
    Text(String),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
    /// A template filled with content: the parts are tokenized one after the other, and special-token text inside
    /// [`PromptPart::Content`] stays plain text, so a visitor's input cannot forge the template's control tokens.
    Parts {
        /// The parts, in order.
        parts: Vec<PromptPart>,
        /// Put the model's BOS first if it wants one (a chat template writes its own: `false`).
        add_bos: bool,
    },
}

/// One part of a [`Prompt::Parts`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PromptPart {
    /// The template's own text: special-token text in it becomes control tokens.
    Template(String),
    /// Content filled into the template: tokenized as plain text.
    Content(String),
}

impl Default for Prompt {
    fn default() -> Self {
        Self::Tokens(Vec::new())
    }
}

impl Prompt {
    /// Bytes of text (0 for token ids): bounds the tokenizer's work before it runs.
    pub fn text_bytes(&self) -> usize {
        match self {
            Self::Text(t) => t.len(),
            Self::Tokens(_) => 0,
            Self::Parts { parts, .. } => parts
                .iter()
                .map(|p| match p {
                    PromptPart::Template(t) | PromptPart::Content(t) => t.len(),
                })
                .sum(),
        }
    }
}

/// What a constrained request's output must be.
#[derive(Clone, Debug, PartialEq)]
pub enum Constraint {
    /// Any JSON object (OpenAI's `{"type": "json_object"}`).
    JsonObject,
    /// A JSON value matching this JSON schema. JSON is written compact unless the schema sets llguidance's own
    /// options (`"x-guidance": {"whitespace_flexible": true}`): a model could otherwise pad it with whitespace until
    /// it runs out of tokens.
    JsonSchema(serde_json::Value),
    /// Text matching this regular expression, whole.
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// Text of this Lark grammar (llguidance's dialect, `start` the top rule).
    Lark(String),
}

/// One generation request.
#[derive(Clone, Debug, Default)]
pub struct GenerateRequest {
    /// The prompt.
    pub prompt: Prompt,
    /// The adapter, `None` for the base model (or for [`Self::merged_adapters`]).
    pub adapter: Option<AdapterId>,
    /// Token selection.
    pub sampling: SamplingParams,
    /// Most tokens to generate (1 ..= the engine's limit).
    pub max_new_tokens: usize,
    /// Take `max_new_tokens` as an upper bound and lower it to the room the prompt leaves in the model's context
    /// (a default the client did not ask for), instead of refusing a request that does not fit.
    pub fit_context: bool,
    /// Keep only the last this many prompt tokens (LoRAX `truncate`).
    pub truncate: Option<usize>,
    /// Where the adapter may come from.
    pub adapter_source: SourceChoice,
    /// Stop sequences; generation ends before the first one and it is not returned.
    pub stop: Vec<String>,
    /// What the output must match (JSON, a regex, a choice, a grammar), `None` for free text.
    pub constraint: Option<Constraint>,
    /// Score the prompt: [`Finished::prompt_logprobs`] (LoRAX `decoder_input_details`).
    pub prompt_logprobs: bool,
    /// Adapters to merge into one and run the request on (LoRAX's `merged_adapters`), instead of [`Self::adapter`].
    /// The merge is made like an adapter is loaded, under the id [`crate::registry::MergedSource::id`] names it by,
    /// and stays resident for the requests that ask for the same merge (a prepared request has that id as its
    /// adapter instead).
    pub merged_adapters: Option<MergedAdapters>,
    /// Continuations of the prompt to generate (OpenAI's `n`; `None` is one). The prompt is prefilled once and
    /// each continuation starts from a copy of its cache; continuation `c` samples with seed `seed + c`, so it is
    /// the one a single request with that seed gets.
    pub n: Option<usize>,
}

impl GenerateRequest {
    /// How many continuations it asks for.
    pub fn choices(&self) -> usize {
        self.n.unwrap_or(1)
    }
}

/// Adapters merged into one for a request (see [`crate::adapter::merge`]).
#[derive(Clone, Debug, PartialEq)]
pub struct MergedAdapters {
    /// The adapters, each found as [`GenerateRequest::adapter`] would be.
    pub ids: Vec<AdapterId>,
    /// One weight per adapter.
    pub weights: Vec<f64>,
    /// Strategy, density and sign election.
    pub params: MergeParams,
}

/// Where a request's adapter may come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SourceChoice {
    /// Wherever the engine's catalog finds it: a local folder, else the hub when the engine allows the hub.
    #[default]
    Any,
    /// Only a local folder.
    Local,
    /// Only the Hugging Face hub (refused when the engine does not allow it).
    Hub,
}

/// The fields of a [`GenerateRequest`], as errors name them (the APIs map them to their own wire names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    /// [`GenerateRequest::prompt`].
    Prompt,
    /// [`GenerateRequest::adapter`].
    Adapter,
    /// [`GenerateRequest::max_new_tokens`].
    MaxNewTokens,
    /// [`GenerateRequest::truncate`].
    Truncate,
    /// [`GenerateRequest::stop`].
    Stop,
    /// [`SamplingParams::temperature`].
    Temperature,
    /// [`SamplingParams::top_p`].
    TopP,
    /// [`SamplingParams::top_k`].
    TopK,
    /// [`SamplingParams::repetition_penalty`].
    RepetitionPenalty,
    /// [`SamplingParams::presence_penalty`].
    PresencePenalty,
    /// [`SamplingParams::frequency_penalty`].
    FrequencyPenalty,
    /// [`SamplingParams::logit_bias`].
    LogitBias,
    /// [`SamplingParams::top_logprobs`].
    TopLogprobs,
    /// [`GenerateRequest::n`].
    N,
    /// [`GenerateRequest::constraint`].
    Constraint,
    /// [`GenerateRequest::merged_adapters`].
    MergedAdapters,
}

impl Field {
    /// The field's name in the engine's request (`max_new_tokens`, `top_p`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Prompt => "prompt",
            Self::Adapter => "adapter",
            Self::MaxNewTokens => "max_new_tokens",
            Self::Truncate => "truncate",
            Self::Stop => "stop",
            Self::Temperature => "temperature",
            Self::TopP => "top_p",
            Self::TopK => "top_k",
            Self::RepetitionPenalty => "repetition_penalty",
            Self::PresencePenalty => "presence_penalty",
            Self::FrequencyPenalty => "frequency_penalty",
            Self::LogitBias => "logit_bias",
            Self::TopLogprobs => "top_logprobs",
            Self::N => "n",
            Self::Constraint => "constraint",
            Self::MergedAdapters => "merged_adapters",
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The limits a request is checked against: the engine's configuration and the model's context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest prompt, in tokens: the configured limit, at most the context less one position (for the first
    /// generated token).
    pub max_input_tokens: usize,
    /// Largest `max_new_tokens`.
    pub max_new_tokens: usize,
    /// The model's context: prompt plus generated tokens.
    pub context: usize,
    /// Longest prompt text, in bytes, that can tokenize to `max_input_tokens` or fewer (the limit times the longest
    /// token's bytes): a longer text is refused before any tokenizing.
    pub max_prompt_bytes: usize,
    /// The vocabulary's size (token ids must be below it).
    pub vocab_size: usize,
    /// Most continuations of one request: [`MAX_CHOICES`], at most the batch size.
    pub max_choices: usize,
    /// The KV budget of the whole batch ([`crate::EngineConfig::max_kv_tokens`]): one request's prompt plus
    /// `max_new_tokens`, times its continuations, must fit it.
    pub max_kv_tokens: usize,
}

impl Limits {
    /// Checks everything about `request` that does not need the prompt's tokens: sampling ranges, stop sequences,
    /// `max_new_tokens` and `truncate` on their own, and the prompt's size in bytes.
    pub fn check_fields(&self, request: &GenerateRequest) -> Result<()> {
        let invalid = |field, reason: String| Err(Error::Invalid { field, reason });
        let s = &request.sampling;
        if let Some(t) = s.temperature {
            if !(0.0..=MAX_TEMPERATURE).contains(&t) {
                return invalid(Field::Temperature, format!("must be between 0 and {MAX_TEMPERATURE}, got {t}"));
            }
        }
        if let Some(p) = s.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return invalid(Field::TopP, format!("must be > 0 and <= 1, got {p}"));
            }
        }
        if s.top_k == Some(0) {
            return invalid(Field::TopK, "must be strictly positive, got 0".into());
        }
        if let Some(r) = s.repetition_penalty {
            if !(r > 0.0 && r.is_finite()) {
                return invalid(Field::RepetitionPenalty, format!("must be strictly positive, got {r}"));
            }
        }
        for (field, value) in
            [(Field::PresencePenalty, s.presence_penalty), (Field::FrequencyPenalty, s.frequency_penalty)]
        {
            if !(-MAX_PENALTY..=MAX_PENALTY).contains(&value) {
                return invalid(field, format!("must be between -{MAX_PENALTY} and {MAX_PENALTY}, got {value}"));
            }
        }
        if s.logit_bias.len() > MAX_LOGIT_BIAS {
            let n = s.logit_bias.len();
            return invalid(Field::LogitBias, format!("has {n} tokens, at most {MAX_LOGIT_BIAS} are allowed"));
        }
        for &(token, bias) in &s.logit_bias {
            if token as usize >= self.vocab_size {
                let reason = format!("token {token} is not in the vocabulary (ids below {})", self.vocab_size);
                return invalid(Field::LogitBias, reason);
            }
            if !(-MAX_LOGIT_BIAS_VALUE..=MAX_LOGIT_BIAS_VALUE).contains(&bias) {
                let max = MAX_LOGIT_BIAS_VALUE;
                return invalid(
                    Field::LogitBias,
                    format!("must be between -{max} and {max}, got {bias} for token {token}"),
                );
            }
        }
        if s.top_logprobs > MAX_TOP_LOGPROBS {
            let n = s.top_logprobs;
            return invalid(Field::TopLogprobs, format!("must be between 0 and {MAX_TOP_LOGPROBS}, got {n}"));
        }
        if let Some(merge) = &request.merged_adapters {
            check_merge(request, merge)?;
        }
        if let Some(n) = request.n.filter(|n| !(1..=self.max_choices).contains(n)) {
            return invalid(Field::N, format!("must be between 1 and {}, got {n}", self.max_choices));
        }
        let stop = &request.stop;
        if stop.len() > MAX_STOP_SEQUENCES {
            return invalid(
                Field::Stop,
                format!("has {} sequences, at most {MAX_STOP_SEQUENCES} are allowed", stop.len()),
            );
        }
        if stop.iter().any(String::is_empty) {
            return invalid(Field::Stop, "must not contain an empty string".into());
        }
        if let Some(s) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return invalid(
                Field::Stop,
                format!("has a sequence of {} bytes, at most {MAX_STOP_BYTES} are allowed", s.len()),
            );
        }
        if request.max_new_tokens == 0 || (!request.fit_context && request.max_new_tokens > self.max_new_tokens) {
            return Err(Error::MaxNewTokens { requested: request.max_new_tokens, max: self.max_new_tokens });
        }
        if request.truncate == Some(0) {
            return invalid(Field::Truncate, "must be strictly positive, got 0".into());
        }
        let bytes = request.prompt.text_bytes();
        if bytes == 0 && !matches!(request.prompt, Prompt::Tokens(_)) {
            // Not even the model's BOS makes an empty text a prompt.
            return Err(Error::EmptyPrompt);
        }
        if request.truncate.is_none() && bytes > self.max_prompt_bytes {
            return Err(Error::PromptTooLarge { bytes, max_tokens: self.max_input_tokens });
        }
        Ok(())
    }

    /// Checks the prompt's tokens (after any truncation) and returns the number of tokens to generate: the prompt
    /// is not empty, within `max_input_tokens` and the vocabulary, and leaves room in the context for
    /// `max_new_tokens` (lowered to that room with `fit_context`).
    pub fn check_tokens(&self, request: &GenerateRequest, prompt: &[u32]) -> Result<usize> {
        if prompt.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        if prompt.len() > self.max_input_tokens {
            return Err(Error::PromptTooLong { len: prompt.len(), max: self.max_input_tokens });
        }
        if let Some(&id) = prompt.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(Error::TokenOutOfRange { id, vocab_size: self.vocab_size });
        }
        let room = self.context - prompt.len();
        let wanted = if request.fit_context {
            request.max_new_tokens.min(self.max_new_tokens).min(room)
        } else {
            request.max_new_tokens
        };
        if wanted > room {
            return Err(Error::ContextExceeded { prompt: prompt.len(), max_new_tokens: wanted, context: self.context });
        }
        // A request larger than the batch's whole KV budget could never be admitted beside anything.
        let n = request.choices();
        let need = (prompt.len() + wanted) * n;
        if need > self.max_kv_tokens {
            let reason = format!(
                "with the prompt's {} tokens and {n} continuation(s), needs {need} tokens of KV cache, more than this \
                 server's budget of {}: ask for fewer tokens or continuations",
                prompt.len(),
                self.max_kv_tokens
            );
            return Err(Error::Invalid { field: Field::MaxNewTokens, reason });
        }
        Ok(wanted)
    }
}

/// The checks of [`GenerateRequest::merged_adapters`]: no adapter beside it, 1 to [`MAX_MERGED_ADAPTERS`] adapters,
/// one finite weight each, and a density in (0, 1] for the strategies that prune.
fn check_merge(request: &GenerateRequest, merge: &MergedAdapters) -> Result<()> {
    let invalid = |reason: String| Err(Error::Invalid { field: Field::MergedAdapters, reason });
    if let Some(id) = &request.adapter {
        return invalid(format!("cannot be set with an adapter (`{id}`): the merge is the request's adapter"));
    }
    let n = merge.ids.len();
    if !(1..=MAX_MERGED_ADAPTERS).contains(&n) {
        return invalid(format!("must name 1 to {MAX_MERGED_ADAPTERS} adapters, got {n}"));
    }
    if merge.weights.len() != n {
        return invalid(format!("has {} weights for {n} adapters: one weight per adapter", merge.weights.len()));
    }
    if let Some(w) = merge.weights.iter().find(|w| !(w.is_finite() && w.abs() <= MAX_MERGE_WEIGHT)) {
        return invalid(format!("weights must be between -{MAX_MERGE_WEIGHT} and {MAX_MERGE_WEIGHT}, got {w}"));
    }
    let density = merge.params.density;
    if merge.params.strategy != MergeStrategy::Linear && !(density > 0.0 && density <= 1.0) {
        return invalid(format!("density must be > 0 and <= 1, got {density}"));
    }
    Ok(())
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
    /// Which continuation it belongs to (`0..n`).
    pub choice: usize,
    /// The most likely tokens at this position with their log-probabilities, most likely first
    /// ([`SamplingParams::top_logprobs`] of them; empty unless asked for).
    pub top: Vec<(u32, f32)>,
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
    /// Which continuation ended (`0..n`).
    pub choice: usize,
    /// Why it ended.
    pub reason: FinishReason,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// With [`GenerateRequest::prompt_logprobs`]: the log-probability of each prompt token after the first, given
    /// the tokens before it (empty otherwise).
    pub prompt_logprobs: Vec<f32>,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// The whole generated text (special tokens and any stop sequence excluded).
    pub text: String,
    /// Timings.
    pub timings: Timings,
}

/// What a generation stream yields: tokens, then one [`Event::Finished`] per continuation.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A token.
    Token(TokenEvent),
    /// The last event.
    Finished(Finished),
}

/// Why a sequence stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// `max_new_tokens` reached.
    Length,
    /// The model produced an end-of-sequence token.
    Eos,
    /// A stop sequence appeared in the text.
    StopSequence,
    /// The output constraint allowed no further token (a grammar that cannot go on, short of its end).
    Constraint,
}

impl FinishReason {
    /// The snake_case name (as serialized): `length`, `eos`, `stop_sequence`, `constraint`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Length => "length",
            Self::Eos => "eos",
            Self::StopSequence => "stop_sequence",
            Self::Constraint => "constraint",
        }
    }
}
