//! The OpenAI-compatible API: `POST /v1/chat/completions`, `POST /v1/completions` and `GET /v1/models`. `model` is
//! an adapter id or the base model's name; chat messages are rendered with the model's chat template.

mod types;

pub use types::*;

use super::error::{ApiError, ErrorKind, Flavor, OpenAiError};
use super::extract::OpenAiJson;
use super::generation::engine;
use super::generation::{self, AdapterLabel};
use super::params::{self, SamplingInput, Wire};
use super::sse;
use crate::AppState;
use axum::extract::State;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;
use engine::{AdapterId, ChatMessage, EngineHandle, Event, FinishReason, GenerateRequest, Prompt};
use futures_util::StreamExt;
use std::convert::Infallible;

/// Default `max_tokens` of `/v1/completions` (OpenAI's).
pub const DEFAULT_COMPLETION_TOKENS: usize = 16;
/// Highest temperature OpenAI accepts.
pub const MAX_TEMPERATURE: f32 = 2.0;

/// Which route a request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Chat,
    Text,
}

/// A checked request.
#[derive(Debug)]
struct Checked {
    route: Route,
    prepared: engine::Prepared,
    model: String,
    echo: Option<String>,
    stream: bool,
    include_usage: bool,
}

fn refuse_unsupported(r: &Request, route: Route) -> Result<(), ApiError> {
    let n = r.n.unwrap_or(1);
    if n != 1 {
        return Err(ApiError::invalid("n", format!("only n=1 is supported, got {n}")));
    }
    let wrong_route: &[(&str, bool)] = match route {
        Route::Chat => &[("prompt", r.prompt.is_some()), ("echo", r.echo.is_some()), ("suffix", r.suffix.is_some())],
        Route::Text => &[("messages", r.messages.is_some()), ("tools", r.tools.is_some())],
    };
    if let Some((field, _)) = wrong_route.iter().find(|(_, set)| *set) {
        let other = if route == Route::Chat { "/v1/completions" } else { "/v1/chat/completions" };
        return Err(ApiError::invalid(field, format!("belongs to {other}, not this route")));
    }
    let unsupported = [
        (
            "logprobs",
            r.logprobs.as_ref().is_some_and(|v| !v.is_null() && v != &serde_json::json!(false)),
            "log-probabilities (use the LoRAX route with details)",
        ),
        ("top_logprobs", r.top_logprobs.is_some_and(|n| n > 0), "top log-probabilities"),
        ("tools", r.tools.is_some(), "tool calls"),
        ("tool_choice", r.tool_choice.is_some(), "tool calls"),
        (
            "response_format",
            r.response_format.as_ref().is_some_and(|v| v.get("type").and_then(|t| t.as_str()) != Some("text")),
            "structured output",
        ),
        ("suffix", r.suffix.is_some(), "insertion (suffix)"),
        ("best_of", r.best_of.is_some_and(|n| n > 1), "best-of-n"),
    ];
    match unsupported.into_iter().find(|(_, on, _)| *on) {
        Some((field, _, what)) => Err(ApiError::unsupported(field, what)),
        None => Ok(()),
    }
}

/// OpenAI's `logit_bias`, `{"<token id>": bias}`, as the engine's list; its ranges and ids are the engine's to check.
fn logit_bias(value: Option<&serde_json::Value>) -> Result<Vec<(u32, f32)>, ApiError> {
    let map = match value {
        None | Some(serde_json::Value::Null) => return Ok(Vec::new()),
        Some(serde_json::Value::Object(map)) => map,
        Some(_) => return Err(ApiError::invalid("logit_bias", "must be an object of token ids to biases")),
    };
    map.iter()
        .map(|(key, bias)| {
            let token = key
                .parse::<u32>()
                .map_err(|_| ApiError::invalid("logit_bias", format!("keys must be token ids, got {key:?}")))?;
            let bias = bias.as_f64().ok_or_else(|| {
                ApiError::invalid("logit_bias", format!("token {token}'s bias must be a number, got {bias}"))
            })?;
            Ok((token, bias as f32))
        })
        .collect()
}

