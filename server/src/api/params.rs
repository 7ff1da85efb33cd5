//! The engine's request contract on each API's wire. The checks themselves are the engine's
//! ([`engine::Limits`]); here only what belongs to a wire format: reading sampling settings as a request states
//! them (LoRAX's `do_sample`, OpenAI's default temperature of 1, the seed reported back), and naming the engine's
//! errors with the API's own field names (`parameters.top_p` on LoRAX, `top_p` on OpenAI). Large prompts are
//! tokenized on a blocking thread, off the async workers.

use super::error::{ApiError, ErrorKind};
use engine::{Constraint, EngineHandle, Field, GenerateRequest, Prepared, SamplingParams};
use serde_json::Value;

/// Prompts with more bytes than this are tokenized on a blocking thread rather than on an async worker.
pub const BLOCKING_PROMPT_BYTES: usize = 16 << 10;

/// Sampling settings as a request states them, before checking.
#[derive(Clone, Debug, Default)]
pub struct SamplingInput {
    /// Ask for sampling even without other settings (LoRAX `do_sample`).
    pub do_sample: bool,
    /// Softmax temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    pub top_p: Option<f32>,
    /// Top-k filter.
    pub top_k: Option<i64>,
    /// CTRL-style repetition penalty.
    pub repetition_penalty: Option<f32>,
    /// Random seed.
    pub seed: Option<u64>,
}

/// The engine's sampling parameters for `input`, and the seed to report (sampling only: a request that samples
/// without a seed gets a random one, reported so that it can be replayed). Ranges are the engine's to check.
pub fn sampling(input: &SamplingInput) -> (SamplingParams, Option<u64>) {
    let filters = input.top_k.is_some() || input.top_p.is_some_and(|p| p < 1.0);
    let sample = match input.temperature {
        Some(0.0) => false,
        Some(_) => true,
        None => input.do_sample || filters,
    };
    // A negative top-k cannot be a `usize`; 0 is what the engine refuses, by name.
    // Greedy requests keep their filters too: they do not change the argmax, but out of range they are refused.
    let top_k = input.top_k.map(|k| usize::try_from(k).unwrap_or(0));
    let top_p = input.top_p.filter(|&p| p != 1.0);
    let repetition_penalty = input.repetition_penalty;
    if !sample {
        return (SamplingParams { temperature: None, top_k, top_p, repetition_penalty, ..Default::default() }, None);
    }
    let seed = input.seed.unwrap_or_else(rand::random);
    let temperature = Some(input.temperature.unwrap_or(1.0));
    (SamplingParams { temperature, top_k, top_p, repetition_penalty, seed, ..Default::default() }, Some(seed))
}

/// A `response_format` as the engine's [`Constraint`]; `field` is its wire name. Both APIs take the same shapes:
/// - `{"type": "text"}` (or null): free text;
/// - `{"type": "json_object"}`: any JSON object, or with `"schema"` (LoRAX's form, the schema as an object or as
///   JSON text) a value of that schema;
/// - `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}` (OpenAI's form);
/// - `{"type": "regex", "regex": "..."}`, `{"type": "choice", "choice": ["a", "b"]}` and
///   `{"type": "grammar", "grammar": "<Lark>"}` (the forms vLLM's guided decoding offers).
pub fn response_format(value: Option<&Value>, field: &str) -> Result<Option<Constraint>, ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(None) };
    let Some(kind) = value.get("type").and_then(Value::as_str) else {
        return Err(ApiError::invalid(field, "must be an object with a string `type`"));
    };
    let text = |key: &str| -> Result<String, ApiError> {
        match value.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(ApiError::invalid(field, format!("of type {kind:?} needs a string `{key}`"))),
        }
    };
    let schema = |schema: Option<&Value>| -> Result<Constraint, ApiError> {
        let schema = match schema {
            None | Some(Value::Null) => return Ok(Constraint::JsonObject),
            Some(Value::String(s)) => serde_json::from_str(s)
                .map_err(|e| ApiError::invalid(field, format!("`schema` is not valid JSON: {e}")))?,
            Some(other) => other.clone(),
        };
        Ok(Constraint::JsonSchema(schema))
    };
    let constraint = match kind {
        "text" => return Ok(None),
        "json_object" => match value.get("schema") {
            None | Some(Value::Null) => Constraint::JsonObject,
            some => schema(some)?,
        },
        "json_schema" => {
            let Some(spec) = value.get("json_schema").filter(|v| v.is_object()) else {
                return Err(ApiError::invalid(field, "of type \"json_schema\" needs a `json_schema` object"));
            };
            match schema(spec.get("schema"))? {
                // No schema: any JSON value.
                Constraint::JsonObject => Constraint::JsonSchema(serde_json::json!({})),
                c => c,
            }
        }
        "regex" => Constraint::Regex(text("regex")?),
        "grammar" => Constraint::Lark(text("grammar")?),
        "choice" => match value.get("choice") {
            Some(Value::Array(items)) => Constraint::Choice(
                items
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| ApiError::invalid(field, "`choice` must be a list of strings"))?,
            ),
            _ => return Err(ApiError::invalid(field, "of type \"choice\" needs a `choice` list of strings")),
        },
        other => {
            let reason =
                format!("type must be text, json_object, json_schema, regex, choice or grammar, got {other:?}");
            return Err(ApiError::invalid(field, reason));
        }
    };
    Ok(Some(constraint))
}

/// A wire count (`max_new_tokens`, `truncate`) as the engine's `usize`: negative values become 0, which the
/// engine refuses by name.
pub fn count(value: i64) -> usize {
    usize::try_from(value).unwrap_or(0)
}