/// The adapter named by `model`: `None` for the base model's name. Whether the catalog has it is the engine's to
/// check; its "unknown adapter" is answered here in OpenAI's words.
fn model_adapter(engine: &EngineHandle, model: &str) -> Result<Option<AdapterId>, ApiError> {
    if model.is_empty() {
        return Err(ApiError::invalid("model", "must name the base model or an adapter (see GET /v1/models)"));
    }
    if model == engine.model_info().name {
        return Ok(None);
    }
    let id = AdapterId::new(model)
        .map_err(|e| ApiError::new(ErrorKind::BadRequest, format!("`model`: {e}")).with_param("model"))?;
    Ok(Some(id))
}

/// OpenAI's words for the engine's "unknown adapter".
fn unknown_model(e: ApiError, model: &str) -> ApiError {
    match e.kind {
        ErrorKind::NotFound => {
            ApiError::new(ErrorKind::NotFound, format!("the model `{model}` does not exist (see GET /v1/models)"))
                .with_param("model")
        }
        _ => e,
    }
}

/// Chat messages as the template wants them; only text content.
fn chat_messages(messages: Vec<Message>) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "must not be empty"));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" | "assistant" => m.role.as_str(),
                other => {
                    let reason = format!("must be system, developer, user or assistant, got {other:?}");
                    return Err(ApiError::invalid(&format!("messages[{i}].role"), reason));
                }
            };
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, part) in parts.into_iter().enumerate() {
                        match (part.kind.as_str(), part.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            (kind, _) => {
                                let field = format!("messages[{i}].content[{j}]");
                                return Err(ApiError::unsupported(
                                    &field,
                                    &format!("content parts of type {kind:?} (only text)"),
                                ));
                            }
                        }
                    }
                    text
                }
            };
            Ok(ChatMessage { role: role.to_string(), content })
        })
        .collect()
}

async fn check(engine: &EngineHandle, r: Request, route: Route) -> Result<Checked, ApiError> {
    refuse_unsupported(&r, route)?;
    let adapter = model_adapter(engine, &r.model)?;
    // OpenAI's own range (the engine allows up to engine::request::MAX_TEMPERATURE).
    if let Some(t) = r.temperature.filter(|t| !(0.0..=MAX_TEMPERATURE).contains(t)) {
        return Err(ApiError::invalid("temperature", format!("must be between 0 and {MAX_TEMPERATURE}, got {t}")));
    }
    let input = SamplingInput {
        // OpenAI samples at temperature 1 unless told otherwise.
        do_sample: true,
        temperature: r.temperature,
        top_p: r.top_p,
        top_k: r.top_k,
        repetition_penalty: r.repetition_penalty,
        seed: r.seed.map(|s| s as u64),
    };
    let (mut sampling, _) = params::sampling(&input);
    sampling.presence_penalty = r.presence_penalty.unwrap_or(0.0);
    sampling.frequency_penalty = r.frequency_penalty.unwrap_or(0.0);
    sampling.logit_bias = logit_bias(r.logit_bias.as_ref())?;
    let (max_field, asked) = match r.max_completion_tokens {
        Some(n) => ("max_completion_tokens", Some(n)),
        None => ("max_tokens", r.max_tokens),
    };
    let default = if route == Route::Text { DEFAULT_COMPLETION_TOKENS } else { usize::MAX };
    let (prompt, prompt_field, echo) = match route {
        Route::Chat => {
            let messages = chat_messages(r.messages.ok_or_else(|| ApiError::invalid("messages", "is required"))?)?;
            // The template writes any BOS itself, as transformers' apply_chat_template; messages' contents are
            // content, so special-token text in them stays text.
            let parts = engine.tokenizer().chat_parts(&messages, true).map_err(|e| ApiError::invalid("messages", e))?;
            (Prompt::Parts { parts, add_bos: false }, "messages", None)
        }
        Route::Text => {
            let text = match r.prompt.ok_or_else(|| ApiError::invalid("prompt", "is required"))? {
                PromptInput::One(t) => t,
                PromptInput::Many(mut v) if v.len() == 1 => v.remove(0),
                PromptInput::Many(v) => {
                    return Err(ApiError::invalid(
                        "prompt",
                        format!("only one prompt per request is supported, got {}", v.len()),
                    ))
                }
            };
            let echo = r.echo.unwrap_or(false).then(|| text.clone());
            (Prompt::Text(text), "prompt", echo)
        }
    };
    let request = GenerateRequest {
        prompt,
        adapter,
        sampling,
        max_new_tokens: asked.map_or(default, params::count),
        fit_context: asked.is_none(),
        stop: r.stop.map(Stop::into_vec).unwrap_or_default(),
        ..GenerateRequest::default()
    };
    let wire = Wire { prefix: "", prompt: prompt_field, adapter: "model", max_new_tokens: max_field };
    let prepared = params::prepare(engine, request, &wire).await.map_err(|e| unknown_model(e, &r.model))?;
    Ok(Checked {
        route,
        prepared,
        model: r.model,
        echo,
        stream: r.stream.unwrap_or(false),
        include_usage: r.stream_options.is_some_and(|o| o.include_usage),
    })
}