/// The API's names for the engine's request fields.
#[derive(Clone, Copy, Debug)]
pub struct Wire {
    /// Prefix of the generation parameters (`parameters.` on LoRAX).
    pub prefix: &'static str,
    /// The prompt's field (`inputs`, `prompt`, `messages`).
    pub prompt: &'static str,
    /// The adapter's field (`parameters.adapter_id`, `model`).
    pub adapter: &'static str,
    /// `max_new_tokens`'s field (`max_tokens`, `max_completion_tokens`).
    pub max_new_tokens: &'static str,
}

impl Wire {
    /// The wire name of `field`.
    pub fn name(&self, field: Field) -> String {
        match field {
            Field::Prompt => self.prompt.to_string(),
            Field::Adapter => self.adapter.to_string(),
            Field::MaxNewTokens => format!("{}{}", self.prefix, self.max_new_tokens),
            Field::Constraint => format!("{}response_format", self.prefix),
            other => format!("{}{}", self.prefix, other.name()),
        }
    }

    /// The engine's refusal of a request, in this API's words: the message names the field as the client sent it.
    pub fn error(&self, e: engine::Error) -> ApiError {
        use engine::Error as E;
        let prompt = self.name(Field::Prompt);
        let max_new = self.name(Field::MaxNewTokens);
        match e {
            E::Invalid { field, reason } => ApiError::invalid(&self.name(field), reason),
            E::MaxNewTokens { requested, max } => {
                ApiError::invalid(&max_new, format!("must be between 1 and {max}, got {requested}"))
            }
            E::EmptyPrompt => ApiError::invalid(&prompt, "must not be empty"),
            E::PromptTooLong { len, max } => {
                let message = format!("`{prompt}` has {len} tokens, more than the limit of {max}");
                ApiError::new(ErrorKind::PromptTooLong, message).with_param(&prompt)
            }
            E::PromptTooLarge { bytes, max_tokens } => {
                let message =
                    format!("`{prompt}` has {bytes} bytes, more than the limit of {max_tokens} tokens can hold");
                ApiError::new(ErrorKind::PromptTooLong, message).with_param(&prompt)
            }
            E::ContextExceeded { prompt: len, max_new_tokens, context } => {
                let message = format!(
                    "the prompt ({len} tokens) plus `{max_new}` ({max_new_tokens}) exceeds the model's context of \
                     {context} tokens"
                );
                ApiError::new(ErrorKind::PromptTooLong, message).with_param(&max_new)
            }
            E::TokenOutOfRange { .. } => ApiError::invalid(&prompt, e.to_string()),
            E::UnknownAdapter(_) | E::InvalidAdapterId(_) => ApiError::from(e).with_param(&self.name(Field::Adapter)),
            other => ApiError::from(other),
        }
    }
}

/// Checks and tokenizes `request` through the engine's contract ([`EngineHandle::prepare`]), on a blocking thread
/// when its prompt is large or its output constraint is to be compiled, and names any refusal with `wire`'s field names.
pub async fn prepare(engine: &EngineHandle, request: GenerateRequest, wire: &Wire) -> Result<Prepared, ApiError> {
    let prepared = if request.prompt.text_bytes() > BLOCKING_PROMPT_BYTES || request.constraint.is_some() {
        let engine = engine.clone();
        tokio::task::spawn_blocking(move || engine.prepare(request)).await.map_err(ApiError::internal)?
    } else {
        engine.prepare(request)
    };
    prepared.map_err(|e| wire.error(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LORAX: Wire = Wire {
        prefix: "parameters.",
        prompt: "inputs",
        adapter: "parameters.adapter_id",
        max_new_tokens: "max_new_tokens",
    };

    #[test]
    fn greedy_unless_asked_to_sample() {
        let (p, seed) = sampling(&SamplingInput::default());
        assert!(p.is_greedy());
        assert_eq!(seed, None);
        let zero = SamplingInput { temperature: Some(0.0), top_k: Some(5), ..Default::default() };
        assert!(sampling(&zero).0.is_greedy());
        let sample = SamplingInput { do_sample: true, seed: Some(7), ..Default::default() };
        let (p, seed) = sampling(&sample);
        assert_eq!((p.temperature, p.seed, seed), (Some(1.0), 7, Some(7)));
        let top_k = SamplingInput { top_k: Some(3), ..Default::default() };
        let (p, seed) = sampling(&top_k);
        assert_eq!(p.top_k, Some(3));
        assert!(seed.is_some(), "a random seed is chosen and reported");
        assert_eq!(sampling(&SamplingInput { top_k: Some(-2), ..Default::default() }).0.top_k, Some(0));
    }

    #[test]
    fn engine_refusals_carry_the_wire_names() {
        let invalid = engine::Error::Invalid { field: Field::TopP, reason: "must be > 0 and <= 1, got 2".into() };
        let e = LORAX.error(invalid);
        assert_eq!(e.message, "`parameters.top_p` must be > 0 and <= 1, got 2");
        assert_eq!(e.param.as_deref(), Some("parameters.top_p"));
        let long = LORAX.error(engine::Error::PromptTooLong { len: 70, max: 64 });
        assert_eq!(
            (long.kind, long.message.as_str()),
            (ErrorKind::PromptTooLong, "`inputs` has 70 tokens, more than the limit of 64")
        );
        let ctx = LORAX.error(engine::Error::ContextExceeded { prompt: 100, max_new_tokens: 200, context: 256 });
        assert!(ctx.message.contains("`parameters.max_new_tokens` (200)"), "{}", ctx.message);
        let openai = Wire { prefix: "", prompt: "messages", adapter: "model", max_new_tokens: "max_tokens" };
        let max = openai.error(engine::Error::MaxNewTokens { requested: 0, max: 200 });
        assert_eq!(max.message, "`max_tokens` must be between 1 and 200, got 0");
    }
}