/// OpenAI's name for a finish reason.
pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::Eos | FinishReason::StopSequence => "stop",
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The envelope of every answer and chunk of one request.
#[derive(Clone, Debug)]
struct Envelope {
    id: String,
    created: u64,
    model: String,
    route: Route,
}

impl Envelope {
    fn new(c: &Checked) -> Self {
        let prefix = if c.route == Route::Chat { "chatcmpl" } else { "cmpl" };
        Self {
            id: format!("{prefix}-{}", uuid::Uuid::new_v4().simple()),
            created: now_secs(),
            model: c.model.clone(),
            route: c.route,
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.route, chunk) {
            (Route::Chat, false) => "chat.completion",
            (Route::Chat, true) => "chat.completion.chunk",
            (Route::Text, _) => "text_completion",
        }
    }

    /// An answer or chunk; `text` is the message content (or delta), `role` only on the first chat delta.
    fn json(
        &self,
        chunk: bool,
        text: Option<String>,
        role: bool,
        finish: Option<&'static str>,
        usage: Option<Option<Usage>>,
    ) -> serde_json::Value {
        let value = match self.route {
            Route::Chat => {
                let msg = OutMessage { role: role.then_some("assistant"), content: text };
                let (message, delta) = if chunk { (None, Some(msg)) } else { (Some(msg), None) };
                let choices = vec![ChatChoice { index: 0, message, delta, logprobs: None, finish_reason: finish }];
                serde_json::to_value(self.completion(chunk, choices, usage))
            }
            Route::Text => {
                let choices = vec![TextChoice {
                    index: 0,
                    text: text.unwrap_or_default(),
                    logprobs: None,
                    finish_reason: finish,
                }];
                serde_json::to_value(self.completion(chunk, choices, usage))
            }
        };
        value.unwrap_or_default()
    }

    fn completion<C>(&self, chunk: bool, choices: Vec<C>, usage: Option<Option<Usage>>) -> Completion<C> {
        Completion {
            id: self.id.clone(),
            object: self.object(chunk),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: None,
            choices,
            usage,
        }
    }

    /// The last chunk of a stream with `include_usage`: no choices, the usage.
    fn usage_chunk(&self, usage: Usage) -> serde_json::Value {
        serde_json::to_value(self.completion::<TextChoice>(true, Vec::new(), Some(Some(usage)))).unwrap_or_default()
    }
}

async fn complete(state: &AppState, body: Request, route: Route) -> Result<Response, ApiError> {
    let engine = engine(state)?;
    let checked = check(engine, body, route).await?;
    let envelope = Envelope::new(&checked);
    let mut running = generation::submit(engine, checked.prepared.clone())?;
    let adapter = running.adapter.clone();
    let mut res = if checked.stream {
        let first = generation::first_event(&mut running).await?;
        let events = stream_events(generation::events(first, running), envelope, checked.include_usage, checked.echo);
        sse::response(events)
    } else {
        let done = generation::collect(running).await?;
        let f = done.finished;
        let text = format!("{}{}", checked.echo.unwrap_or_default(), f.text);
        let usage = Usage::new(f.prompt_tokens, f.generated_tokens);
        Json(envelope.json(false, Some(text), true, Some(finish_reason(f.reason)), Some(Some(usage)))).into_response()
    };
    res.extensions_mut().insert(AdapterLabel(adapter));
    Ok(res)
}

/// OpenAI chunks from engine events: a first chunk with the role (chat) or echoed prompt (completions), one per
/// token with text, a last one with the finish reason, the usage chunk if asked, and `[DONE]`. A failure ends the
/// stream with an `error` event in OpenAI's shape.
fn stream_events(
    events: impl futures_util::Stream<Item = Result<Event, ApiError>> + Send + 'static,
    env: Envelope,
    include_usage: bool,
    echo: Option<String>,
) -> impl futures_util::Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
    let usage_field = include_usage.then_some(None);
    let opening = match env.route {
        Route::Chat => Some(env.json(true, Some(String::new()), true, None, usage_field)),
        Route::Text => echo.map(|e| env.json(true, Some(e), false, None, usage_field)),
    };
    let head = futures_util::stream::iter(opening.map(|v| sse::json_event(&v)));
    let body = events.map(move |event| {
        let out: Vec<SseEvent> = match event {
            Ok(Event::Token(t)) if t.text.is_empty() => Vec::new(),
            Ok(Event::Token(t)) => vec![sse::json_event(&env.json(true, Some(t.text), false, None, usage_field))],
            Ok(Event::Finished(f)) => {
                let mut out =
                    vec![sse::json_event(&env.json(true, None, false, Some(finish_reason(f.reason)), usage_field))];
                if include_usage {
                    out.push(sse::json_event(&env.usage_chunk(Usage::new(f.prompt_tokens, f.generated_tokens))));
                }
                out.push(SseEvent::default().data("[DONE]"));
                out
            }
            Err(e) => vec![sse::error_event(&e, Flavor::OpenAi)],
        };
        futures_util::stream::iter(out)
    });
    head.chain(body.flatten()).map(Ok)
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<AppState>,
    OpenAiJson(body): OpenAiJson<Request>,
) -> Result<Response, OpenAiError> {
    Ok(complete(&state, body, Route::Chat).await?)
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<AppState>,
    OpenAiJson(body): OpenAiJson<Request>,
) -> Result<Response, OpenAiError> {
    Ok(complete(&state, body, Route::Text).await?)
}

/// `GET /v1/models`: the base model, then every adapter of the catalog with the base as `parent`.
pub async fn models(State(state): State<AppState>) -> Result<Json<ModelList>, OpenAiError> {
    let engine = engine(&state)?;
    let base = engine.model_info().name.clone();
    let created = now_secs();
    let entry =
        |id: String, parent: Option<String>| Model { id, object: "model", created, owned_by: "loraland", parent };
    let mut data = vec![entry(base.clone(), None)];
    data.extend(engine.config().catalog.list_local().into_iter().map(|id| entry(id.to_string(), Some(base.clone()))));
    Ok(Json(ModelList { object: "list", data }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;
    use engine::TokenEvent;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn an_error_after_tokens_ends_the_stream_with_an_openai_error_event() {
        let env = Envelope { id: "chatcmpl-1".into(), created: 0, model: "m".into(), route: Route::Chat };
        let token = Ok(Event::Token(TokenEvent { id: 1, text: "hi".into(), logprob: -0.1, special: false }));
        let events = vec![token, Err(ApiError::internal("forward step failed"))];
        let stream = stream_events(futures_util::stream::iter(events), env, false, None);
        let bytes = sse::response(stream).into_response().into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8(bytes.to_vec()).unwrap();
        let blocks: Vec<&str> = body.split("\n\n").filter(|b| !b.is_empty()).collect();
        assert_eq!(blocks.len(), 3, "{body}");
        assert!(blocks[0].contains(r#""role":"assistant""#), "{body}");
        assert!(blocks[1].contains(r#""content":"hi""#), "{body}");
        assert!(blocks[2].starts_with("event: error\ndata: {\"error\":{"), "{body}");
        assert!(blocks[2].contains(r#""type":"server_error""#), "{body}");
        assert!(!body.contains("[DONE]"), "a failed stream does not end with [DONE]");
    }
}
